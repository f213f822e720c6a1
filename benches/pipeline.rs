//! Decode + classify + aggregate in process, on one core:
//! `Pipeline::new(&config).ingest(Protocol::Grpc, &bytes)` over requests of 512 realistic
//! tasker spans. Every iteration gets new trace, span and step ids ([`Renewable`], outside
//! the timed section), as real traffic does: replaying one request would only measure the
//! duplicate-span path.
//!
//! Three configurations (see `support/profiles.rs`): the default profile
//! (`ingest_grpc_default_profile`); the same without derived durations, duplicate detection
//! and the breakdown log (`ingest_grpc_decode_classify_aggregate`: every metric a span is
//! observed into on its own); and without span metrics and comparisons too
//! (`ingest_grpc_stages_only`: decoding, classifying and the stage metrics alone).
//!
//! Times are the benchmark thread's CPU time (see `support/cpu_time.rs`).
//!
//! `breakdown_lookup`: one task's breakdown by correlation id
//! (`Pipeline::breakdown`, GET /api/v1/breakdown/{id}) from the default profile's breakdown
//! log full (50,000 spans), as it is under steady load: a lookup reads every kept span.
//!
//! `cargo bench --bench pipeline`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use spanlens::config::Config;
use spanlens::otlp::Protocol;
use spanlens::pipeline::Pipeline;
use spanlens_loadgen::fixtures::{DEFAULT_SPANS_PER_REQUEST, Fixtures, Renewable};
use std::hint::black_box;
use std::time::Duration;

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/cpu_time.rs"]
mod support;
use support::cpu_time;
#[path = "support/profiles.rs"]
mod profiles;

const REQUESTS: usize = 16;

fn ingest(c: &mut Criterion) {
    let templates: Vec<Renewable> = Fixtures::new(1)
        .encoded_requests(REQUESTS, DEFAULT_SPANS_PER_REQUEST)
        .into_iter()
        .map(Renewable::protobuf)
        .collect();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(DEFAULT_SPANS_PER_REQUEST as u64));
    let configs = [
        ("ingest_grpc_default_profile", Config::default_profile()),
        (
            "ingest_grpc_decode_classify_aggregate",
            profiles::default_profile_without(profiles::DECODE_CLASSIFY_AGGREGATE),
        ),
        (
            "ingest_grpc_stages_only",
            profiles::default_profile_without(profiles::STAGES_ONLY),
        ),
    ];
    for (name, config) in configs {
        let pipeline = Pipeline::new(&config).expect("a valid profile");
        let mut sent: u64 = 0;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                cpu_time(
                    iters,
                    || {
                        let template = &templates[(sent % REQUESTS as u64) as usize];
                        let mut body = Vec::with_capacity(template.bytes().len());
                        template.renew_into((sent / REQUESTS as u64 + 1) as u32, &mut body);
                        sent += 1;
                        body
                    },
                    |body| {
                        let outcome = pipeline.ingest(Protocol::Grpc, black_box(&body));
                        assert_eq!(
                            outcome.expect("accepted").accepted,
                            DEFAULT_SPANS_PER_REQUEST
                        );
                    },
                )
            })
        });
    }
    group.finish();
}

/// Spans ingested before `breakdown_lookup`: more than the default log holds.
const LOOKUP_SPANS: usize = 65_536;

fn breakdown_lookup(c: &mut Criterion) {
    let pipeline = Pipeline::new(&Config::default_profile()).expect("the default profile");
    let mut fixtures = Fixtures::new(2);
    let mut last = None;
    for _ in 0..LOOKUP_SPANS / DEFAULT_SPANS_PER_REQUEST {
        let request = fixtures.request(DEFAULT_SPANS_PER_REQUEST);
        let body = request.encode_to_vec();
        pipeline.ingest(Protocol::Grpc, &body).expect("accepted");
        last = Some(request);
    }
    // A correlation id of the newest request, whose spans the log still holds.
    let id = last
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .flat_map(|s| &s.attributes)
        .find(|a| a.key == "correlation_id")
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(text) => Some(text.clone()),
            _ => None,
        })
        .expect("the fixtures carry correlation ids");
    assert!(pipeline.breakdown(&id).is_some(), "{id} is held");
    let mut group = c.benchmark_group("pipeline");
    group.bench_function("breakdown_lookup", |b| {
        b.iter_custom(|iters| cpu_time(iters, || (), |()| pipeline.breakdown(black_box(&id))))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = ingest, breakdown_lookup
}
criterion_main!(benches);
