//! Forwarding to downstream OTLP endpoints: queues, retries, the write-ahead log, shutdown.

#[path = "../support/mod.rs"]
mod support;

mod forwarding;
