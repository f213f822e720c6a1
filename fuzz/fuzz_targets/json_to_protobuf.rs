//! Any bytes as an OTLP/JSON request: conversion never panics, and what converts decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(protobuf) = spanlens::otlp::json::to_protobuf(data) {
        assert!(spanlens::otlp::decode::Batch::decode(&protobuf).is_ok());
    }
});
