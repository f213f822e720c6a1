//! End-to-end tests of forwarding: every request spanlens accepts goes on to downstream OTLP
//! endpoints (the `forward:` section), through per-endpoint queues with retries, an optional
//! write-ahead log, and a drain on shutdown.
//!
//! The downstream is the controllable fake backend of `support::downstream` (gRPC and HTTP on
//! one loopback port, scripted failures, down and up again on the same port). spanlens runs
//! in-process (`Server::start`) unless the scenario needs a real process (kill -9, SIGTERM).
//! Spans are realistic tasker spans (TASKER.md: `tasker-rust-worker` and `tasker-orchestration`
//! span names and attributes) with span ids unique across the test binary, so delivery is
//! checked as sets of span ids. Normal delivery goes through the real `opentelemetry-otlp`
//! exporter; scenarios that need exact control of requests and of retries post hand-built
//! requests. Every wait polls with a generous deadline.

use crate::support;
use crate::support::otlp::{
    EXPORT, grpc_client, grpc_request, gzip, h2c_client, read_grpc, resource_spans,
    status_retry_delay,
};
use crate::support::process::{Spanlens, TempDir, on_ephemeral_ports, spanlens_command};
use crate::support::sdk::{Transport, exporter, resource};
use crate::support::{CALL_TIMEOUT, bounded, eventually, minute_ago_ns};
use bytes::Bytes;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue as OtelKeyValue};
use opentelemetry_otlp::Compression;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use prost::Message as _;
use regex::Regex;
use spanlens::config::DEFAULT_PROFILE;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};
use support::downstream::{Attempt, Downstream, Failure, Policy, Wire};
use support::{Exposition, config_from_yaml, kv, start, test_config};
use tonic::transport::Channel;

const WORKER: &str = "tasker-rust-worker";
const ORCHESTRATION: &str = "tasker-orchestration";

const ACCEPTED: &str = "spanlens_spans_accepted_total";
const REQUESTS_REFUSED: &str = "spanlens_requests_refused_total";
const SPAN_CALLS: &str = "traces_span_metrics_calls_total";
const QUEUE_REQUESTS: &str = "spanlens_forward_queue_requests";
const QUEUE_BYTES: &str = "spanlens_forward_queue_bytes";
const SENT_SPANS: &str = "spanlens_forward_sent_spans_total";
const SENT_REQUESTS: &str = "spanlens_forward_sent_requests_total";
const RETRIES: &str = "spanlens_forward_retries_total";
const FAILED: &str = "spanlens_forward_failed_spans_total";
const DROPPED: &str = "spanlens_forward_dropped_spans_total";
const WAL_SKIPPED: &str = "spanlens_forward_wal_skipped_regions_total";
const WAL_RECOVERED: &str = "spanlens_forward_wal_recovered_requests_total";

/// The deadline of every wait for something that should happen within seconds.
const PATIENCE: Duration = Duration::from_secs(30);
// ---------------------------------------------------------------------------------------------
// Spans: realistic tasker spans with ids unique in this test binary
// ---------------------------------------------------------------------------------------------

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh span id: never zero, never repeated in this process.
fn fresh_id() -> u64 {
    0x7a5c_0000_0000_0000 | NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// One span of a fixture, independent of how it is sent.
#[derive(Debug, Clone)]
struct Fixture {
    id: u64,
    trace: [u8; 16],
    name: &'static str,
    attrs: Vec<(&'static str, String)>,
    start_ns: u64,
    end_ns: u64,
}

fn uuid(kind: u16, n: u64) -> String {
    format!("0193a1c2-{kind:04x}-7c3d-9e8f-{n:012x}")
}

/// The span with id `id` from `service`: tasker-core's real span names in a step's life (a
/// worker claims, executes, resolves the handler, reports completion, sends the result; the
/// orchestration creates the task, enqueues, processes the result, finalizes, notifies).
fn fixture(id: u64, service: &str, base_ns: u64) -> Fixture {
    let seq = id & 0xffff_ffff;
    let step = seq / 5;
    let task = step / 4;
    let step_uuid = uuid(1, step);
    let task_uuid = uuid(2, task);
    let correlation_id = uuid(3, task);
    let step_no = step % 4 + 1;
    let mut trace = [0u8; 16];
    trace[..8].copy_from_slice(&0x5b8e_fff7_9803_8103u64.to_be_bytes());
    trace[8..].copy_from_slice(&(task + 1).to_be_bytes());
    let (name, mut attrs): (&'static str, Vec<(&'static str, String)>) = if service == WORKER {
        match seq % 5 {
            0 => (
                "read_messages",
                vec![
                    ("queue", "worker_rust_e2e_linear_queue".into()),
                    ("limit", "10".into()),
                    ("visibility_timeout", "30".into()),
                ],
            ),
            1 => (
                "worker.step_execution",
                vec![
                    ("correlation_id", correlation_id.clone()),
                    ("task_uuid", task_uuid.clone()),
                    ("step_uuid", step_uuid.clone()),
                    ("step_name", format!("linear_step_{step_no}")),
                    ("namespace", "rust_e2e_linear".into()),
                ],
            ),
            2 => (
                "resolve",
                vec![(
                    "callable",
                    format!(
                        "tasker_example_rs::step_handlers::linear_workflow::LinearStep{step_no}Handler"
                    ),
                )],
            ),
            3 => (
                "worker.step_completion_received",
                vec![
                    ("task_uuid", task_uuid.clone()),
                    ("step_uuid", step_uuid.clone()),
                    ("success", "true".into()),
                    ("trace_id", correlation_id.clone()),
                    ("span_id", format!("span-{step_uuid}")),
                ],
            ),
            _ => (
                "send_json_message",
                vec![("queue", "orchestration_step_results".into())],
            ),
        }
    } else {
        match seq % 5 {
            0 => (
                "create_task_from_request",
                vec![
                    ("correlation_id", correlation_id.clone()),
                    ("task_name", "mathematical_sequence".into()),
                ],
            ),
            1 => (
                "enqueue_ready_steps",
                vec![("task_uuid", task_uuid.clone())],
            ),
            2 => (
                "handle_step_execution_result",
                vec![("step_uuid", step_uuid.clone())],
            ),
            3 => (
                "finalize_task",
                vec![
                    ("task_uuid", task_uuid.clone()),
                    ("correlation_id", correlation_id.clone()),
                ],
            ),
            _ => (
                "emit_message_ready",
                vec![
                    ("msg_id", seq.to_string()),
                    ("queue", "worker_rust_e2e_linear_queue".into()),
                    ("namespace", "rust_e2e_linear".into()),
                ],
            ),
        }
    };
    attrs.extend([
        (
            "code.namespace",
            "tasker_worker::worker::command_processor".into(),
        ),
        ("thread.name", "tokio-runtime-worker".into()),
        ("busy_ns", (200_000 + seq % 7 * 10_000).to_string()),
    ]);
    let start_ns = base_ns + seq % 1000 * 1_000_000;
    let end_ns = start_ns + 5_000_000 + seq % 9 * 4_000_000;
    Fixture {
        id,
        trace,
        name,
        attrs,
        start_ns,
        end_ns,
    }
}

/// The spans of one export request, from one service.
#[derive(Debug, Clone)]
struct Batch {
    service: &'static str,
    spans: Vec<Fixture>,
}

impl Batch {
    fn new(service: &'static str, n: usize) -> Batch {
        let base = minute_ago_ns();
        Batch {
            service,
            spans: (0..n).map(|_| fixture(fresh_id(), service, base)).collect(),
        }
    }

    fn ids(&self) -> BTreeSet<u64> {
        self.spans.iter().map(|s| s.id).collect()
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn proto_spans(&self) -> Vec<ProtoSpan> {
        self.spans
            .iter()
            .map(|s| ProtoSpan {
                trace_id: s.trace.to_vec(),
                span_id: s.id.to_be_bytes().to_vec(),
                name: s.name.to_string(),
                kind: 1,
                start_time_unix_nano: s.start_ns,
                end_time_unix_nano: s.end_ns,
                attributes: s.attrs.iter().map(|(k, v)| kv(k, v)).collect(),
                ..Default::default()
            })
            .collect()
    }

    fn request_of(&self, spans: Vec<ProtoSpan>) -> ExportTraceServiceRequest {
        let attributes = vec![
            kv("service.name", self.service),
            kv("service.version", "0.1.0"),
            kv("deployment.environment", "test"),
        ];
        ExportTraceServiceRequest {
            resource_spans: vec![resource_spans(attributes, "tasker-core", spans)],
        }
    }

    fn request(&self) -> ExportTraceServiceRequest {
        self.request_of(self.proto_spans())
    }

    fn bytes(&self) -> Vec<u8> {
        self.request().encode_to_vec()
    }

    fn span_data(&self) -> Vec<SpanData> {
        let at = |ns: u64| UNIX_EPOCH + Duration::from_nanos(ns);
        self.spans
            .iter()
            .map(|s| SpanData {
                span_context: SpanContext::new(
                    TraceId::from_bytes(s.trace),
                    SpanId::from_bytes(s.id.to_be_bytes()),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::default(),
                ),
                parent_span_id: SpanId::INVALID,
                parent_span_is_remote: false,
                span_kind: SpanKind::Internal,
                name: Cow::Borrowed(s.name),
                start_time: at(s.start_ns),
                end_time: at(s.end_ns),
                attributes: s
                    .attrs
                    .iter()
                    .map(|(k, v)| OtelKeyValue::new(*k, v.clone()))
                    .collect(),
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::Unset,
                instrumentation_scope: InstrumentationScope::builder("tasker-core").build(),
            })
            .collect()
    }
}

/// Equal-sized batches alternating between the worker and the orchestration.
fn batches(count: usize, size: usize) -> Vec<Batch> {
    (0..count)
        .map(|i| Batch::new(if i % 2 == 0 { WORKER } else { ORCHESTRATION }, size))
        .collect()
}

fn all_ids(batches: &[Batch]) -> BTreeSet<u64> {
    batches.iter().flat_map(Batch::ids).collect()
}

fn span_count(batches: &[Batch]) -> usize {
    batches.iter().map(Batch::len).sum()
}

// ---------------------------------------------------------------------------------------------
// Sending: the real OTLP exporter, hand-built HTTP and gRPC requests, retrying clients
// ---------------------------------------------------------------------------------------------

/// The real `opentelemetry-otlp` exporters, one per (service, transport).
struct Exporters {
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
    made: BTreeMap<(&'static str, String), opentelemetry_otlp::SpanExporter>,
}

impl Exporters {
    fn new(grpc: Option<SocketAddr>, http: Option<SocketAddr>) -> Exporters {
        Exporters {
            grpc,
            http,
            made: BTreeMap::new(),
        }
    }

    fn exporter(
        &mut self,
        service: &'static str,
        via: Transport,
    ) -> &opentelemetry_otlp::SpanExporter {
        let (grpc, http) = (self.grpc, self.http);
        self.made
            .entry((service, format!("{via:?}")))
            .or_insert_with(|| {
                let mut exporter = exporter(via, grpc, http, Duration::from_secs(10));
                exporter.set_resource(&resource(service));
                exporter
            })
    }

    /// Exports one batch as one request; it must succeed.
    async fn export(&mut self, batch: &Batch, via: Transport) {
        let exporter = self.exporter(batch.service, via);
        bounded("export", exporter.export(batch.span_data()))
            .await
            .unwrap_or_else(|e| panic!("export through {via:?}: {e}"));
    }
}

/// An HTTP reply, read whole.
#[derive(Debug)]
struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: Bytes,
}

impl Reply {
    /// partial_success.rejected_spans of a 200 protobuf answer.
    fn rejected(&self) -> i64 {
        ExportTraceServiceResponse::decode(&self.body[..])
            .expect("an ExportTraceServiceResponse")
            .partial_success
            .map_or(0, |p| p.rejected_spans)
    }
}

/// POSTs a protobuf request to spanlens's OTLP/HTTP receiver.
async fn post(
    client: &reqwest::Client,
    http: SocketAddr,
    body: Vec<u8>,
    encoding: Option<&str>,
) -> Result<Reply, reqwest::Error> {
    let mut request = client
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .timeout(CALL_TIMEOUT)
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let body = response.bytes().await?;
    Ok(Reply {
        status,
        retry_after,
        body,
    })
}

/// POSTs a request that must be accepted whole.
async fn post_accepted(client: &reqwest::Client, http: SocketAddr, batch: &Batch) {
    let reply = post(client, http, batch.bytes(), None)
        .await
        .unwrap_or_else(|e| panic!("POST /v1/traces: {e}"));
    assert_eq!(reply.status, 200, "POST /v1/traces: {reply:?}");
    assert_eq!(reply.rejected(), 0, "POST /v1/traces: {reply:?}");
}

/// What a client that is pushed back saw.
#[derive(Debug, Default)]
struct Pushback {
    /// 503 / UNAVAILABLE answers.
    refused: AtomicUsize,
    /// ... of which told the client how long to wait (Retry-After / RetryInfo).
    told_when: AtomicUsize,
}

impl Pushback {
    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
    fn told_when(&self) -> usize {
        self.told_when.load(Ordering::SeqCst)
    }
}

/// POSTs until accepted, waiting what each 503's Retry-After says (whole seconds).
async fn post_until_accepted(
    client: &reqwest::Client,
    http: SocketAddr,
    batch: &Batch,
    seen: &Pushback,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(Instant::now() < deadline, "POST never accepted");
        let reply = post(client, http, batch.bytes(), None)
            .await
            .unwrap_or_else(|e| panic!("POST /v1/traces: {e}"));
        match reply.status {
            200 => {
                assert_eq!(reply.rejected(), 0, "{reply:?}");
                return;
            }
            503 => {
                seen.refused.fetch_add(1, Ordering::SeqCst);
                let wait = match reply.retry_after.as_deref().map(str::parse::<u64>) {
                    Some(Ok(seconds)) => {
                        seen.told_when.fetch_add(1, Ordering::SeqCst);
                        Duration::from_secs(seconds)
                    }
                    _ => Duration::from_millis(200),
                };
                tokio::time::sleep(wait.max(Duration::from_millis(20))).await;
            }
            _ => panic!("POST /v1/traces answered {reply:?}"),
        }
    }
}

/// Exports with the real tonic client until accepted, waiting what each UNAVAILABLE's
/// RetryInfo says (200 ms without one).
/// Posts 20-span requests until three are refused with 503 and Retry-After (at most
/// `attempts`); returns the accepted ones. Any other answer fails the test.
async fn post_until_refused(
    client: &reqwest::Client,
    http: SocketAddr,
    attempts: usize,
    never: &str,
) -> Vec<Batch> {
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..attempts {
        let batch = Batch::new(WORKER, 20);
        let reply = post(client, http, batch.bytes(), None).await.unwrap();
        match reply.status {
            200 => accepted.push(batch),
            503 => {
                assert!(
                    reply.retry_after.is_some(),
                    "503 without Retry-After: {reply:?}"
                );
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            _ => panic!("{reply:?}"),
        }
    }
    assert_eq!(refused, 3, "{never}");
    assert!(!accepted.is_empty());
    accepted
}

async fn grpc_until_accepted(
    client: &mut TraceServiceClient<Channel>,
    batch: &Batch,
    seen: &Pushback,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(Instant::now() < deadline, "gRPC Export never accepted");
        match bounded("gRPC Export", client.export(batch.request())).await {
            Ok(response) => {
                let rejected = response
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| p.rejected_spans);
                assert_eq!(rejected, 0);
                return;
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                seen.refused.fetch_add(1, Ordering::SeqCst);
                let wait = match status_retry_delay(status.details()) {
                    Some(delay) => {
                        seen.told_when.fetch_add(1, Ordering::SeqCst);
                        delay
                    }
                    None => Duration::from_millis(200),
                };
                tokio::time::sleep(wait.max(Duration::from_millis(20))).await;
            }
            Err(status) => panic!("gRPC Export: {status:?}"),
        }
    }
}

/// Sends one gRPC message with exactly these payload bytes; returns grpc-status.
async fn raw_grpc_export(addr: SocketAddr, encoding: Option<&str>, payload: &[u8]) -> u32 {
    let uri = format!("http://{addr}{EXPORT}");
    let request = grpc_request(&uri, encoding, encoding.is_some(), payload, None);
    let response = bounded("raw gRPC Export", h2c_client().request(request))
        .await
        .expect("raw gRPC Export");
    let reply = bounded("raw gRPC body", read_grpc(response))
        .await
        .unwrap_or_else(|e| panic!("raw gRPC Export: {e}"));
    reply.grpc.expect("grpc-status")
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// One `forward.endpoints` entry.
#[derive(Debug, Clone)]
struct Endpoint {
    name: String,
    url: String,
    protocol: &'static str,
    compression: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    timeout: &'static str,
}

impl Endpoint {
    fn grpc(name: &str, url: String) -> Endpoint {
        Endpoint {
            name: name.into(),
            url,
            protocol: "grpc",
            compression: "gzip",
            headers: Vec::new(),
            timeout: "5s",
        }
    }

    fn http(name: &str, url: String) -> Endpoint {
        Endpoint {
            protocol: "http",
            ..Endpoint::grpc(name, url)
        }
    }

    fn compression(mut self, compression: &'static str) -> Endpoint {
        self.compression = compression;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Endpoint {
        self.headers.push((name, value));
        self
    }
}

/// The `forward:` section.
#[derive(Debug, Clone)]
struct Forward {
    endpoints: Vec<Endpoint>,
    max_requests: usize,
    max_bytes: u64,
    senders: usize,
    when_full: &'static str,
    retry_after: &'static str,
    initial_interval: &'static str,
    max_interval: &'static str,
    max_elapsed: &'static str,
    persistent: Option<PathBuf>,
    persistent_max_bytes: u64,
    drain_timeout: &'static str,
    /// receivers.max_request_bytes, when not the profile's.
    max_request_bytes: Option<usize>,
}

impl Forward {
    /// Fast retries (50 ms to 200 ms), a roomy queue, refuse when full.
    fn to(endpoints: Vec<Endpoint>) -> Forward {
        Forward {
            endpoints,
            max_requests: 1000,
            max_bytes: 64 << 20,
            senders: 4,
            when_full: "refuse",
            retry_after: "1s",
            initial_interval: "50ms",
            max_interval: "200ms",
            max_elapsed: "5m",
            persistent: None,
            persistent_max_bytes: 1 << 30,
            drain_timeout: "10s",
            max_request_bytes: None,
        }
    }

    fn yaml(&self) -> String {
        let mut y = String::from("forward:\n  endpoints:\n");
        for e in &self.endpoints {
            y += &format!(
                "    - name: {}\n      url: {}\n      protocol: {}\n      compression: {}\n      timeout: {}\n",
                e.name, e.url, e.protocol, e.compression, e.timeout
            );
            if !e.headers.is_empty() {
                y += "      headers:\n";
                for (k, v) in &e.headers {
                    y += &format!("        {k}: {v}\n");
                }
            }
        }
        y += &format!(
            "  queue:\n    max_requests: {}\n    max_bytes: {}\n    senders: {}\n    when_full: {}\n    retry_after: {}\n",
            self.max_requests, self.max_bytes, self.senders, self.when_full, self.retry_after
        );
        y += &format!(
            "  retry:\n    initial_interval: {}\n    max_interval: {}\n    max_elapsed: {}\n",
            self.initial_interval, self.max_interval, self.max_elapsed
        );
        if let Some(dir) = &self.persistent {
            y += &format!(
                "  persistent:\n    directory: '{}'\n    max_bytes: {}\n",
                dir.display(),
                self.persistent_max_bytes
            );
        }
        y += &format!("  drain_timeout: {}\n", self.drain_timeout);
        y
    }

    /// The default profile with this section instead of its own `forward:`.
    fn profile(&self) -> String {
        let mut profile = without_section(DEFAULT_PROFILE, "forward");
        if let Some(limit) = self.max_request_bytes {
            let default = "  max_request_bytes: 8388608\n";
            assert!(
                profile.contains(default),
                "the profile's request limit moved"
            );
            profile = profile.replace(default, &format!("  max_request_bytes: {limit}\n"));
        }
        format!("{profile}\n{}", self.yaml())
    }

    /// For `Server::start` (listeners on 127.0.0.1:0).
    fn config(&self) -> spanlens::config::Config {
        config_from_yaml(&self.profile())
    }

    /// For the binary: a config file with every listener on 127.0.0.1:0.
    fn write(&self, dir: &Path) -> PathBuf {
        let text = on_ephemeral_ports(&self.profile());
        let path = dir.join("spanlens.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// `profile` without its top-level section `name` (up to the next top-level key).
fn without_section(profile: &str, name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in profile.lines() {
        let top_level = line.starts_with(|c: char| c.is_ascii_alphanumeric());
        if top_level {
            inside = line.starts_with(&format!("{name}:"));
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.trim_end().to_string() + "\n"
}

// ---------------------------------------------------------------------------------------------
// Metrics and waiting
// ---------------------------------------------------------------------------------------------

async fn metrics(addr: SocketAddr) -> Exposition {
    let response = bounded(
        "GET /metrics",
        reqwest::Client::new()
            .get(format!("http://{addr}/metrics"))
            .send(),
    )
    .await
    .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    Exposition::parse(&response.text().await.unwrap())
}

/// The forward series of one endpoint, for failure messages.
fn forward_series(m: &Exposition, endpoint: &str) -> String {
    m.samples
        .iter()
        .filter(|s| {
            s.name.starts_with("spanlens_forward_")
                && s.labels.get("endpoint").map(String::as_str) == Some(endpoint)
        })
        .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Scrapes until `done` holds; returns that scrape.
async fn wait_metrics(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&Exposition) -> bool,
) -> Exposition {
    eventually(what, PATIENCE, async || {
        let m = metrics(addr).await;
        if done(&m) {
            Ok(m)
        } else {
            let forward: Vec<&str> = m
                .text
                .lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && (l.starts_with("spanlens_forward") || l.starts_with("spanlens_spans"))
                })
                .collect();
            Err(forward.join("\n"))
        }
    })
    .await
}

/// Waits until `downstream` has every id of `want` (and nothing else: extra ids fail).
async fn wait_delivered(downstream: &Downstream, what: &str, want: &BTreeSet<u64>) {
    let got = downstream
        .wait_for_ids(what, PATIENCE, |got| {
            got.len() >= want.len() && want.is_subset(got)
        })
        .await;
    let extra: Vec<_> = got.difference(want).take(5).collect();
    assert!(
        extra.is_empty(),
        "{what}: spans that were never sent arrived: {extra:x?}"
    );
    assert!(
        downstream.undecodable().is_empty(),
        "{what}: undecodable requests reached the downstream: {:?}",
        downstream.undecodable()
    );
}

// ---------------------------------------------------------------------------------------------
// The spanlens binary's log and files
// ---------------------------------------------------------------------------------------------

/// `key=N` in a log line.
fn field(line: &str, key: &str) -> u64 {
    let re = Regex::new(&format!(r"\b{key}=(\d+)")).unwrap();
    re.captures(line)
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))[1]
        .parse()
        .unwrap()
}

/// Every `*.seg` file under `dir`, with its length.
fn segments(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "seg") {
                found.insert(path, entry.metadata().map_or(0, |m| m.len()));
            }
        }
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// 1. Downstream down for a while
// ---------------------------------------------------------------------------------------------

/// The downstream is not listening while 2,000 spans arrive in 40 requests through the real
/// gRPC exporter; they wait in the queue (retried on connection refused). When the downstream
/// comes up on its port, every span arrives, spanlens counts exactly 2,000 sent, and at most
/// one request per sender arrived twice.
#[tokio::test(flavor = "multi_thread")]
async fn downstream_down_for_a_while_then_every_span_arrives() {
    const REQUESTS: usize = 40;
    const SIZE: usize = 50;
    const SENDERS: usize = 4;
    let downstream = Downstream::down(Policy::healthy());
    let mut forward = Forward::to(vec![Endpoint::grpc("backend", downstream.url())]);
    forward.senders = SENDERS;
    let server = start(forward.config()).await;
    let m = server.metrics_addr();

    let sent = batches(REQUESTS, SIZE);
    let mut exporters = Exporters::new(server.grpc_addr(), server.http_addr());
    for batch in &sent {
        exporters.export(batch, Transport::Grpc(None)).await;
    }
    let n = span_count(&sent) as f64;
    let before = wait_metrics(m, "every request queued, retries under way", |m| {
        m.sum(ACCEPTED, &[("protocol", "grpc")]) == n
            && m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]) == REQUESTS as f64
            && m.sum(RETRIES, &[("endpoint", "backend")]) > 0.0
    })
    .await;
    assert!(before.sum(QUEUE_BYTES, &[("endpoint", "backend")]) > 0.0);
    assert_eq!(before.sum(SENT_SPANS, &[("endpoint", "backend")]), 0.0);
    assert!(downstream.attempts().is_empty());

    downstream.start().await;
    wait_delivered(
        &downstream,
        "every span after the downstream came up",
        &all_ids(&sent),
    )
    .await;
    let after = wait_metrics(m, "queue empty, everything counted sent", |m| {
        m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]) == 0.0
            && m.sum(SENT_SPANS, &[("endpoint", "backend")]) >= n
    })
    .await;
    assert_eq!(
        after.sum(SENT_SPANS, &[("endpoint", "backend")]),
        n,
        "{}",
        forward_series(&after, "backend")
    );
    assert_eq!(after.sum(QUEUE_BYTES, &[("endpoint", "backend")]), 0.0);
    assert_eq!(after.sum(FAILED, &[("endpoint", "backend")]), 0.0);
    assert_eq!(after.sum(DROPPED, &[("endpoint", "backend")]), 0.0);
    let duplicates: usize = downstream.duplicates().values().map(|n| n - 1).sum();
    assert!(
        duplicates <= SENDERS * SIZE,
        "{duplicates} duplicate spans, more than {SENDERS} senders x {SIZE} spans in flight"
    );
    assert_eq!(
        after.sum(SENT_REQUESTS, &[("endpoint", "backend")]),
        REQUESTS as f64
    );
    for attempt in downstream.attempts() {
        assert_eq!(attempt.wire, Wire::Grpc);
        assert_eq!(attempt.path, EXPORT);
    }
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Flaky endpoints, fan-out
// ---------------------------------------------------------------------------------------------

/// Two endpoints: gRPC answering UNAVAILABLE to 70% of calls, OTLP/HTTP (a url with a path)
/// answering 503 + Retry-After: 0 to 70%. Every span sent (through the gRPC and the HTTP
/// exporter) arrives at both; each failed answer was retried.
#[tokio::test(flavor = "multi_thread")]
async fn flaky_endpoints_fan_out_and_everything_arrives_at_both() {
    let primary = Downstream::up(Policy::flaky(
        Failure::Unavailable { retry_after: None },
        0.7,
        7,
    ))
    .await;
    let archive = Downstream::up(Policy::flaky(
        Failure::Unavailable {
            retry_after: Some(0),
        },
        0.7,
        11,
    ))
    .await;
    let forward = Forward::to(vec![
        Endpoint::grpc("primary", primary.url()),
        Endpoint::http("archive", format!("{}/otlp/v1/traces", archive.url())).compression("none"),
    ]);
    let server = start(forward.config()).await;
    let m = server.metrics_addr();

    let sent = batches(20, 30);
    let mut exporters = Exporters::new(server.grpc_addr(), server.http_addr());
    for (i, batch) in sent.iter().enumerate() {
        let via = if i % 2 == 0 {
            Transport::Grpc(None)
        } else {
            Transport::HttpProtobuf
        };
        exporters.export(batch, via).await;
    }
    let want = all_ids(&sent);
    wait_delivered(&primary, "gRPC endpoint", &want).await;
    wait_delivered(&archive, "HTTP endpoint", &want).await;
    let n = want.len() as f64;
    let after = wait_metrics(m, "both queues empty", |m| {
        ["primary", "archive"].iter().all(|e| {
            m.sum(QUEUE_REQUESTS, &[("endpoint", e)]) == 0.0
                && m.sum(SENT_SPANS, &[("endpoint", e)]) == n
        })
    })
    .await;
    for (name, downstream) in [("primary", &primary), ("archive", &archive)] {
        let attempts = downstream.attempts();
        let failed_answers = attempts.iter().filter(|a| !a.delivered()).count();
        let retries = after.sum(RETRIES, &[("endpoint", name)]);
        assert!(
            failed_answers > 0,
            "{name}: the 70% failure policy never fired"
        );
        assert!(
            retries >= failed_answers as f64 && retries <= (attempts.len() - sent.len()) as f64,
            "{name}: retries_total {retries}, {failed_answers} failed answers, {} attempts for {} requests",
            attempts.len(),
            sent.len()
        );
        assert_eq!(
            after.sum(FAILED, &[("endpoint", name)]),
            0.0,
            "{}",
            forward_series(&after, name)
        );
        assert_eq!(after.sum(DROPPED, &[("endpoint", name)]), 0.0);
    }
    for attempt in archive.attempts() {
        assert_eq!(attempt.wire, Wire::Http);
        assert_eq!(
            attempt.path, "/otlp/v1/traces",
            "a url with a path is used as given"
        );
        assert_eq!(attempt.encoding, "identity");
    }
    for attempt in primary.attempts() {
        assert_eq!(attempt.wire, Wire::Grpc);
    }
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 3. drop_oldest
// ---------------------------------------------------------------------------------------------

/// A queue of 4 requests with `when_full: drop_oldest` and the downstream down: 12 requests of
/// 1..=12 spans are all accepted, the oldest are dropped. Once the downstream is up and the
/// queue empty, dropped{queue_full} is exactly what was sent and never delivered, whole
/// requests were kept or dropped, and the newest request survived. Forwarding then goes on.
#[tokio::test(flavor = "multi_thread")]
async fn drop_oldest_counts_exactly_what_was_lost_and_forwarding_resumes() {
    let downstream = Downstream::down(Policy::healthy());
    let mut forward = Forward::to(vec![Endpoint::grpc("backend", downstream.url())]);
    forward.max_requests = 4;
    forward.senders = 2;
    forward.when_full = "drop_oldest";
    let server = start(forward.config()).await;
    let m = server.metrics_addr();
    let http = server.http_addr().unwrap();
    let client = reqwest::Client::new();

    let sent: Vec<Batch> = (1..=12)
        .map(|n| Batch::new(if n % 2 == 0 { WORKER } else { ORCHESTRATION }, n))
        .collect();
    for batch in &sent {
        post_accepted(&client, http, batch).await;
    }
    let total = span_count(&sent) as f64;
    let before = wait_metrics(m, "all accepted", |m| {
        m.sum(ACCEPTED, &[("protocol", "http_protobuf")]) == total
    })
    .await;
    assert!(
        before.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]) <= 4.0,
        "{}",
        forward_series(&before, "backend")
    );
    assert!(
        before.sum(
            DROPPED,
            &[("endpoint", "backend"), ("reason", "queue_full")]
        ) > 0.0
    );

    downstream.start().await;
    let after = wait_metrics(m, "queue empty after the downstream came up", |m| {
        m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]) == 0.0
            && m.sum(SENT_REQUESTS, &[("endpoint", "backend")]) > 0.0
    })
    .await;
    let delivered = downstream.delivered_ids();
    let every = all_ids(&sent);
    assert!(delivered.is_subset(&every));
    for (i, batch) in sent.iter().enumerate() {
        let ids = batch.ids();
        let arrived = ids.intersection(&delivered).count();
        assert!(
            arrived == 0 || arrived == ids.len(),
            "request {i}: {arrived} of its {} spans arrived",
            ids.len()
        );
    }
    assert!(
        sent.last().unwrap().ids().is_subset(&delivered),
        "the newest request was dropped"
    );
    let dropped = after.sum(
        DROPPED,
        &[("endpoint", "backend"), ("reason", "queue_full")],
    );
    assert_eq!(
        dropped,
        total - delivered.len() as f64,
        "dropped{{queue_full}} != sent - delivered ({} of {total} delivered)\n{}",
        delivered.len(),
        forward_series(&after, "backend")
    );
    assert_eq!(
        after.sum(SENT_SPANS, &[("endpoint", "backend")]),
        delivered.len() as f64
    );
    assert_eq!(
        after.sum(DROPPED, &[("endpoint", "backend"), ("reason", "shutdown")]),
        0.0
    );

    let more = batches(3, 5);
    for batch in &more {
        post_accepted(&client, http, batch).await;
    }
    let mut want = delivered.clone();
    want.extend(all_ids(&more));
    wait_delivered(&downstream, "requests sent after the overflow", &want).await;
    let last = wait_metrics(m, "the new spans counted sent", |m| {
        m.sum(SENT_SPANS, &[("endpoint", "backend")]) == want.len() as f64
    })
    .await;
    assert_eq!(
        last.sum(
            DROPPED,
            &[("endpoint", "backend"), ("reason", "queue_full")]
        ),
        dropped,
        "nothing more dropped once the downstream is up"
    );
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 4. refuse
// ---------------------------------------------------------------------------------------------

/// A queue of 2 requests, `when_full: refuse`, the downstream down: an OTLP/HTTP client and an
/// OTLP/gRPC client that retry on 503 (honouring Retry-After) / UNAVAILABLE keep sending;
/// the downstream comes up after both were pushed back. Nothing is lost, every refusal is
/// counted as forward_queue_full, and each span is counted accepted exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn refuse_pushes_back_on_clients_and_loses_nothing() {
    const PER_CLIENT: usize = 8;
    const SIZE: usize = 10;
    let downstream = Arc::new(Downstream::down(Policy::healthy()));
    let mut forward = Forward::to(vec![Endpoint::grpc("backend", downstream.url())]);
    forward.max_requests = 2;
    forward.senders = 1;
    forward.when_full = "refuse";
    forward.retry_after = "1s";
    let server = start(forward.config()).await;
    let m = server.metrics_addr();
    let http_addr = server.http_addr().unwrap();
    let grpc_addr = server.grpc_addr().unwrap();

    let http_batches = batches(PER_CLIENT, SIZE);
    let grpc_batches = batches(PER_CLIENT, SIZE);
    let http_seen = Arc::new(Pushback::default());
    let grpc_seen = Arc::new(Pushback::default());
    let http_client = {
        let (batches, seen) = (http_batches.clone(), http_seen.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for batch in &batches {
                post_until_accepted(&client, http_addr, batch, &seen).await;
            }
        })
    };
    let grpc_client = {
        let (batches, seen) = (grpc_batches.clone(), grpc_seen.clone());
        tokio::spawn(async move {
            let mut client = grpc_client(grpc_addr).await;
            for batch in &batches {
                grpc_until_accepted(&mut client, batch, &seen).await;
            }
        })
    };
    eventually("both clients pushed back", PATIENCE, async || {
        match (http_seen.refused(), grpc_seen.refused()) {
            (h, g) if h > 0 && g > 0 => Ok(()),
            (h, g) => Err(format!("HTTP refused {h}, gRPC refused {g}")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    downstream.start().await;
    bounded_long("HTTP client", http_client).await;
    bounded_long("gRPC client", grpc_client).await;

    let mut want = all_ids(&http_batches);
    want.extend(all_ids(&grpc_batches));
    wait_delivered(&downstream, "every span of both clients", &want).await;
    assert!(
        http_seen.told_when() == http_seen.refused(),
        "every 503 carries Retry-After: {} of {}",
        http_seen.told_when(),
        http_seen.refused()
    );
    let per_client = (PER_CLIENT * SIZE) as f64;
    let after = wait_metrics(m, "queue empty, all sent", |m| {
        m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]) == 0.0
            && m.sum(SENT_SPANS, &[("endpoint", "backend")]) == 2.0 * per_client
    })
    .await;
    assert_eq!(
        after.sum(ACCEPTED, &[("protocol", "http_protobuf")]),
        per_client
    );
    assert_eq!(after.sum(ACCEPTED, &[("protocol", "grpc")]), per_client);
    assert_eq!(
        after.sum(
            REQUESTS_REFUSED,
            &[
                ("protocol", "http_protobuf"),
                ("reason", "forward_queue_full")
            ]
        ),
        http_seen.refused() as f64
    );
    assert_eq!(
        after.sum(
            REQUESTS_REFUSED,
            &[("protocol", "grpc"), ("reason", "forward_queue_full")]
        ),
        grpc_seen.refused() as f64
    );
    assert_eq!(
        after.sum(SPAN_CALLS, &[]),
        2.0 * per_client,
        "the span metrics count each span once, refused attempts not at all"
    );
    assert_eq!(after.sum(DROPPED, &[("endpoint", "backend")]), 0.0);
    eprintln!(
        "refuse: HTTP refused {} times, gRPC refused {} times ({} with RetryInfo)",
        http_seen.refused(),
        grpc_seen.refused(),
        grpc_seen.told_when()
    );
    bounded("shutdown", server.shutdown()).await;
}

async fn bounded_long(what: &str, task: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(90), task)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9 with a persistent backlog
// ---------------------------------------------------------------------------------------------

/// The binary with a persistent queue and the downstream down takes 20 requests of 25 spans and
/// is killed with SIGKILL. Restarted on the same directory with the downstream up, it delivers
/// every span. Second round: another backlog, SIGKILL, bytes flipped inside one record of a
/// segment file: the damaged region is skipped and counted, every other request arrives
/// whole.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_a_persistent_backlog_loses_nothing_but_damaged_records() {
    const REQUESTS: usize = 20;
    const SIZE: usize = 25;
    let dir = TempDir::new("kill9");
    let wal = dir.path().join("wal");
    let downstream = Downstream::down(Policy::healthy());
    let mut forward = Forward::to(vec![
        Endpoint::grpc("backend", downstream.url()).compression("none"),
    ]);
    forward.persistent = Some(wal.clone());
    forward.drain_timeout = "2s";
    let config = forward.write(dir.path());
    let client = reqwest::Client::new();

    // Round 1: backlog, SIGKILL, recovery.
    let mut binary = Spanlens::start(&config);
    let round1 = batches(REQUESTS, SIZE);
    for batch in &round1 {
        post_accepted(&client, binary.http(), batch).await;
    }
    let n = (REQUESTS * SIZE) as f64;
    wait_metrics(binary.metrics, "round 1 accepted and queued", |m| {
        m.sum(ACCEPTED, &[]) == n
            && m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]) == REQUESTS as f64
    })
    .await;
    binary.kill9();
    let files = segments(&wal);
    assert!(!files.is_empty(), "no *.seg file under {}", wal.display());
    assert!(
        files.keys().all(|f| f.parent() != Some(&wal)),
        "segments are not in a subdirectory per endpoint: {files:?}"
    );
    downstream.start().await;
    let mut binary = Spanlens::start(&config);
    wait_delivered(
        &downstream,
        "round 1 after SIGKILL and restart",
        &all_ids(&round1),
    )
    .await;
    let m = wait_metrics(binary.metrics, "round 1 recovered and sent", |m| {
        m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]) == 0.0
            && m.sum(SENT_SPANS, &[("endpoint", "backend")]) >= n
    })
    .await;
    let recovered = m.sum(WAL_RECOVERED, &[("endpoint", "backend")]);
    assert!(
        recovered > 0.0 && recovered <= REQUESTS as f64,
        "wal_recovered_requests_total {recovered}\n{}",
        forward_series(&m, "backend")
    );
    assert_eq!(m.sum(SENT_SPANS, &[("endpoint", "backend")]), n);
    assert_eq!(m.sum(WAL_SKIPPED, &[("endpoint", "backend")]), 0.0);
    assert!(
        downstream.duplicates().is_empty(),
        "round 1 delivered twice"
    );

    // Round 2: backlog, SIGKILL, one damaged record.
    let lengths = segments(&wal);
    let accepted_before = m.sum(ACCEPTED, &[]);
    downstream.stop().await;
    let round2 = batches(REQUESTS, SIZE);
    for batch in &round2 {
        post_accepted(&client, binary.http(), batch).await;
    }
    wait_metrics(binary.metrics, "round 2 accepted and queued", |m| {
        m.sum(ACCEPTED, &[]) == accepted_before + n
            && m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]) == REQUESTS as f64
    })
    .await;
    binary.kill9();
    let damaged = corrupt_one_record(&wal, &lengths, &round2[REQUESTS / 2]);
    eprintln!("kill -9: {damaged}");
    let attempts_before = downstream.attempts().len();
    downstream.start().await;
    let binary = Spanlens::start(&config);
    let m = wait_metrics(binary.metrics, "round 2 recovery done", |m| {
        m.sum(WAL_SKIPPED, &[("endpoint", "backend")]) >= 1.0
            && m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]) == 0.0
            && m.sum(SENT_SPANS, &[("endpoint", "backend")]) > 0.0
    })
    .await;
    let round2_ids = all_ids(&round2);
    let recovered: Vec<u64> = downstream.attempts()[attempts_before..]
        .iter()
        .filter(|a| a.delivered())
        .flat_map(|a| a.span_ids.iter().copied())
        .collect();
    let delivered: BTreeSet<u64> = recovered
        .iter()
        .copied()
        .filter(|id| round2_ids.contains(id))
        .collect();
    let redelivered_round1 = recovered
        .iter()
        .filter(|id| !round2_ids.contains(id))
        .count();
    assert_eq!(
        redelivered_round1, 0,
        "round 1 spans (acknowledged before round 2) were delivered again after the restart"
    );
    for (i, batch) in round2.iter().enumerate() {
        let ids = batch.ids();
        let arrived = ids.intersection(&delivered).count();
        assert!(
            arrived == 0 || arrived == ids.len(),
            "round 2 request {i}: {arrived} of its {} spans arrived",
            ids.len()
        );
    }
    // Flipped bytes lie inside one record; allow for the record next to it when the region
    // reaches a record boundary.
    let missing = round2_ids.len() - delivered.len();
    let lost: Vec<usize> = (0..REQUESTS)
        .filter(|i| round2[*i].ids().is_disjoint(&delivered))
        .collect();
    eprintln!(
        "kill -9: round 2 requests lost to the damage: {lost:?}; skipped regions {}",
        m.sum(WAL_SKIPPED, &[("endpoint", "backend")])
    );
    assert!(
        missing <= 2 * SIZE,
        "{missing} spans of round 2 never arrived (requests {lost:?}); the damage ({damaged}) \
         touches at most 2 records of {SIZE} spans\n{}\n{}",
        forward_series(&m, "backend"),
        binary.stderr_text()
    );
    assert_eq!(
        m.sum(SENT_SPANS, &[("endpoint", "backend")]),
        delivered.len() as f64
    );
    drop(binary);
}

/// Flips 16 bytes of the segment data written since `lengths` was taken: inside the record of
/// `target` when its span ids are stored in the clear, else in the middle of the new data.
fn corrupt_one_record(wal: &Path, lengths: &BTreeMap<PathBuf, u64>, target: &Batch) -> String {
    let now = segments(wal);
    let needle = target.spans[target.len() / 2].id.to_be_bytes();
    for path in now.keys() {
        let mut data = std::fs::read(path).unwrap();
        if let Some(at) = find(&data, &needle) {
            for b in &mut data[at..at + 16] {
                *b ^= 0xa5;
            }
            std::fs::write(path, &data).unwrap();
            return format!("flipped 16 bytes at {at} of {} (a span id)", path.display());
        }
    }
    let (path, from, to) = now
        .iter()
        .map(|(p, len)| (p, lengths.get(p).copied().unwrap_or(0), *len))
        .max_by_key(|(_, from, to)| to.saturating_sub(*from))
        .expect("a segment file");
    assert!(
        to > from + 64,
        "no new segment data: {now:?} (before: {lengths:?})"
    );
    let mut data = std::fs::read(path).unwrap();
    let at = (from + (to - from) / 2) as usize;
    for b in &mut data[at..at + 16] {
        *b ^= 0xa5;
    }
    std::fs::write(path, &data).unwrap();
    format!(
        "flipped 16 bytes at {at} of {} (middle of the new data {from}..{to})",
        path.display()
    )
}

/// Two processes on one persistent queue directory: the second exits at once with an error
/// naming the directory and the first one's pid, and writes nothing there; the first goes on
/// queueing. Once the first has stopped, a process starts on the directory again.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_the_persistent_queue_directory_exits_at_once() {
    let dir = TempDir::new("wal-lock");
    let wal = dir.path().join("wal");
    let downstream = Downstream::down(Policy::healthy());
    let mut forward = Forward::to(vec![Endpoint::grpc("backend", downstream.url())]);
    forward.persistent = Some(wal.clone());
    forward.drain_timeout = "200ms";
    let config = forward.write(dir.path());
    let client = reqwest::Client::new();
    let mut first = Spanlens::start(&config);
    let batch = Batch::new(WORKER, 10);
    post_accepted(&client, first.http(), &batch).await;
    let before = segments(&wal);

    let mut second = spanlens_command();
    second.arg("--config").arg(&config);
    let (status, said, ran) = Spanlens::start_refused(&mut second, PATIENCE);
    eprintln!("the second process exited after {ran:?}: {said}");
    assert!(!status.success(), "exit status {status}: {said}");
    let expected = format!(
        "spanlens: cannot start forwarding: the persistent queue directory {} is in use by \
         another spanlens process (pid {}); give each process its own \
         forward.persistent.directory",
        wal.display(),
        first.pid()
    );
    assert!(
        said.contains(&expected),
        "expected `{expected}` in:\n{said}"
    );
    assert_eq!(
        segments(&wal),
        before,
        "the second process wrote to the queue"
    );

    post_accepted(&client, first.http(), &Batch::new(WORKER, 5)).await;
    wait_metrics(first.metrics, "both requests queued by the first", |m| {
        m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]) == 2.0
    })
    .await;
    assert!(first.terminate().success(), "{}", first.stderr_text());
    let mut again = Spanlens::start(&config);
    assert!(again.terminate().success(), "{}", again.stderr_text());
}

// ---------------------------------------------------------------------------------------------
// 6. SIGTERM under load
// ---------------------------------------------------------------------------------------------

/// The binary forwards to a slow downstream (150 ms per request, 2 senders) while three
/// clients send continuously; SIGTERM comes in the middle. spanlens exits 0 within the drain
/// timeout plus slack, and its last lines account for every accepted span: delivered,
/// dropped at shutdown, or nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_accounts_for_every_accepted_span() {
    let dir = TempDir::new("sigterm");
    let downstream = Downstream::up(Policy::slow(Duration::from_millis(150))).await;
    let mut forward = Forward::to(vec![Endpoint::grpc("backend", downstream.url())]);
    forward.senders = 2;
    forward.max_requests = 100;
    forward.drain_timeout = "2s";
    let config = forward.write(dir.path());
    let mut binary = Spanlens::start(&config);
    let http = binary.http();

    let accepted_ids = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (accepted_ids, stop) = (accepted_ids.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0;
            while !stop.is_cancelled() {
                i += 1;
                let batch = Batch::new(if i % 2 == 0 { WORKER } else { ORCHESTRATION }, 20);
                match post(&client, http, batch.bytes(), None).await {
                    Ok(reply) if reply.status == 200 => {
                        assert_eq!(reply.rejected(), 0);
                        accepted_ids.lock().unwrap().extend(batch.ids());
                    }
                    Ok(reply) if reply.status == 503 => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(reply) => panic!("unexpected answer {reply:?}"),
                    // spanlens has stopped accepting.
                    Err(_) => break,
                }
            }
        }));
    }
    let busy = wait_metrics(binary.metrics, "a backlog under load", |m| {
        m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]) >= 20.0
            && m.sum(SENT_REQUESTS, &[("endpoint", "backend")]) >= 5.0
    })
    .await;
    let signalled = Instant::now();
    binary.sigterm();
    let status = binary.wait_exit(Duration::from_secs(20));
    let took = signalled.elapsed();
    stop.cancel();
    for client in clients {
        bounded_long("client", client).await;
    }
    assert!(
        status.success(),
        "exit status {status}\n{}",
        binary.stderr_text()
    );
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?} with drain_timeout 2s"
    );
    let stopped = binary
        .find_line("forwarding stopped")
        .unwrap_or_else(|| panic!("no `forwarding stopped` line:\n{}", binary.stderr_text()));
    assert!(
        Regex::new(r#"endpoint="?backend\b"#)
            .unwrap()
            .is_match(&stopped),
        "{stopped}"
    );
    let last = binary.find_line("spans_accepted=").unwrap_or_else(|| {
        panic!(
            "no `stopped spans_accepted=` line:\n{}",
            binary.stderr_text()
        )
    });
    let accepted = field(&last, "spans_accepted");
    let sent = field(&stopped, "sent_spans");
    let dropped = field(&stopped, "dropped_spans");
    let failed = field(&stopped, "failed_spans");
    let persisted = field(&stopped, "persisted_spans");
    let delivered = downstream.delivered_ids();
    let client_accepted = accepted_ids.lock().unwrap().clone();
    eprintln!(
        "SIGTERM: queue at signal {}, accepted {accepted}, delivered {}, sent {sent}, dropped {dropped}, shutdown took {took:?}",
        busy.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]),
        delivered.len()
    );
    assert_eq!(
        accepted,
        client_accepted.len() as u64,
        "spans_accepted vs spans the clients got 200 for"
    );
    assert!(
        delivered.is_subset(&client_accepted),
        "unsent spans arrived"
    );
    assert_eq!(persisted, 0, "{stopped}");
    assert_eq!(failed, 0, "{stopped}");
    // spanlens's books balance exactly: every accepted span was confirmed sent or dropped.
    assert_eq!(
        accepted,
        sent + dropped + persisted,
        "accepted != sent + dropped + persisted: {stopped}"
    );
    // The backend may hold more than was confirmed: a request in flight when the drain
    // ended is counted dropped although it may have arrived (at most one per sender).
    let delivered = delivered.len() as u64;
    assert!(
        sent <= delivered && delivered - sent <= 2 * 20,
        "sent {sent}, delivered {delivered}: {stopped}"
    );
}

/// SIGTERM with a persistent queue and the downstream down: after drain_timeout the backlog
/// stays on disk (persisted_spans, nothing dropped) and the next start delivers all of it,
/// exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_persistent_queue_keeps_the_backlog_for_the_next_start() {
    const REQUESTS: usize = 10;
    const SIZE: usize = 20;
    let dir = TempDir::new("sigterm-wal");
    let downstream = Downstream::down(Policy::healthy());
    let mut forward = Forward::to(vec![Endpoint::grpc("backend", downstream.url())]);
    forward.persistent = Some(dir.path().join("wal"));
    forward.drain_timeout = "1s";
    let config = forward.write(dir.path());
    let client = reqwest::Client::new();

    let mut binary = Spanlens::start(&config);
    let sent = batches(REQUESTS, SIZE);
    for batch in &sent {
        post_accepted(&client, binary.http(), batch).await;
    }
    let n = (REQUESTS * SIZE) as u64;
    wait_metrics(binary.metrics, "accepted and queued", |m| {
        m.sum(ACCEPTED, &[]) == n as f64
            && m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]) == REQUESTS as f64
    })
    .await;
    binary.sigterm();
    let status = binary.wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit status {status}\n{}",
        binary.stderr_text()
    );
    let stopped = binary
        .find_line("forwarding stopped")
        .unwrap_or_else(|| panic!("no `forwarding stopped` line:\n{}", binary.stderr_text()));
    let accepted = field(
        &binary.find_line("spans_accepted=").unwrap(),
        "spans_accepted",
    );
    assert_eq!(accepted, n);
    assert_eq!(field(&stopped, "persisted_spans"), n, "{stopped}");
    assert_eq!(field(&stopped, "dropped_spans"), 0, "{stopped}");
    assert_eq!(field(&stopped, "sent_spans"), 0, "{stopped}");
    assert_eq!(field(&stopped, "failed_spans"), 0, "{stopped}");
    assert!(downstream.attempts().is_empty());

    downstream.start().await;
    let mut binary = Spanlens::start(&config);
    wait_delivered(
        &downstream,
        "the backlog after the restart",
        &all_ids(&sent),
    )
    .await;
    let m = wait_metrics(binary.metrics, "backlog sent", |m| {
        m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]) == 0.0
            && m.sum(SENT_SPANS, &[("endpoint", "backend")]) == n as f64
    })
    .await;
    assert_eq!(
        m.sum(WAL_RECOVERED, &[("endpoint", "backend")]),
        REQUESTS as f64,
        "{}",
        forward_series(&m, "backend")
    );
    assert_eq!(m.sum(WAL_SKIPPED, &[("endpoint", "backend")]), 0.0);
    assert!(downstream.duplicates().is_empty(), "delivered twice");
    binary.sigterm();
    assert!(binary.wait_exit(Duration::from_secs(15)).success());
    let stopped = binary.find_line("forwarding stopped").unwrap();
    assert_eq!(field(&stopped, "persisted_spans"), 0, "{stopped}");
    assert_eq!(field(&stopped, "sent_spans"), n, "{stopped}");
}

// ---------------------------------------------------------------------------------------------
// 7. Partial rejection
// ---------------------------------------------------------------------------------------------

/// Requests with a valid span and a span spanlens rejects (all-zero span id over OTLP/HTTP,
/// end before start over gRPC): only the valid spans are forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn rejected_spans_are_not_forwarded() {
    let downstream = Downstream::up(Policy::healthy()).await;
    let forward = Forward::to(vec![Endpoint::grpc("backend", downstream.url())]);
    let server = start(forward.config()).await;

    let http_batch = Batch::new(WORKER, 2);
    let mut spans = http_batch.proto_spans();
    spans[1].span_id = vec![0; 8];
    let reply = post(
        &reqwest::Client::new(),
        server.http_addr().unwrap(),
        http_batch.request_of(spans).encode_to_vec(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.rejected(), 1, "{reply:?}");

    let grpc_batch = Batch::new(ORCHESTRATION, 2);
    let mut spans = grpc_batch.proto_spans();
    let (start_ns, end_ns) = (spans[0].start_time_unix_nano, spans[0].end_time_unix_nano);
    spans[0].start_time_unix_nano = end_ns;
    spans[0].end_time_unix_nano = start_ns;
    let response = grpc_client(server.grpc_addr().unwrap())
        .await
        .export(grpc_batch.request_of(spans))
        .await
        .expect("partial success")
        .into_inner();
    assert_eq!(response.partial_success.map(|p| p.rejected_spans), Some(1));

    // Requests refused as a whole are not forwarded: a malformed body, and a request in which
    // no span is usable.
    let client = reqwest::Client::new();
    let http = server.http_addr().unwrap();
    let valid_bytes = Batch::new(WORKER, 3).bytes();
    let reply = post(
        &client,
        http,
        valid_bytes[..valid_bytes.len() - 7].to_vec(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 400, "malformed: {reply:?}");
    let unusable = Batch::new(WORKER, 2);
    let mut spans = unusable.proto_spans();
    for span in &mut spans {
        span.span_id = vec![0; 8];
    }
    let reply = post(
        &client,
        http,
        unusable.request_of(spans).encode_to_vec(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 400, "no usable span: {reply:?}");
    let last = Batch::new(ORCHESTRATION, 3);
    post_accepted(&client, http, &last).await;

    let mut valid: BTreeSet<u64> = [http_batch.spans[0].id, grpc_batch.spans[1].id].into();
    valid.extend(last.ids());
    let m = wait_metrics(server.metrics_addr(), "the three requests forwarded", |m| {
        m.sum(SENT_REQUESTS, &[("endpoint", "backend")]) == 3.0
    })
    .await;
    wait_delivered(&downstream, "only the valid spans", &valid).await;
    assert_eq!(m.sum(SENT_SPANS, &[("endpoint", "backend")]), 5.0);
    assert_eq!(downstream.delivered_requests().len(), 3);
    assert_eq!(
        downstream.delivered_span_count(),
        5,
        "the rejected spans were forwarded: {:x?}",
        downstream
            .attempts()
            .iter()
            .map(|a| &a.span_ids)
            .collect::<Vec<_>>()
    );
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 8. Encodings and headers
// ---------------------------------------------------------------------------------------------

/// A gzip gRPC export (real exporter) and an OTLP/JSON export (real HTTP exporter) reach a gzip
/// gRPC endpoint and a zstd OTLP/HTTP endpoint as protobuf with the same span ids, in the
/// endpoints' compression, with the configured headers.
#[tokio::test(flavor = "multi_thread")]
async fn encodings_and_configured_headers_reach_the_downstream() {
    let grpc_down = Downstream::up(Policy::healthy()).await;
    let http_down = Downstream::up(Policy::healthy()).await;
    let forward = Forward::to(vec![
        Endpoint::grpc("grpc-gzip", grpc_down.url())
            .compression("gzip")
            .header("x-tenant", "acme")
            .header("x-scope", "tasker"),
        Endpoint::http("http-zstd", http_down.url())
            .compression("zstd")
            .header("x-tenant", "acme"),
    ]);
    let server = start(forward.config()).await;
    let mut exporters = Exporters::new(server.grpc_addr(), server.http_addr());
    let gzip_batch = Batch::new(WORKER, 10);
    let json_batch = Batch::new(ORCHESTRATION, 10);
    exporters
        .export(&gzip_batch, Transport::Grpc(Some(Compression::Gzip)))
        .await;
    exporters.export(&json_batch, Transport::HttpJson).await;
    let m = metrics(server.metrics_addr()).await;
    assert_eq!(m.sum(ACCEPTED, &[("protocol", "http_json")]), 10.0);

    let want: BTreeSet<u64> = gzip_batch.ids().union(&json_batch.ids()).copied().collect();
    wait_delivered(&grpc_down, "gRPC endpoint", &want).await;
    wait_delivered(&http_down, "HTTP endpoint", &want).await;
    for attempt in grpc_down.attempts() {
        assert_eq!(attempt.wire, Wire::Grpc);
        assert_eq!(attempt.content_type, "application/grpc");
        assert_eq!(attempt.encoding, "gzip", "grpc-encoding");
        assert!(attempt.compressed_flag, "message flagged compressed");
        assert_eq!(attempt.header("x-tenant"), Some("acme"));
        assert_eq!(attempt.header("x-scope"), Some("tasker"));
    }
    for attempt in http_down.attempts() {
        assert_eq!(attempt.wire, Wire::Http);
        assert_eq!(
            attempt.path, "/v1/traces",
            "a url without a path gets /v1/traces"
        );
        assert_eq!(attempt.content_type, "application/x-protobuf");
        assert_eq!(attempt.encoding, "zstd", "content-encoding");
        assert_eq!(attempt.header("x-tenant"), Some("acme"));
        assert_eq!(attempt.header("x-scope"), None);
    }
    // The JSON request arrives as protobuf carrying the same spans.
    let json_attempt = http_down
        .delivered_requests()
        .into_iter()
        .find(|a| a.span_ids.iter().any(|id| json_batch.ids().contains(id)))
        .unwrap();
    assert_eq!(
        json_attempt
            .span_ids
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
        json_batch.ids()
    );
    bounded("shutdown", server.shutdown()).await;
}

/// A request that arrives gzip-compressed protobuf with every span accepted is forwarded to
/// gzip endpoints as the very bytes that arrived (over OTLP/HTTP and over gRPC).
#[tokio::test(flavor = "multi_thread")]
async fn matching_compression_forwards_the_received_bytes_unchanged() {
    let grpc_down = Downstream::up(Policy::healthy()).await;
    let http_down = Downstream::up(Policy::healthy()).await;
    let forward = Forward::to(vec![
        Endpoint::grpc("grpc-gzip", grpc_down.url()).compression("gzip"),
        Endpoint::http("http-gzip", http_down.url()).compression("gzip"),
    ]);
    let server = start(forward.config()).await;

    let over_http = Batch::new(WORKER, 12);
    let http_bytes = gzip(&over_http.bytes());
    let reply = post(
        &reqwest::Client::new(),
        server.http_addr().unwrap(),
        http_bytes.clone(),
        Some("gzip"),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let over_grpc = Batch::new(ORCHESTRATION, 12);
    let grpc_bytes = gzip(&over_grpc.bytes());
    assert_eq!(
        raw_grpc_export(server.grpc_addr().unwrap(), Some("gzip"), &grpc_bytes).await,
        0
    );

    let want: BTreeSet<u64> = over_http.ids().union(&over_grpc.ids()).copied().collect();
    wait_delivered(&grpc_down, "gRPC endpoint", &want).await;
    wait_delivered(&http_down, "HTTP endpoint", &want).await;
    for downstream in [&grpc_down, &http_down] {
        for (batch, bytes) in [(&over_http, &http_bytes), (&over_grpc, &grpc_bytes)] {
            let attempt: Attempt = downstream
                .delivered_requests()
                .into_iter()
                .find(|a| a.span_ids.iter().any(|id| batch.ids().contains(id)))
                .unwrap();
            assert_eq!(attempt.encoding, "gzip");
            assert!(
                attempt.raw[..] == bytes[..],
                "{:?} endpoint: the {} gzip bytes that arrived were re-encoded ({} bytes forwarded)",
                attempt.wire,
                bytes.len(),
                attempt.raw.len()
            );
        }
    }
    bounded("shutdown", server.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 9. Permanent failures, throttling
// ---------------------------------------------------------------------------------------------

/// One request of 7 spans to six endpoints. INVALID_ARGUMENT, HTTP 400 and RESOURCE_EXHAUSTED
/// without RetryInfo are permanent: one attempt, failed{permanent} = 7, no retry.
/// RESOURCE_EXHAUSTED with RetryInfo(200ms) three times, and HTTP 429 with Retry-After: 1
/// once, are retried after the delay the endpoint asked for, then delivered. partial_success
/// from the endpoint counts failed{rejected}.
#[tokio::test(flavor = "multi_thread")]
async fn permanent_failures_are_not_retried_and_throttling_is_honoured() {
    let invalid = Downstream::up(Policy::always(Failure::InvalidArgument)).await;
    let bad_request = Downstream::up(Policy::always(Failure::InvalidArgument)).await;
    let exhausted = Downstream::up(Policy::always(Failure::ResourceExhausted {
        retry_delay: None,
    }))
    .await;
    let throttled = Downstream::up(Policy::first(
        3,
        Failure::ResourceExhausted {
            retry_delay: Some(Duration::from_millis(200)),
        },
    ))
    .await;
    let too_many = Downstream::up(Policy::first(
        1,
        Failure::ResourceExhausted {
            retry_delay: Some(Duration::from_secs(1)),
        },
    ))
    .await;
    let rejecting = Downstream::up(Policy {
        reject_spans: 2,
        ..Policy::healthy()
    })
    .await;
    let forward = Forward::to(vec![
        Endpoint::grpc("invalid", invalid.url()),
        Endpoint::http("bad-request", bad_request.url()),
        Endpoint::grpc("exhausted", exhausted.url()),
        Endpoint::grpc("throttled", throttled.url()),
        Endpoint::http("too-many", too_many.url()),
        Endpoint::grpc("rejecting", rejecting.url()),
    ]);
    let server = start(forward.config()).await;
    let batch = Batch::new(WORKER, 7);
    Exporters::new(server.grpc_addr(), server.http_addr())
        .export(&batch, Transport::Grpc(None))
        .await;

    let failed = |m: &Exposition, e: &str, reason: &str| {
        m.sum(FAILED, &[("endpoint", e), ("reason", reason)])
    };
    let m = wait_metrics(server.metrics_addr(), "every endpoint settled", |m| {
        failed(m, "invalid", "permanent") == 7.0
            && failed(m, "bad-request", "permanent") == 7.0
            && failed(m, "exhausted", "permanent") == 7.0
            && m.sum(SENT_SPANS, &[("endpoint", "throttled")]) == 7.0
            && m.sum(SENT_SPANS, &[("endpoint", "too-many")]) == 7.0
            && failed(m, "rejecting", "rejected") == 2.0
    })
    .await;
    for (name, downstream) in [
        ("invalid", &invalid),
        ("bad-request", &bad_request),
        ("exhausted", &exhausted),
    ] {
        assert_eq!(
            m.sum(RETRIES, &[("endpoint", name)]),
            0.0,
            "{name}: a permanent failure was retried\n{}",
            forward_series(&m, name)
        );
        assert_eq!(downstream.attempts().len(), 1, "{name}: attempts");
        assert_eq!(m.sum(SENT_SPANS, &[("endpoint", name)]), 0.0);
        assert_eq!(failed(&m, name, "retries_exhausted"), 0.0);
    }
    for (name, downstream, retries, delay) in [
        ("throttled", &throttled, 3, Duration::from_millis(200)),
        ("too-many", &too_many, 1, Duration::from_secs(1)),
    ] {
        assert_eq!(
            m.sum(RETRIES, &[("endpoint", name)]),
            retries as f64,
            "{name}\n{}",
            forward_series(&m, name)
        );
        let attempts = downstream.attempts();
        assert_eq!(attempts.len(), retries + 1, "{name}: attempts");
        for pair in attempts.windows(2) {
            let gap = pair[1].arrived - pair[0].arrived;
            assert!(
                gap >= delay.mul_f64(0.9),
                "{name}: retried after {gap:?}, the endpoint asked for {delay:?}"
            );
        }
        assert_eq!(downstream.delivered_ids(), batch.ids(), "{name}");
        assert_eq!(m.sum(FAILED, &[("endpoint", name)]), 0.0, "{name}");
    }
    assert_eq!(rejecting.delivered_ids(), batch.ids());
    assert_eq!(m.sum(RETRIES, &[("endpoint", "rejecting")]), 0.0);
    bounded("shutdown", server.shutdown()).await;
}

/// Every answer class of the specification, one endpoint each, one request of 5 spans: the
/// retryable gRPC codes (CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE,
/// DATA_LOSS) and HTTP statuses (429, 502, 503, 504) answered once are retried once and
/// delivered; other codes (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, FAILED_PRECONDITION,
/// UNIMPLEMENTED, INTERNAL, UNAUTHENTICATED) and statuses (400, 401, 403, 404, 413, 500) are
/// permanent: one attempt, no retry, failed{permanent}.
#[tokio::test(flavor = "multi_thread")]
async fn every_retryable_and_permanent_answer_is_classified_as_specified() {
    const RETRYABLE_GRPC: [i32; 6] = [1, 4, 10, 11, 14, 15];
    const RETRYABLE_HTTP: [u16; 4] = [429, 502, 503, 504];
    const PERMANENT_GRPC: [i32; 7] = [3, 5, 7, 9, 12, 13, 16];
    const PERMANENT_HTTP: [u16; 6] = [400, 401, 403, 404, 413, 500];
    struct Case {
        name: String,
        retryable: bool,
        downstream: Downstream,
    }
    let mut cases = Vec::new();
    for (codes, retryable) in [(&RETRYABLE_GRPC[..], true), (&PERMANENT_GRPC[..], false)] {
        for &grpc in codes {
            let failure = Failure::Status { grpc, http: 500 };
            let policy = match retryable {
                true => Policy::first(1, failure),
                false => Policy::always(failure),
            };
            cases.push(Case {
                name: format!("grpc-{grpc}"),
                retryable,
                downstream: Downstream::up(policy).await,
            });
        }
    }
    for (statuses, retryable) in [(&RETRYABLE_HTTP[..], true), (&PERMANENT_HTTP[..], false)] {
        for &http in statuses {
            let failure = Failure::Status { grpc: 2, http };
            let policy = match retryable {
                true => Policy::first(1, failure),
                false => Policy::always(failure),
            };
            cases.push(Case {
                name: format!("http-{http}"),
                retryable,
                downstream: Downstream::up(policy).await,
            });
        }
    }
    let mut forward = Forward::to(
        cases
            .iter()
            .map(|c| match c.name.starts_with("grpc") {
                true => Endpoint::grpc(&c.name, c.downstream.url()),
                false => Endpoint::http(&c.name, c.downstream.url()),
            })
            .collect(),
    );
    forward.senders = 1;
    let server = start(forward.config()).await;
    let batch = Batch::new(WORKER, 5);
    Exporters::new(server.grpc_addr(), server.http_addr())
        .export(&batch, Transport::HttpProtobuf)
        .await;
    let m = wait_metrics(server.metrics_addr(), "every endpoint settled", |m| {
        cases.iter().all(|c| {
            m.sum(SENT_SPANS, &[("endpoint", &c.name)]) + m.sum(FAILED, &[("endpoint", &c.name)])
                == 5.0
                && m.sum(QUEUE_REQUESTS, &[("endpoint", &c.name)]) == 0.0
        })
    })
    .await;
    let mut wrong = Vec::new();
    for case in &cases {
        let name = case.name.as_str();
        let (sent, permanent, retries) = (
            m.sum(SENT_SPANS, &[("endpoint", name)]),
            m.sum(FAILED, &[("endpoint", name), ("reason", "permanent")]),
            m.sum(RETRIES, &[("endpoint", name)]),
        );
        let attempts = case.downstream.attempts().len();
        let expected = match case.retryable {
            true => (5.0, 0.0, 1.0, 2),
            false => (0.0, 5.0, 0.0, 1),
        };
        if (sent, permanent, retries, attempts) != expected {
            wrong.push(format!(
                "{name}: sent {sent}, failed{{permanent}} {permanent}, retries {retries}, \
                 {attempts} attempts; expected {expected:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));
    bounded("shutdown", server.shutdown()).await;
}

/// An endpoint that keeps answering UNAVAILABLE and one slower than the per-attempt timeout:
/// both are retried until retry.max_elapsed, then the request is counted
/// failed{retries_exhausted}.
#[tokio::test(flavor = "multi_thread")]
async fn retries_give_up_after_max_elapsed_and_timeouts_are_retried() {
    let unavailable =
        Downstream::up(Policy::always(Failure::Unavailable { retry_after: None })).await;
    let slow = Downstream::up(Policy::slow(Duration::from_secs(3))).await;
    let mut forward = Forward::to(vec![
        Endpoint::grpc("unavailable", unavailable.url()),
        Endpoint {
            timeout: "300ms",
            ..Endpoint::grpc("slow", slow.url())
        },
    ]);
    forward.max_elapsed = "1500ms";
    let server = start(forward.config()).await;
    let batch = Batch::new(ORCHESTRATION, 6);
    Exporters::new(server.grpc_addr(), server.http_addr())
        .export(&batch, Transport::Grpc(None))
        .await;
    let m = wait_metrics(server.metrics_addr(), "both given up", |m| {
        ["unavailable", "slow"].iter().all(|e| {
            m.sum(FAILED, &[("endpoint", e), ("reason", "retries_exhausted")]) == 6.0
                && m.sum(QUEUE_REQUESTS, &[("endpoint", e)]) == 0.0
        })
    })
    .await;
    for name in ["unavailable", "slow"] {
        assert!(
            m.sum(RETRIES, &[("endpoint", name)]) >= 1.0,
            "{name}: never retried\n{}",
            forward_series(&m, name)
        );
        assert_eq!(m.sum(SENT_SPANS, &[("endpoint", name)]), 0.0);
        assert_eq!(
            m.sum(FAILED, &[("endpoint", name), ("reason", "permanent")]),
            0.0
        );
    }
    let attempts = unavailable.attempts();
    assert!(attempts.len() >= 2, "{} attempts", attempts.len());
    let span = attempts.last().unwrap().arrived - attempts[0].arrived;
    assert!(
        span <= Duration::from_secs(5),
        "kept retrying for {span:?} with max_elapsed 1500ms"
    );
    bounded("shutdown", server.shutdown()).await;
}

/// One sender, a downstream that fails the first call, and a long backoff: the request
/// waiting to be retried holds no sender, so the nine sent after it are delivered meanwhile
/// (each sender waiting out every backoff would cap a 30%-failing endpoint at a few requests
/// a second). A drain ends at drain_timeout without waiting for that retry.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_waiting_to_be_retried_holds_no_sender() {
    let downstream =
        Downstream::up(Policy::first(1, Failure::Unavailable { retry_after: None })).await;
    let mut forward = Forward::to(vec![Endpoint::grpc("backend", downstream.url())]);
    forward.senders = 1;
    // 30 s ± 50%: far beyond the test.
    forward.initial_interval = "30s";
    forward.max_interval = "30s";
    forward.drain_timeout = "1s";
    let server = start(forward.config()).await;
    let client = reqwest::Client::new();
    let http = server.http_addr().unwrap();
    let sent = batches(10, 3);
    post_accepted(&client, http, &sent[0]).await;
    wait_metrics(server.metrics_addr(), "the first call failed", |m| {
        m.sum(RETRIES, &[("endpoint", "backend")]) == 1.0
    })
    .await;
    for batch in &sent[1..] {
        post_accepted(&client, http, batch).await;
    }
    wait_delivered(&downstream, "the nine after it", &all_ids(&sent[1..])).await;
    let m = metrics(server.metrics_addr()).await;
    assert_eq!(
        m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]),
        1.0,
        "only the first is left, waiting out its backoff\n{}",
        forward_series(&m, "backend")
    );
    assert!(downstream.delivered_ids().is_disjoint(&sent[0].ids()));
    // The drain gives up on it after drain_timeout, long before its retry is due.
    bounded("shutdown", server.shutdown()).await;
    assert_eq!(downstream.attempts().len(), 10, "the retry was never due");
}

/// `Server::shutdown` stops the receivers and then keeps sending what is queued (within
/// drain_timeout): when it returns, the slow downstream has every span.
#[tokio::test(flavor = "multi_thread")]
async fn in_process_shutdown_drains_what_is_queued() {
    let downstream = Downstream::up(Policy::slow(Duration::from_millis(300))).await;
    let mut forward = Forward::to(vec![Endpoint::grpc("backend", downstream.url())]);
    forward.senders = 1;
    let server = start(forward.config()).await;
    let client = reqwest::Client::new();
    let http = server.http_addr().unwrap();
    let sent = batches(8, 10);
    for batch in &sent {
        post_accepted(&client, http, batch).await;
    }
    let m = metrics(server.metrics_addr()).await;
    let queued = m.sum(QUEUE_REQUESTS, &[("endpoint", "backend")]);
    assert!(queued >= 1.0, "nothing left to drain: {queued}");
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), server.shutdown())
        .await
        .expect("shutdown within drain_timeout plus slack");
    let delivered = downstream.delivered_ids();
    assert_eq!(
        delivered,
        all_ids(&sent),
        "shutdown returned after {:?} with {queued} requests queued",
        started.elapsed()
    );
}

/// A persistent queue at its max_bytes refuses new requests (503 + Retry-After, counted as
/// forward_queue_full) even with when_full: drop_oldest; nothing is dropped, and once the
/// downstream is back everything accepted arrives and new requests are accepted again.
#[tokio::test(flavor = "multi_thread")]
async fn full_persistent_queue_refuses_whatever_when_full_says() {
    let dir = TempDir::new("wal-full");
    let downstream = Downstream::down(Policy::healthy());
    let mut forward = Forward::to(vec![
        Endpoint::grpc("backend", downstream.url()).compression("none"),
    ]);
    forward.when_full = "drop_oldest";
    forward.max_request_bytes = Some(32 * 1024);
    forward.max_bytes = 1 << 20;
    forward.persistent = Some(dir.path().join("wal"));
    forward.persistent_max_bytes = 64 * 1024;
    let server = start(forward.config()).await;
    let client = reqwest::Client::new();
    let http = server.http_addr().unwrap();

    let accepted =
        post_until_refused(&client, http, 200, "the persistent queue never filled up").await;
    let m = metrics(server.metrics_addr()).await;
    assert_eq!(
        m.sum(
            REQUESTS_REFUSED,
            &[
                ("protocol", "http_protobuf"),
                ("reason", "forward_queue_full")
            ]
        ),
        3.0
    );
    assert_eq!(
        m.sum(DROPPED, &[("endpoint", "backend")]),
        0.0,
        "drop_oldest must not apply to a full persistent queue"
    );
    assert_eq!(
        m.sum(ACCEPTED, &[("protocol", "http_protobuf")]),
        span_count(&accepted) as f64
    );

    downstream.start().await;
    let mut want = all_ids(&accepted);
    wait_delivered(&downstream, "everything accepted", &want).await;
    // The space of delivered requests is given back: new requests are accepted again.
    let after = Batch::new(ORCHESTRATION, 20);
    eventually(
        "a request accepted after the persistent queue drained",
        PATIENCE,
        async || {
            let reply = post(&client, http, after.bytes(), None).await.unwrap();
            match reply.status {
                200 => Ok(()),
                _ => Err(format!(
                    "{} {:?}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                )),
            }
        },
    )
    .await;
    want.extend(after.ids());
    wait_delivered(&downstream, "accepted again once drained", &want).await;
    bounded("shutdown", server.shutdown()).await;
}

/// A persistent queue that cannot be written (the disk is full: here files are capped with
/// RLIMIT_FSIZE) refuses new data with 503 instead of accepting what it cannot keep, and
/// what it did keep is intact: after a restart without the limit, every accepted span is
/// delivered and no damaged region is found.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_new_data_and_keeps_the_queue_intact() {
    let dir = TempDir::new("wal-disk-full");
    let wal = dir.path().join("wal");
    let downstream = Downstream::down(Policy::healthy());
    let mut forward = Forward::to(vec![
        Endpoint::grpc("backend", downstream.url()).compression("none"),
    ]);
    forward.persistent = Some(wal.clone());
    forward.drain_timeout = "1s";
    let config = forward.write(dir.path());
    let client = reqwest::Client::new();

    // 64 KiB per file: a handful of 20-span requests fill the first segment.
    let mut binary = Spanlens::start_with_file_limit(&config, 64);
    let accepted = post_until_refused(
        &client,
        binary.http(),
        100,
        "writes past the file limit never failed",
    )
    .await;
    let m = metrics(binary.metrics).await;
    assert_eq!(
        m.sum(
            REQUESTS_REFUSED,
            &[
                ("protocol", "http_protobuf"),
                ("reason", "forward_disk_error")
            ]
        ),
        3.0
    );
    assert_eq!(
        m.sum(ACCEPTED, &[("protocol", "http_protobuf")]),
        span_count(&accepted) as f64
    );
    binary.kill9();

    downstream.start().await;
    let binary = Spanlens::start(&config);
    wait_delivered(
        &downstream,
        "everything accepted before the disk filled",
        &all_ids(&accepted),
    )
    .await;
    let m = metrics(binary.metrics).await;
    assert_eq!(
        m.sum("spanlens_forward_wal_skipped_regions_total", &[]),
        0.0,
        "the queue was damaged"
    );
    assert_eq!(
        m.sum("spanlens_forward_wal_recovered_requests_total", &[]),
        accepted.len() as f64
    );
    drop(binary);
}

/// TLS to an endpoint: the backend is a second spanlens with TLS on its gRPC receiver (a
/// certificate for localhost signed by a CA made here); the endpoint trusting that CA
/// (`tls.ca_file`) delivers every span, one trusting another CA delivers nothing and keeps
/// retrying.
#[tokio::test(flavor = "multi_thread")]
async fn tls_endpoints_trust_their_ca_file_and_nothing_else() {
    use spanlens::config::PromDuration;
    use spanlens::config::forward::{Compression, EndpointConfig, ForwardProtocol, TlsConfig};
    let dir = TempDir::new("tls");
    let pki = support::pki::Pki::new();
    let (ca, cert, key) = pki.write(&dir);
    let other_ca = dir.write("other-ca.pem", &pki.rogue.cert_pem);
    let backend = start(test_config(|c| {
        c.receivers.grpc.tls = Some(spanlens::config::security::TlsServerConfig {
            cert_file: cert,
            key_file: key,
            client_ca_file: None,
        });
    }))
    .await;
    let url = format!("https://localhost:{}", backend.grpc_addr().unwrap().port());
    let endpoint = |name: &str, ca_file| EndpointConfig {
        name: Some(name.to_string()),
        url: url.clone(),
        protocol: ForwardProtocol::Grpc,
        compression: Compression::Gzip,
        headers: Default::default(),
        tls: Some(TlsConfig { ca_file }),
        timeout: PromDuration::secs(2),
    };
    let server = start(test_config(|c| {
        c.forward.endpoints = vec![endpoint("trusted", ca), endpoint("untrusted", other_ca)];
        c.forward.retry.initial_interval = PromDuration::millis(100);
        c.forward.retry.max_interval = PromDuration::millis(200);
    }))
    .await;
    let client = reqwest::Client::new();
    let sent = batches(4, 10);
    for batch in &sent {
        post_accepted(&client, server.http_addr().unwrap(), batch).await;
    }
    let n = span_count(&sent) as f64;
    wait_metrics(
        backend.metrics_addr(),
        "the backend accepted every span over TLS",
        |m| m.sum(ACCEPTED, &[("protocol", "grpc")]) == n,
    )
    .await;
    let m = wait_metrics(
        server.metrics_addr(),
        "the untrusted endpoint retrying",
        |m| {
            m.sum(SENT_SPANS, &[("endpoint", "trusted")]) == n
                && m.sum(RETRIES, &[("endpoint", "untrusted")]) >= 2.0
        },
    )
    .await;
    assert_eq!(m.sum(SENT_SPANS, &[("endpoint", "untrusted")]), 0.0);
    bounded("backend shutdown", backend.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// 10. Off by default
// ---------------------------------------------------------------------------------------------

/// The default profile has no `forward:` section: no spanlens_forward_ series, spans are
/// accepted as before and shutdown is prompt.
#[tokio::test(flavor = "multi_thread")]
async fn forwarding_is_off_by_default() {
    let profile = spanlens::config::Config::default_profile();
    assert!(
        profile.forward.endpoints.is_empty(),
        "the default profile forwards: {:?}",
        profile.forward.endpoints
    );
    let server = start(test_config(|_| {})).await;
    let batch = Batch::new(WORKER, 10);
    let mut exporters = Exporters::new(server.grpc_addr(), server.http_addr());
    exporters.export(&batch, Transport::Grpc(None)).await;
    exporters
        .export(&Batch::new(ORCHESTRATION, 5), Transport::HttpProtobuf)
        .await;
    let m = wait_metrics(server.metrics_addr(), "spans accepted", |m| {
        m.sum(ACCEPTED, &[]) == 15.0
    })
    .await;
    let forward_lines: Vec<&str> = m
        .text
        .lines()
        .filter(|l| l.contains("spanlens_forward_"))
        .collect();
    assert!(forward_lines.is_empty(), "{forward_lines:#?}");
    assert_eq!(m.sum(SPAN_CALLS, &[]), 15.0);
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown without forwarding is prompt");
}
