//! End-to-end acceptance tests: emulated tasker workflows exported by the real
//! `opentelemetry-otlp` 0.33 exporter into an in-process spanlens, then checked on /metrics.
//!
//! Three emulated services, one `SdkTracerProvider` (and one exporter) each:
//! `tasker-orchestration`, `tasker-rust-worker` and `tasker-ruby-worker`. They run a linear
//! workflow (`rust_e2e_linear` / `mathematical_sequence`, Rust worker) and a diamond workflow
//! (`diamond_workflow` / `parallel_computation`, Ruby worker, with one failed and retried
//! handler). Every span has an explicit start and end time, so every duration is known.
//!
//! The fixture is a flat table of spans, each carrying the stage and `handler_language` the
//! test expects for it. All expected metric values are computed from that table; a few cases
//! are also asserted with literal numbers (`explicit_checks`).
//!
//! gRPC services use the SDK's batch span processor (as tasker-core does, so each service sends
//! one multi-span request); HTTP services use the simple span processor, because the async
//! reqwest client needs a Tokio context that the batch processor's thread does not have. All
//! SDK work runs on a blocking thread inside the runtime and ends with force_flush + shutdown;
//! the test then polls /metrics until spanlens_spans_accepted_total shows every span.

use crate::support;

use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::Compression;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use spanlens::server::Server;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};
use support::histogram::{
    assert_buckets_literal, assert_close, assert_count, assert_count_or_absent, assert_histogram,
};
use support::sdk::{Transport, exporter, service_attributes, start_span};
use support::tasker::{Svc, Vocab};
use support::{Exposition, scrape, start, test_config};

const PROTOCOLS: [&str; 3] = ["grpc", "http_protobuf", "http_json"];

// ----------------------------------------------------------------------------------------------
// Fixture model
// ----------------------------------------------------------------------------------------------

/// The services of this file's scenarios, each with its transport.
impl Svc {
    fn def(self, transport: Transport) -> ServiceDef {
        ServiceDef {
            name: self.name(),
            resource: service_attributes(),
            transport,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    StepClaim,
    HandlerExecution,
    HandlerResolution,
    ResultSubmission,
    TaskCreation,
    StepEnqueueing,
    ResultProcessing,
    TaskFinalization,
}

impl Stage {
    const ALL: [Stage; 8] = [
        Stage::StepClaim,
        Stage::HandlerExecution,
        Stage::HandlerResolution,
        Stage::ResultSubmission,
        Stage::TaskCreation,
        Stage::StepEnqueueing,
        Stage::ResultProcessing,
        Stage::TaskFinalization,
    ];

    fn key(self) -> &'static str {
        match self {
            Stage::StepClaim => "step_claim",
            Stage::HandlerExecution => "handler_execution",
            Stage::HandlerResolution => "handler_resolution",
            Stage::ResultSubmission => "result_submission",
            Stage::TaskCreation => "task_creation",
            Stage::StepEnqueueing => "step_enqueueing",
            Stage::ResultProcessing => "result_processing",
            Stage::TaskFinalization => "task_finalization",
        }
    }

    fn histogram(self) -> String {
        format!("tasker_{}_duration_seconds", self.key())
    }

    fn calls(self) -> String {
        format!("tasker_{}_calls_total", self.key())
    }

    fn errors(self) -> String {
        format!("tasker_{}_errors_total", self.key())
    }
}

/// One emulated service: one SdkTracerProvider with its own resource and exporter.
#[derive(Clone, Debug)]
struct ServiceDef {
    name: &'static str,
    /// Resource attributes besides service.name.
    resource: Vec<KeyValue>,
    transport: Transport,
}

/// One row of the fixture table. Times are microseconds from the scenario's base time.
#[derive(Clone, Debug)]
struct FixtureSpan {
    /// Index into the scenario's ServiceDef list (the provider that emits it).
    emitter: usize,
    /// Expected `service` / `service_name` label.
    service: &'static str,
    /// Expected `handler_language` label.
    language: &'static str,
    name: &'static str,
    kind: SpanKind,
    /// The stage this span must be counted in, or None when it must only reach span metrics.
    stage: Option<Stage>,
    start_us: u64,
    duration_us: u64,
    status: Status,
    attributes: Vec<KeyValue>,
    /// Index of the parent row (same emitter, earlier in the table).
    parent: Option<usize>,
}

impl FixtureSpan {
    fn new(
        svc: Svc,
        name: &'static str,
        stage: Option<Stage>,
        start_us: u64,
        duration_us: u64,
    ) -> FixtureSpan {
        FixtureSpan {
            emitter: svc as usize,
            service: svc.name(),
            language: svc.language(),
            name,
            kind: SpanKind::Internal,
            stage,
            start_us,
            duration_us,
            status: Status::Unset,
            attributes: Vec::new(),
            parent: None,
        }
    }

    fn attrs(mut self, attributes: Vec<KeyValue>) -> Self {
        self.attributes.extend(attributes);
        self
    }

    fn kind(mut self, kind: SpanKind) -> Self {
        self.kind = kind;
        self
    }

    fn status(mut self, status: Status) -> Self {
        self.status = status;
        self
    }

    fn child_of(mut self, parent: usize) -> Self {
        self.parent = Some(parent);
        self
    }

    fn seconds(&self) -> f64 {
        self.duration_us as f64 / 1e6
    }

    fn is_error(&self) -> bool {
        matches!(self.status, Status::Error { .. })
    }

    fn kind_label(&self) -> &'static str {
        match self.kind {
            SpanKind::Internal => "SPAN_KIND_INTERNAL",
            SpanKind::Server => "SPAN_KIND_SERVER",
            SpanKind::Client => "SPAN_KIND_CLIENT",
            SpanKind::Producer => "SPAN_KIND_PRODUCER",
            SpanKind::Consumer => "SPAN_KIND_CONSUMER",
        }
    }

    fn status_label(&self) -> &'static str {
        match self.status {
            Status::Unset => "STATUS_CODE_UNSET",
            Status::Ok => "STATUS_CODE_OK",
            Status::Error { .. } => "STATUS_CODE_ERROR",
        }
    }
}

struct Task {
    number: u32,
    namespace: &'static str,
    name: &'static str,
    task_uuid: String,
    correlation_id: String,
}

impl Task {
    fn new(namespace: &'static str, name: &'static str, number: u32) -> Task {
        Task {
            number,
            namespace,
            name,
            task_uuid: format!("0191e3c2-{number:04x}-7a00-8000-00000000a11c"),
            correlation_id: format!("5f0c7a1e-{number:04x}-4c2b-9d1e-0000c0441d00"),
        }
    }

    fn queue(&self) -> String {
        format!("worker_{}_queue", self.namespace)
    }
}

struct Step {
    name: &'static str,
    step_uuid: String,
    callable: String,
}

impl Step {
    fn new(task: &Task, number: u32, name: &'static str, callable_prefix: &str) -> Step {
        let camel: String = name
            .split('_')
            .map(|part| {
                let mut chars = part.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect();
        Step {
            name,
            step_uuid: format!("0191e3c2-{:04x}-7b00-8000-{number:012x}", task.number),
            callable: format!("{callable_prefix}{camel}Handler"),
        }
    }
}

/// One step execution on a worker, with the durations (µs) of its stages.
struct Exec<'a> {
    svc: Svc,
    task: &'a Task,
    step: &'a Step,
    at: u64,
    claim: u64,
    resolve: u64,
    handler: u64,
    submit: u64,
    status: Status,
}

struct Scenario {
    vocab: Vocab,
    spans: Vec<FixtureSpan>,
}

impl Scenario {
    fn new(vocab: Vocab) -> Scenario {
        Scenario {
            vocab,
            spans: Vec::new(),
        }
    }

    /// Adds a row; with the real vocabulary every span also gets the attributes tracing's
    /// `#[instrument]` spans carry (code.*, thread.*, busy_ns, idle_ns).
    fn add(&mut self, mut span: FixtureSpan) -> usize {
        if self.vocab == Vocab::Real {
            let busy = (span.duration_us * 1000 * 4 / 5) as i64;
            let idle = (span.duration_us * 1000) as i64 - busy;
            span.attributes.extend([
                KeyValue::new("code.filepath", "tasker-shared/src/messaging/client.rs"),
                KeyValue::new("code.namespace", "tasker_shared::messaging::client"),
                KeyValue::new("code.lineno", 212_i64),
                KeyValue::new("thread.id", 7_i64),
                KeyValue::new("thread.name", "tokio-runtime-worker"),
                KeyValue::new("busy_ns", busy),
                KeyValue::new("idle_ns", idle),
            ]);
        }
        self.spans.push(span);
        self.spans.len() - 1
    }

    /// Orchestration creates a task from a request; returns the end time.
    fn create(&mut self, task: &Task, at: u64, dur: u64) -> u64 {
        let o = Svc::Orchestration;
        match self.vocab {
            Vocab::Nominal => {
                self.add(
                    FixtureSpan::new(o, "create_task", Some(Stage::TaskCreation), at, dur).attrs(
                        vec![
                            KeyValue::new("correlation_id", task.correlation_id.clone()),
                            KeyValue::new("task_uuid", task.task_uuid.clone()),
                            KeyValue::new("namespace", task.namespace),
                            KeyValue::new("task_name", task.name),
                        ],
                    ),
                );
                at + dur
            }
            Vocab::Real => {
                self.add(
                    FixtureSpan::new(o, "read_messages", None, at, 1_100).attrs(vec![
                        KeyValue::new("queue", "orchestration_task_requests"),
                        KeyValue::new("limit", 10_i64),
                        KeyValue::new("visibility_timeout", 30_i64),
                    ]),
                );
                let parent_dur = dur + 2_500;
                let parent = self.add(
                    FixtureSpan::new(
                        o,
                        "create_and_enqueue_task_from_request",
                        None,
                        at + 1_200,
                        parent_dur,
                    )
                    .attrs(vec![
                        KeyValue::new("correlation_id", task.correlation_id.clone()),
                        KeyValue::new("task_name", task.name),
                    ]),
                );
                self.add(
                    FixtureSpan::new(
                        o,
                        "create_task_from_request",
                        Some(Stage::TaskCreation),
                        at + 1_300,
                        dur,
                    )
                    .attrs(vec![
                        KeyValue::new("correlation_id", task.correlation_id.clone()),
                        KeyValue::new("task_name", task.name),
                    ])
                    .child_of(parent),
                );
                at + 1_200 + parent_dur
            }
        }
    }

    /// Orchestration enqueues the ready steps of a task; returns the end time.
    fn enqueue(&mut self, task: &Task, steps: &[&Step], at: u64, dur: u64) -> u64 {
        let o = Svc::Orchestration;
        match self.vocab {
            Vocab::Nominal => {
                self.add(
                    FixtureSpan::new(o, "enqueue_steps", Some(Stage::StepEnqueueing), at, dur)
                        .attrs(vec![
                            KeyValue::new("correlation_id", task.correlation_id.clone()),
                            KeyValue::new("task_uuid", task.task_uuid.clone()),
                            KeyValue::new("namespace", task.namespace),
                            KeyValue::new("queue", task.queue()),
                        ]),
                );
                at + dur
            }
            Vocab::Real => {
                let parent_dur = dur + 1_500;
                let parent = self.add(
                    FixtureSpan::new(
                        o,
                        "process_single_task_from_ready_info",
                        None,
                        at,
                        parent_dur,
                    )
                    .attrs(vec![
                        KeyValue::new("task_uuid", task.task_uuid.clone()),
                        KeyValue::new("namespace", task.namespace),
                    ]),
                );
                self.add(
                    FixtureSpan::new(o, "find_viable_steps", None, at + 100, 300)
                        .attrs(vec![KeyValue::new("task_uuid", task.task_uuid.clone())])
                        .child_of(parent),
                );
                let enqueue = self.add(
                    FixtureSpan::new(
                        o,
                        "enqueue_ready_steps",
                        Some(Stage::StepEnqueueing),
                        at + 500,
                        dur,
                    )
                    .attrs(vec![KeyValue::new("task_uuid", task.task_uuid.clone())])
                    .child_of(parent),
                );
                for (i, _step) in steps.iter().enumerate() {
                    self.add(
                        FixtureSpan::new(
                            o,
                            "send_json_message",
                            None,
                            at + 600 + 400 * i as u64,
                            300,
                        )
                        .attrs(vec![KeyValue::new("queue", task.queue())])
                        .child_of(enqueue),
                    );
                }
                at + parent_dur
            }
        }
    }

    /// A worker claims, (resolves,) executes and submits one step; returns the end time.
    fn worker_step(&mut self, e: Exec<'_>) -> u64 {
        let handler_at = e.at + e.claim + 100;
        let submit_at = handler_at + e.handler + 100;
        let success = !matches!(e.status, Status::Error { .. });
        match self.vocab {
            Vocab::Nominal => {
                let common = || {
                    vec![
                        KeyValue::new("correlation_id", e.task.correlation_id.clone()),
                        KeyValue::new("task_uuid", e.task.task_uuid.clone()),
                        KeyValue::new("step_uuid", e.step.step_uuid.clone()),
                        KeyValue::new("step_name", e.step.name),
                        KeyValue::new("namespace", e.task.namespace),
                    ]
                };
                self.add(
                    FixtureSpan::new(e.svc, "step_claim", Some(Stage::StepClaim), e.at, e.claim)
                        .kind(SpanKind::Consumer)
                        .attrs(common())
                        .attrs(vec![KeyValue::new("queue", e.task.queue())]),
                );
                self.add(
                    FixtureSpan::new(
                        e.svc,
                        "execute_handler",
                        Some(Stage::HandlerExecution),
                        handler_at,
                        e.handler,
                    )
                    .attrs(common())
                    .status(e.status.clone()),
                );
                self.add(
                    FixtureSpan::new(
                        e.svc,
                        "submit_result",
                        Some(Stage::ResultSubmission),
                        submit_at,
                        e.submit,
                    )
                    .kind(SpanKind::Producer)
                    .attrs(common())
                    .attrs(vec![
                        KeyValue::new("success", success),
                        KeyValue::new("queue", "orchestration_step_results"),
                    ]),
                );
            }
            Vocab::Real => {
                self.add(
                    FixtureSpan::new(
                        e.svc,
                        "read_messages",
                        Some(Stage::StepClaim),
                        e.at,
                        e.claim,
                    )
                    .attrs(vec![
                        KeyValue::new("queue", e.task.queue()),
                        KeyValue::new("limit", 10_i64),
                        KeyValue::new("visibility_timeout", 30_i64),
                    ]),
                );
                let execution = self.add(
                    FixtureSpan::new(
                        e.svc,
                        "worker.step_execution",
                        Some(Stage::HandlerExecution),
                        handler_at,
                        e.handler,
                    )
                    .attrs(vec![
                        KeyValue::new("correlation_id", e.task.correlation_id.clone()),
                        KeyValue::new("task_uuid", e.task.task_uuid.clone()),
                        KeyValue::new("step_uuid", e.step.step_uuid.clone()),
                        KeyValue::new("step_name", e.step.name),
                        KeyValue::new("namespace", e.task.namespace),
                    ])
                    .status(e.status.clone()),
                );
                self.add(
                    FixtureSpan::new(
                        e.svc,
                        "resolve",
                        Some(Stage::HandlerResolution),
                        handler_at + 50,
                        e.resolve,
                    )
                    .attrs(vec![KeyValue::new("callable", e.step.callable.clone())])
                    .child_of(execution),
                );
                let completion = self.add(
                    FixtureSpan::new(
                        e.svc,
                        "worker.step_completion_received",
                        Some(Stage::ResultSubmission),
                        submit_at,
                        e.submit,
                    )
                    .attrs(vec![
                        KeyValue::new("task_uuid", e.task.task_uuid.clone()),
                        KeyValue::new("step_uuid", e.step.step_uuid.clone()),
                        KeyValue::new("success", success),
                        // Plain attributes with these names; not the OTel ids.
                        KeyValue::new("trace_id", e.task.correlation_id.clone()),
                        KeyValue::new("span_id", format!("span-{}", e.step.step_uuid)),
                    ]),
                );
                self.add(
                    FixtureSpan::new(e.svc, "delete_message", None, submit_at + 100, 400)
                        .attrs(vec![KeyValue::new("queue", e.task.queue())])
                        .child_of(completion),
                );
                self.add(
                    FixtureSpan::new(
                        e.svc,
                        "send_json_message",
                        None,
                        submit_at + e.submit - 1_500,
                        900,
                    )
                    .attrs(vec![KeyValue::new("queue", "orchestration_step_results")])
                    .child_of(completion),
                );
            }
        }
        submit_at + e.submit
    }

    /// Orchestration processes one step result; returns the end time.
    fn process(&mut self, task: &Task, step: &Step, at: u64, dur: u64) -> u64 {
        let o = Svc::Orchestration;
        match self.vocab {
            Vocab::Nominal => {
                self.add(
                    FixtureSpan::new(o, "process_result", Some(Stage::ResultProcessing), at, dur)
                        .attrs(vec![
                            KeyValue::new("correlation_id", task.correlation_id.clone()),
                            KeyValue::new("task_uuid", task.task_uuid.clone()),
                            KeyValue::new("step_uuid", step.step_uuid.clone()),
                        ]),
                );
                at + dur
            }
            Vocab::Real => {
                // Orchestration reading its result queue: same span name as a claim, NOT a claim.
                self.add(
                    FixtureSpan::new(o, "read_messages", None, at, 900).attrs(vec![
                        KeyValue::new("queue", "orchestration_step_results"),
                        KeyValue::new("limit", 10_i64),
                        KeyValue::new("visibility_timeout", 30_i64),
                    ]),
                );
                let outer = self.add(
                    FixtureSpan::new(
                        o,
                        "process_single_step_result",
                        None,
                        at + 1_000,
                        dur + 1_200,
                    )
                    .attrs(vec![KeyValue::new("msg_id", 4_242_i64)]),
                );
                let wrapper = self.add(
                    FixtureSpan::new(
                        o,
                        "handle_step_result_with_metadata",
                        None,
                        at + 1_100,
                        dur + 800,
                    )
                    .attrs(vec![
                        KeyValue::new("step_uuid", step.step_uuid.clone()),
                        KeyValue::new("correlation_id", task.correlation_id.clone()),
                    ])
                    .child_of(outer),
                );
                self.add(
                    FixtureSpan::new(
                        o,
                        "handle_step_execution_result",
                        Some(Stage::ResultProcessing),
                        at + 1_300,
                        dur,
                    )
                    .attrs(vec![KeyValue::new("step_uuid", step.step_uuid.clone())])
                    .child_of(wrapper),
                );
                at + 1_000 + dur + 1_200
            }
        }
    }

    fn finalize(&mut self, task: &Task, at: u64, dur: u64) -> u64 {
        self.add(
            FixtureSpan::new(
                Svc::Orchestration,
                "finalize_task",
                Some(Stage::TaskFinalization),
                at,
                dur,
            )
            .attrs(vec![
                KeyValue::new("task_uuid", task.task_uuid.clone()),
                KeyValue::new("correlation_id", task.correlation_id.clone()),
            ]),
        );
        at + dur
    }
}

// Chosen durations, µs. Linear (Rust worker), per step linear_step_1..4.
const LINEAR_CREATE: u64 = 18_000;
const LINEAR_ENQUEUE: [u64; 4] = [12_000, 7_000, 7_000, 7_000];
const LINEAR_CLAIM: [u64; 4] = [15_000, 3_200, 800, 15_000];
const LINEAR_RESOLVE: [u64; 4] = [400, 300, 300, 2_000];
const LINEAR_HANDLER: [u64; 4] = [42_000, 42_000, 130_000, 610_000];
const LINEAR_SUBMIT: [u64; 4] = [23_000, 23_000, 27_000, 6_000];
const LINEAR_PROCESS: [u64; 4] = [8_000, 8_000, 51_000, 8_000];
/// Exactly 10 ms: on the 0.01 bucket bound, which is inclusive (`le`).
const LINEAR_FINALIZE: u64 = 10_000;

// Diamond (Ruby worker). Executions in order: start, branch_b, branch_c (fails), branch_c
// (retry), end.
const DIAMOND_CREATE: u64 = 20_800;
/// Enqueues: [start], [branch_b, branch_c], [branch_c retry], [end].
const DIAMOND_ENQUEUE: [u64; 4] = [12_000, 14_000, 9_000, 11_000];
const DIAMOND_CLAIM: [u64; 5] = [15_000, 16_000, 14_000, 2_600, 15_000];
const DIAMOND_RESOLVE: [u64; 5] = [900, 700, 700, 600, 800];
const DIAMOND_HANDLER: [u64; 5] = [85_000, 42_000, 1_200_000, 260_000, 42_000];
const DIAMOND_SUBMIT: [u64; 5] = [23_000, 23_000, 31_000, 23_000, 24_000];
const DIAMOND_PROCESS: [u64; 5] = [8_000, 8_000, 47_000, 8_000, 8_000];
const DIAMOND_FINALIZE: u64 = 13_000;

/// rust_e2e_linear / mathematical_sequence on the Rust worker.
fn linear_workflow(s: &mut Scenario, at: u64) -> u64 {
    let task = Task::new("rust_e2e_linear", "mathematical_sequence", 1);
    let prefix = "tasker_example_rs::step_handlers::linear_workflow::";
    let steps: Vec<Step> = [
        "linear_step_1",
        "linear_step_2",
        "linear_step_3",
        "linear_step_4",
    ]
    .iter()
    .enumerate()
    .map(|(i, name)| Step::new(&task, i as u32 + 1, name, prefix))
    .collect();
    let mut t = s.create(&task, at, LINEAR_CREATE);
    for (i, step) in steps.iter().enumerate() {
        t = s.enqueue(&task, &[step], t + 300, LINEAR_ENQUEUE[i]);
        t = s.worker_step(Exec {
            svc: Svc::RustWorker,
            task: &task,
            step,
            at: t + 2_000,
            claim: LINEAR_CLAIM[i],
            resolve: LINEAR_RESOLVE[i],
            handler: LINEAR_HANDLER[i],
            submit: LINEAR_SUBMIT[i],
            status: Status::Unset,
        });
        t = s.process(&task, step, t + 1_500, LINEAR_PROCESS[i]);
    }
    s.finalize(&task, t + 300, LINEAR_FINALIZE)
}

/// diamond_workflow / parallel_computation on the Ruby worker; branch_c fails once (ERROR
/// status on its handler span) and is retried; diamond_end's handler reports status OK.
fn diamond_workflow(s: &mut Scenario, at: u64) -> u64 {
    let task = Task::new("diamond_workflow", "parallel_computation", 2);
    let prefix = "DiamondWorkflow::StepHandlers::";
    let start = Step::new(&task, 1, "diamond_start", prefix);
    let b = Step::new(&task, 2, "diamond_branch_b", prefix);
    let c = Step::new(&task, 3, "diamond_branch_c", prefix);
    let end = Step::new(&task, 4, "diamond_end", prefix);
    let run = |s: &mut Scenario, i: usize, step: &Step, at: u64, status: Status| {
        s.worker_step(Exec {
            svc: Svc::RubyWorker,
            task: &task,
            step,
            at,
            claim: DIAMOND_CLAIM[i],
            resolve: DIAMOND_RESOLVE[i],
            handler: DIAMOND_HANDLER[i],
            submit: DIAMOND_SUBMIT[i],
            status,
        })
    };

    let mut t = s.create(&task, at, DIAMOND_CREATE);
    t = s.enqueue(&task, &[&start], t + 300, DIAMOND_ENQUEUE[0]);
    t = run(s, 0, &start, t + 2_000, Status::Unset);
    t = s.process(&task, &start, t + 1_500, DIAMOND_PROCESS[0]);

    t = s.enqueue(&task, &[&b, &c], t + 300, DIAMOND_ENQUEUE[1]);
    // The branches run in parallel.
    let b_end = run(s, 1, &b, t + 2_000, Status::Unset);
    let c_end = run(
        s,
        2,
        &c,
        t + 2_400,
        Status::error("ZeroDivisionError: divided by 0"),
    );
    let b_done = s.process(&task, &b, b_end + 1_500, DIAMOND_PROCESS[1]);
    let c_done = s.process(&task, &c, c_end + 1_500, DIAMOND_PROCESS[2]);
    t = b_done.max(c_done);

    t = s.enqueue(&task, &[&c], t + 300, DIAMOND_ENQUEUE[2]);
    t = run(s, 3, &c, t + 2_000, Status::Unset);
    t = s.process(&task, &c, t + 1_500, DIAMOND_PROCESS[3]);

    t = s.enqueue(&task, &[&end], t + 300, DIAMOND_ENQUEUE[3]);
    t = run(s, 4, &end, t + 2_000, Status::Ok);
    t = s.process(&task, &end, t + 1_500, DIAMOND_PROCESS[4]);
    s.finalize(&task, t + 300, DIAMOND_FINALIZE)
}

/// Both workflows, one after the other.
fn workflows(vocab: Vocab) -> Vec<FixtureSpan> {
    let mut s = Scenario::new(vocab);
    let t = linear_workflow(&mut s, 0);
    diamond_workflow(&mut s, t + 5_000);
    // Sanity: the table is the size this file's literal checks assume.
    let expected = match vocab {
        Vocab::Nominal => 48,
        Vocab::Real => 131,
    };
    assert_eq!(s.spans.len(), expected, "fixture size");
    s.spans
}

// ----------------------------------------------------------------------------------------------
// Sending with the real OTLP exporter
// ----------------------------------------------------------------------------------------------

/// Emits every fixture row through its service's SdkTracerProvider, then flushes and shuts
/// every provider down. Runs on a blocking thread that has the runtime's context.
async fn send(server: &Server, services: Vec<ServiceDef>, spans: Vec<FixtureSpan>) {
    let grpc = server.grpc_addr();
    let http = server.http_addr();
    let base = SystemTime::now() - Duration::from_secs(120);
    tokio::task::spawn_blocking(move || {
        for (index, service) in services.iter().enumerate() {
            emit_service(index, service, &spans, base, grpc, http);
        }
    })
    .await
    .expect("exporting thread");
}

fn emit_service(
    index: usize,
    service: &ServiceDef,
    spans: &[FixtureSpan],
    base: SystemTime,
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
) {
    let exporter = exporter(service.transport, grpc, http, Duration::from_secs(5));
    let resource = Resource::builder()
        .with_service_name(service.name)
        .with_attributes(service.resource.clone())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let provider = match service.transport {
        Transport::Grpc(_) => builder.with_batch_exporter(exporter),
        Transport::HttpProtobuf | Transport::HttpJson => builder.with_simple_exporter(exporter),
    }
    .build();
    let tracer = provider.tracer("tasker-core");

    let mut contexts: Vec<Option<Context>> = vec![None; spans.len()];
    for (i, row) in spans
        .iter()
        .enumerate()
        .filter(|(_, row)| row.emitter == index)
    {
        let parent = row
            .parent
            .map(|p| contexts[p].as_ref().expect("parent rows come first"));
        let started = start_span(
            &tracer,
            row.name,
            row.kind.clone(),
            base + Duration::from_micros(row.start_us),
            row.attributes.clone(),
            parent,
        );
        if row.status != Status::Unset {
            started.span().set_status(row.status.clone());
        }
        contexts[i] = Some(started);
    }
    for (i, row) in spans
        .iter()
        .enumerate()
        .filter(|(_, row)| row.emitter == index)
    {
        let end = base + Duration::from_micros(row.start_us + row.duration_us);
        contexts[i]
            .as_ref()
            .expect("started")
            .span()
            .end_with_timestamp(end);
    }
    provider.force_flush().expect("force_flush");
    provider.shutdown().expect("provider shutdown");
}

/// Expected accepted spans per protocol label.
fn per_protocol(services: &[ServiceDef], spans: &[FixtureSpan]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for span in spans {
        *counts
            .entry(services[span.emitter].transport.protocol())
            .or_insert(0) += 1;
    }
    counts
}

/// Scrapes until spanlens_spans_accepted_total and the generic span metrics show every span
/// (or 10 s have passed; the assertions then report what is missing).
async fn scrape_when_delivered(
    server: &Server,
    expected: &BTreeMap<&'static str, usize>,
) -> Exposition {
    let total: usize = expected.values().sum();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exposition = scrape(server).await;
        let accepted = expected.iter().all(|(protocol, n)| {
            exposition
                .value("spanlens_spans_accepted_total", &[("protocol", protocol)])
                .unwrap_or(0.0)
                >= *n as f64
        });
        let aggregated: f64 = exposition
            .all("traces_span_metrics_calls_total")
            .iter()
            .map(|s| s.value)
            .sum();
        if (accepted && aggregated >= total as f64) || Instant::now() > deadline {
            return exposition;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ----------------------------------------------------------------------------------------------
// Assertions
// ----------------------------------------------------------------------------------------------

fn stage_labels<'a>(service: &'a str, language: &'a str) -> [(&'static str, &'a str); 2] {
    [("service", service), ("handler_language", language)]
}

/// Every stage histogram and calls/errors counter, computed from the fixture table; the set
/// of (service, handler_language) series of each stage must be exactly the expected one.
fn assert_stage_metrics(exposition: &Exposition, spans: &[FixtureSpan]) {
    let mut expected: BTreeMap<(Stage, &str, &str), Vec<&FixtureSpan>> = BTreeMap::new();
    for span in spans {
        if let Some(stage) = span.stage {
            expected
                .entry((stage, span.service, span.language))
                .or_default()
                .push(span);
        }
    }
    for stage in Stage::ALL {
        let want: BTreeSet<(String, String)> = expected
            .keys()
            .filter(|(s, _, _)| *s == stage)
            .map(|(_, service, language)| (service.to_string(), language.to_string()))
            .collect();
        // The errors counter exists (at 0 when nothing failed) wherever calls does, so that
        // errors / calls ratios have both sides.
        for metric in [
            format!("{}_count", stage.histogram()),
            stage.calls(),
            stage.errors(),
        ] {
            let got: BTreeSet<(String, String)> = exposition
                .all(&metric)
                .iter()
                .map(|s| {
                    (
                        s.labels.get("service").cloned().unwrap_or_default(),
                        s.labels
                            .get("handler_language")
                            .cloned()
                            .unwrap_or_default(),
                    )
                })
                .collect();
            assert_eq!(got, want, "{metric}: (service, handler_language) series");
        }
    }
    for ((stage, service, language), rows) in &expected {
        let labels = stage_labels(service, language);
        let durations: Vec<f64> = rows.iter().map(|r| r.seconds()).collect();
        assert_histogram(exposition, &stage.histogram(), &labels, &durations);
        assert_count(
            exposition.value(&stage.calls(), &labels),
            rows.len(),
            &format!("{} {labels:?}", stage.calls()),
        );
        let errors = rows.iter().filter(|r| r.is_error()).count();
        assert_count(
            exposition.value(&stage.errors(), &labels),
            errors,
            &format!("{} {labels:?}", stage.errors()),
        );
    }
}

/// traces_span_metrics_*: one series per (service_name, span_name, span_kind, status_code),
/// exactly the set the fixture implies, each with the right count and durations.
fn assert_span_metrics(exposition: &Exposition, spans: &[FixtureSpan]) {
    let mut expected: BTreeMap<[&str; 4], Vec<f64>> = BTreeMap::new();
    for span in spans {
        expected
            .entry([
                span.service,
                span.name,
                span.kind_label(),
                span.status_label(),
            ])
            .or_default()
            .push(span.seconds());
    }
    let keys = ["service_name", "span_name", "span_kind", "status_code"];
    let got: BTreeSet<Vec<String>> = exposition
        .all("traces_span_metrics_calls_total")
        .iter()
        .map(|s| {
            keys.iter()
                .map(|k| s.labels.get(*k).cloned().unwrap_or_default())
                .collect()
        })
        .collect();
    let want: BTreeSet<Vec<String>> = expected
        .keys()
        .map(|k| k.iter().map(|v| v.to_string()).collect())
        .collect();
    assert_eq!(got, want, "traces_span_metrics_calls_total series");
    for (values, durations) in &expected {
        let labels: Vec<(&str, &str)> = keys.iter().copied().zip(values.iter().copied()).collect();
        assert_count(
            exposition.value("traces_span_metrics_calls_total", &labels),
            durations.len(),
            &format!("traces_span_metrics_calls_total {labels:?}"),
        );
        assert_histogram(
            exposition,
            "traces_span_metrics_duration_seconds",
            &labels,
            durations,
        );
    }
}

/// spanlens_spans_{received,accepted}_total per protocol equal what was sent; the requests
/// that carried them were timed (spanlens_request_duration_seconds), and no others.
fn assert_protocol_counters(exposition: &Exposition, expected: &BTreeMap<&'static str, usize>) {
    for protocol in PROTOCOLS {
        let want = expected.get(protocol).copied().unwrap_or(0);
        let labels = [("protocol", protocol)];
        let timed = exposition.value("spanlens_request_duration_seconds_count", &labels);
        let took = exposition.value("spanlens_request_duration_seconds_sum", &labels);
        match want {
            0 => assert_eq!((timed, took), (None, None), "{protocol}: no request timed"),
            _ => assert!(
                timed.is_some_and(|n| n >= 1.0) && took.is_some_and(|s| s > 0.0),
                "{protocol}: requests timed {timed:?}, {took:?} s"
            ),
        }
        for counter in [
            "spanlens_spans_received_total",
            "spanlens_spans_accepted_total",
        ] {
            assert_count_or_absent(
                exposition.value(counter, &[("protocol", protocol)]),
                want,
                &format!("{counter}{{protocol={protocol}}}"),
            );
        }
    }
}

/// Literal numbers for a few cases, independent of the computed expectations above.
fn explicit_checks(exposition: &Exposition, vocab: Vocab) {
    let orchestration = stage_labels("tasker-orchestration", "unknown");
    let rust = stage_labels("tasker-rust-worker", "rust");
    let ruby = stage_labels("tasker-ruby-worker", "ruby");
    let handler = "tasker_handler_execution_duration_seconds";
    let claim = "tasker_step_claim_duration_seconds";

    // Rust handler: 42, 42, 130, 610 ms.
    assert_buckets_literal(
        exposition,
        handler,
        &rust,
        [0, 0, 0, 0, 0, 2, 2, 3, 3, 4, 4, 4, 4, 4, 4],
    );
    assert_close(
        exposition.value(&format!("{handler}_sum"), &rust),
        0.824,
        "rust handler sum",
    );
    assert_eq!(
        exposition.value("tasker_handler_execution_calls_total", &rust),
        Some(4.0)
    );
    assert_eq!(
        exposition.value("tasker_handler_execution_errors_total", &rust),
        Some(0.0)
    );

    // Ruby handler: 85, 42, 1200 (ERROR), 260, 42 ms.
    assert_buckets_literal(
        exposition,
        handler,
        &ruby,
        [0, 0, 0, 0, 0, 2, 3, 3, 4, 4, 4, 5, 5, 5, 5],
    );
    assert_close(
        exposition.value(&format!("{handler}_sum"), &ruby),
        1.629,
        "ruby handler sum",
    );
    assert_eq!(
        exposition.value(&format!("{handler}_count"), &ruby),
        Some(5.0)
    );
    assert_eq!(
        exposition.value("tasker_handler_execution_calls_total", &ruby),
        Some(5.0)
    );
    assert_eq!(
        exposition.value("tasker_handler_execution_errors_total", &ruby),
        Some(1.0)
    );

    // Rust claim: 15, 3.2, 0.8, 15 ms.
    assert_buckets_literal(
        exposition,
        claim,
        &rust,
        [1, 1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4],
    );
    assert_close(
        exposition.value(&format!("{claim}_sum"), &rust),
        0.034,
        "rust claim sum",
    );
    // Ruby claim: 15, 16, 14, 2.6, 15 ms.
    assert_buckets_literal(
        exposition,
        claim,
        &ruby,
        [0, 0, 1, 1, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5],
    );
    // Orchestration never claims (in the real vocabulary it does emit read_messages, on
    // orchestration_task_requests / orchestration_step_results).
    assert_eq!(
        exposition.value(
            &format!("{claim}_count"),
            &[("service", "tasker-orchestration")]
        ),
        None
    );
    assert_eq!(
        exposition.value(
            "tasker_step_claim_calls_total",
            &[("service", "tasker-orchestration")]
        ),
        None
    );

    // Orchestration is labelled handler_language="unknown"; creation 18 and 20.8 ms.
    assert_buckets_literal(
        exposition,
        "tasker_task_creation_duration_seconds",
        &orchestration,
        [0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
    );
    assert_close(
        exposition.value("tasker_task_creation_duration_seconds_sum", &orchestration),
        0.0388,
        "creation sum",
    );
    // Finalization 10 ms (exactly on the inclusive 0.01 bound) and 13 ms.
    assert_buckets_literal(
        exposition,
        "tasker_task_finalization_duration_seconds",
        &orchestration,
        [0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
    );
    // Result processing: 8, 8, 51, 8 (linear) and 8, 8, 47, 8, 8 (diamond) ms.
    assert_buckets_literal(
        exposition,
        "tasker_result_processing_duration_seconds",
        &orchestration,
        [0, 0, 0, 7, 7, 8, 9, 9, 9, 9, 9, 9, 9, 9, 9],
    );
    assert_close(
        exposition.value(
            "tasker_result_processing_duration_seconds_sum",
            &orchestration,
        ),
        0.154,
        "result processing sum",
    );
    // Submission: 23, 23, 27, 6 (rust); 23, 23, 31, 23, 24 (ruby) ms.
    assert_eq!(
        exposition.value("tasker_result_submission_calls_total", &rust),
        Some(4.0)
    );
    assert_eq!(
        exposition.value("tasker_result_submission_calls_total", &ruby),
        Some(5.0)
    );
    assert_buckets_literal(
        exposition,
        "tasker_result_submission_duration_seconds",
        &ruby,
        [0, 0, 0, 0, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5],
    );

    // Generic span metrics.
    let calls = "traces_span_metrics_calls_total";
    let span =
        |service: &'static str, name: &'static str, kind: &'static str, status: &'static str| {
            [
                ("service_name", service),
                ("span_name", name),
                ("span_kind", kind),
                ("status_code", status),
            ]
        };
    let (internal, unset) = ("SPAN_KIND_INTERNAL", "STATUS_CODE_UNSET");
    match vocab {
        Vocab::Real => {
            let h = "worker.step_execution";
            let ruby_w = "tasker-ruby-worker";
            assert_eq!(
                exposition.value(calls, &span(ruby_w, h, internal, unset)),
                Some(3.0)
            );
            assert_eq!(
                exposition.value(calls, &span(ruby_w, h, internal, "STATUS_CODE_ERROR")),
                Some(1.0)
            );
            assert_eq!(
                exposition.value(calls, &span(ruby_w, h, internal, "STATUS_CODE_OK")),
                Some(1.0)
            );
            let failed = span(ruby_w, h, internal, "STATUS_CODE_ERROR");
            assert_buckets_literal(
                exposition,
                "traces_span_metrics_duration_seconds",
                &failed,
                [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1],
            );
            assert_close(
                exposition.value("traces_span_metrics_duration_seconds_sum", &failed),
                1.2,
                "failed handler sum",
            );
            // read_messages: 2 task-request reads + 9 step-result reads on orchestration;
            // one claim per execution on the workers.
            let read = "read_messages";
            assert_eq!(
                exposition.value(calls, &span("tasker-orchestration", read, internal, unset)),
                Some(11.0)
            );
            assert_eq!(
                exposition.value(calls, &span("tasker-rust-worker", read, internal, unset)),
                Some(4.0)
            );
            assert_eq!(
                exposition.value(calls, &span(ruby_w, read, internal, unset)),
                Some(5.0)
            );
            // Wrappers that are not stages still reach the generic metrics.
            let wrapper = span(
                "tasker-orchestration",
                "create_and_enqueue_task_from_request",
                internal,
                unset,
            );
            assert_eq!(exposition.value(calls, &wrapper), Some(2.0));
            // resolve (handler_resolution) on the Rust worker: 0.4, 0.3, 0.3, 2.0 ms.
            assert_buckets_literal(
                exposition,
                "tasker_handler_resolution_duration_seconds",
                &rust,
                [3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4],
            );
        }
        Vocab::Nominal => {
            let consumer = "SPAN_KIND_CONSUMER";
            assert_eq!(
                exposition.value(
                    calls,
                    &span("tasker-rust-worker", "step_claim", consumer, unset)
                ),
                Some(4.0)
            );
            assert_eq!(
                exposition.value(
                    calls,
                    &span("tasker-ruby-worker", "step_claim", consumer, unset)
                ),
                Some(5.0)
            );
            let submit = span(
                "tasker-ruby-worker",
                "submit_result",
                "SPAN_KIND_PRODUCER",
                unset,
            );
            assert_eq!(exposition.value(calls, &submit), Some(5.0));
            let failed = span(
                "tasker-ruby-worker",
                "execute_handler",
                internal,
                "STATUS_CODE_ERROR",
            );
            assert_eq!(exposition.value(calls, &failed), Some(1.0));
            assert_close(
                exposition.value("traces_span_metrics_duration_seconds_sum", &failed),
                1.2,
                "failed handler sum",
            );
            // The nominal vocabulary has no resolve span.
            assert_eq!(
                exposition
                    .all("tasker_handler_resolution_duration_seconds_count")
                    .len(),
                0
            );
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Scenarios
// ----------------------------------------------------------------------------------------------

/// Both workflows, every service over `transport`, against a fresh server.
async fn run_workflows(vocab: Vocab, transport: Transport) {
    run_workflows_mixed(vocab, [transport; 3]).await;
}

/// Both workflows; the services (orchestration, Rust worker, Ruby worker) use the given
/// transports; a fresh server.
async fn run_workflows_mixed(vocab: Vocab, transports: [Transport; 3]) {
    let server = start(test_config(|_| {})).await;
    let services: Vec<ServiceDef> = Svc::ALL
        .iter()
        .map(|svc| svc.def(transports[*svc as usize]))
        .collect();
    let spans = workflows(vocab);
    let expected = per_protocol(&services, &spans);

    send(&server, services, spans.clone()).await;
    let exposition = scrape_when_delivered(&server, &expected).await;

    assert_protocol_counters(&exposition, &expected);
    assert_stage_metrics(&exposition, &spans);
    assert_span_metrics(&exposition, &spans);
    explicit_checks(&exposition, vocab);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_nominal_vocabulary() {
    run_workflows(Vocab::Nominal, Transport::Grpc(None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip_real_vocabulary() {
    run_workflows(Vocab::Real, Transport::Grpc(Some(Compression::Gzip))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_zstd_real_vocabulary() {
    run_workflows(Vocab::Real, Transport::Grpc(Some(Compression::Zstd))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_nominal_vocabulary() {
    run_workflows(Vocab::Nominal, Transport::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_real_vocabulary() {
    run_workflows(Vocab::Real, Transport::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_nominal_vocabulary() {
    run_workflows(Vocab::Nominal, Transport::HttpJson).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_real_vocabulary() {
    run_workflows(Vocab::Real, Transport::HttpJson).await;
}

/// One server, three protocols at once: orchestration over gRPC+gzip, the Rust worker over
/// HTTP protobuf, the Ruby worker over HTTP JSON. Metrics must be the same as with one
/// protocol, and each protocol counter must hold exactly its service's spans (77/24/30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_protocols_into_one_server() {
    let spans = workflows(Vocab::Real);
    let counts = |svc: Svc| spans.iter().filter(|s| s.service == svc.name()).count();
    assert_eq!(
        (
            counts(Svc::Orchestration),
            counts(Svc::RustWorker),
            counts(Svc::RubyWorker)
        ),
        (77, 24, 30),
        "fixture per service"
    );
    run_workflows_mixed(
        Vocab::Real,
        [
            Transport::Grpc(Some(Compression::Gzip)),
            Transport::HttpProtobuf,
            Transport::HttpJson,
        ],
    )
    .await;
}

/// handler_language sources in order: span attribute handler.language, resource attribute
/// handler.language, the service.name regex (anchored), else "unknown". The SDK's resource
/// always says telemetry.sdk.language=rust, which must never be used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_language_label_sources() {
    let server = start(test_config(|_| {})).await;
    let grpc = Transport::Grpc(None);
    let def = |name: &'static str, resource: Vec<KeyValue>| ServiceDef {
        name,
        resource,
        transport: grpc,
    };
    let services = vec![
        // 0: generic service name, language only as a resource attribute.
        def(
            "tasker-core",
            vec![KeyValue::new("handler.language", "python")],
        ),
        // 1: Ruby worker by name.
        def("tasker-ruby-worker", vec![]),
        // 2: same service name, but the resource says python: resource beats the name.
        def(
            "tasker-ruby-worker",
            vec![KeyValue::new("handler.language", "python")],
        ),
        // 3: Python worker by name.
        def("tasker-python-worker", vec![]),
        // 4: the regex is anchored: a suffixed name does not match.
        def("tasker-python-worker-canary", vec![]),
    ];
    // (emitter, span attribute handler.language, duration µs, expected label)
    let rows: [(usize, Option<&'static str>, u64, &'static str); 7] = [
        (0, None, 30_000, "python"),
        (0, Some("typescript"), 70_000, "typescript"),
        (1, None, 300_000, "ruby"),
        (1, Some("rust"), 5_000, "rust"),
        (2, None, 45_000, "python"),
        (3, None, 40_000, "python"),
        (4, None, 12_000, "unknown"),
    ];
    let spans: Vec<FixtureSpan> = rows
        .iter()
        .enumerate()
        .map(|(i, (emitter, attribute, duration_us, language))| {
            let mut span = FixtureSpan::new(
                Svc::RustWorker,
                "execute_handler",
                Some(Stage::HandlerExecution),
                i as u64 * 1_000_000,
                *duration_us,
            );
            span.emitter = *emitter;
            span.service = services[*emitter].name;
            span.language = language;
            span.attributes
                .push(KeyValue::new("step_name", "linear_step_1"));
            if let Some(value) = attribute {
                span.attributes
                    .push(KeyValue::new("handler.language", *value));
            }
            span
        })
        .collect();
    let expected = per_protocol(&services, &spans);

    send(&server, services, spans.clone()).await;
    let exposition = scrape_when_delivered(&server, &expected).await;

    assert_protocol_counters(&exposition, &expected);
    assert_stage_metrics(&exposition, &spans);
    assert_span_metrics(&exposition, &spans);
    let calls = "tasker_handler_execution_calls_total";
    for (service, language) in [
        ("tasker-core", "python"),
        ("tasker-core", "typescript"),
        ("tasker-ruby-worker", "ruby"),
        ("tasker-ruby-worker", "rust"),
        ("tasker-ruby-worker", "python"),
        ("tasker-python-worker", "python"),
        ("tasker-python-worker-canary", "unknown"),
    ] {
        assert_eq!(
            exposition.value(calls, &stage_labels(service, language)),
            Some(1.0),
            "{service} {language}"
        );
    }
    assert!(
        exposition
            .all(calls)
            .iter()
            .all(|s| s.labels.get("handler_language").map(String::as_str) != Some("")),
        "no empty handler_language"
    );
    server.shutdown().await;
}
