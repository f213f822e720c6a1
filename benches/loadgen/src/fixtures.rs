//! Realistic tasker workflow spans, generated deterministically from a seed: the one fixtures
//! builder shared by tests, benches and the load generator (`spanlens-loadgen`).
//!
//! A [`Fixtures`] simulates tasks of the workflows in `docs/tasker-spans.md` of the spanlens
//! repository (linear, diamond, mixed DAG, tree, batch) running on an orchestration service
//! and Rust, Ruby and Python workers, and emits the spans those services would export:
//! mostly tasker-core's real vocabulary (`read_messages` on `worker_<namespace>_queue`,
//! `worker.step_execution`, `resolve`, `worker.step_completion_received`,
//! `create_task_from_request`, `enqueue_ready_steps`, `handle_step_execution_result`,
//! `finalize_task`, `send_json_message` ...) and, for a share of tasks, the design note's
//! nominal names (`step_claim`, `execute_handler`, `submit_result`, `create_task`,
//! `enqueue_steps`, `process_result`). Every span carries eight attributes (its own, such as
//! `correlation_id`, `task_uuid`, `step_uuid`, `step_name`, `namespace`, `queue`, then the
//! tracing ones: `code.filepath`, `thread.name`, `busy_ns` ...), which makes a span about
//! 400 bytes on the wire. Durations are drawn log-normally around the figures of
//! `docs/tasker-spans.md` (claim 15 ms, handler 42 ms, submission 23 ms, task creation
//! 18 ms ...).
//!
//! The same seed and the same calls give byte-identical requests. Spans flow as a stream:
//! a request takes the next `n` spans, so consecutive requests continue the same tasks.
//!
//! ```
//! use spanlens_loadgen::fixtures::Fixtures;
//! let mut fixtures = Fixtures::new(42);
//! let bodies = fixtures.encoded_requests(2, 512);
//! assert_eq!(bodies.len(), 2);
//! let batch = spanlens::otlp::decode::Batch::decode(&bodies[0]).unwrap();
//! assert_eq!(batch.spans.len(), 512);
//! ```

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use prost::Message;
use std::collections::VecDeque;

/// Spans per request when nobody says otherwise (the rust SDK's batch exporter default).
pub const DEFAULT_SPANS_PER_REQUEST: usize = 512;

/// The services that export spans, in the order their `ResourceSpans` appear in a request.
pub const SERVICES: [&str; 4] = [
    "tasker-orchestration",
    "tasker-rust-worker",
    "tasker-ruby-worker",
    "tasker-python-worker",
];

/// Attributes per span.
pub const ATTRIBUTES_PER_SPAN: usize = 8;

/// Start of the simulated clock: 2025-06-15T12:00:00Z in Unix nanoseconds.
const EPOCH_NANOS: u64 = 1_750_000_000_000_000_000;
const MS: f64 = 1_000_000.0;
/// `SpanKind::Internal`: what tracing's `#[instrument]` spans export as.
const KIND_INTERNAL: i32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Orchestration = 0,
    RustWorker = 1,
    RubyWorker = 2,
    PythonWorker = 3,
}

impl Service {
    fn worker(language: usize) -> Service {
        [
            Service::RustWorker,
            Service::RubyWorker,
            Service::PythonWorker,
        ][language]
    }
}

/// One workflow of docs/tasker-spans.md: the Rust namespace, the Ruby namespace (Python adds `_py`
/// to the Ruby one and to every step name), the task name and its steps.
struct Workflow {
    rust_namespace: &'static str,
    ffi_namespace: &'static str,
    task_name: &'static str,
    steps: &'static [&'static str],
}

const WORKFLOWS: [Workflow; 5] = [
    Workflow {
        rust_namespace: "rust_e2e_linear",
        ffi_namespace: "linear_workflow",
        task_name: "mathematical_sequence",
        steps: &[
            "linear_step_1",
            "linear_step_2",
            "linear_step_3",
            "linear_step_4",
        ],
    },
    Workflow {
        rust_namespace: "rust_e2e_diamond",
        ffi_namespace: "diamond_workflow",
        task_name: "diamond_pattern",
        steps: &[
            "diamond_start",
            "diamond_branch_b",
            "diamond_branch_c",
            "diamond_end",
        ],
    },
    Workflow {
        rust_namespace: "rust_e2e_mixed_dag",
        ffi_namespace: "mixed_dag_workflow",
        task_name: "complex_dag",
        steps: &[
            "dag_init",
            "dag_process_left",
            "dag_process_right",
            "dag_validate",
            "dag_transform",
            "dag_analyze",
            "dag_finalize",
        ],
    },
    Workflow {
        rust_namespace: "rust_e2e_tree",
        ffi_namespace: "tree_workflow",
        task_name: "hierarchical_tree",
        steps: &[
            "tree_root",
            "tree_branch_left",
            "tree_branch_right",
            "tree_leaf_d",
            "tree_leaf_e",
            "tree_leaf_f",
            "tree_leaf_g",
            "tree_final_convergence",
        ],
    },
    Workflow {
        rust_namespace: "csv_processing_rust",
        ffi_namespace: "csv_processing",
        task_name: "csv_product_inventory_analyzer",
        steps: &[
            "analyze_csv",
            "process_csv_batch_001",
            "process_csv_batch_002",
            "process_csv_batch_003",
            "process_csv_batch_004",
            "process_csv_batch_005",
            "aggregate_csv_results",
        ],
    },
];

/// A small, fast, seeded generator (xorshift64*); no external crate, same output everywhere.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() <= p
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// A duration in nanoseconds, log-normal with the given median (ms) and spread.
    fn millis(&mut self, median_ms: f64, sigma: f64) -> u64 {
        ((median_ms * MS) * (sigma * self.normal()).exp()).max(1_000.0) as u64
    }

    /// Non-zero random id of N bytes.
    fn id<const N: usize>(&mut self) -> Vec<u8> {
        let mut id = Vec::with_capacity(N);
        while id.len() < N {
            id.extend_from_slice(&self.next_u64().to_le_bytes()[..(N - id.len()).min(8)]);
        }
        if id.iter().all(|&b| b == 0) {
            id[0] = 1;
        }
        id
    }

    /// A version-4 UUID in its text form.
    fn uuid(&mut self) -> String {
        let (a, b) = (self.next_u64(), self.next_u64());
        let a = (a & !0xf000) | 0x4000;
        let b = (b & !(0xc << 60)) | (0x8 << 60);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }
}

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.into()))
}

fn int(key: &str, value: i64) -> KeyValue {
    attribute(key, any_value::Value::IntValue(value))
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// The state of one task: ids shared by its spans.
struct Task {
    correlation_id: String,
    task_uuid: String,
    workflow: &'static Workflow,
    /// 0 rust, 1 ruby, 2 python.
    language: usize,
    nominal: bool,
}

impl Task {
    fn namespace(&self) -> String {
        match self.language {
            0 => self.workflow.rust_namespace.to_string(),
            1 => self.workflow.ffi_namespace.to_string(),
            _ => format!("{}_py", self.workflow.ffi_namespace),
        }
    }

    fn step_name(&self, step: &str, suffix: &str) -> String {
        match self.language {
            2 => format!("{step}{suffix}_py"),
            _ => format!("{step}{suffix}"),
        }
    }

    fn callable(&self, step: &str) -> String {
        let camel: String = step
            .split('_')
            .map(|part| {
                let mut chars = part.chars();
                chars.next().map_or(String::new(), |c| {
                    c.to_ascii_uppercase().to_string() + chars.as_str()
                })
            })
            .collect();
        match self.language {
            0 => format!(
                "tasker_example_rs::step_handlers::{}::{camel}Handler",
                self.workflow.rust_namespace
            ),
            1 => format!(
                "{}::StepHandlers::{camel}Handler",
                self.workflow.ffi_namespace
            ),
            _ => format!(
                "{}.step_handlers.{camel}Handler",
                self.workflow.ffi_namespace
            ),
        }
    }
}

/// Where a span comes from in tasker-core's source, for the `code.*` and `thread.*`
/// attributes every tracing span carries.
fn code_location(name: &str) -> (&'static str, &'static str, i64) {
    match name {
        "read_messages" | "send_json_message" | "delete_message" => (
            "tasker-shared/src/messaging/clients/pgmq_client.rs",
            "tasker_shared::messaging::clients",
            212,
        ),
        "worker.step_execution" | "resolve" | "execute_handler" | "step_claim" => (
            "tasker-worker/src/worker/command_processor.rs",
            "tasker_worker::worker::command_processor",
            348,
        ),
        "worker.step_completion_received" | "submit_result" => (
            "tasker-worker/src/worker/orchestration_result_sender.rs",
            "tasker_worker::worker::orchestration_result_sender",
            97,
        ),
        _ => (
            "tasker-orchestration/src/orchestration/lifecycle/task_initializer.rs",
            "tasker_orchestration::orchestration::lifecycle",
            154,
        ),
    }
}

/// Deterministic generator of realistic tasker spans and OTLP requests.
///
/// Not `Sync`; give each thread its own, with its own seed.
#[derive(Debug)]
pub struct Fixtures {
    rng: Rng,
    /// Simulated wall clock, Unix nanoseconds.
    clock: u64,
    /// Spans generated but not yet handed out, with the index of their service.
    pending: VecDeque<(usize, Span)>,
    nominal_share: f64,
    error_rate: f64,
    step_suffix: String,
}

impl Fixtures {
    /// A generator whose output depends only on `seed` and the calls made.
    pub fn new(seed: u64) -> Fixtures {
        Fixtures {
            rng: Rng::new(seed),
            clock: EPOCH_NANOS,
            pending: VecDeque::new(),
            nominal_share: 0.25,
            error_rate: 0.01,
            step_suffix: String::new(),
        }
    }

    /// Share of tasks (0.0 to 1.0) that use the design note's nominal span names instead of
    /// tasker-core's (default 0.25).
    pub fn nominal_share(mut self, share: f64) -> Fixtures {
        self.nominal_share = share.clamp(0.0, 1.0);
        self
    }

    /// Share of handler executions that fail with status ERROR (default 0.01).
    pub fn error_rate(mut self, rate: f64) -> Fixtures {
        self.error_rate = rate.clamp(0.0, 1.0);
        self
    }

    /// Appended to every step name (before the `_py` of Python workers' steps): new names,
    /// and so new label values, for the same workflows (default none).
    pub fn step_suffix(mut self, suffix: &str) -> Fixtures {
        self.step_suffix = suffix.to_string();
        self
    }

    /// The next `spans` spans of the stream, grouped by service into one request.
    pub fn request(&mut self, spans: usize) -> ExportTraceServiceRequest {
        while self.pending.len() < spans {
            self.task();
        }
        let mut by_service: [Vec<Span>; SERVICES.len()] = Default::default();
        for (service, span) in self.pending.drain(..spans) {
            by_service[service].push(span);
        }
        ExportTraceServiceRequest {
            resource_spans: by_service
                .into_iter()
                .enumerate()
                .filter(|(_, spans)| !spans.is_empty())
                .map(|(service, spans)| ResourceSpans {
                    resource: Some(resource(service)),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "tasker-core".into(),
                            version: "0.1.0".into(),
                            ..Default::default()
                        }),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// `n` requests of `spans` spans each, protobuf-encoded.
    pub fn encoded_requests(&mut self, n: usize, spans: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| self.request(spans).encode_to_vec())
            .collect()
    }

    /// One span for each of `services` × `span_names` (service `svc-<i>`, span `op-<j>`,
    /// names no classification rule matches): a request that creates that many distinct
    /// span-metrics histogram series, for exposition benchmarks.
    pub fn cardinality_request(
        &mut self,
        services: usize,
        span_names: usize,
    ) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: (0..services)
                .map(|s| ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![string("service.name", format!("svc-{s:03}"))],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans: (0..span_names)
                            .map(|n| {
                                let start = self.clock;
                                let duration = self.rng.millis(20.0, 1.0);
                                self.clock += 10_000;
                                Span {
                                    trace_id: self.rng.id::<16>(),
                                    span_id: self.rng.id::<8>(),
                                    name: format!("op-{n:04}"),
                                    kind: KIND_INTERNAL,
                                    start_time_unix_nano: start,
                                    end_time_unix_nano: start + duration,
                                    ..Default::default()
                                }
                            })
                            .collect(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// Simulates one task and queues its spans.
    fn task(&mut self) {
        let rng = &mut self.rng;
        let task = Task {
            correlation_id: rng.uuid(),
            task_uuid: rng.uuid(),
            workflow: &WORKFLOWS[rng.below(WORKFLOWS.len())],
            language: rng.below(3),
            nominal: rng.chance(self.nominal_share),
        };
        // Tasks start a few milliseconds apart.
        self.clock += self.rng.millis(4.0, 0.5);
        let mut t = self.clock;
        let namespace = task.namespace();
        let worker_queue = format!("worker_{namespace}_queue");
        let orch = Service::Orchestration;
        let nominal = task.nominal;

        // Task creation and the first enqueueing, on one orchestration trace.
        let trace = self.rng.id::<16>();
        let create = self.rng.millis(18.0, 0.35);
        let enqueue = self.rng.millis(12.0, 0.4);
        if nominal {
            let ids = [string("correlation_id", &task.correlation_id)];
            self.span(orch, &trace, None, "create_task", t, create, &ids);
            let ids = [
                string("correlation_id", &task.correlation_id),
                string("task_uuid", &task.task_uuid),
                string("namespace", &namespace),
            ];
            self.span(
                orch,
                &trace,
                None,
                "enqueue_steps",
                t + create,
                enqueue,
                &ids,
            );
        } else {
            let ids = [
                string("correlation_id", &task.correlation_id),
                string("task_name", task.workflow.task_name),
            ];
            let parent = self.span(
                orch,
                &trace,
                None,
                "create_and_enqueue_task_from_request",
                t,
                create + enqueue + 500_000,
                &ids,
            );
            self.span(
                orch,
                &trace,
                Some(&parent),
                "create_task_from_request",
                t + 100_000,
                create,
                &ids,
            );
            let ids = [
                string("task_uuid", &task.task_uuid),
                string("namespace", &namespace),
            ];
            let ready = self.span(
                orch,
                &trace,
                Some(&parent),
                "process_single_task_from_ready_info",
                t + create,
                enqueue + 200_000,
                &ids,
            );
            let ids = [string("task_uuid", &task.task_uuid)];
            self.span(
                orch,
                &trace,
                Some(&ready),
                "enqueue_ready_steps",
                t + create + 100_000,
                enqueue,
                &ids,
            );
            let ids = [
                string("queue", &worker_queue),
                string("correlation_id", &task.correlation_id),
            ];
            let send = self.rng.millis(1.5, 0.4);
            self.span(
                orch,
                &trace,
                Some(&ready),
                "send_json_message",
                t + create + enqueue - send,
                send,
                &ids,
            );
        }
        t += create + enqueue;

        // Every step: claimed, executed and submitted by a worker (its own trace, since no
        // context crosses the queue), then its result processed by orchestration.
        let worker = Service::worker(task.language);
        let ffi_ms = if task.language == 0 { 0.0 } else { 5.0 };
        for step in task.workflow.steps {
            let step_uuid = self.rng.uuid();
            let step_name = task.step_name(step, &self.step_suffix);
            let trace = self.rng.id::<16>();
            let claim = self.rng.millis(15.0, 0.4);
            let execute = self.rng.millis(42.0 + ffi_ms, 0.45);
            let submit = self.rng.millis(23.0, 0.35);
            let process = self.rng.millis(8.0, 0.4);
            let failed = self.rng.chance(self.error_rate);
            let step_ids = |correlation: &str| {
                [
                    string("correlation_id", correlation),
                    string("task_uuid", &task.task_uuid),
                    string("step_uuid", &step_uuid),
                    string("step_name", &step_name),
                    string("namespace", &namespace),
                ]
            };
            if nominal {
                let ids = step_ids(&task.correlation_id);
                self.span(worker, &trace, None, "step_claim", t, claim, &ids);
                let exec = self.span(
                    worker,
                    &trace,
                    None,
                    "execute_handler",
                    t + claim,
                    execute,
                    &ids,
                );
                if failed {
                    self.fail(&exec);
                }
                self.span(
                    worker,
                    &trace,
                    None,
                    "submit_result",
                    t + claim + execute,
                    submit,
                    &ids,
                );
                let trace = self.rng.id::<16>();
                self.span(
                    orch,
                    &trace,
                    None,
                    "process_result",
                    t + claim + execute + submit,
                    process,
                    &ids,
                );
            } else {
                let ids = [
                    string("queue", &worker_queue),
                    int("limit", 10),
                    int("visibility_timeout", 30),
                ];
                self.span(worker, &trace, None, "read_messages", t, claim, &ids);
                // Some worker spans carry a fresh correlation id (docs/tasker-spans.md).
                let correlation = if self.rng.chance(0.2) {
                    self.rng.uuid()
                } else {
                    task.correlation_id.clone()
                };
                let exec_trace = self.rng.id::<16>();
                let exec = self.span(
                    worker,
                    &exec_trace,
                    None,
                    "worker.step_execution",
                    t + claim,
                    execute,
                    &step_ids(&correlation),
                );
                if failed {
                    self.fail(&exec);
                }
                let resolve = self.rng.millis(0.25, 0.5);
                let ids = [string("callable", task.callable(step))];
                self.span(
                    worker,
                    &exec_trace,
                    Some(&exec),
                    "resolve",
                    t + claim + 50_000,
                    resolve,
                    &ids,
                );
                let done_at = t + claim + execute;
                let ids = [
                    string("task_uuid", &task.task_uuid),
                    string("step_uuid", &step_uuid),
                    attribute("success", any_value::Value::BoolValue(!failed)),
                    string("trace_id", &task.correlation_id),
                    string("span_id", format!("span-{step_uuid}")),
                ];
                let completion = self.span(
                    worker,
                    &exec_trace,
                    None,
                    "worker.step_completion_received",
                    done_at,
                    submit,
                    &ids,
                );
                let send = self.rng.millis(1.5, 0.4);
                let ids = [
                    string("queue", "orchestration_step_results"),
                    string("correlation_id", &correlation),
                ];
                self.span(
                    worker,
                    &exec_trace,
                    Some(&completion),
                    "send_json_message",
                    done_at + submit - send,
                    send,
                    &ids,
                );
                let trace = self.rng.id::<16>();
                let at = done_at + submit;
                let msg_id = (self.rng.next_u64() % 1_000_000) as i64;
                let outer = self.span(
                    orch,
                    &trace,
                    None,
                    "process_single_step_result",
                    at,
                    process + 300_000,
                    &[int("msg_id", msg_id)],
                );
                let ids = [
                    string("step_uuid", &step_uuid),
                    string("correlation_id", &task.correlation_id),
                ];
                let with_metadata = self.span(
                    orch,
                    &trace,
                    Some(&outer),
                    "handle_step_result_with_metadata",
                    at + 100_000,
                    process + 100_000,
                    &ids,
                );
                self.span(
                    orch,
                    &trace,
                    Some(&with_metadata),
                    "handle_step_execution_result",
                    at + 150_000,
                    process,
                    &[string("step_uuid", &step_uuid)],
                );
            }
            // Steps of one task run one after another here; parallel branches only
            // change timestamps, which no metric reads.
            t += claim + execute + submit + process;
        }

        if !nominal {
            let trace = self.rng.id::<16>();
            let finalize = self.rng.millis(10.0, 0.4);
            let ids = [
                string("task_uuid", &task.task_uuid),
                string("correlation_id", &task.correlation_id),
            ];
            self.span(orch, &trace, None, "finalize_task", t, finalize, &ids);
        }
    }

    /// Marks the last queued span with `span_id` as failed.
    fn fail(&mut self, span_id: &[u8]) {
        if let Some((_, span)) = self
            .pending
            .iter_mut()
            .rev()
            .find(|(_, s)| s.span_id == span_id)
        {
            span.status = Some(Status {
                message: "step handler raised: StepExecutionError".into(),
                code: status::StatusCode::Error as i32,
            });
        }
    }

    /// Queues one span; its own attributes first, then the tracing ones up to
    /// [`ATTRIBUTES_PER_SPAN`]. Returns its span id, for children.
    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        service: Service,
        trace_id: &[u8],
        parent: Option<&[u8]>,
        name: &str,
        start: u64,
        duration: u64,
        own: &[KeyValue],
    ) -> Vec<u8> {
        let span_id = self.rng.id::<8>();
        let (filepath, namespace, lineno) = code_location(name);
        let busy = duration * (60 + self.rng.below(35) as u64) / 100;
        let thread = if service == Service::Orchestration {
            "tokio-runtime-worker"
        } else {
            "tasker-worker-command-processor"
        };
        let mut attributes = own.to_vec();
        let tracing = [
            string("code.filepath", filepath),
            string("thread.name", thread),
            int("busy_ns", busy as i64),
            int("code.lineno", lineno),
            int("idle_ns", (duration - busy) as i64),
            string("code.namespace", namespace),
            int("thread.id", 2 + self.rng.below(8) as i64),
        ];
        let room = ATTRIBUTES_PER_SPAN.saturating_sub(attributes.len());
        attributes.extend(tracing.into_iter().take(room));
        self.pending.push_back((
            service as usize,
            Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.clone(),
                parent_span_id: parent.map(<[u8]>::to_vec).unwrap_or_default(),
                name: name.to_string(),
                kind: KIND_INTERNAL,
                start_time_unix_nano: start,
                end_time_unix_nano: start + duration,
                attributes,
                ..Default::default()
            },
        ));
        span_id
    }
}

fn resource(service: usize) -> Resource {
    let name = SERVICES[service];
    let mut attributes = vec![
        string("service.name", name),
        string("service.version", "0.1.0"),
        string("deployment.environment", "bench"),
        string("telemetry.sdk.language", "rust"),
        string("telemetry.sdk.name", "opentelemetry"),
    ];
    if let Some(language) = name
        .strip_prefix("tasker-")
        .and_then(|s| s.strip_suffix("-worker"))
    {
        attributes.push(string("worker.id", format!("test-{language}-worker-001")));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// An encoded request (protobuf or OTLP/JSON) whose ids can be renewed cheaply before each
/// send, so that a load generator or a benchmark can replay a few pre-encoded requests
/// without the receiver seeing the same span twice (spanlens drops resent spans, and its
/// join window would take repeated `step_uuid`s for late spans).
///
/// Generation `g` XORs `g` into the first four bytes of every trace, span and parent span id,
/// and into the first eight hex digits of every UUID in an attribute value (correlation_id,
/// task_uuid, step_uuid, and the `span-<uuid>` of `span_id`): the same UUID becomes the
/// same new UUID throughout one generation, so spans of one task still join. Generation 0
/// is the request as encoded.
#[derive(Debug, Clone)]
pub struct Renewable {
    bytes: Vec<u8>,
    /// Offsets of binary ids (protobuf).
    binary: Vec<usize>,
    /// Offsets of eight hex digits to renew (JSON ids, UUIDs).
    hex: Vec<usize>,
}

impl Renewable {
    /// A protobuf `ExportTraceServiceRequest`; panics if it does not decode.
    pub fn protobuf(bytes: Vec<u8>) -> Renewable {
        let (mut binary, mut hex) = (Vec::new(), Vec::new());
        {
            let batch = spanlens::otlp::decode::Batch::decode(&bytes).expect("a valid request");
            let base = bytes.as_ptr() as usize;
            let offset = |s: &[u8]| s.as_ptr() as usize - base;
            for span in &batch.spans {
                for id in [span.trace_id, span.span_id, span.parent_span_id] {
                    if id.len() >= 4 {
                        binary.push(offset(id));
                    }
                }
                for attribute in batch.span_attributes(span) {
                    if let spanlens::otlp::decode::AnyValue::Str(v) = attribute.value
                        && v.len() >= 36
                        && is_uuid(&v.as_bytes()[v.len() - 36..])
                    {
                        hex.push(offset(v.as_bytes()) + v.len() - 36);
                    }
                }
            }
        }
        Renewable { bytes, binary, hex }
    }

    /// An OTLP/JSON request: hex `traceId`, `spanId`, `parentSpanId` and UUIDs are renewed.
    pub fn json(bytes: Vec<u8>) -> Renewable {
        let mut hex = Vec::new();
        for key in [
            &b"\"traceId\":\""[..],
            b"\"spanId\":\"",
            b"\"parentSpanId\":\"",
        ] {
            let mut at = 0;
            while let Some(i) = find(&bytes[at..], key) {
                let value = at + i + key.len();
                if bytes.len() >= value + 8
                    && bytes[value..value + 8].iter().all(u8::is_ascii_hexdigit)
                {
                    hex.push(value);
                }
                at = value;
            }
        }
        let mut i = 0;
        while i + 36 <= bytes.len() {
            if is_uuid(&bytes[i..i + 36]) {
                hex.push(i);
                i += 36;
            } else {
                i += 1;
            }
        }
        Renewable {
            bytes,
            binary: Vec::new(),
            hex,
        }
    }

    /// The request as encoded (generation 0).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Ids renewed per generation: binary ids and hex/UUID values.
    pub fn id_count(&self) -> usize {
        self.binary.len() + self.hex.len()
    }

    /// Appends generation `generation` of the request to `out`.
    pub fn renew_into(&self, generation: u32, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let body = &mut out[start..];
        let xor = generation.to_le_bytes();
        for &o in &self.binary {
            for (b, x) in body[o..o + 4].iter_mut().zip(xor) {
                *b ^= x;
            }
        }
        for &o in &self.hex {
            renew_hex(&mut body[o..o + 8], generation);
        }
    }

    /// A UUID of the request (a `correlation_id`, say) as generation `generation` has it.
    pub fn renew_uuid(uuid: &str, generation: u32) -> String {
        let mut bytes = uuid.as_bytes().to_vec();
        renew_hex(&mut bytes[..8], generation);
        String::from_utf8(bytes).expect("hex digits stay ASCII")
    }
}

/// XORs `generation` into eight hex digits.
fn renew_hex(digits: &mut [u8], generation: u32) {
    let text = std::str::from_utf8(digits).expect("hex digits");
    let value = u32::from_str_radix(text, 16).expect("hex digits") ^ generation;
    digits.copy_from_slice(format!("{value:08x}").as_bytes());
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// 8-4-4-4-12 hex digits.
fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The string values of span attribute `key` in `request`, in order.
pub fn string_values<'r>(
    request: &'r ExportTraceServiceRequest,
    key: &'r str,
) -> impl Iterator<Item = &'r str> + 'r {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .flat_map(|s| &s.attributes)
        .filter(move |a| a.key == key)
        .filter_map(|a| match a.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(v) => Some(v.as_str()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use spanlens::config::Config;
    use spanlens::metrics::exposition::{Format, render};
    use spanlens::otlp::Protocol;
    use spanlens::otlp::decode::Batch;
    use spanlens::pipeline::Pipeline;
    use std::collections::BTreeSet;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = Fixtures::new(7).encoded_requests(3, 100);
        let b = Fixtures::new(7).encoded_requests(3, 100);
        let c = Fixtures::new(8).encoded_requests(3, 100);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a[0], a[1], "the stream moves on between requests");
    }

    #[test]
    fn requests_have_the_asked_span_count_and_about_400_bytes_per_span() {
        let mut fixtures = Fixtures::new(1);
        for spans in [1, 7, 512, 2000] {
            let bytes = fixtures.request(spans).encode_to_vec();
            let batch = Batch::decode(&bytes).unwrap();
            assert_eq!(batch.spans.len(), spans);
        }
        let bodies = fixtures.encoded_requests(20, DEFAULT_SPANS_PER_REQUEST);
        let total: usize = bodies.iter().map(Vec::len).sum();
        let per_span = total / (20 * DEFAULT_SPANS_PER_REQUEST);
        assert!((350..=450).contains(&per_span), "{per_span} bytes per span");
    }

    #[test]
    fn every_span_is_valid_and_has_eight_attributes() {
        let mut fixtures = Fixtures::new(3).error_rate(0.2);
        let mut names = BTreeSet::new();
        let mut services = BTreeSet::new();
        let mut errors = 0;
        for bytes in fixtures.encoded_requests(10, DEFAULT_SPANS_PER_REQUEST) {
            let batch = Batch::decode(&bytes).unwrap();
            for span in &batch.spans {
                assert_eq!(span.problem(), None, "{span:?}");
                assert_eq!(batch.span_attributes(span).len(), ATTRIBUTES_PER_SPAN);
                assert!(span.duration_nanos() >= 1_000);
                names.insert(span.name.to_string());
                services.insert(
                    batch.resources[span.resource]
                        .service_name
                        .unwrap()
                        .to_string(),
                );
                errors += usize::from(span.is_error());
            }
        }
        assert_eq!(services.len(), SERVICES.len());
        assert!(errors > 0);
        for name in [
            "step_claim",
            "execute_handler",
            "submit_result",
            "create_task",
            "enqueue_steps",
            "process_result",
            "read_messages",
            "worker.step_execution",
            "resolve",
            "worker.step_completion_received",
            "create_task_from_request",
            "enqueue_ready_steps",
            "handle_step_execution_result",
            "finalize_task",
            "send_json_message",
        ] {
            assert!(names.contains(name), "no {name} span in {names:?}");
        }
    }

    #[test]
    fn the_default_profile_fills_every_stage_from_fixtures() {
        let config = Config::default_profile();
        let pipeline = Pipeline::new(&config).unwrap();
        for bytes in Fixtures::new(5).encoded_requests(8, DEFAULT_SPANS_PER_REQUEST) {
            let outcome = pipeline.ingest(Protocol::Grpc, &bytes).unwrap();
            assert_eq!((outcome.accepted, outcome.rejected), (512, 0));
        }
        let text = render(&pipeline.snapshot(), Format::Text);
        let orchestration = [
            "task_creation",
            "step_enqueueing",
            "result_processing",
            "task_finalization",
        ];
        for (name, stage) in &config.stages {
            let series: Vec<(String, &str)> = if orchestration.contains(&name.as_str()) {
                vec![("tasker-orchestration".into(), "unknown")]
            } else {
                ["rust", "ruby", "python"]
                    .iter()
                    .map(|l| (format!("tasker-{l}-worker"), *l))
                    .collect()
            };
            for (service, language) in series {
                let series = format!(
                    "{}_count{{service=\"{service}\",handler_language=\"{language}\"}}",
                    stage.histogram
                );
                assert!(text.contains(&series), "missing {series}");
            }
        }
    }

    #[test]
    fn otlp_json_of_a_fixture_request_decodes_to_the_same_spans() {
        let request = Fixtures::new(9).request(50);
        let json = serde_json::to_vec(&request).unwrap();
        let bytes = spanlens::otlp::json::to_protobuf(&json).unwrap();
        assert_eq!(bytes, request.encode_to_vec());
    }

    #[test]
    fn cardinality_request_makes_distinct_series() {
        let pipeline = Pipeline::new(&Config::default_profile()).unwrap();
        let bytes = Fixtures::new(1).cardinality_request(10, 20).encode_to_vec();
        pipeline.ingest(Protocol::Grpc, &bytes).unwrap();
        let text = render(&pipeline.snapshot(), Format::Text);
        let series = text
            .lines()
            .filter(|l| l.starts_with("traces_span_metrics_duration_seconds_count"))
            .count();
        assert_eq!(series, 200);
    }

    #[test]
    fn renewed_requests_have_new_ids_and_keep_joins() {
        let request = Fixtures::new(11).request(200);
        let renewable = Renewable::protobuf(request.encode_to_vec());
        assert!(renewable.id_count() > 2 * 200);
        let mut out = Vec::new();
        renewable.renew_into(0, &mut out);
        assert_eq!(out, renewable.bytes());
        let (mut one, mut two) = (Vec::new(), Vec::new());
        renewable.renew_into(1, &mut one);
        renewable.renew_into(2, &mut two);
        let uuids = |bytes: &[u8]| -> Vec<(String, String, String)> {
            let batch = Batch::decode(bytes).unwrap();
            batch
                .spans
                .iter()
                .map(|s| {
                    assert_eq!(s.problem(), None);
                    let step = batch
                        .span_attributes(s)
                        .iter()
                        .find(|a| a.key == "step_uuid")
                        .map(|a| format!("{:?}", a.value))
                        .unwrap_or_default();
                    (
                        format!("{:?}", s.trace_id),
                        format!("{:?}", s.span_id),
                        step,
                    )
                })
                .collect()
        };
        let (zero, one, two) = (uuids(renewable.bytes()), uuids(&one), uuids(&two));
        for ((a, b), c) in zero.iter().zip(&one).zip(&two) {
            assert!(a.0 != b.0 && b.0 != c.0 && a.1 != b.1 && b.1 != c.1);
            assert_eq!(a.2.is_empty(), b.2.is_empty());
            assert!(a.2.is_empty() || (a.2 != b.2 && b.2 != c.2));
        }
        // One step's spans still share one step_uuid after renewal.
        let distinct = |v: &[(String, String, String)]| {
            v.iter().map(|t| t.2.clone()).collect::<BTreeSet<_>>().len()
        };
        assert_eq!(distinct(&zero), distinct(&one));
    }

    #[test]
    fn step_suffix_names_new_steps_and_renewed_uuids_are_found() {
        let request = Fixtures::new(13).step_suffix("_e7").request(300);
        let string_values = |request: &ExportTraceServiceRequest, key: &str| -> Vec<String> {
            super::string_values(request, key)
                .map(str::to_string)
                .collect()
        };
        let steps = string_values(&request, "step_name");
        assert!(!steps.is_empty());
        for step in &steps {
            assert!(step.ends_with("_e7") || step.ends_with("_e7_py"), "{step}");
        }
        let correlation = string_values(&request, "correlation_id")[0].clone();
        let renewable = Renewable::protobuf(request.encode_to_vec());
        let mut renewed = Vec::new();
        renewable.renew_into(5, &mut renewed);
        let renewed = ExportTraceServiceRequest::decode(&renewed[..]).unwrap();
        let ids = string_values(&renewed, "correlation_id");
        let expected = Renewable::renew_uuid(&correlation, 5);
        assert_ne!(expected, correlation);
        assert!(ids.contains(&expected) && !ids.contains(&correlation));
    }

    #[test]
    fn renewed_json_decodes_with_new_ids() {
        let request = Fixtures::new(12).request(30);
        let renewable = Renewable::json(serde_json::to_vec(&request).unwrap());
        let mut out = Vec::new();
        renewable.renew_into(5, &mut out);
        let renewed = Renewable::protobuf(spanlens::otlp::json::to_protobuf(&out).unwrap());
        let original = request.encode_to_vec();
        let (a, b) = (
            Batch::decode(&original).unwrap(),
            Batch::decode(renewed.bytes()).unwrap(),
        );
        assert_eq!(a.spans.len(), b.spans.len());
        for (x, y) in a.spans.iter().zip(&b.spans) {
            assert_ne!(x.trace_id, y.trace_id);
            assert_ne!(x.span_id, y.span_id);
            assert_eq!(x.name, y.name);
        }
        assert_eq!(
            renewed.id_count(),
            Renewable::protobuf(original.clone()).id_count()
        );
    }
}
