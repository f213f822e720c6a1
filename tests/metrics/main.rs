//! The /metrics exposition: `exposition_formats` (text and OpenMetrics checked by promtool
//! and by Python's prometheus_client), `e2e_workflows` (tasker workflows through the real
//! OTLP exporter, every stage histogram and counter checked against the fixture).

#[path = "../support/mod.rs"]
mod support;

mod e2e_workflows;
mod exposition_formats;
