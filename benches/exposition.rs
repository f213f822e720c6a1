//! Rendering a scrape of 5,000 histogram series (50 services × 100 span names in the
//! span-metrics histogram, plus their 5,000 call counters and spanlens's own series), as
//! Prometheus text, as OpenMetrics and as Prometheus's protobuf format, and the snapshot a
//! scrape takes first.
//!
//! Each renders as `/metrics` does: into a buffer from [`ScrapeBuffers`], which the body
//! gives back when dropped, so that the ~14 MB of text go into memory a scrape touched
//! before. `render_text_fresh_buffer` renders into a new allocation each time, as scrapes
//! did before `ScrapeBuffers`.
//!
//! Times are the benchmark thread's CPU time (see `support/cpu_time.rs`).
//!
//! `cargo bench --bench exposition`

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use spanlens::config::Config;
use spanlens::metrics::exposition::{Encoding, Format, render, render_into};
use spanlens::metrics::store::Snapshot;
use spanlens::otlp::Protocol;
use spanlens::pipeline::Pipeline;
use spanlens::server::scrape_buffers::ScrapeBuffers;
use spanlens_loadgen::fixtures::Fixtures;
use std::hint::black_box;
use std::sync::Arc;
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

    let buffers = Arc::new(ScrapeBuffers::default());
    // A scrape's rendering, as /metrics makes it: its length, once the body is dropped.
    let scrape = |snapshot: &Snapshot, encoding| {
        let mut out = buffers.take();
        render_into(&mut out, black_box(snapshot), encoding);
        buffers.body(out).len()
    };
    let text = Encoding::Text(Format::Text);
    let mut group = c.benchmark_group("exposition_5000_histograms");
    group.bench_function("render_text", |b| {
        b.iter_custom(|iters| cpu_time(iters, || (), |()| scrape(&snapshot, text)))
    });
    group.bench_function("render_openmetrics", |b| {
        b.iter_custom(|iters| {
            cpu_time(
                iters,
                || (),
                |()| scrape(&snapshot, Encoding::Text(Format::OpenMetrics)),
            )
        })
    });
    group.bench_function("render_protobuf", |b| {
        b.iter_custom(|iters| cpu_time(iters, || (), |()| scrape(&snapshot, Encoding::Protobuf)))
    });
    group.bench_function("snapshot_and_render_text", |b| {
        b.iter_custom(|iters| cpu_time(iters, || (), |()| scrape(&pipeline.snapshot(), text)))
    });
    group.bench_function("render_text_fresh_buffer", |b| {
        b.iter_custom(|iters| {
            cpu_time(
                iters,
                || (),
                |()| render(black_box(&snapshot), Format::Text).len(),
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
