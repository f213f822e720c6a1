//! The /metrics exposition: `exposition_formats` (text and OpenMetrics checked by promtool
//! and by Python's prometheus_client), `protobuf_exposition` (Prometheus's protobuf format
//! decoded with client_model's metrics.proto, and scraped by the real Prometheus 2.42),
//! `e2e_workflows` (tasker workflows through the real
//! OTLP exporter, every stage histogram and counter checked against the fixture),
//! `sampled_counts` (spans weighted by their tracestate's sampling threshold).

#[path = "../support/mod.rs"]
mod support;

mod e2e_workflows;
mod exposition_formats;
mod native_quantiles;
mod protobuf_exposition;
mod sampled_counts;
