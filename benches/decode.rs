//! Decoding an OTLP `ExportTraceServiceRequest` of 512 realistic tasker spans (about 400
//! bytes and 8 attributes each): spanlens's borrowed views against prost's owned decode of
//! the same bytes. The prost row is the comparison BENCHMARKS.md quotes; keep it.
//!
//! Times are the benchmark thread's CPU time (see `support/cpu_time.rs`).
//!
//! `cargo bench --bench decode`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use spanlens::decode::Batch;
use spanlens::fixtures::{DEFAULT_SPANS_PER_REQUEST, Fixtures};
use std::hint::black_box;
use std::time::Duration;

#[path = "support/cpu_time.rs"]
mod support;
use support::cpu_time;

/// Distinct requests cycled through, so the input is not one cache-hot buffer (16 × ~210 KB).
const REQUESTS: usize = 16;

fn decode(c: &mut Criterion) {
    let bodies = Fixtures::new(1).encoded_requests(REQUESTS, DEFAULT_SPANS_PER_REQUEST);
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(DEFAULT_SPANS_PER_REQUEST as u64));
    group.bench_function("spanlens_views", |b| {
        let mut i = 0;
        b.iter_custom(|iters| {
            cpu_time(
                iters,
                || {
                    i = (i + 1) % REQUESTS;
                    &bodies[i]
                },
                |body| Batch::decode(black_box(body)).expect("valid").spans.len(),
            )
        })
    });
    group.bench_function("prost_owned", |b| {
        let mut i = 0;
        b.iter_custom(|iters| {
            cpu_time(
                iters,
                || {
                    i = (i + 1) % REQUESTS;
                    &bodies[i]
                },
                |body| {
                    ExportTraceServiceRequest::decode(black_box(&body[..]))
                        .expect("valid")
                        .resource_spans
                        .len()
                },
            )
        })
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
