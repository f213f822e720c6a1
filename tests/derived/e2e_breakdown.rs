//! End-to-end test of the per-correlation breakdown (issue 4, "How it must be shown", bullet 1:
//! the breakdown JSON): a linear workflow (`rust_e2e_linear` / `mathematical_sequence`, Rust
//! worker, the design note's nominal span names) and a diamond workflow (`diamond_workflow` /
//! `parallel_computation`, Ruby worker, tasker-core's real span names) are emitted by three
//! services, each through its own `SdkTracerProvider` (so each service has traces of its own and
//! no trace context crosses services), then handed to the real `opentelemetry-otlp` exporter:
//! orchestration over gRPC, the Rust worker over OTLP/HTTP protobuf, the Ruby worker over
//! OTLP/HTTP JSON. The requests are split and out of order, one is retried at once, one late,
//! and one span is resent inside a later request.
//!
//! Span and trace ids come from a fixed id generator, so every expected id, time and duration is
//! in the fixture table. After every request, `GET /api/v1/breakdown/{id}` for both tasks by
//! correlation id and by task uuid is compared with a reference walk over the rows sent so far
//! (correlation id → task uuids, only task-level spans extending the correlation ids → step
//! uuids); at the end that walk must give exactly each task's own rows, and the answer is also
//! checked against literal numbers and printed by `spanlens breakdown`.

use crate::support;

use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, SpanData, SpanExporter as _};
use spanlens::join::breakdown::{Breakdown, StageTiming, StepBreakdown};
use spanlens::server::Server;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::otlp::hex;
use support::sdk::{Recorded, Transport, attr, exporter_to, recording, start_span};
use support::tasker::{Pick, Svc, Times, Vocab, plan_requests, stage_of, times};
use support::{scrape, start, test_config};

// ----------------------------------------------------------------------------------------------
// Fixture table
// ----------------------------------------------------------------------------------------------

/// How each service exports in this file's scenario, and the ids it is given.
impl Svc {
    /// Orchestration over gRPC, the Rust worker over OTLP/HTTP protobuf, the Ruby worker over
    /// OTLP/HTTP JSON.
    fn transport(self) -> Transport {
        match self {
            Svc::Orchestration => Transport::Grpc(None),
            Svc::RustWorker => Transport::HttpProtobuf,
            Svc::RubyWorker => Transport::HttpJson,
        }
    }

    /// The `protocol` label of the transport this service exports with.
    fn protocol(self) -> &'static str {
        self.transport().protocol()
    }

    /// First byte of this service's span ids and second of its trace ids.
    fn tag(self) -> u8 {
        match self {
            Svc::Orchestration => 0x0a,
            Svc::RustWorker => 0x0b,
            Svc::RubyWorker => 0x0c,
        }
    }
}

struct Task {
    number: u32,
    vocab: Vocab,
    worker: Svc,
    namespace: &'static str,
    task_name: &'static str,
    correlation_id: &'static str,
    task_uuid: &'static str,
}

impl Task {
    fn step_uuid(&self, step: usize) -> String {
        format!("0191e3c2-{:04x}-7b00-8000-{step:012x}", self.number)
    }

    /// The correlation id a worker generates afresh for one step execution.
    fn fresh_correlation(&self, step: usize) -> String {
        format!("d3f1a9b0-{:04x}-4000-8000-{step:012x}", self.number)
    }
}

const LINEAR: usize = 0;
const DIAMOND: usize = 1;
static TASKS: [Task; 2] = [
    Task {
        number: 1,
        vocab: Vocab::Nominal,
        worker: Svc::RustWorker,
        namespace: "rust_e2e_linear",
        task_name: "mathematical_sequence",
        correlation_id: "5f0c7a1e-0001-4c2b-9d1e-0000c0441d00",
        task_uuid: "0191e3c2-0001-7a00-8000-00000000a11c",
    },
    Task {
        number: 2,
        vocab: Vocab::Real,
        worker: Svc::RubyWorker,
        namespace: "diamond_workflow",
        task_name: "parallel_computation",
        correlation_id: "5f0c7a1e-0002-4c2b-9d1e-0000c0441d00",
        task_uuid: "0191e3c2-0002-7a00-8000-00000000a11c",
    },
];

/// One span. Times are microseconds from the scenario's base time (multiples of 100 µs, so
/// every duration has one decimal in milliseconds).
#[derive(Clone, Debug)]
struct Row {
    svc: Svc,
    name: &'static str,
    start_us: u64,
    dur_us: u64,
    attrs: Vec<KeyValue>,
    /// Parent row (same service).
    parent: Option<usize>,
    /// The task the span belongs to (ground truth; None for a span of no task).
    task: Option<usize>,
    /// Step number within its task (1-based), None for task-level spans.
    step: Option<usize>,
}

impl Row {
    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.attrs, key)
    }

    /// The stage the default profile's rules give this span (None: span metrics only).
    fn stage(&self) -> Option<&'static str> {
        stage_of(self.name, self.attr("queue").as_deref())
    }

    /// Kept for breakdowns: classified, with a correlation id, task uuid or step uuid.
    fn kept(&self) -> bool {
        self.stage().is_some()
            && ["correlation_id", "task_uuid", "step_uuid"]
                .iter()
                .any(|k| self.attr(k).is_some())
    }

    fn start_ns(&self, base_ns: u64) -> u64 {
        base_ns + self.start_us * 1000
    }

    fn end_ns(&self, base_ns: u64) -> u64 {
        base_ns + (self.start_us + self.dur_us) * 1000
    }
}

fn span_id(rows: &[Row], i: usize) -> [u8; 8] {
    [rows[i].svc.tag(), 0x5b, 0, 0, 0, 0, (i >> 8) as u8, i as u8]
}

fn root(rows: &[Row], mut i: usize) -> usize {
    while let Some(p) = rows[i].parent {
        i = p;
    }
    i
}

/// Every root span starts a trace of its own; children are in their root's trace.
fn trace_id(rows: &[Row], i: usize) -> [u8; 16] {
    let r = root(rows, i);
    let mut id = [0; 16];
    id[0] = 0x7e;
    id[1] = rows[r].svc.tag();
    id[14] = (r >> 8) as u8;
    id[15] = r as u8;
    id
}

#[derive(Default)]
struct Fixture {
    rows: Vec<Row>,
}

impl Fixture {
    fn add(
        &mut self,
        task: Option<usize>,
        svc: Svc,
        name: &'static str,
        start_us: u64,
        dur_us: u64,
        mut attrs: Vec<KeyValue>,
    ) -> usize {
        if task.is_some_and(|t| TASKS[t].vocab == Vocab::Real) {
            // tracing's #[instrument] attributes, as every real span carries them.
            let busy = (dur_us * 1000 * 4 / 5) as i64;
            attrs.extend([
                KeyValue::new("code.filepath", "tasker-worker/src/worker/step_executor.rs"),
                KeyValue::new("code.namespace", "tasker_worker::worker::step_executor"),
                KeyValue::new("code.lineno", 214_i64),
                KeyValue::new("thread.name", "tokio-runtime-worker"),
                KeyValue::new("busy_ns", busy),
                KeyValue::new("idle_ns", (dur_us * 1000) as i64 - busy),
            ]);
        }
        self.rows.push(Row {
            svc,
            name,
            start_us,
            dur_us,
            attrs,
            parent: None,
            task,
            step: None,
        });
        self.rows.len() - 1
    }

    fn child(&mut self, row: usize, parent: usize) {
        assert_eq!(self.rows[row].svc, self.rows[parent].svc);
        self.rows[row].parent = Some(parent);
    }

    /// Task creation and the enqueueing of its first steps; returns the end.
    fn create(&mut self, t: usize, at: u64) -> u64 {
        let task = &TASKS[t];
        let o = Svc::Orchestration;
        match task.vocab {
            Vocab::Nominal => {
                self.add(
                    Some(t),
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
                    Some(t),
                    o,
                    "enqueue_steps",
                    at + 19_000,
                    12_000,
                    vec![
                        KeyValue::new("correlation_id", task.correlation_id),
                        KeyValue::new("task_uuid", task.task_uuid),
                    ],
                );
                at + 31_000
            }
            Vocab::Real => {
                // The outer span is not a stage (it also enqueues): never in a breakdown.
                let outer = self.add(
                    Some(t),
                    o,
                    "create_and_enqueue_task_from_request",
                    at,
                    36_000,
                    vec![
                        KeyValue::new("correlation_id", task.correlation_id),
                        KeyValue::new("task_name", task.task_name),
                    ],
                );
                let create = self.add(
                    Some(t),
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
                    Some(t),
                    o,
                    "enqueue_ready_steps",
                    at + 22_000,
                    12_000,
                    vec![KeyValue::new("task_uuid", task.task_uuid)],
                );
                self.child(enqueue, outer);
                at + 36_000
            }
        }
    }

    /// Orchestration enqueues the steps that became ready; returns the end.
    fn enqueue(&mut self, t: usize, at: u64) -> u64 {
        let task = &TASKS[t];
        let (name, attrs) = match task.vocab {
            Vocab::Nominal => (
                "enqueue_steps",
                vec![
                    KeyValue::new("correlation_id", task.correlation_id),
                    KeyValue::new("task_uuid", task.task_uuid),
                ],
            ),
            Vocab::Real => (
                "enqueue_ready_steps",
                vec![KeyValue::new("task_uuid", task.task_uuid)],
            ),
        };
        self.add(Some(t), Svc::Orchestration, name, at, 2_500, attrs);
        at + 2_500
    }

    /// One step on the task's worker, then its result processing by orchestration. Returns
    /// the end of the processing and the processing's outermost row.
    fn step(&mut self, t: usize, n: usize, name: &'static str, at: u64, x: Times) -> (u64, usize) {
        let task = &TASKS[t];
        let first = self.rows.len();
        let w = task.worker;
        let o = Svc::Orchestration;
        let uuid = task.step_uuid(n);
        let fresh = task.fresh_correlation(n);
        let (process_at, outer) = match task.vocab {
            Vocab::Nominal => {
                let attrs = || {
                    vec![
                        KeyValue::new("correlation_id", fresh.clone()),
                        KeyValue::new("task_uuid", task.task_uuid),
                        KeyValue::new("step_uuid", uuid.clone()),
                        KeyValue::new("step_name", name),
                    ]
                };
                self.add(Some(t), w, "step_claim", at, x.claim, attrs());
                let handler_at = at + x.claim + 300;
                self.add(
                    Some(t),
                    w,
                    "execute_handler",
                    handler_at,
                    x.handler,
                    attrs(),
                );
                let submit_at = handler_at + x.handler + 200;
                self.add(Some(t), w, "submit_result", submit_at, x.submit, attrs());
                let process_at = submit_at + x.submit + x.gap;
                let process = self.add(
                    Some(t),
                    o,
                    "process_result",
                    process_at,
                    x.process,
                    vec![
                        KeyValue::new("correlation_id", task.correlation_id),
                        KeyValue::new("task_uuid", task.task_uuid),
                        KeyValue::new("step_uuid", uuid.clone()),
                    ],
                );
                (process_at, process)
            }
            Vocab::Real => {
                // The claim reads the namespace queue: a step_claim with no key, so it is
                // in no breakdown.
                self.add(
                    Some(t),
                    w,
                    "read_messages",
                    at - 600,
                    400,
                    vec![
                        KeyValue::new("queue", format!("worker_{}_queue", task.namespace)),
                        KeyValue::new("limit", 10_i64),
                        KeyValue::new("visibility_timeout", 30_i64),
                    ],
                );
                let exec = self.add(
                    Some(t),
                    w,
                    "worker.step_execution",
                    at,
                    x.exec,
                    vec![
                        KeyValue::new("correlation_id", fresh.clone()),
                        KeyValue::new("task_uuid", task.task_uuid),
                        KeyValue::new("step_uuid", uuid.clone()),
                        KeyValue::new("step_name", name),
                        KeyValue::new("namespace", task.namespace),
                    ],
                );
                if x.handler > 0 {
                    // The Ruby handler's business logic, traced inside the FFI dispatch:
                    // joined to its step by step_uuid alone.
                    assert!(x.handler < x.exec && (x.exec - x.handler).is_multiple_of(200));
                    let handler = self.add(
                        Some(t),
                        w,
                        "execute_handler",
                        at + (x.exec - x.handler) / 2,
                        x.handler,
                        vec![
                            KeyValue::new("correlation_id", fresh.clone()),
                            KeyValue::new("step_uuid", uuid.clone()),
                        ],
                    );
                    self.child(handler, exec);
                }
                let submit_at = at + x.exec + 200;
                self.add(
                    Some(t),
                    w,
                    "worker.step_completion_received",
                    submit_at,
                    x.submit,
                    vec![
                        KeyValue::new("task_uuid", task.task_uuid),
                        KeyValue::new("step_uuid", uuid.clone()),
                        KeyValue::new("success", true),
                        // Plain attributes of tasker-core, not the OTel ids.
                        KeyValue::new("trace_id", task.correlation_id),
                        KeyValue::new("span_id", format!("span-{uuid}")),
                    ],
                );
                let process_at = submit_at + x.submit + x.gap;
                let outer = self.add(
                    Some(t),
                    o,
                    "process_single_step_result",
                    process_at - 300,
                    x.process + 600,
                    vec![KeyValue::new("msg_id", 4000 + n as i64)],
                );
                // No task_uuid: it joins its step through step_uuid only.
                let handle = self.add(
                    Some(t),
                    o,
                    "handle_step_execution_result",
                    process_at,
                    x.process,
                    vec![KeyValue::new("step_uuid", uuid.clone())],
                );
                self.child(handle, outer);
                (process_at, outer)
            }
        };
        for row in &mut self.rows[first..] {
            row.step = Some(n);
        }
        (process_at + x.process, outer)
    }

    fn finalize(&mut self, t: usize, at: u64) {
        let task = &TASKS[t];
        let attrs = match task.vocab {
            Vocab::Nominal => vec![
                KeyValue::new("correlation_id", task.correlation_id),
                KeyValue::new("task_uuid", task.task_uuid),
            ],
            Vocab::Real => vec![
                KeyValue::new("task_uuid", task.task_uuid),
                KeyValue::new("correlation_id", task.correlation_id),
            ],
        };
        self.add(
            Some(t),
            Svc::Orchestration,
            "finalize_task",
            at,
            6_000,
            attrs,
        );
    }
}

/// Both workflows, overlapping in time: linear from 0 (the note's step 1: claim 15 ms, handler
/// 42 ms, submit 23 ms, processing 8 ms), diamond from 170 ms (branches b and c in parallel; c
/// and end also trace their Ruby business logic). One orchestration trace (a batch read of
/// orchestration_step_results) holds result processing of both tasks.
fn workflows() -> Vec<Row> {
    let mut f = Fixture::default();
    let linear = [
        (
            "linear_step_1",
            times(15_000, 0, 42_000, 23_000, 2_500, 8_000),
        ),
        (
            "linear_step_2",
            times(4_000, 0, 29_500, 12_000, 1_200, 5_000),
        ),
        (
            "linear_step_3",
            times(800, 0, 118_000, 6_000, 14_100, 3_000),
        ),
        ("linear_step_4", times(7_000, 0, 9_200, 3_000, 400, 2_000)),
    ];
    let mut at = f.create(LINEAR, 0);
    let mut linear_step_3_processing = 0;
    for (i, (name, x)) in linear.into_iter().enumerate() {
        if i > 0 {
            at = f.enqueue(LINEAR, at + 500);
        }
        let (end, process) = f.step(LINEAR, i + 1, name, at + 1_000, x);
        if i == 2 {
            linear_step_3_processing = process;
        }
        at = end;
    }
    f.finalize(LINEAR, at + 1_500);

    let at = f.create(DIAMOND, 170_000);
    let (start_end, start_processing) = f.step(
        DIAMOND,
        1,
        "diamond_start",
        at + 1_000,
        times(0, 60_000, 0, 11_000, 30_000, 6_000),
    );
    let at = f.enqueue(DIAMOND, start_end + 500);
    let (b_end, _) = f.step(
        DIAMOND,
        2,
        "diamond_branch_b",
        at + 1_000,
        times(0, 40_000, 0, 5_000, 1_000, 4_000),
    );
    let (c_end, _) = f.step(
        DIAMOND,
        3,
        "diamond_branch_c",
        at + 1_600,
        times(0, 250_000, 200_000, 8_000, 9_000, 7_000),
    );
    let at = f.enqueue(DIAMOND, b_end.max(c_end) + 500);
    let (end, _) = f.step(
        DIAMOND,
        4,
        "diamond_end",
        at + 1_000,
        times(0, 80_000, 70_000, 4_000, 14_100, 6_000),
    );
    f.finalize(DIAMOND, end + 1_500);

    // One orchestration trace for both tasks: the batch read that brought both results.
    let a = &f.rows[linear_step_3_processing];
    let b = &f.rows[start_processing];
    let batch_start = a.start_us.min(b.start_us) - 300;
    let batch_end = (a.start_us + a.dur_us).max(b.start_us + b.dur_us) + 300;
    let batch = f.add(
        None,
        Svc::Orchestration,
        "read_messages",
        batch_start,
        batch_end - batch_start,
        vec![
            KeyValue::new("queue", "orchestration_step_results"),
            KeyValue::new("limit", 10_i64),
        ],
    );
    f.child(linear_step_3_processing, batch);
    f.child(start_processing, batch);
    f.rows
}

// ----------------------------------------------------------------------------------------------
// Expected breakdowns, from the table
// ----------------------------------------------------------------------------------------------

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

/// The task an id names, as the documented walk finds it among the rows sent so far:
/// the id → spans with it as task uuid, or as correlation id on a task-level span (no
/// step_uuid); their task uuids and (task-level only) correlation ids, in turn, until nothing
/// new; then every kept span of the step uuids found. None when nothing is found.
fn walk(rows: &[Row], sent: &[bool], id: &str) -> Option<(BTreeSet<String>, Vec<usize>)> {
    let kept: Vec<usize> = (0..rows.len())
        .filter(|i| sent[*i] && rows[*i].kept())
        .collect();
    let mut correlations = BTreeSet::new();
    let mut tasks = BTreeSet::new();
    let mut found = BTreeSet::new();
    let mut frontier = vec![id.to_string()];
    while let Some(key) = frontier.pop() {
        for &i in &kept {
            let r = &rows[i];
            let task_level = r.attr("step_uuid").is_none();
            let correlation = r.attr("correlation_id");
            let task = r.attr("task_uuid");
            if !((task_level && correlation.as_deref() == Some(key.as_str()))
                || task.as_deref() == Some(key.as_str()))
            {
                continue;
            }
            found.insert(i);
            if let Some(task) = task
                && tasks.insert(task.clone())
            {
                frontier.push(task);
            }
            if let Some(correlation) = correlation
                && task_level
                && correlations.insert(correlation.clone())
            {
                frontier.push(correlation);
            }
        }
    }
    if found.is_empty() {
        return None;
    }
    let steps: BTreeSet<String> = found
        .iter()
        .filter_map(|i| rows[*i].attr("step_uuid"))
        .collect();
    for &i in &kept {
        if rows[i]
            .attr("step_uuid")
            .is_some_and(|s| steps.contains(&s))
        {
            found.insert(i);
        }
    }
    Some((tasks, found.into_iter().collect()))
}

/// The rows of task `t` a breakdown must show once everything has arrived: its kept spans.
fn ground_truth(rows: &[Row], t: usize) -> Vec<usize> {
    (0..rows.len())
        .filter(|i| rows[*i].task == Some(t) && rows[*i].kept())
        .collect()
}

fn timing(rows: &[Row], base_ns: u64, i: usize) -> StageTiming {
    let r = &rows[i];
    StageTiming {
        stage: r.stage().expect("kept rows have a stage").to_string(),
        span_name: r.name.to_string(),
        service: r.svc.name().to_string(),
        duration_ms: ms(r.dur_us * 1000),
        start_unix_nano: r.start_ns(base_ns),
        trace_id: hex(&trace_id(rows, i)),
        span_id: hex(&span_id(rows, i)),
    }
}

/// The breakdown of these rows (task uuids as the walk found them), by the rules:
/// steps by step_uuid (each in start order, ordered by their first start), the worker = the
/// first span with a handler language, derived values per step and per task where every part
/// is present, the total from first start to last end.
fn expected(rows: &[Row], base_ns: u64, tasks: &BTreeSet<String>, found: &[usize]) -> Breakdown {
    let mut found = found.to_vec();
    found.sort_by_key(|i| (rows[*i].start_us, span_id(rows, *i)));
    let dur = |i: usize| rows[i].dur_us * 1000;
    let first = |spans: &[usize], stage: &str, name: Option<&str>| {
        spans
            .iter()
            .copied()
            .find(|i| rows[*i].stage() == Some(stage) && name.is_none_or(|n| n == rows[*i].name))
    };
    let mut by_step: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut task_level = Vec::new();
    for &i in &found {
        match rows[i].attr("step_uuid") {
            Some(step) => by_step.entry(step).or_default().push(i),
            None => task_level.push(i),
        }
    }
    let mut steps: Vec<StepBreakdown> = by_step
        .into_iter()
        .map(|(uuid, spans)| {
            let worker = spans
                .iter()
                .copied()
                .find(|i| rows[*i].svc.language() != "unknown")
                .unwrap_or(spans[0]);
            let mut derived = BTreeMap::new();
            if let (Some(claim), Some(submit)) = (
                first(&spans, "step_claim", None),
                first(&spans, "result_submission", None),
            ) {
                derived.insert(
                    "worker_overhead_ms".to_string(),
                    ms(dur(claim) + dur(submit)),
                );
            }
            if let (Some(exec), Some(handler)) = (
                first(&spans, "handler_execution", Some("worker.step_execution")),
                first(&spans, "handler_execution", Some("execute_handler")),
            ) {
                derived.insert(
                    "ffi_overhead_ms".to_string(),
                    ms(dur(exec).saturating_sub(dur(handler))),
                );
            }
            if let (Some(submit), Some(process)) = (
                first(&spans, "result_submission", None),
                first(&spans, "result_processing", None),
            ) {
                derived.insert(
                    "result_propagation_ms".to_string(),
                    ms(rows[process]
                        .start_ns(base_ns)
                        .saturating_sub(rows[submit].end_ns(base_ns))),
                );
            }
            StepBreakdown {
                step_uuid: uuid,
                step_name: spans.iter().find_map(|i| rows[*i].attr("step_name")),
                service: Some(rows[worker].svc.name().to_string()),
                handler_language: Some(rows[worker].svc.language().to_string()),
                stages: spans.iter().map(|i| timing(rows, base_ns, *i)).collect(),
                derived,
            }
        })
        .collect();
    steps.sort_by_key(|s| s.stages[0].start_unix_nano);
    // task_e2e: the envelope of every task_creation and task_finalization span found.
    let mut derived = BTreeMap::new();
    let parts = |stage: &str| -> Vec<usize> {
        found
            .iter()
            .copied()
            .filter(|i| rows[*i].stage() == Some(stage))
            .collect()
    };
    let (creation, finalization) = (parts("task_creation"), parts("task_finalization"));
    if !creation.is_empty() && !finalization.is_empty() {
        let both: Vec<usize> = creation.into_iter().chain(finalization).collect();
        let start = both.iter().map(|i| rows[*i].start_ns(base_ns)).min();
        let end = both.iter().map(|i| rows[*i].end_ns(base_ns)).max();
        derived.insert("task_e2e_ms".to_string(), ms(end.unwrap() - start.unwrap()));
    }
    let start = found.iter().map(|i| rows[*i].start_ns(base_ns)).min();
    let end = found.iter().map(|i| rows[*i].end_ns(base_ns)).max();
    Breakdown {
        correlation_ids: task_level
            .iter()
            .filter_map(|i| rows[*i].attr("correlation_id"))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        task_uuids: tasks.iter().cloned().collect(),
        task_stages: task_level
            .iter()
            .map(|i| timing(rows, base_ns, *i))
            .collect(),
        steps,
        derived,
        total_ms: ms(end.unwrap() - start.unwrap()),
    }
}

/// Milliseconds at nanosecond resolution (the resolution of the data): spanlens computes
/// derived values as seconds × 1000, which may differ from nanos / 1e6 in the last bit.
fn at_ns(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

fn normalized(mut b: Breakdown) -> Breakdown {
    let stages = b
        .task_stages
        .iter_mut()
        .chain(b.steps.iter_mut().flat_map(|s| s.stages.iter_mut()));
    for t in stages {
        t.duration_ms = at_ns(t.duration_ms);
    }
    for v in b
        .derived
        .values_mut()
        .chain(b.steps.iter_mut().flat_map(|s| s.derived.values_mut()))
    {
        *v = at_ns(*v);
    }
    b.total_ms = at_ns(b.total_ms);
    b
}

/// Field by field (for readable failures), then the whole value.
fn assert_breakdown(got: Breakdown, want: Breakdown, what: &str) {
    let (got, want) = (normalized(got), normalized(want));
    assert_eq!(
        got.correlation_ids, want.correlation_ids,
        "{what}: correlation_ids"
    );
    assert_eq!(got.task_uuids, want.task_uuids, "{what}: task_uuids");
    assert_eq!(got.task_stages, want.task_stages, "{what}: task_stages");
    assert_eq!(
        got.steps.iter().map(|s| &s.step_uuid).collect::<Vec<_>>(),
        want.steps.iter().map(|s| &s.step_uuid).collect::<Vec<_>>(),
        "{what}: steps (by first start)"
    );
    for (g, w) in got.steps.iter().zip(&want.steps) {
        assert_eq!(g, w, "{what}: step {:?} {}", w.step_name, w.step_uuid);
    }
    assert_eq!(got.derived, want.derived, "{what}: task derived values");
    assert_eq!(got.total_ms, want.total_ms, "{what}: total_ms");
    assert_eq!(got, want, "{what}");
}

// ----------------------------------------------------------------------------------------------
// Emitting with the SDK, exporting with the real OTLP exporter
// ----------------------------------------------------------------------------------------------

/// Hands out the ids the fixture table assigns: set before each span starts, taken once.
#[derive(Debug, Default, Clone)]
struct FixedIds(Arc<Mutex<(Option<TraceId>, Option<SpanId>)>>);

impl IdGenerator for FixedIds {
    fn new_trace_id(&self) -> TraceId {
        self.0
            .lock()
            .unwrap()
            .0
            .take()
            .expect("a root span's trace id")
    }

    fn new_span_id(&self) -> SpanId {
        self.0.lock().unwrap().1.take().expect("the span's id")
    }
}

/// Emits every row through its service's own SdkTracerProvider, with explicit start and end
/// times and the table's ids.
fn record(rows: &[Row], base: SystemTime) -> Recorded {
    let mut spans: Vec<Option<SpanData>> = vec![None; rows.len()];
    let mut resources = BTreeMap::new();
    let depth = |mut i: usize| {
        let mut d = 0;
        while let Some(p) = rows[i].parent {
            i = p;
            d += 1;
        }
        d
    };
    for svc in Svc::ALL {
        let ids = FixedIds::default();
        let (builder, recorder) = recording(svc.name());
        let provider = builder.with_id_generator(ids.clone()).build();
        let tracer = provider.tracer("tasker-core");
        let mut mine: Vec<usize> = (0..rows.len()).filter(|i| rows[*i].svc == svc).collect();
        // Parents first.
        mine.sort_by_key(|i| (depth(*i), *i));
        let mut contexts: Vec<Option<Context>> = vec![None; rows.len()];
        for &i in &mine {
            let row = &rows[i];
            let parent = row
                .parent
                .map(|p| contexts[p].as_ref().expect("parents start first"));
            *ids.0.lock().unwrap() = (
                row.parent
                    .is_none()
                    .then(|| TraceId::from_bytes(trace_id(rows, i))),
                Some(SpanId::from_bytes(span_id(rows, i))),
            );
            let started = start_span(
                &tracer,
                row.name,
                SpanKind::Internal,
                base + Duration::from_micros(row.start_us),
                row.attrs.clone(),
                parent,
            );
            assert_eq!(
                *ids.0.lock().unwrap(),
                (None, None),
                "row {i}: the SDK took the table's ids"
            );
            contexts[i] = Some(started);
        }
        for &i in &mine {
            let row = &rows[i];
            contexts[i]
                .as_ref()
                .expect("started")
                .span()
                .end_with_timestamp(base + Duration::from_micros(row.start_us + row.dur_us));
        }
        for data in recorder.spans.lock().unwrap().drain(..) {
            let id = data.span_context.span_id().to_bytes();
            let i = mine
                .iter()
                .copied()
                .find(|i| span_id(rows, *i) == id)
                .expect("a span of the table");
            assert_eq!(data.name, rows[i].name);
            assert_eq!(data.span_context.trace_id().to_bytes(), trace_id(rows, i));
            assert!(spans[i].replace(data).is_none(), "row {i} ended once");
        }
        let resource = recorder.resource.lock().unwrap().clone();
        resources.insert(svc, resource.expect("the provider sets the resource"));
        provider.shutdown().expect("provider shutdown");
    }
    let spans = spans.into_iter().map(|s| s.expect("emitted")).collect();
    Recorded { spans, resources }
}

/// The export requests, as (service, rows), in sending order: orchestration's finalizations
/// first, result processing before the steps' worker spans, task creation last; the Ruby
/// worker's completions retried at once, the Rust worker's last steps retried at the very end,
/// and the linear finalization resent inside a later orchestration request.
fn requests(rows: &[Row]) -> Vec<(Svc, Vec<usize>)> {
    fn linear_step(r: &Row, steps: &[usize]) -> bool {
        r.task == Some(LINEAR) && r.step.is_some_and(|s| steps.contains(&s))
    }
    let plan: [(Svc, Pick<Row>); 8] = [
        (Svc::Orchestration, |r| r.name == "finalize_task"),
        (Svc::RubyWorker, |r| {
            r.name == "worker.step_completion_received" && r.step != Some(1)
        }),
        (Svc::RustWorker, |r| linear_step(r, &[3, 4])),
        (Svc::Orchestration, |r| {
            r.step.is_some() && !linear_step(r, &[1])
        }),
        (Svc::RubyWorker, |r| {
            matches!(r.name, "worker.step_execution" | "execute_handler")
        }),
        (Svc::RustWorker, |_| true),
        (Svc::Orchestration, |_| true),
        (Svc::RubyWorker, |_| true),
    ];
    let fresh = plan_requests(rows, |r| r.svc, &plan);
    let linear_finalization = (0..rows.len())
        .find(|i| rows[*i].task == Some(LINEAR) && rows[*i].name == "finalize_task")
        .expect("linear finalize_task");
    let mut out = Vec::new();
    for (n, request) in fresh.iter().enumerate() {
        let mut request = request.clone();
        if n == 6 {
            request.1.insert(1, linear_finalization);
        }
        out.push(request.clone());
        if n == 1 {
            out.push(request);
        }
    }
    out.push(fresh[2].clone());
    out
}

// ----------------------------------------------------------------------------------------------
// Asking spanlens
// ----------------------------------------------------------------------------------------------

/// GET /api/v1/breakdown/{id}: Some on 200 (the JSON has exactly the Breakdown's fields),
/// None on 404 (the reason names the id).
async fn get_breakdown(server: &Server, id: &str) -> Option<Breakdown> {
    let url = format!("http://{}/api/v1/breakdown/{id}", server.metrics_addr());
    let response = reqwest::get(&url).await.expect("GET breakdown");
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    match status {
        200 => {
            let raw: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let found: Breakdown = serde_json::from_value(raw.clone())
                .unwrap_or_else(|e| panic!("{id}: not a breakdown ({e}): {body}"));
            assert_eq!(
                serde_json::to_value(&found).unwrap(),
                raw,
                "{id}: the JSON has exactly the breakdown's fields"
            );
            Some(found)
        }
        404 => {
            assert!(body.contains(id), "{id}: the 404 names the id: {body}");
            None
        }
        other => panic!("{id}: HTTP {other}: {body}"),
    }
}

/// Both tasks by correlation id and by task uuid agree with the walk over the rows sent.
async fn check_all(server: &Server, rows: &[Row], sent: &[bool], base_ns: u64, when: &str) {
    for task in &TASKS {
        for id in [task.correlation_id, task.task_uuid] {
            let got = get_breakdown(server, id).await;
            let want =
                walk(rows, sent, id).map(|(tasks, found)| expected(rows, base_ns, &tasks, &found));
            match (got, want) {
                (None, None) => {}
                (Some(got), Some(want)) => assert_breakdown(got, want, &format!("{when}, {id}")),
                (got, want) => panic!(
                    "{when}, {id}: got {}, want {}",
                    if got.is_some() { "a breakdown" } else { "404" },
                    if want.is_some() { "a breakdown" } else { "404" },
                ),
            }
        }
    }
}

/// The whitespace-separated words of each non-empty line of `spanlens breakdown`'s table.
fn table_words(b: &Breakdown) -> Vec<Vec<String>> {
    let f1 = |v: f64| format!("{v:.1}");
    let words = |s: &[&str]| s.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let stage =
        |t: &StageTiming| words(&[&t.stage, &t.span_name, &t.service, &f1(t.duration_ms), "ms"]);
    let derived =
        |name: &str, v: f64| words(&[name.trim_end_matches("_ms"), "(derived)", &f1(v), "ms"]);
    let mut lines = vec![words(&[
        "correlation_id",
        &b.correlation_ids.join(","),
        "task_uuid",
        &b.task_uuids.join(","),
        "total",
        &f1(b.total_ms),
        "ms",
    ])];
    lines.push(words(&["task"]));
    lines.extend(b.task_stages.iter().map(stage));
    for s in &b.steps {
        lines.push(words(&[
            "step",
            s.step_name.as_deref().unwrap(),
            &format!("({})", s.step_uuid),
            s.service.as_deref().unwrap(),
            s.handler_language.as_deref().unwrap(),
        ]));
        lines.extend(s.stages.iter().map(stage));
        lines.extend(s.derived.iter().map(|(n, v)| derived(n, *v)));
    }
    lines.extend(b.derived.iter().map(|(n, v)| derived(n, *v)));
    lines
}

async fn run_cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_spanlens"))
            .args(&args)
            .output()
            .expect("spanlens breakdown runs")
    })
    .await
    .expect("CLI thread")
}

// ----------------------------------------------------------------------------------------------
// Literal numbers, independent of the reference
// ----------------------------------------------------------------------------------------------

type StepSummary = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str, f64)>,
    Vec<(&'static str, f64)>,
);

/// A step as (name, service, handler_language, [(stage, span_name, ms)], [(derived, ms)]).
type OwnedSummary = (
    String,
    String,
    String,
    Vec<(String, String, f64)>,
    Vec<(String, f64)>,
);

fn summary(b: &Breakdown) -> Vec<OwnedSummary> {
    b.steps
        .iter()
        .map(|s| {
            (
                s.step_name.clone().unwrap_or_default(),
                s.service.clone().unwrap_or_default(),
                s.handler_language.clone().unwrap_or_default(),
                s.stages
                    .iter()
                    .map(|t| (t.stage.clone(), t.span_name.clone(), at_ns(t.duration_ms)))
                    .collect(),
                s.derived
                    .iter()
                    .map(|(k, v)| (k.clone(), at_ns(*v)))
                    .collect(),
            )
        })
        .collect()
}

fn owned(want: Vec<StepSummary>) -> Vec<OwnedSummary> {
    want.into_iter()
        .map(|(name, service, language, stages, derived)| {
            (
                name.to_string(),
                service.to_string(),
                language.to_string(),
                stages
                    .into_iter()
                    .map(|(s, n, d)| (s.to_string(), n.to_string(), d))
                    .collect(),
                derived
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )
        })
        .collect()
}

fn task_stage_summary(b: &Breakdown) -> Vec<(&str, &str, f64)> {
    b.task_stages
        .iter()
        .map(|t| (t.stage.as_str(), t.span_name.as_str(), at_ns(t.duration_ms)))
        .collect()
}

fn literal_checks(linear: &Breakdown, diamond: &Breakdown) {
    let r = "tasker-rust-worker";
    let o = "tasker-orchestration";
    let rust_step = |name, claim, handler, submit, process, overhead, propagation| {
        (
            name,
            r,
            "rust",
            vec![
                ("step_claim", "step_claim", claim),
                ("handler_execution", "execute_handler", handler),
                ("result_submission", "submit_result", submit),
                ("result_processing", "process_result", process),
            ],
            vec![
                ("result_propagation_ms", propagation),
                ("worker_overhead_ms", overhead),
            ],
        )
    };
    assert_eq!(
        summary(linear),
        owned(vec![
            // The design note's step: 15 + 23 = 38 ms of worker overhead.
            rust_step("linear_step_1", 15.0, 42.0, 23.0, 8.0, 38.0, 2.5),
            rust_step("linear_step_2", 4.0, 29.5, 12.0, 5.0, 16.0, 1.2),
            rust_step("linear_step_3", 0.8, 118.0, 6.0, 3.0, 6.8, 14.1),
            rust_step("linear_step_4", 7.0, 9.2, 3.0, 2.0, 10.0, 0.4),
        ]),
        "linear steps (literal)"
    );
    assert_eq!(
        task_stage_summary(linear),
        vec![
            ("task_creation", "create_task", 18.0),
            ("step_enqueueing", "enqueue_steps", 12.0),
            ("step_enqueueing", "enqueue_steps", 2.5),
            ("step_enqueueing", "enqueue_steps", 2.5),
            ("step_enqueueing", "enqueue_steps", 2.5),
            ("task_finalization", "finalize_task", 6.0),
        ],
        "linear task stages (literal)"
    );
    assert_eq!(
        at_ns(linear.derived["task_e2e_ms"]),
        359.2,
        "linear task_e2e"
    );
    assert_eq!(linear.derived.len(), 1);
    assert_eq!(at_ns(linear.total_ms), 359.2, "linear total");

    let b = "tasker-ruby-worker";
    let ruby_step =
        |name, exec, handler: Option<f64>, submit, process, propagation, ffi: Option<f64>| {
            let mut stages = vec![("handler_execution", "worker.step_execution", exec)];
            if let Some(handler) = handler {
                stages.push(("handler_execution", "execute_handler", handler));
            }
            stages.extend([
                (
                    "result_submission",
                    "worker.step_completion_received",
                    submit,
                ),
                ("result_processing", "handle_step_execution_result", process),
            ]);
            let mut derived = Vec::new();
            if let Some(ffi) = ffi {
                derived.push(("ffi_overhead_ms", ffi));
            }
            derived.push(("result_propagation_ms", propagation));
            (name, b, "ruby", stages, derived)
        };
    assert_eq!(
        summary(diamond),
        owned(vec![
            ruby_step("diamond_start", 60.0, None, 11.0, 6.0, 30.0, None),
            ruby_step("diamond_branch_b", 40.0, None, 5.0, 4.0, 1.0, None),
            ruby_step(
                "diamond_branch_c",
                250.0,
                Some(200.0),
                8.0,
                7.0,
                9.0,
                Some(50.0)
            ),
            ruby_step("diamond_end", 80.0, Some(70.0), 4.0, 6.0, 14.1, Some(10.0)),
        ]),
        "diamond steps (literal): no claim with a step_uuid, so no worker_overhead"
    );
    assert_eq!(
        task_stage_summary(diamond),
        vec![
            ("task_creation", "create_task_from_request", 20.8),
            ("step_enqueueing", "enqueue_ready_steps", 12.0),
            ("step_enqueueing", "enqueue_ready_steps", 2.5),
            ("step_enqueueing", "enqueue_ready_steps", 2.5),
            ("task_finalization", "finalize_task", 6.0),
        ],
        "diamond task stages (literal)"
    );
    assert_eq!(
        at_ns(diamond.derived["task_e2e_ms"]),
        538.3,
        "diamond task_e2e"
    );
    assert_eq!(diamond.derived.len(), 1);
    assert_eq!(at_ns(diamond.total_ms), 538.3, "diamond total");
    // Each service's own traces: worker spans are never in an orchestration trace.
    for (bd, worker) in [(linear, r), (diamond, b)] {
        for t in bd
            .task_stages
            .iter()
            .chain(bd.steps.iter().flat_map(|s| &s.stages))
        {
            let tag = if t.service == o {
                "0a"
            } else if t.service == worker {
                if worker == r { "0b" } else { "0c" }
            } else {
                panic!("unexpected service {}", t.service)
            };
            assert_eq!(&t.trace_id[..4], format!("7e{tag}"), "{t:?}");
            assert_eq!(&t.span_id[..2], tag, "{t:?}");
        }
    }
}

// ----------------------------------------------------------------------------------------------
// The test
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear_and_diamond_put_back_together_across_three_services_and_transports() {
    let rows = workflows();
    // Ground truth and the walk agree on the full table: the walk is a sound reference.
    let all = vec![true; rows.len()];
    for (t, task) in TASKS.iter().enumerate() {
        for id in [task.correlation_id, task.task_uuid] {
            let (tasks, found) = walk(&rows, &all, id).expect("found");
            assert_eq!(found, ground_truth(&rows, t), "fixture: the walk from {id}");
            assert_eq!(tasks, BTreeSet::from([task.task_uuid.to_string()]));
        }
    }
    let server = start(test_config(|_| {})).await;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let base_ms = now_ms - 120_000;
    let base = UNIX_EPOCH + Duration::from_millis(base_ms);
    let base_ns = base_ms * 1_000_000;
    let recorded = record(&rows, base);
    let exporters: BTreeMap<Svc, opentelemetry_otlp::SpanExporter> = Svc::ALL
        .iter()
        .map(|svc| {
            (
                *svc,
                exporter_to(&server, svc.transport(), &recorded.resources[svc]),
            )
        })
        .collect();

    let mut sent = vec![false; rows.len()];
    check_all(&server, &rows, &sent, base_ns, "before any request").await;
    let mut received: BTreeMap<&str, usize> = BTreeMap::new();
    let mut duplicates: BTreeMap<&str, usize> = BTreeMap::new();
    let mut resent_rows = BTreeSet::new();
    for (n, (svc, picked)) in requests(&rows).into_iter().enumerate() {
        let batch: Vec<SpanData> = picked.iter().map(|i| recorded.spans[*i].clone()).collect();
        exporters[&svc]
            .export(batch)
            .await
            .unwrap_or_else(|e| panic!("request {n} ({svc:?}): {e}"));
        *received.entry(svc.protocol()).or_default() += picked.len();
        for &i in &picked {
            if std::mem::replace(&mut sent[i], true) {
                *duplicates.entry(svc.protocol()).or_default() += 1;
                resent_rows.insert(i);
            }
        }
        check_all(
            &server,
            &rows,
            &sent,
            base_ns,
            &format!("after request {n} ({svc:?})"),
        )
        .await;
    }
    assert!(sent.iter().all(|s| *s));

    // The resends reached spanlens and were recognised, on every transport.
    let exposition = scrape(&server).await;
    assert_eq!(
        duplicates,
        BTreeMap::from([("grpc", 1), ("http_json", 3), ("http_protobuf", 6)]),
        "fixture: resent spans per protocol"
    );
    for protocol in ["grpc", "http_protobuf", "http_json"] {
        assert_eq!(
            exposition.value("spanlens_spans_received_total", &[("protocol", protocol)]),
            Some(received[protocol] as f64),
            "spanlens_spans_received_total{{protocol={protocol}}}"
        );
        assert_eq!(
            exposition.value("spanlens_spans_duplicate_total", &[("protocol", protocol)]),
            Some(duplicates[protocol] as f64),
            "spanlens_spans_duplicate_total{{protocol={protocol}}}"
        );
    }

    // Final answers: by correlation id and by task uuid, the same, exactly the task's rows.
    let mut finals = Vec::new();
    for (t, task) in TASKS.iter().enumerate() {
        let by_correlation = get_breakdown(&server, task.correlation_id)
            .await
            .expect("found");
        let by_uuid = get_breakdown(&server, task.task_uuid).await.expect("found");
        assert_eq!(
            by_correlation, by_uuid,
            "{}: by correlation id = by task uuid",
            task.task_name
        );
        let mine = ground_truth(&rows, t);
        let want = expected(
            &rows,
            base_ns,
            &BTreeSet::from([task.task_uuid.to_string()]),
            &mine,
        );
        assert_breakdown(
            normalized(by_uuid),
            want,
            &format!("final {}", task.task_name),
        );
        assert_eq!(by_correlation.correlation_ids, vec![task.correlation_id]);
        assert_eq!(by_correlation.task_uuids, vec![task.task_uuid]);
        // Every span once (resent ones too); none of the other task's; no span of no task.
        let ids: Vec<&str> = by_correlation
            .task_stages
            .iter()
            .chain(by_correlation.steps.iter().flat_map(|s| &s.stages))
            .map(|t| t.span_id.as_str())
            .collect();
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), unique.len(), "{}: a span twice", task.task_name);
        for &i in &resent_rows {
            if rows[i].task == Some(t) {
                assert!(
                    unique.contains(hex(&span_id(&rows, i)).as_str()),
                    "resent row {i}"
                );
            }
        }
        for (i, row) in rows.iter().enumerate() {
            if row.task != Some(t) {
                assert!(
                    !unique.contains(hex(&span_id(&rows, i)).as_str()),
                    "{}: leaked row {i} {row:?}",
                    task.task_name
                );
            }
        }
        assert_eq!(ids.len(), mine.len(), "{}: span count", task.task_name);
        finals.push(by_correlation);
    }
    literal_checks(&finals[LINEAR], &finals[DIAMOND]);
    // The shared orchestration trace (one batch of results for both tasks) is in both
    // breakdowns, each with only its own span of it.
    let shared = hex(&trace_id(
        &rows,
        rows.iter()
            .position(|r| r.task.is_none())
            .expect("batch root"),
    ));
    for b in &finals {
        let in_shared = b
            .steps
            .iter()
            .flat_map(|s| &s.stages)
            .filter(|t| t.trace_id == shared)
            .count();
        assert_eq!(
            in_shared, 1,
            "one span of the shared trace in {:?}",
            b.task_uuids
        );
    }

    // Unknown ids are 404s, with the reason.
    let unknown = "00000000-0000-4000-8000-00000000dead";
    assert!(get_breakdown(&server, unknown).await.is_none());

    // The command line prints each task as a table: a line per stage with its duration.
    let from = format!("http://{}", server.metrics_addr());
    for (t, id) in [
        (LINEAR, TASKS[LINEAR].correlation_id),
        (DIAMOND, TASKS[DIAMOND].task_uuid),
    ] {
        let out = run_cli(vec![
            "breakdown".into(),
            id.into(),
            "--from".into(),
            from.clone(),
        ])
        .await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "spanlens breakdown {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The table, then the same spans as a waterfall of text bars, one row each.
        let (table, bars) = stdout
            .split_once("\nwaterfall (")
            .unwrap_or_else(|| panic!("no waterfall after the table:\n{stdout}"));
        let got: Vec<Vec<String>> = table
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect();
        assert_eq!(
            got,
            table_words(&finals[t]),
            "spanlens breakdown {id}:\n{stdout}"
        );
        let stage_lines = table
            .lines()
            .filter(|l| {
                l.ends_with(" ms") && !l.contains("(derived)") && !l.starts_with("correlation_id")
            })
            .count();
        let stages = finals[t].task_stages.len()
            + finals[t]
                .steps
                .iter()
                .map(|s| s.stages.len())
                .sum::<usize>();
        assert_eq!(stage_lines, stages, "a line per stage:\n{stdout}");
        let bar_lines = bars.lines().filter(|l| l.contains('█')).count();
        assert_eq!(bar_lines, stages, "a bar per stage span:\n{stdout}");
    }
    let linear_table = run_cli(vec![
        "breakdown".into(),
        TASKS[LINEAR].task_uuid.into(),
        "--from".into(),
        from.clone(),
    ])
    .await;
    let table = String::from_utf8_lossy(&linear_table.stdout);
    for line in [
        "correlation_id 5f0c7a1e-0001-4c2b-9d1e-0000c0441d00   task_uuid 0191e3c2-0001-7a00-8000-00000000a11c   total 359.2 ms",
        "  step_claim           step_claim                         tasker-rust-worker              15.0 ms",
        "  handler_execution    execute_handler                    tasker-rust-worker              42.0 ms",
        "  result_submission    submit_result                      tasker-rust-worker              23.0 ms",
        "  result_processing    process_result                     tasker-orchestration             8.0 ms",
    ] {
        assert!(table.contains(line), "missing `{line}` in\n{table}");
    }
    assert!(
        table.contains("worker_overhead") && table.contains("38.0 ms"),
        "{table}"
    );
    let missing = run_cli(vec![
        "breakdown".into(),
        unknown.into(),
        "--from".into(),
        from,
    ])
    .await;
    assert!(!missing.status.success(), "an unknown id fails");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    server.shutdown().await;
}
