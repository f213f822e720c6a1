//! Decoding an OTLP `ExportTraceServiceRequest` of 512 realistic tasker spans (about 400
//! bytes and 8 attributes each): spanlens's borrowed views against prost's owned decode of
//! the same bytes, and the views as ingest decodes them (only the span attributes the
//! default profile reads). The prost row is the comparison BENCHMARKS.md quotes; keep it.
//!
//! Times are the benchmark thread's CPU time (see `support/cpu_time.rs`).
//!
//! `cargo bench --bench decode`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use spanlens::config::Config;
use spanlens::otlp::decode::Batch;
use spanlens::pipeline::Pipeline;
use spanlens_loadgen::fixtures::{DEFAULT_SPANS_PER_REQUEST, Fixtures};
use std::hint::black_box;
use std::time::Duration;

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/cpu_time.rs"]
mod support;
use support::cpu_time;

/// Distinct requests cycled through, so the input is not one cache-hot buffer (16 × ~210 KB).
const REQUESTS: usize = 16;

fn decode(c: &mut Criterion) {
    let bodies = Fixtures::new(1).encoded_requests(REQUESTS, DEFAULT_SPANS_PER_REQUEST);
    let pipeline = Pipeline::new(&Config::default_profile()).expect("default profile");
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(DEFAULT_SPANS_PER_REQUEST as u64));
    let mut bench = |name: &str, decode: &dyn Fn(&[u8]) -> usize| {
        group.bench_function(name, |b| {
            let mut i = 0;
            b.iter_custom(|iters| {
                cpu_time(
                    iters,
                    || {
                        i = (i + 1) % REQUESTS;
                        &bodies[i]
                    },
                    |body| decode(black_box(body)),
                )
            })
        });
    };
    // Every attribute, as the differential test compares with prost.
    bench("spanlens_views", &|body| {
        Batch::decode(body).expect("valid").spans.len()
    });
    // What ingest runs: only the span attributes the default profile reads.
    bench("spanlens_views_profile_keys", &|body| {
        pipeline.decode(body).expect("valid").spans.len()
    });
    bench("prost_owned", &|body| {
        ExportTraceServiceRequest::decode(body)
            .expect("valid")
            .resource_spans
            .len()
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = decode
}
criterion_main!(benches);
