//! End-to-end tests of derived durations (issue 4): spans of one step or task joined across
//! services, traces and requests by `step_uuid` / `correlation_id`, and the join window that
//! holds them (completion, eviction by timeout and capacity, late spans, duplicates, memory).
//!
//! The workflow tests emit a linear workflow (`rust_e2e_linear` / `mathematical_sequence`, Rust
//! worker, the design note's nominal span names) and a diamond workflow (`diamond_workflow` /
//! `parallel_computation`, Ruby worker, tasker-core's real span names) from three services,
//! each through its own `SdkTracerProvider` (so each has its own trace ids: no trace context
//! crosses services). A recording span processor keeps every finished `SpanData`; the test
//! then hands those to the real `opentelemetry-otlp` exporter in chosen groups, out of order
//! and split over several requests, resends one request through the same exporter (a retry)
//! and re-exports one span through a second exporter over OTLP/HTTP protobuf. Every expected
//! derived value (and each series' exemplar) is computed from the fixture table by a small
//! reference join, and checked against literal numbers too.
//!
//! The eviction and late-span tests post hand-built OTLP/HTTP protobuf requests. The memory test
//! floods an in-process `Pipeline` with 1,000,000 keys that never complete (two ingesting
//! threads, requests of 1000 spans patched in place), in a child process of its own so that
//! VmRSS is not shared with the other tests.

use crate::support;

use opentelemetry::trace::{SpanKind, TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue as ProtoValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use prost::Message as _;
use spanlens::config::Config;
use spanlens::metrics::exposition::{Format, render};
use spanlens::otlp::Protocol;
use spanlens::pipeline::Pipeline;
use spanlens::server::Server;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::histogram::{
    DEFAULT_BUCKETS, EPSILON, assert_buckets_literal, assert_close, assert_count,
    assert_count_or_absent, assert_histogram,
};
use support::process::proc_status;
use support::sdk::{Recorded, Transport, attr, exporter_to, recording, start_span};
use support::tasker::{Pick, Svc, Times, Vocab, plan_requests, stage_of, times as t};
use support::{
    Exposition, minute_ago_ns as now_ns, parse_le, post_protobuf as post, scrape, start,
    test_config,
};

const DERIVED_NAMES: [&str; 4] = [
    "ffi_overhead",
    "result_propagation",
    "task_e2e",
    "worker_overhead",
];

// ----------------------------------------------------------------------------------------------
// Fixture table
// ----------------------------------------------------------------------------------------------

/// One span of the fixture. Times are microseconds from the scenario's base time.
#[derive(Clone, Debug)]
struct Row {
    svc: Svc,
    name: &'static str,
    start_us: u64,
    dur_us: u64,
    attrs: Vec<KeyValue>,
    /// Parent row (same service, earlier in the table).
    parent: Option<usize>,
    /// Step number (linear 0..=3, diamond 4..=7), None for task-level spans.
    step: Option<usize>,
}

impl Row {
    fn stage(&self) -> Option<&'static str> {
        stage_of(self.name, self.attr("queue").as_deref())
    }

    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.attrs, key)
    }

    fn start_ns(&self) -> u64 {
        self.start_us * 1000
    }

    fn end_ns(&self) -> u64 {
        (self.start_us + self.dur_us) * 1000
    }

    fn seconds(&self) -> f64 {
        (self.end_ns() - self.start_ns()) as f64 / 1e9
    }
}

struct Task {
    vocab: Vocab,
    worker: Svc,
    namespace: &'static str,
    task_name: &'static str,
    correlation_id: &'static str,
    task_uuid: &'static str,
}

#[derive(Default)]
struct Fixture {
    rows: Vec<Row>,
}

impl Fixture {
    fn add(
        &mut self,
        svc: Svc,
        name: &'static str,
        start_us: u64,
        dur_us: u64,
        attrs: Vec<KeyValue>,
    ) -> usize {
        self.rows.push(Row {
            svc,
            name,
            start_us,
            dur_us,
            attrs,
            parent: None,
            step: None,
        });
        self.rows.len() - 1
    }

    fn child(&mut self, row: usize, parent: usize) {
        self.rows[row].parent = Some(parent);
    }

    /// Task creation and the enqueueing of its first steps; returns the end.
    fn create(&mut self, task: &Task, at: u64) -> u64 {
        let o = Svc::Orchestration;
        match task.vocab {
            Vocab::Nominal => {
                self.add(
                    o,
                    "create_task",
                    at,
                    18_000,
                    vec![
                        KeyValue::new("correlation_id", task.correlation_id),
                        KeyValue::new("task_name", task.task_name),
                    ],
                );
                self.add(
                    o,
                    "enqueue_steps",
                    at + 19_000,
                    12_000,
                    vec![KeyValue::new("correlation_id", task.correlation_id)],
                );
            }
            Vocab::Real => {
                let outer = self.add(
                    o,
                    "create_and_enqueue_task_from_request",
                    at,
                    35_000,
                    vec![],
                );
                let create = self.add(
                    o,
                    "create_task_from_request",
                    at + 500,
                    20_800,
                    vec![
                        KeyValue::new("correlation_id", task.correlation_id),
                        KeyValue::new("task_name", task.task_name),
                    ],
                );
                self.child(create, outer);
                let enqueue = self.add(
                    o,
                    "enqueue_ready_steps",
                    at + 22_000,
                    12_000,
                    vec![KeyValue::new("task_uuid", task.task_uuid)],
                );
                self.child(enqueue, outer);
            }
        }
        at + 35_000
    }

    /// One step: claim, handler, submission (worker), then result processing
    /// (orchestration); returns the end of the processing.
    fn step(&mut self, task: &Task, number: usize, name: &'static str, at: u64, t: Times) -> u64 {
        let first = self.rows.len();
        let w = task.worker;
        let uuid = format!("{}-{name}", task.task_uuid);
        let step = || KeyValue::new("step_uuid", uuid.clone());
        let correlation = || KeyValue::new("correlation_id", task.correlation_id);
        if task.vocab == Vocab::Real {
            // tasker-core's claim: the worker reads its namespace queue (no step_uuid, so it
            // is a step claim that joins nothing).
            self.add(
                w,
                "read_messages",
                at - 600,
                500,
                vec![
                    KeyValue::new("queue", format!("worker_{}_queue", task.namespace)),
                    KeyValue::new("limit", 10),
                ],
            );
        }
        self.add(w, "step_claim", at, t.claim, vec![step(), correlation()]);
        let exec_at = at + t.claim;
        // Real worker.step_execution spans carry a freshly generated correlation id.
        let exec_correlation = match task.vocab {
            Vocab::Nominal => task.correlation_id.to_string(),
            Vocab::Real => format!("fresh-{uuid}"),
        };
        let exec = self.add(
            w,
            "worker.step_execution",
            exec_at,
            t.exec,
            vec![
                KeyValue::new("correlation_id", exec_correlation),
                KeyValue::new("task_uuid", task.task_uuid),
                step(),
                KeyValue::new("step_name", name),
                KeyValue::new("namespace", task.namespace),
            ],
        );
        assert!(t.handler <= t.exec && (t.exec - t.handler).is_multiple_of(2));
        let handler = self.add(
            w,
            "execute_handler",
            exec_at + (t.exec - t.handler) / 2,
            t.handler,
            vec![step(), correlation()],
        );
        self.child(handler, exec);
        let submit_at = exec_at + t.exec;
        match task.vocab {
            Vocab::Nominal => {
                self.add(
                    w,
                    "submit_result",
                    submit_at,
                    t.submit,
                    vec![step(), correlation()],
                );
            }
            Vocab::Real => {
                self.add(
                    w,
                    "worker.step_completion_received",
                    submit_at,
                    t.submit,
                    vec![
                        KeyValue::new("task_uuid", task.task_uuid),
                        step(),
                        KeyValue::new("success", true),
                        // Plain attributes of tasker-core, not the OTel ids.
                        KeyValue::new("trace_id", task.correlation_id),
                        KeyValue::new("span_id", format!("span-{uuid}")),
                    ],
                );
            }
        }
        let process_at = submit_at + t.submit + t.gap;
        let o = Svc::Orchestration;
        match task.vocab {
            Vocab::Nominal => {
                self.add(
                    o,
                    "process_result",
                    process_at,
                    t.process,
                    vec![step(), correlation()],
                );
            }
            Vocab::Real => {
                let outer = self.add(
                    o,
                    "process_single_step_result",
                    process_at - 300,
                    t.process + 600,
                    vec![KeyValue::new("msg_id", 1000 + number as i64)],
                );
                let handle = self.add(
                    o,
                    "handle_step_execution_result",
                    process_at,
                    t.process,
                    vec![step()],
                );
                self.child(handle, outer);
            }
        }
        for row in &mut self.rows[first..] {
            row.step = Some(number);
        }
        process_at + t.process
    }

    fn finalize(&mut self, task: &Task, at: u64) {
        let mut attrs = vec![KeyValue::new("correlation_id", task.correlation_id)];
        if task.vocab == Vocab::Real {
            attrs.insert(0, KeyValue::new("task_uuid", task.task_uuid));
        }
        self.add(Svc::Orchestration, "finalize_task", at, 10_000, attrs);
    }
}

const LINEAR: Task = Task {
    vocab: Vocab::Nominal,
    worker: Svc::RustWorker,
    namespace: "rust_e2e_linear",
    task_name: "mathematical_sequence",
    correlation_id: "0f0e1c6e-7d1a-4a53-9a51-000000000001",
    task_uuid: "01936f4e-linear-0001",
};

const DIAMOND: Task = Task {
    vocab: Vocab::Real,
    worker: Svc::RubyWorker,
    namespace: "diamond_workflow",
    task_name: "parallel_computation",
    correlation_id: "0f0e1c6e-7d1a-4a53-9a51-000000000002",
    task_uuid: "01936f4e-diamond-0002",
};

/// Both workflows. Linear (Rust worker, nominal names) from 0; diamond (Ruby worker, real
/// names; branches b and c in parallel) from 2 s.
fn workflows() -> Vec<Row> {
    let mut f = Fixture::default();
    // claim, exec, handler, submit, gap, process (µs). Several derived values sit exactly on
    // bucket bounds (le is inclusive): 10 ms, 25 ms, 5 ms, 1 ms, 50 ms, 100 ms.
    let linear = [
        (
            "linear_step_1",
            t(15_000, 45_000, 42_000, 23_000, 8_000, 8_000),
        ),
        (
            "linear_step_2",
            t(4_000, 30_000, 29_500, 12_000, 2_000, 5_000),
        ),
        (
            "linear_step_3",
            t(800, 120_000, 118_000, 6_000, 14_100, 3_000),
        ),
        ("linear_step_4", t(7_000, 10_000, 9_200, 3_000, 400, 2_000)),
    ];
    let mut at = f.create(&LINEAR, 0);
    for (n, (name, times)) in linear.into_iter().enumerate() {
        at = f.step(&LINEAR, n, name, at + 5_000, times);
    }
    f.finalize(&LINEAR, at + 2_000);

    let at = f.create(&DIAMOND, 2_000_000);
    let start = t(9_000, 60_000, 35_000, 11_000, 30_000, 6_000);
    let b = t(20_000, 40_000, 39_000, 5_000, 1_000, 4_000);
    let c = t(3_000, 250_000, 200_000, 8_000, 100_000, 7_000);
    let end = t(1_000, 80_000, 70_000, 4_000, 9_000, 6_000);
    let at = f.step(&DIAMOND, 4, "diamond_start", at + 5_000, start);
    let b_end = f.step(&DIAMOND, 5, "diamond_branch_b", at + 5_000, b);
    let c_end = f.step(&DIAMOND, 6, "diamond_branch_c", at + 5_000, c);
    let at = f.step(&DIAMOND, 7, "diamond_end", b_end.max(c_end) + 5_000, end);
    f.finalize(&DIAMOND, at + 2_000);
    f.rows
}

// ----------------------------------------------------------------------------------------------
// Reference join: the expected derived values, computed from the table
// ----------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Op {
    Sum,
    Difference,
    Gap,
    Envelope,
}

/// A derived metric of the default profile, as the test understands it.
struct DerivedDef {
    name: &'static str,
    histogram: &'static str,
    key: &'static str,
    op: Op,
    /// (stage, optional span name) of each part, in config order.
    parts: [(&'static str, Option<&'static str>); 2],
    labels: &'static [&'static str],
}

const DERIVED: [DerivedDef; 4] = [
    DerivedDef {
        name: "worker_overhead",
        histogram: "tasker_worker_overhead_seconds",
        key: "step_uuid",
        op: Op::Sum,
        parts: [("step_claim", None), ("result_submission", None)],
        labels: &["service", "handler_language"],
    },
    DerivedDef {
        name: "ffi_overhead",
        histogram: "tasker_ffi_overhead_seconds",
        key: "step_uuid",
        op: Op::Difference,
        parts: [
            ("handler_execution", Some("worker.step_execution")),
            ("handler_execution", Some("execute_handler")),
        ],
        labels: &["service", "handler_language"],
    },
    DerivedDef {
        name: "result_propagation",
        histogram: "tasker_result_propagation_seconds",
        key: "step_uuid",
        op: Op::Gap,
        parts: [("result_submission", None), ("result_processing", None)],
        labels: &["service", "handler_language"],
    },
    DerivedDef {
        name: "task_e2e",
        histogram: "tasker_task_e2e_duration_seconds",
        key: "correlation_id",
        op: Op::Envelope,
        parts: [("task_creation", None), ("task_finalization", None)],
        labels: &["task_name"],
    },
];

/// A row's value for a derived label, if it has one.
fn label_of(row: &Row, label: &str) -> Option<String> {
    match label {
        "service" => Some(row.svc.name().to_string()),
        "handler_language" => row.svc.worker_language().map(str::to_string),
        other => row.attr(other),
    }
}

fn label_default(label: &str) -> &'static str {
    match label {
        "service" => "unknown_service",
        _ => "unknown",
    }
}

type Series = Vec<(&'static str, String)>;
type Milliseconds = Vec<f64>;

/// Expected observations of one derived metric, by series: the value and the row of the
/// part that ended last (the exemplar's span). Every key of the fixture has exactly one span
/// per part (asserted), so every key completes.
fn observations(rows: &[Row], d: &DerivedDef) -> BTreeMap<Series, Vec<(f64, usize)>> {
    let mut keys: BTreeMap<String, [Vec<usize>; 2]> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        for (p, (stage, name)) in d.parts.iter().enumerate() {
            if row.stage() == Some(*stage)
                && name.is_none_or(|n| n == row.name)
                && let Some(key) = row.attr(d.key)
            {
                keys.entry(key).or_default()[p].push(i);
            }
        }
    }
    let mut series: BTreeMap<Series, Vec<(f64, usize)>> = BTreeMap::new();
    for (key, parts) in &keys {
        assert!(
            parts.iter().all(|p| p.len() == 1),
            "fixture: {} key {key} must have one span per part",
            d.name
        );
        let (a, b) = (&rows[parts[0][0]], &rows[parts[1][0]]);
        let duration = |r: &Row| r.end_ns() - r.start_ns();
        let nanos = match d.op {
            Op::Sum => duration(a) + duration(b),
            Op::Difference => duration(a).saturating_sub(duration(b)),
            Op::Gap => b.start_ns().saturating_sub(a.end_ns()),
            Op::Envelope => a.end_ns().max(b.end_ns()) - a.start_ns().min(b.start_ns()),
        };
        // Labels come from the first part (in config order) that has a value.
        let labels = d
            .labels
            .iter()
            .map(|l| {
                let value = [a, b]
                    .iter()
                    .find_map(|r| label_of(r, l))
                    .unwrap_or_else(|| label_default(l).to_string());
                (*l, value)
            })
            .collect();
        assert_ne!(a.end_ns(), b.end_ns(), "fixture: one part ends last");
        let last = if a.end_ns() > b.end_ns() {
            parts[0][0]
        } else {
            parts[1][0]
        };
        series
            .entry(labels)
            .or_default()
            .push((nanos as f64 / 1e9, last));
    }
    series
}

/// Expected values of one derived metric, by series.
fn expected_derived(rows: &[Row], d: &DerivedDef) -> BTreeMap<Series, Vec<f64>> {
    observations(rows, d)
        .into_iter()
        .map(|(s, o)| (s, o.iter().map(|(v, _)| *v).collect()))
        .collect()
}

fn series(labels: &[(&'static str, &str)]) -> Series {
    labels.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// The reference join gives exactly these values (milliseconds, sorted): a check of the
/// fixture itself, independent of spanlens.
fn check_fixture_literals(rows: &[Row]) {
    let rust = series(&[
        ("service", "tasker-rust-worker"),
        ("handler_language", "rust"),
    ]);
    let ruby = series(&[
        ("service", "tasker-ruby-worker"),
        ("handler_language", "ruby"),
    ]);
    // In series order (BTreeMap: ruby before rust).
    let want: [(&str, Vec<(Series, Milliseconds)>); 4] = [
        (
            "worker_overhead",
            vec![
                (ruby.clone(), vec![5.0, 11.0, 20.0, 25.0]),
                (rust.clone(), vec![6.8, 10.0, 16.0, 38.0]),
            ],
        ),
        (
            "ffi_overhead",
            vec![
                (ruby.clone(), vec![1.0, 10.0, 25.0, 50.0]),
                (rust.clone(), vec![0.5, 0.8, 2.0, 3.0]),
            ],
        ),
        (
            "result_propagation",
            vec![
                (ruby, vec![1.0, 9.0, 30.0, 100.0]),
                (rust, vec![0.4, 2.0, 8.0, 14.1]),
            ],
        ),
        (
            "task_e2e",
            vec![
                (
                    series(&[("task_name", "mathematical_sequence")]),
                    vec![385.3],
                ),
                (
                    series(&[("task_name", "parallel_computation")]),
                    vec![645.5],
                ),
            ],
        ),
    ];
    for (name, want) in want {
        let d = DERIVED.iter().find(|d| d.name == name).expect("derived");
        let got = expected_derived(rows, d);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            "fixture {name}: series"
        );
        for (labels, ms) in &want {
            let mut values = got[labels].clone();
            values.sort_by(f64::total_cmp);
            assert_eq!(values.len(), ms.len(), "fixture {name} {labels:?}");
            for (v, m) in values.iter().zip(ms) {
                assert!(
                    (v - m / 1000.0).abs() < EPSILON,
                    "fixture {name} {labels:?}: {values:?} vs {ms:?} ms"
                );
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Emitting with the SDK, exporting with the real OTLP exporter
// ----------------------------------------------------------------------------------------------

/// Emits every row through its service's own SdkTracerProvider with explicit start and end
/// times (parents and children within one service only).
fn record(rows: &[Row], base: SystemTime) -> Recorded {
    let mut spans: Vec<Option<SpanData>> = vec![None; rows.len()];
    let mut resources = BTreeMap::new();
    for svc in Svc::ALL {
        let (builder, recorder) = recording(svc.name());
        let provider = builder.build();
        let tracer = provider.tracer("tasker-core");
        let mine: Vec<usize> = (0..rows.len()).filter(|i| rows[*i].svc == svc).collect();
        let mut contexts: Vec<Option<Context>> = vec![None; rows.len()];
        for &i in &mine {
            let row = &rows[i];
            let parent = row
                .parent
                .map(|p| contexts[p].as_ref().expect("parent rows come first"));
            contexts[i] = Some(start_span(
                &tracer,
                row.name,
                SpanKind::Internal,
                base + Duration::from_micros(row.start_us),
                row.attrs.clone(),
                parent,
            ));
        }
        for &i in &mine {
            let row = &rows[i];
            contexts[i]
                .as_ref()
                .expect("started")
                .span()
                .end_with_timestamp(base + Duration::from_micros(row.start_us + row.dur_us));
            let data = recorder.spans.lock().unwrap().pop().expect("span recorded");
            assert_eq!(data.name, row.name);
            spans[i] = Some(data);
        }
        let resource = recorder.resource.lock().unwrap().clone();
        resources.insert(svc, resource.expect("the provider sets the resource"));
        provider.shutdown().expect("provider shutdown");
    }
    let spans: Vec<SpanData> = spans.into_iter().map(|s| s.expect("emitted")).collect();
    // No trace context crosses services: each service's spans are in traces of its own.
    for a in Svc::ALL {
        for b in Svc::ALL.iter().filter(|b| **b > a) {
            let traces = |svc: Svc| -> BTreeSet<_> {
                (0..rows.len())
                    .filter(|i| rows[*i].svc == svc)
                    .map(|i| spans[i].span_context.trace_id().to_bytes())
                    .collect()
            };
            assert!(traces(a).is_disjoint(&traces(*b)), "{a:?} and {b:?}");
        }
    }
    Recorded { spans, resources }
}

/// The export requests, as (service, rows): orchestration's finalization and result
/// processing first, the workers' spans later over several requests, task creation last.
/// Every row is in exactly one request.
fn requests(rows: &[Row]) -> Vec<(Svc, Vec<usize>)> {
    let plan: [(Svc, Pick<Row>); 9] = [
        (Svc::Orchestration, |r| r.name == "finalize_task"),
        (Svc::Orchestration, |r| r.step.is_some()),
        (Svc::RubyWorker, |r| {
            r.name == "worker.step_completion_received"
        }),
        (Svc::RustWorker, |r| {
            matches!(r.step, Some(2 | 3)) && r.name != "step_claim"
        }),
        (Svc::RustWorker, |r| {
            r.name == "step_claim" || r.name == "submit_result"
        }),
        (Svc::RubyWorker, |r| r.name != "worker.step_execution"),
        (Svc::RustWorker, |_| true),
        (Svc::RubyWorker, |_| true),
        (Svc::Orchestration, |_| true),
    ];
    plan_requests(rows, |r| r.svc, &plan)
}

/// The request the gRPC exporter sends twice (a retry after spanlens accepted it): the Rust
/// worker's handler and submission spans of steps 3 and 4, while their keys still wait.
const RESENT_REQUEST: usize = 3;

/// What was sent, for the protocol counters.
struct Sent {
    grpc_spans: usize,
    grpc_resent: usize,
    http_spans: usize,
}

/// Sends the requests in order (or reversed), resends RESENT_REQUEST right after itself, and
/// finally re-exports the diamond_end submission (already joined) through a second exporter
/// over OTLP/HTTP protobuf.
async fn export(server: &Server, rows: &[Row], recorded: &Recorded, reversed: bool) -> Sent {
    let exporters: BTreeMap<Svc, opentelemetry_otlp::SpanExporter> = Svc::ALL
        .iter()
        .map(|svc| {
            let resource = &recorded.resources[svc];
            (*svc, exporter_to(server, Transport::Grpc(None), resource))
        })
        .collect();
    let mut order: Vec<(usize, (Svc, Vec<usize>))> =
        requests(rows).into_iter().enumerate().collect();
    if reversed {
        order.reverse();
    }
    let mut sent = Sent {
        grpc_spans: 0,
        grpc_resent: 0,
        http_spans: 0,
    };
    for (n, (svc, picked)) in order {
        let batch: Vec<SpanData> = picked.iter().map(|i| recorded.spans[*i].clone()).collect();
        let times = if n == RESENT_REQUEST { 2 } else { 1 };
        for _ in 0..times {
            exporters[&svc]
                .export(batch.clone())
                .await
                .unwrap_or_else(|e| panic!("export {n} ({svc:?}): {e}"));
            sent.grpc_spans += batch.len();
        }
        if n == RESENT_REQUEST {
            sent.grpc_resent = batch.len();
        }
    }
    let again = rows
        .iter()
        .position(|r| {
            r.name == "worker.step_completion_received"
                && r.attr("step_uuid").as_deref() == Some("01936f4e-diamond-0002-diamond_end")
        })
        .expect("diamond_end submission");
    let second = exporter_to(
        server,
        Transport::HttpProtobuf,
        &recorded.resources[&Svc::RubyWorker],
    );
    second
        .export(vec![recorded.spans[again].clone()])
        .await
        .expect("HTTP re-export");
    sent.http_spans = 1;
    sent
}

/// Scrapes until spanlens_spans_received_total shows `want` per protocol (at most 10 s; the
/// assertions then report what is missing).
async fn scrape_received(server: &Server, want: &[(&str, usize)]) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exposition = scrape(server).await;
        let done = want.iter().all(|(protocol, n)| {
            exposition
                .value("spanlens_spans_received_total", &[("protocol", protocol)])
                .unwrap_or(0.0)
                >= *n as f64
        });
        if done || Instant::now() > deadline {
            return exposition;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----------------------------------------------------------------------------------------------
// Assertions
// ----------------------------------------------------------------------------------------------

/// The label sets of every series of a metric.
fn series_of(exposition: &Exposition, metric: &str) -> BTreeSet<BTreeMap<String, String>> {
    exposition
        .all(metric)
        .iter()
        .map(|s| s.labels.clone())
        .collect()
}

/// Each derived histogram has exactly the expected series, each exactly right.
fn assert_derived(exposition: &Exposition, rows: &[Row]) {
    for d in &DERIVED {
        let expected = expected_derived(rows, d);
        let want: BTreeSet<BTreeMap<String, String>> = expected
            .keys()
            .map(|s| s.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
            .collect();
        assert_eq!(
            series_of(exposition, &format!("{}_count", d.histogram)),
            want,
            "{}: series (labels from the first part that has them)",
            d.histogram
        );
        for (labels, values) in &expected {
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_histogram(exposition, d.histogram, &labels, values);
        }
    }
}

/// Every stage series counts each distinct span once: the duplicates were not counted.
fn assert_stages(exposition: &Exposition, rows: &[Row]) {
    let mut expected: BTreeMap<(&str, &str, &str), Vec<f64>> = BTreeMap::new();
    for row in rows {
        if let Some(stage) = row.stage() {
            let language = row.svc.language();
            expected
                .entry((stage, row.svc.name(), language))
                .or_default()
                .push(row.seconds());
        }
    }
    let stages: BTreeSet<&str> = expected.keys().map(|(s, _, _)| *s).collect();
    for stage in stages {
        let histogram = format!("tasker_{stage}_duration_seconds");
        let calls = format!("tasker_{stage}_calls_total");
        let want: usize = expected
            .iter()
            .filter(|((s, _, _), _)| *s == stage)
            .map(|(_, v)| v.len())
            .sum();
        for metric in [calls, format!("{histogram}_count")] {
            let got: f64 = exposition.all(&metric).iter().map(|s| s.value).sum();
            assert_eq!(got, want as f64, "{metric}: every series together");
        }
    }
    for ((stage, service, language), durations) in &expected {
        let labels = [("service", *service), ("handler_language", *language)];
        assert_histogram(
            exposition,
            &format!("tasker_{stage}_duration_seconds"),
            &labels,
            durations,
        );
        assert_count(
            exposition.value(&format!("tasker_{stage}_calls_total"), &labels),
            durations.len(),
            &format!("tasker_{stage}_calls_total {labels:?}"),
        );
    }
    let spans: f64 = exposition
        .all("traces_span_metrics_calls_total")
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(
        spans,
        rows.len() as f64,
        "traces_span_metrics_calls_total: every span once"
    );
}

/// Nothing waits, nothing was evicted, late or repeated.
fn assert_join_idle(exposition: &Exposition) {
    for d in DERIVED_NAMES {
        assert_count(
            exposition.value("spanlens_join_pending", &[("derived", d)]),
            0,
            &format!("spanlens_join_pending{{derived={d}}}"),
        );
        for metric in [
            "spanlens_join_late_spans_total",
            "spanlens_join_repeated_spans_total",
        ] {
            assert_count_or_absent(
                exposition.value(metric, &[("derived", d)]),
                0,
                &format!("{metric}{{derived={d}}}"),
            );
        }
        for reason in ["timeout", "capacity"] {
            assert_count_or_absent(
                exposition.value(
                    "spanlens_join_evicted_total",
                    &[("derived", d), ("reason", reason)],
                ),
                0,
                &format!("spanlens_join_evicted_total{{derived={d},reason={reason}}}"),
            );
        }
    }
}

/// Literal numbers for a few series, independent of the reference join.
fn explicit_checks(exposition: &Exposition) {
    let rust = [
        ("service", "tasker-rust-worker"),
        ("handler_language", "rust"),
    ];
    let ruby = [
        ("service", "tasker-ruby-worker"),
        ("handler_language", "ruby"),
    ];
    // Ruby FFI overhead 1, 10, 25, 50 ms: every value on a bound, and bounds are inclusive.
    assert_buckets_literal(
        exposition,
        "tasker_ffi_overhead_seconds",
        &ruby,
        [1, 1, 1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4],
    );
    assert_close(
        exposition.value("tasker_ffi_overhead_seconds_sum", &ruby),
        0.086,
        "ruby ffi_overhead _sum",
    );
    // Rust worker overhead 6.8, 10, 16, 38 ms (the note's 15 + 23 = 38 ms among them).
    assert_buckets_literal(
        exposition,
        "tasker_worker_overhead_seconds",
        &rust,
        [0, 0, 0, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4],
    );
    assert_close(
        exposition.value("tasker_worker_overhead_seconds_sum", &rust),
        0.0708,
        "rust worker_overhead _sum",
    );
    // Ruby result propagation 1, 9, 30, 100 ms: labelled by the worker, not orchestration.
    assert_buckets_literal(
        exposition,
        "tasker_result_propagation_seconds",
        &ruby,
        [1, 1, 1, 2, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4],
    );
    // Task end to end: 385.3 ms (linear), 645.5 ms (diamond).
    assert_close(
        exposition.value(
            "tasker_task_e2e_duration_seconds_sum",
            &[("task_name", "mathematical_sequence")],
        ),
        0.3853,
        "linear task_e2e",
    );
    assert_buckets_literal(
        exposition,
        "tasker_task_e2e_duration_seconds",
        &[("task_name", "parallel_computation")],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
    );
}

/// OpenMetrics: each derived series carries its slowest observation as exemplar, on the first
/// bucket that holds it, pointing at the span (the SDK's trace and span id) of the part that
/// ended last, stamped with that span's end.
async fn assert_exemplars(server: &Server, rows: &[Row], recorded: &Recorded) {
    let (_, text) =
        support::scrape_as(server, Some("application/openmetrics-text; version=1.0.0")).await;
    for d in &DERIVED {
        for (labels, observed) in observations(rows, d) {
            let (value, row) = observed
                .iter()
                .copied()
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .expect("observed");
            let what = format!("{} {labels:?} exemplar", d.histogram);
            let prefix = format!("{}_bucket{{", d.histogram);
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.starts_with(&prefix)
                        && l.contains(" # {")
                        && labels
                            .iter()
                            .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
                })
                .collect();
            assert_eq!(lines.len(), 1, "{what}: one bucket line with it: {lines:?}");
            let (series, exemplar) = lines[0].split_once(" # ").expect("exemplar");
            let le = series
                .split_once("le=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(le, _)| parse_le(le))
                .expect("le");
            let bound = DEFAULT_BUCKETS
                .iter()
                .copied()
                .find(|b| *b >= value)
                .unwrap_or(f64::INFINITY);
            assert_eq!(le, bound, "{what}: bucket");
            let span = &recorded.spans[row].span_context;
            let ids = format!(
                "{{trace_id=\"{:032x}\",span_id=\"{:016x}\"}}",
                span.trace_id(),
                span.span_id()
            );
            let (got_ids, rest) = exemplar.split_at(exemplar.find('}').expect("}") + 1);
            assert_eq!(got_ids, ids, "{what}: the span of {}", rows[row].name);
            let mut rest = rest.split_whitespace();
            let got_value: f64 = rest.next().expect("value").parse().expect("value");
            assert!(
                (got_value - value).abs() < EPSILON,
                "{what}: {got_value} vs {value}"
            );
            let end = recorded.spans[row]
                .end_time
                .duration_since(UNIX_EPOCH)
                .expect("after 1970");
            let want_ts = format!("{}.{:03}", end.as_secs(), end.subsec_millis());
            assert_eq!(rest.next(), Some(want_ts.as_str()), "{what}: timestamp");
        }
    }
}

/// Both workflows from three services through the real exporter, split and out of order
/// (`reversed`: the request order turned around), with a resent request and a re-exported
/// span; then every derived histogram, the stage counters and the join gauges.
async fn run_workflows(reversed: bool) {
    let rows = workflows();
    check_fixture_literals(&rows);
    let server = start(test_config(|_| {})).await;
    let base = SystemTime::now() - Duration::from_secs(120);
    let recorded = record(&rows, base);
    let sent = export(&server, &rows, &recorded, reversed).await;
    assert_eq!(sent.grpc_spans, rows.len() + sent.grpc_resent);
    let exposition = scrape_received(
        &server,
        &[
            ("grpc", sent.grpc_spans),
            ("http_protobuf", sent.http_spans),
        ],
    )
    .await;

    for (protocol, n) in [
        ("grpc", sent.grpc_spans),
        ("http_protobuf", sent.http_spans),
    ] {
        assert_count(
            exposition.value("spanlens_spans_received_total", &[("protocol", protocol)]),
            n,
            &format!("spanlens_spans_received_total{{protocol={protocol}}}"),
        );
    }
    assert_eq!(sent.grpc_resent, 6, "fixture: the resent request");
    assert_count(
        exposition.value("spanlens_spans_duplicate_total", &[("protocol", "grpc")]),
        sent.grpc_resent,
        "spanlens_spans_duplicate_total{protocol=grpc}",
    );
    assert_count(
        exposition.value(
            "spanlens_spans_duplicate_total",
            &[("protocol", "http_protobuf")],
        ),
        1,
        "spanlens_spans_duplicate_total{protocol=http_protobuf}",
    );
    assert_count_or_absent(
        exposition.value(
            "spanlens_spans_duplicate_total",
            &[("protocol", "http_json")],
        ),
        0,
        "spanlens_spans_duplicate_total{protocol=http_json}",
    );
    assert!(
        exposition.all("spanlens_spans_refused_total").is_empty(),
        "no span refused"
    );
    assert_stages(&exposition, &rows);
    assert_derived(&exposition, &rows);
    explicit_checks(&exposition);
    assert_join_idle(&exposition);
    assert_exemplars(&server, &rows, &recorded).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_histograms_from_real_exporter_orchestration_first() {
    run_workflows(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_histograms_from_real_exporter_workers_first() {
    run_workflows(true).await;
}

// ----------------------------------------------------------------------------------------------
// Hand-built OTLP/HTTP protobuf requests
// ----------------------------------------------------------------------------------------------

/// A span with its own trace (trace id derived from the span id), INTERNAL.
fn pspan(
    id: u64,
    name: &str,
    base: u64,
    start_ms: u64,
    dur_ms: u64,
    attrs: &[(&str, &str)],
) -> ProtoSpan {
    let mut trace_id = vec![0x5E; 16];
    trace_id[8..].copy_from_slice(&id.to_be_bytes());
    ProtoSpan {
        trace_id,
        span_id: id.to_be_bytes().to_vec(),
        name: name.into(),
        kind: 1,
        start_time_unix_nano: base + start_ms * 1_000_000,
        end_time_unix_nano: base + (start_ms + dur_ms) * 1_000_000,
        attributes: attrs.iter().map(|(k, v)| support::kv(k, v)).collect(),
        ..Default::default()
    }
}

fn evicted(exposition: &Exposition, derived: &str, reason: &str) -> Option<f64> {
    exposition.value(
        "spanlens_join_evicted_total",
        &[("derived", derived), ("reason", reason)],
    )
}

fn pending(exposition: &Exposition, derived: &str) -> f64 {
    exposition
        .value("spanlens_join_pending", &[("derived", derived)])
        .unwrap_or_else(|| panic!("spanlens_join_pending{{derived={derived}}} missing"))
}

const WORKER: [(&str, &str); 2] = [
    ("service", "tasker-rust-worker"),
    ("handler_language", "rust"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_never_complete_are_evicted_after_max_wait() {
    const N: usize = 25;
    let server = start(test_config(|c| {
        c.join.max_wait = spanlens::config::PromDuration::secs(1)
    }))
    .await;
    let base = now_ns();
    let uuids: Vec<String> = (0..N).map(|i| format!("never-submitted-{i}")).collect();
    // Claims only, over two requests; their submissions never come.
    let claims: Vec<ProtoSpan> = uuids
        .iter()
        .enumerate()
        .map(|(i, u)| {
            pspan(
                i as u64 + 1,
                "step_claim",
                base,
                i as u64,
                5,
                &[("step_uuid", u)],
            )
        })
        .collect();
    let (first, second) = claims.split_at(10);
    post(
        &server,
        support::request("tasker-rust-worker", first.to_vec()),
    )
    .await;
    post(
        &server,
        support::request("tasker-rust-worker", second.to_vec()),
    )
    .await;
    let waiting = scrape(&server).await;
    assert_eq!(pending(&waiting, "worker_overhead"), N as f64, "waiting");
    assert_eq!(evicted(&waiting, "worker_overhead", "timeout"), None);

    tokio::time::sleep(Duration::from_millis(1300)).await;
    // No traffic since: the scrape itself sweeps the window.
    let swept = scrape(&server).await;
    assert_count(
        evicted(&swept, "worker_overhead", "timeout"),
        N,
        "spanlens_join_evicted_total{derived=worker_overhead,reason=timeout}",
    );
    assert_count_or_absent(
        evicted(&swept, "worker_overhead", "capacity"),
        0,
        "spanlens_join_evicted_total{derived=worker_overhead,reason=capacity}",
    );
    for d in DERIVED_NAMES {
        assert_eq!(pending(&swept, d), 0.0, "pending {d} after max_wait");
    }
    // The claims were counted as claims all the same.
    assert_count(
        swept.value("tasker_step_claim_calls_total", &WORKER),
        N,
        "tasker_step_claim_calls_total",
    );
    assert_eq!(
        swept.value("tasker_worker_overhead_seconds_count", &WORKER),
        None,
        "nothing completed"
    );

    // A submission after its claim was evicted completes nothing and is not late.
    post(
        &server,
        support::request(
            "tasker-rust-worker",
            vec![pspan(
                1000,
                "submit_result",
                base,
                100,
                7,
                &[("step_uuid", &uuids[0])],
            )],
        ),
    )
    .await;
    let after = scrape(&server).await;
    assert_eq!(
        after.value("tasker_worker_overhead_seconds_count", &WORKER),
        None,
        "an evicted claim is gone"
    );
    assert_count_or_absent(
        after.value(
            "spanlens_join_late_spans_total",
            &[("derived", "worker_overhead")],
        ),
        0,
        "late worker_overhead",
    );
    assert_count(
        evicted(&after, "worker_overhead", "timeout"),
        N,
        "timeout evictions unchanged",
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_join_window_evicts_the_oldest_keys() {
    const KEYS: usize = 1000;
    const MAX_PENDING: usize = 64;
    let server = start(test_config(|c| c.join.max_pending = MAX_PENDING)).await;
    let base = now_ns();
    for chunk in 0..4 {
        let spans = (0..KEYS / 4)
            .map(|i| {
                let n = chunk * (KEYS / 4) + i;
                let uuid = format!("never-completes-{n}");
                pspan(
                    n as u64 + 1,
                    "step_claim",
                    base,
                    n as u64,
                    3,
                    &[("step_uuid", &uuid)],
                )
            })
            .collect();
        post(&server, support::request("tasker-rust-worker", spans)).await;
    }
    let exposition = scrape(&server).await;
    let waiting = pending(&exposition, "worker_overhead");
    assert!(
        waiting <= MAX_PENDING as f64,
        "pending {waiting} > {MAX_PENDING}"
    );
    // 1000 uniformly hashed keys fill every part of the window: pending is at the cap.
    assert_eq!(waiting, MAX_PENDING as f64, "pending at the cap");
    assert_count(
        evicted(&exposition, "worker_overhead", "capacity"),
        KEYS - waiting as usize,
        "spanlens_join_evicted_total{derived=worker_overhead,reason=capacity}",
    );
    assert_count_or_absent(
        evicted(&exposition, "worker_overhead", "timeout"),
        0,
        "spanlens_join_evicted_total{derived=worker_overhead,reason=timeout}",
    );
    assert_count(
        exposition.value("tasker_step_claim_calls_total", &WORKER),
        KEYS,
        "tasker_step_claim_calls_total",
    );

    // The newest key is still waiting: its submission completes it.
    let newest = format!("never-completes-{}", KEYS - 1);
    post(
        &server,
        support::request(
            "tasker-rust-worker",
            vec![pspan(
                5000,
                "submit_result",
                base,
                2000,
                4,
                &[("step_uuid", &newest)],
            )],
        ),
    )
    .await;
    let after = scrape(&server).await;
    assert_count(
        after.value("tasker_worker_overhead_seconds_count", &WORKER),
        1,
        "the newest key completed",
    );
    assert_close(
        after.value("tasker_worker_overhead_seconds_sum", &WORKER),
        0.007,
        "3 ms claim + 4 ms submission",
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_parts_of_completed_keys_are_counted_not_observed() {
    let server = start(test_config(|_| {})).await;
    let base = now_ns();
    let step = [
        ("step_uuid", "late-step-1"),
        ("correlation_id", "late-corr-1"),
    ];
    let task = [
        ("correlation_id", "late-corr-1"),
        ("task_name", "mathematical_sequence"),
    ];
    // One step and its task, complete: claim 15 + submit 23 (worker), processing 8 ms after.
    post(
        &server,
        support::request(
            "tasker-rust-worker",
            vec![
                pspan(1, "step_claim", base, 20, 15, &step),
                pspan(2, "submit_result", base, 40, 23, &step),
            ],
        ),
    )
    .await;
    post(
        &server,
        support::request(
            "tasker-orchestration",
            vec![
                pspan(3, "create_task", base, 0, 18, &task),
                pspan(4, "process_result", base, 71, 8, &step),
                pspan(5, "finalize_task", base, 90, 10, &task[..1]),
            ],
        ),
    )
    .await;
    let done = scrape(&server).await;
    let e2e = [("task_name", "mathematical_sequence")];
    assert_close(
        done.value("tasker_worker_overhead_seconds_sum", &WORKER),
        0.038,
        "worker_overhead",
    );
    assert_close(
        done.value("tasker_result_propagation_seconds_sum", &WORKER),
        0.008,
        "result_propagation",
    );
    assert_close(
        done.value("tasker_task_e2e_duration_seconds_sum", &e2e),
        0.1,
        "task_e2e",
    );

    // Late: a second claim of the finished step (another span) and a second finalization of
    // the finished task. Then the late claim once more (a resend: a duplicate, not late).
    let late_claim = support::request(
        "tasker-rust-worker",
        vec![pspan(6, "step_claim", base, 200, 30, &step)],
    );
    post(&server, late_claim.clone()).await;
    post(
        &server,
        support::request(
            "tasker-orchestration",
            vec![pspan(7, "finalize_task", base, 300, 50, &task[..1])],
        ),
    )
    .await;
    post(&server, late_claim).await;
    let late = scrape(&server).await;
    for (d, want) in [
        ("worker_overhead", 1),
        ("task_e2e", 1),
        ("result_propagation", 0),
        ("ffi_overhead", 0),
    ] {
        assert_count_or_absent(
            late.value("spanlens_join_late_spans_total", &[("derived", d)]),
            want,
            &format!("spanlens_join_late_spans_total{{derived={d}}}"),
        );
        assert_eq!(pending(&late, d), 0.0, "pending {d}");
    }
    assert_count(
        late.value(
            "spanlens_spans_duplicate_total",
            &[("protocol", "http_protobuf")],
        ),
        1,
        "the resent late claim",
    );
    // Derived histograms unchanged.
    for (name, labels, sum) in [
        ("tasker_worker_overhead_seconds", &WORKER[..], 0.038),
        ("tasker_result_propagation_seconds", &WORKER[..], 0.008),
        ("tasker_task_e2e_duration_seconds", &e2e[..], 0.1),
    ] {
        assert_count(
            late.value(&format!("{name}_count"), labels),
            1,
            &format!("{name}_count"),
        );
        assert_close(
            late.value(&format!("{name}_sum"), labels),
            sum,
            &format!("{name}_sum"),
        );
    }
    // The late spans are spans like any other in their stages (the resend is not).
    assert_count(
        late.value("tasker_step_claim_calls_total", &WORKER),
        2,
        "tasker_step_claim_calls_total",
    );
    assert_count(
        late.value(
            "tasker_task_finalization_calls_total",
            &[
                ("service", "tasker-orchestration"),
                ("handler_language", "unknown"),
            ],
        ),
        2,
        "tasker_task_finalization_calls_total",
    );
    server.shutdown().await;
}

// ----------------------------------------------------------------------------------------------
// Memory bound: 1,000,000 keys that never complete, in-process
// ----------------------------------------------------------------------------------------------

const FLOOD_KEYS: u64 = 1_000_000;
const FLOOD_BATCH: usize = 1000;
const FLOOD_CHECKPOINT: u64 = 200_000;
const KEY_PREFIX: &[u8] = b"flood-step-";
const KEY_DIGITS: usize = 12;
const SPAN_ID_MARK: [u8; 8] = [0xFE, 0xED, 0xFA, 0xCE, 0xCA, 0xFE, 0xBE, 0xEF];
/// Set in the child process that runs the flood alone.
const CHILD_ENV: &str = "SPANLENS_E2E_DERIVED_FLOOD_CHILD";
const FLOOD_TEST: &str =
    "a_million_keys_that_never_complete_keep_pending_at_the_cap_and_memory_flat";

/// FLOOD_TEST's name in this test binary: its module path without the crate, then the name.
fn flood_test_name() -> String {
    let module = module_path!()
        .split_once("::")
        .map_or("", |(_, module)| module);
    format!("{module}::{FLOOD_TEST}")
}

/// One encoded request of FLOOD_BATCH step_claim spans, patched in place for each batch:
/// every span has the same encoded size, so only its span id and the digits of its step_uuid
/// change.
struct Flood {
    bytes: Vec<u8>,
    span_ids: Vec<usize>,
    keys: Vec<usize>,
}

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    let mut i = 0;
    while i + needle.len() <= haystack.len() {
        if haystack[i] == needle[0] && &haystack[i..i + needle.len()] == needle {
            found.push(i);
            i += needle.len();
        } else {
            i += 1;
        }
    }
    found
}

impl Flood {
    fn new() -> Flood {
        let base = now_ns();
        let key = format!(
            "{}{}",
            std::str::from_utf8(KEY_PREFIX).unwrap(),
            "0".repeat(KEY_DIGITS)
        );
        let spans = (0..FLOOD_BATCH)
            .map(|_| ProtoSpan {
                trace_id: vec![0x3C; 16],
                span_id: SPAN_ID_MARK.to_vec(),
                name: "step_claim".into(),
                kind: 1,
                start_time_unix_nano: base,
                end_time_unix_nano: base + 4_000_000,
                attributes: vec![support::kv("step_uuid", &key)],
                ..Default::default()
            })
            .collect();
        let bytes = support::request("tasker-rust-worker", spans);
        let span_ids = find_all(&bytes, &SPAN_ID_MARK);
        let keys: Vec<usize> = find_all(&bytes, KEY_PREFIX)
            .into_iter()
            .map(|at| at + KEY_PREFIX.len())
            .collect();
        assert_eq!((span_ids.len(), keys.len()), (FLOOD_BATCH, FLOOD_BATCH));
        Flood {
            bytes,
            span_ids,
            keys,
        }
    }

    /// Spans batch * FLOOD_BATCH + 1 ..= (batch + 1) * FLOOD_BATCH: span id and key number.
    fn set_batch(&mut self, batch: u64) {
        for i in 0..FLOOD_BATCH {
            let n = batch * FLOOD_BATCH as u64 + i as u64 + 1;
            let at = self.span_ids[i];
            self.bytes[at..at + 8].copy_from_slice(&n.to_be_bytes());
            let at = self.keys[i];
            let mut rest = n;
            for d in (0..KEY_DIGITS).rev() {
                self.bytes[at + d] = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
        }
    }
}

fn vm_rss_kib() -> u64 {
    proc_status(std::process::id(), "VmRSS") / 1024
}

/// The flood itself (in the child process).
fn flood() {
    let started = Instant::now();
    let config = Config::default_profile();
    assert_eq!(config.join.max_pending, 50_000, "the default cap");
    let pipeline = Pipeline::new(&config).expect("pipeline");
    let mut flood = Flood::new();
    // The patching is right: decode the last span of batch 0.
    flood.set_batch(0);
    let decoded = ExportTraceServiceRequest::decode(flood.bytes.as_slice()).expect("decodes");
    let last = &decoded.resource_spans[0].scope_spans[0].spans[FLOOD_BATCH - 1];
    assert_eq!(last.span_id, (FLOOD_BATCH as u64).to_be_bytes().to_vec());
    assert_eq!(
        last.attributes[0].value,
        Some(ProtoValue {
            value: Some(any_value::Value::StringValue(format!(
                "flood-step-{FLOOD_BATCH:012}"
            )))
        })
    );
    // Two ingesting threads, as concurrent export requests would be. Both stop at the
    // checkpoint while VmRSS is read, then go on: the same threads throughout, so that the
    // allocator's per-thread arenas are the same at both readings.
    let next = AtomicU64::new(0);
    let checkpoint = FLOOD_CHECKPOINT / FLOOD_BATCH as u64;
    let batches = FLOOD_KEYS / FLOOD_BATCH as u64;
    let (stopped, resume) = (Barrier::new(3), Barrier::new(3));
    let ingest = |mut flood: Flood| {
        for until in [checkpoint, batches] {
            // A failure still reaches the barriers below (so nothing hangs), then panics.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                loop {
                    let batch = next.fetch_add(1, Ordering::Relaxed);
                    if batch >= until {
                        break;
                    }
                    flood.set_batch(batch);
                    let outcome = pipeline
                        .ingest(Protocol::Grpc, &flood.bytes)
                        .expect("ingest");
                    assert_eq!(outcome.accepted, FLOOD_BATCH);
                }
            }));
            if until == checkpoint {
                stopped.wait();
                resume.wait();
            }
            if let Err(panic) = run {
                std::panic::resume_unwind(panic);
            }
        }
    };
    let rss_checkpoint = std::thread::scope(|s| {
        s.spawn(|| ingest(flood));
        s.spawn(|| ingest(Flood::new()));
        stopped.wait();
        next.store(checkpoint, Ordering::Relaxed);
        let rss = vm_rss_kib();
        eprintln!(
            "flood: {FLOOD_CHECKPOINT} keys in {:?}, VmRSS {rss} KiB",
            started.elapsed()
        );
        resume.wait();
        rss
    });
    let rss_end = vm_rss_kib();
    eprintln!(
        "flood: {FLOOD_KEYS} keys in {:?}, VmRSS {rss_end} KiB (+{} KiB since {FLOOD_CHECKPOINT})",
        started.elapsed(),
        rss_end as i64 - rss_checkpoint as i64
    );
    let exposition = Exposition::parse(&render(&pipeline.snapshot(), Format::Text));
    let waiting = pending(&exposition, "worker_overhead");
    assert!(waiting <= 50_000.0, "pending {waiting} above the cap");
    assert_eq!(waiting, 50_000.0, "pending at the cap");
    assert_count(
        evicted(&exposition, "worker_overhead", "capacity"),
        (FLOOD_KEYS - waiting as u64) as usize,
        "spanlens_join_evicted_total{derived=worker_overhead,reason=capacity}",
    );
    assert_count(
        exposition.value("tasker_step_claim_calls_total", &WORKER),
        FLOOD_KEYS as usize,
        "every span counted",
    );
    assert_count_or_absent(
        exposition.value("spanlens_spans_duplicate_total", &[("protocol", "grpc")]),
        0,
        "no duplicates in the flood",
    );
    let growth_kib = rss_end.saturating_sub(rss_checkpoint);
    assert!(
        growth_kib < 20 * 1024,
        "VmRSS grew {growth_kib} KiB between {FLOOD_CHECKPOINT} and {FLOOD_KEYS} keys \
         ({rss_checkpoint} -> {rss_end} KiB)"
    );
}

/// Runs the flood in a child process (this test binary, only this test) so that VmRSS is the
/// flood's alone, not shared with the tests running alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_keys_that_never_complete_keep_pending_at_the_cap_and_memory_flat() {
    if std::env::var_os(CHILD_ENV).is_some() {
        tokio::task::spawn_blocking(flood).await.expect("flood");
        return;
    }
    let output = tokio::task::spawn_blocking(|| {
        std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                &flood_test_name(),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .expect("child test process")
    })
    .await
    .expect("child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "flood child failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran the flood test:\n{stdout}"
    );
}
