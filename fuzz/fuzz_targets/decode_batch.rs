//! Any bytes as an OTLP `ExportTraceServiceRequest`: decoding never panics, and whatever
//! decodes is consistent (every span points at a resource, its checks run).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spanlens::otlp::decode::Batch;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = Batch::decode(data) {
        for span in &batch.spans {
            assert!(span.resource < batch.resources.len());
            let _ = batch.span_attributes(span);
            let _ = span.problem();
            let _ = span.duration_nanos();
            let _ = (span.kind_name(), span.status_name());
        }
        for resource in &batch.resources {
            let _ = batch.resource_attributes(resource);
        }
    }
});
