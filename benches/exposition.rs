//! Rendering a scrape of 5,000 histogram series (50 services × 100 span names in the
//! span-metrics histogram, plus their 5,000 call counters and spanlens's own series), as
//! Prometheus text and as OpenMetrics, and the snapshot a scrape takes first.
//!
//! Times are the benchmark thread's CPU time (see `support/cpu_time.rs`).
//!
//! `cargo bench --bench exposition`

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use spanlens::config::Config;
use spanlens::exposition::{Format, render};
use spanlens::fixtures::Fixtures;
use spanlens::pipeline::{Pipeline, Protocol};
use std::hint::black_box;
use std::time::Duration;

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/cpu_time.rs"]
mod support;
use support::cpu_time;

fn exposition(c: &mut Criterion) {
    let pipeline = Pipeline::new(&Config::default_profile()).expect("default profile");
    let request = Fixtures::new(1)
        .cardinality_request(50, 100)
        .encode_to_vec();
    pipeline.ingest(Protocol::Grpc, &request).expect("accepted");
    let snapshot = pipeline.snapshot();
    let histograms = render(&snapshot, Format::Text)
        .lines()
        .filter(|l| l.starts_with("traces_span_metrics_duration_seconds_count{"))
        .count();
    assert_eq!(histograms, 5_000);

    let mut group = c.benchmark_group("exposition_5000_histograms");
    group.bench_function("render_text", |b| {
        b.iter_custom(|iters| {
            cpu_time(
                iters,
                || (),
                |()| render(black_box(&snapshot), Format::Text).len(),
            )
        })
    });
    group.bench_function("render_openmetrics", |b| {
        b.iter_custom(|iters| {
            cpu_time(
                iters,
                || (),
                |()| render(black_box(&snapshot), Format::OpenMetrics).len(),
            )
        })
    });
    group.bench_function("snapshot_and_render_text", |b| {
        b.iter_custom(|iters| {
            cpu_time(
                iters,
                || (),
                |()| render(&pipeline.snapshot(), Format::Text).len(),
            )
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = exposition
}
criterion_main!(benches);
