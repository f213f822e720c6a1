//! spanlens: an OpenTelemetry span processor that turns the spans of a workflow orchestrator
//! into per-stage latency histograms for Prometheus.
//!
//! The flow runs one way, and so do the dependencies between these modules:
//! [`ingest`] receives OTLP requests and moves bytes (limits, decompression, admission),
//! [`otlp`] is the protocol they speak (wire format, borrowed span views, JSON, status),
//! [`pipeline`] classifies each span into a stage, resolves its labels and observes it,
//! [`join`] holds the spans of derived durations and the breakdown log, [`metrics`] stores
//! series and renders them for scrapes (and the rules for Prometheus), [`forward`] passes
//! accepted requests on, and [`server`] wires it all to listeners. [`config`] and
//! [`collections`] depend on nothing of the flow; [`cli`] holds the commands besides serving.
#![deny(unsafe_code)]
// The docs are built with --document-private-items (scripts/test.sh): most of the crate is
// crate-private, and public docs may link to it.
#![allow(rustdoc::private_intra_doc_links)]

pub mod cli;
pub mod collections;
pub mod config;
pub mod forward;
pub mod ingest;
pub mod join;
pub mod metrics;
pub mod otlp;
pub mod pipeline;
pub mod server;
