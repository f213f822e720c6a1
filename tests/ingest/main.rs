//! Ingest: what spanlens makes of the bytes it is sent. `bad_input`: every kind of broken
//! OTLP/HTTP and OTLP/gRPC request gets its exact status code while valid spans flow
//! alongside; `decode_differential`: the hot path's borrowed decoder against prost.

#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod decode_differential;
