//! spanlens: an OpenTelemetry span processor that turns the spans of a workflow orchestrator
//! into per-stage latency histograms for Prometheus.
//!
//! The flow runs one way: receivers move bytes ([`body`], [`receiver`]), [`decode`] turns a
//! request into borrowed span views, [`classify`] and [`labels`] map each span to a stage and
//! its label values, [`aggregate`] observes into sharded series storage, and [`exposition`]
//! renders it for scrapes.
#![deny(unsafe_code)]

pub mod access;
pub mod admin;
pub mod aggregate;
pub mod body;
pub mod breakdown;
pub mod classify;
pub mod config;
pub mod decode;
pub mod dedupe;
pub mod equal;
pub mod exposition;
pub mod fixtures;
pub mod forward;
pub mod interned;
pub mod join;
pub mod json;
pub mod labels;
pub mod listener;
pub mod pipeline;
pub mod receiver;
pub mod recent;
pub mod replay;
pub mod request_series;
pub mod rules;
pub mod scrape_buffers;
pub mod server;
pub mod shards;
pub mod status;
pub mod tls;
pub mod utf8;
pub mod wire;
