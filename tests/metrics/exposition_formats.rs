//! The /metrics exposition, checked by tools that are not ours.
//!
//! spanlens runs in-process on loopback ports and receives a few hundred spans of a
//! tasker-style workflow over OTLP/HTTP (protobuf). Then:
//! * the Prometheus text format 0.0.4 (no Accept header) must pass `promtool check metrics`
//!   with no lint output at all, and its stage histograms must count exactly the spans sent;
//! * the OpenMetrics 1.0 format (the Accept header Prometheus sends) must parse with the Python
//!   client's OpenMetrics parser (tests/tools/check_openmetrics.py), agree sample for sample with
//!   the text format, and carry exemplars (`trace_id`, `span_id`) that name the slowest span
//!   observed in their bucket for their series;
//! * /healthz and /readyz answer 200.
//!
//! promtool and Python's prometheus_client are installed by scripts/test.sh; when they are
//! missing this test fails (it never skips).

use crate::support;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span::SpanKind, status::StatusCode};
use prost::Message;
use serde_json::Value;
use spanlens::server::Server;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::otlp::{hex, resource_spans};
use support::tools::{promtool, python, run_with_stdin};
use support::{Exposition, Rng, kv, parse_le, scrape_as, start, test_config};

/// What Prometheus sends when it scrapes a target (OpenMetrics preferred).
const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8,*/*;q=0.1";
const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0";

const ORCHESTRATION: &str = "tasker-orchestration";
const RUST_WORKER: &str = "tasker-rust-worker";
const RUBY_WORKER: &str = "tasker-ruby-worker";
const WORKER_QUEUE: &str = "worker_linear_workflow_queue";
const RESULTS_QUEUE: &str = "orchestration_step_results";

/// Histogram families whose every series this test models exactly.
const STAGE_HISTOGRAMS: &[&str] = &[
    "tasker_step_claim_duration_seconds",
    "tasker_handler_execution_duration_seconds",
    "tasker_result_submission_duration_seconds",
    "tasker_result_processing_duration_seconds",
    "tasker_step_enqueueing_duration_seconds",
];
const SPAN_METRICS_CALLS: &str = "traces_span_metrics_calls_total";
const SPAN_METRICS_DURATION: &str = "traces_span_metrics_duration_seconds";

// ------------------------------------------------------------------------------------------
// The spans sent

/// One span as sent, with what this test expects spanlens to make of it.
#[derive(Debug, Clone)]
struct SentSpan {
    service: &'static str,
    name: &'static str,
    kind: SpanKind,
    status: StatusCode,
    queue: Option<&'static str>,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    start_unix_nano: u64,
    duration_nanos: u64,
}

impl SentSpan {
    fn seconds(&self) -> f64 {
        self.duration_nanos as f64 / 1e9
    }

    fn end_unix_nano(&self) -> u64 {
        self.start_unix_nano + self.duration_nanos
    }

    /// `handler_language` as the default profile derives it (from the service name).
    fn handler_language(&self) -> &'static str {
        match self.service {
            RUST_WORKER => "rust",
            RUBY_WORKER => "ruby",
            _ => "unknown",
        }
    }

    /// The stage the default profile's rules give this span, if any.
    fn stage(&self) -> Option<&'static str> {
        match self.name {
            "step_claim" => Some("step_claim"),
            "read_messages"
                if self
                    .queue
                    .is_some_and(|q| q.starts_with("worker_") && q.ends_with("_queue")) =>
            {
                Some("step_claim")
            }
            "execute_handler" => Some("handler_execution"),
            "submit_result" => Some("result_submission"),
            "process_result" => Some("result_processing"),
            "enqueue_steps" => Some("step_enqueueing"),
            _ => None,
        }
    }

    fn is_error(&self) -> bool {
        self.status == StatusCode::Error
    }

    fn span_kind_label(&self) -> &'static str {
        match self.kind {
            SpanKind::Internal => "SPAN_KIND_INTERNAL",
            SpanKind::Consumer => "SPAN_KIND_CONSUMER",
            SpanKind::Producer => "SPAN_KIND_PRODUCER",
            SpanKind::Server => "SPAN_KIND_SERVER",
            SpanKind::Client => "SPAN_KIND_CLIENT",
            SpanKind::Unspecified => "SPAN_KIND_UNSPECIFIED",
        }
    }

    fn status_code_label(&self) -> &'static str {
        match self.status {
            StatusCode::Unset => "STATUS_CODE_UNSET",
            StatusCode::Ok => "STATUS_CODE_OK",
            StatusCode::Error => "STATUS_CODE_ERROR",
        }
    }

    /// (histogram family, series labels) for every histogram series this span is observed in.
    fn histogram_series(&self) -> Vec<(String, Labels)> {
        let mut out = vec![(
            SPAN_METRICS_DURATION.to_string(),
            labels(&[
                ("service_name", self.service),
                ("span_name", self.name),
                ("span_kind", self.span_kind_label()),
                ("status_code", self.status_code_label()),
            ]),
        )];
        if let Some(stage) = self.stage() {
            out.push((
                format!("tasker_{stage}_duration_seconds"),
                labels(&[
                    ("service", self.service),
                    ("handler_language", self.handler_language()),
                ]),
            ));
        }
        out
    }

    fn to_proto(&self) -> Span {
        let mut attributes = Vec::new();
        if let Some(queue) = self.queue {
            attributes.push(kv("queue", queue));
            attributes.push(kv("messaging.system", "pgmq"));
        }
        if self.name == "execute_handler" {
            attributes.push(kv("step_name", "validate_order"));
            attributes.push(kv("namespace", "linear_workflow"));
        }
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            name: self.name.to_string(),
            kind: self.kind as i32,
            start_time_unix_nano: self.start_unix_nano,
            end_time_unix_nano: self.end_unix_nano(),
            attributes,
            status: Some(Status {
                message: if self.is_error() {
                    "handler raised StepError".to_string()
                } else {
                    String::new()
                },
                code: self.status as i32,
            }),
            ..Default::default()
        }
    }
}

type Labels = BTreeMap<String, String>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Ids for the spans of this file: a trace id of two draws (the second odd), a span id of one.
impl Rng {
    fn trace_id(&mut self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next().to_be_bytes());
        id[8..].copy_from_slice(&(self.next() | 1).to_be_bytes());
        id
    }

    fn span_id(&mut self) -> [u8; 8] {
        (self.next() | 1).to_be_bytes()
    }
}

/// How one kind of span is generated: its name and kind, a log-uniform duration between `lo`
/// and `hi` seconds, the chance of status ERROR, and the `queue` attribute if any.
struct Plan {
    name: &'static str,
    kind: SpanKind,
    lo: f64,
    hi: f64,
    p_error: f64,
    queue: Option<&'static str>,
}

impl Plan {
    fn new(name: &'static str, kind: SpanKind, lo: f64, hi: f64, p_error: f64) -> Plan {
        Plan {
            name,
            kind,
            lo,
            hi,
            p_error,
            queue: None,
        }
    }

    fn queue(self, queue: &'static str) -> Plan {
        Plan {
            queue: Some(queue),
            ..self
        }
    }
}

/// A workflow: tasks of linear steps, each step claimed, executed and submitted by a Rust or a
/// Ruby worker, its result read and processed by orchestration. Durations are log-uniform per
/// span name, whole microseconds, distinct within a series and never on a bucket bound.
fn workflow_spans(seed: u64) -> Vec<SentSpan> {
    const TASKS: usize = 8;
    const STEPS: usize = 8;
    let bounds_micros: BTreeSet<u64> = [
        1_000u64, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 800_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000,
    ]
    .into_iter()
    .collect();
    let mut rng = Rng::new(seed);
    let mut used: BTreeSet<(&'static str, &'static str, u64)> = BTreeSet::new();
    let mut duration =
        |rng: &mut Rng, service: &'static str, name: &'static str, lo: f64, hi: f64| -> u64 {
            let mut micros = (lo * (hi / lo).powf(rng.unit()) * 1e6).round() as u64;
            while bounds_micros.contains(&micros) || !used.insert((service, name, micros)) {
                micros += 1;
            }
            micros * 1_000
        };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut clock = now - 120 * 1_000_000_000;
    let mut spans = Vec::new();
    for task in 0..TASKS {
        let trace_id = rng.trace_id();
        let d = duration(&mut rng, ORCHESTRATION, "enqueue_steps", 0.002, 0.06);
        spans.push(SentSpan {
            service: ORCHESTRATION,
            name: "enqueue_steps",
            kind: SpanKind::Internal,
            status: StatusCode::Unset,
            queue: None,
            trace_id,
            span_id: rng.span_id(),
            start_unix_nano: clock,
            duration_nanos: d,
        });
        clock += d + 300_000;
        for step in 0..STEPS {
            let worker = if (task + step) % 2 == 0 {
                RUST_WORKER
            } else {
                RUBY_WORKER
            };
            let (handler_lo, handler_hi) = if worker == RUBY_WORKER {
                (0.01, 1.9)
            } else {
                (0.003, 0.9)
            };
            let worker_spans = [
                Plan::new("read_messages", SpanKind::Consumer, 0.0002, 0.008, 0.0)
                    .queue(WORKER_QUEUE),
                Plan::new("step_claim", SpanKind::Internal, 0.001, 0.04, 0.03),
                Plan::new(
                    "execute_handler",
                    SpanKind::Internal,
                    handler_lo,
                    handler_hi,
                    0.12,
                ),
                Plan::new("submit_result", SpanKind::Producer, 0.001, 0.07, 0.05),
            ];
            for Plan {
                name,
                kind,
                lo,
                hi,
                p_error,
                queue,
            } in worker_spans
            {
                let d = duration(&mut rng, worker, name, lo, hi);
                let status = if rng.chance(p_error) {
                    StatusCode::Error
                } else if name == "execute_handler" {
                    StatusCode::Ok
                } else {
                    StatusCode::Unset
                };
                spans.push(SentSpan {
                    service: worker,
                    name,
                    kind,
                    status,
                    queue,
                    trace_id,
                    span_id: rng.span_id(),
                    start_unix_nano: clock,
                    duration_nanos: d,
                });
                clock += d + 150_000;
            }
            let orchestration_spans = [
                Plan::new("read_messages", SpanKind::Consumer, 0.0002, 0.006, 0.0)
                    .queue(RESULTS_QUEUE),
                Plan::new("process_result", SpanKind::Internal, 0.002, 0.15, 0.05),
            ];
            for Plan {
                name,
                kind,
                lo,
                hi,
                p_error,
                queue,
            } in orchestration_spans
            {
                let d = duration(&mut rng, ORCHESTRATION, name, lo, hi);
                let status = if rng.chance(p_error) {
                    StatusCode::Error
                } else {
                    StatusCode::Unset
                };
                spans.push(SentSpan {
                    service: ORCHESTRATION,
                    name,
                    kind,
                    status,
                    queue,
                    trace_id,
                    span_id: rng.span_id(),
                    start_unix_nano: clock,
                    duration_nanos: d,
                });
                clock += d + 100_000;
            }
        }
    }
    assert!(clock < now, "span clock ran past now");
    spans
}

/// One OTLP request per chunk of spans, each span under its own service's resource.
fn export_request(spans: &[SentSpan]) -> ExportTraceServiceRequest {
    let mut by_service: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
    for span in spans {
        by_service
            .entry(span.service)
            .or_default()
            .push(span.to_proto());
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| {
                let attributes = vec![
                    kv("service.name", service),
                    kv("service.version", "0.1.0"),
                    // FFI workers run the Rust SDK in-process: the SDK language says rust.
                    kv("telemetry.sdk.language", "rust"),
                    kv("telemetry.sdk.name", "opentelemetry"),
                ];
                let mut resource = resource_spans(attributes, &service.replace('-', "_"), spans);
                resource.scope_spans[0].scope.as_mut().unwrap().version = "0.1.0".to_string();
                resource
            })
            .collect(),
    }
}

// ------------------------------------------------------------------------------------------
// What the spans should make

/// The spans observed in one histogram series.
type Model = BTreeMap<(String, Labels), Vec<SentSpan>>;

fn model(spans: &[SentSpan]) -> Model {
    let mut model = Model::new();
    for span in spans {
        for key in span.histogram_series() {
            model.entry(key).or_default().push(span.clone());
        }
    }
    model
}

fn stage_series_count(model: &Model) -> usize {
    model
        .keys()
        .filter(|(family, _)| STAGE_HISTOGRAMS.contains(&family.as_str()))
        .map(|k| model[k].len())
        .sum()
}

fn stage_count_total(text: &Exposition) -> f64 {
    STAGE_HISTOGRAMS
        .iter()
        .flat_map(|h| text.all(&format!("{h}_count")))
        .map(|s| s.value)
        .sum()
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The text exposition's stage histograms, calls and errors counters and generic span
/// metrics must count exactly the spans sent.
fn check_counts_against_spans(text: &Exposition, spans: &[SentSpan], model: &Model) {
    let mut problems = Vec::new();
    for ((family, series), observed) in model {
        let pairs: Vec<(&str, &str)> = series
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let buckets = text.buckets(family, &pairs);
        if buckets.is_empty() {
            problems.push(format!("{family}{series:?}: no _bucket samples"));
            continue;
        }
        for (le, count) in &buckets {
            let bound = parse_le(le);
            let expected = observed.iter().filter(|s| s.seconds() <= bound).count() as f64;
            if *count != expected {
                problems.push(format!(
                    "{family}_bucket{series:?} le={le}: {count}, expected {expected}"
                ));
            }
        }
        if buckets.last().map(|(le, _)| le.as_str()) != Some("+Inf") {
            problems.push(format!(
                "{family}{series:?}: last bucket is not le=\"+Inf\": {buckets:?}"
            ));
        }
        let count = text.value(&format!("{family}_count"), &pairs);
        if count != Some(observed.len() as f64) {
            problems.push(format!(
                "{family}_count{series:?}: {count:?}, expected {}",
                observed.len()
            ));
        }
        let expected_sum: f64 = observed.iter().map(SentSpan::seconds).sum();
        match text.value(&format!("{family}_sum"), &pairs) {
            Some(sum) if (sum - expected_sum).abs() <= 1e-6 * expected_sum.max(1.0) => {}
            other => problems.push(format!(
                "{family}_sum{series:?}: {other:?}, expected {expected_sum}"
            )),
        }
    }
    // No series beyond the modelled ones (a span classified into the wrong stage shows here).
    for family in STAGE_HISTOGRAMS
        .iter()
        .copied()
        .chain([SPAN_METRICS_DURATION])
    {
        for sample in text.all(&format!("{family}_count")) {
            if !model.contains_key(&(family.to_string(), sample.labels.clone())) {
                problems.push(format!(
                    "unexpected series {family}_count{:?} = {}",
                    sample.labels, sample.value
                ));
            }
        }
    }
    // Stage calls and errors counters.
    let mut calls: BTreeMap<(&str, &str, &str), (usize, usize)> = BTreeMap::new();
    for span in spans {
        if let Some(stage) = span.stage() {
            let entry = calls
                .entry((stage, span.service, span.handler_language()))
                .or_default();
            entry.0 += 1;
            entry.1 += usize::from(span.is_error());
        }
    }
    for ((stage, service, language), (n, errors)) in &calls {
        let pairs = [("service", *service), ("handler_language", *language)];
        let got = text.value(&format!("tasker_{stage}_calls_total"), &pairs);
        if got != Some(*n as f64) {
            problems.push(format!(
                "tasker_{stage}_calls_total{pairs:?}: {got:?}, expected {n}"
            ));
        }
        let got = text.value(&format!("tasker_{stage}_errors_total"), &pairs);
        let ok = match got {
            Some(v) => v == *errors as f64,
            None => *errors == 0,
        };
        if !ok {
            problems.push(format!(
                "tasker_{stage}_errors_total{pairs:?}: {got:?}, expected {errors}"
            ));
        }
    }
    // Generic span metrics calls.
    for ((family, series), observed) in model {
        if family != SPAN_METRICS_DURATION {
            continue;
        }
        let pairs: Vec<(&str, &str)> = series
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let got = text.value(SPAN_METRICS_CALLS, &pairs);
        if got != Some(observed.len() as f64) {
            problems.push(format!(
                "{SPAN_METRICS_CALLS}{series:?}: {got:?}, expected {}",
                observed.len()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the text exposition does not count the {} spans sent:\n  {}\n--- exposition ---\n{}",
        spans.len(),
        problems.join("\n  "),
        text.text
    );
}

// ------------------------------------------------------------------------------------------
// Outside tools

/// Keeps a copy of an exposition for a human to read after a failure.
fn keep(name: &str, body: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, body).expect("write exposition copy");
    path
}

pub(crate) async fn check_with_promtool(body: String) {
    let kept = keep("exposition_formats.prom", &body);
    let promtool = promtool();
    let output = tokio::task::spawn_blocking({
        let promtool = promtool.clone();
        move || run_with_stdin(&promtool, &["check", "metrics"], body.as_bytes())
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "`promtool check metrics` rejected the text exposition ({}), or reported lint problems:\n\
         --- stdout ---\n{stdout}--- stderr ---\n{stderr}--- exposition kept at {} ---",
        output.status,
        kept.display()
    );
}

pub(crate) async fn check_with_python(body: String) -> Value {
    let kept = keep("exposition_formats.openmetrics", &body);
    let python = python();
    let checker = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/check_openmetrics.py");
    let output = tokio::task::spawn_blocking({
        let python = python.clone();
        move || run_with_stdin(&python, &[checker.to_str().unwrap()], body.as_bytes())
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "the OpenMetrics exposition does not parse with prometheus_client ({}):\n{}\
         --- exposition kept at {} ---",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        kept.display()
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "check_openmetrics.py printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

// ------------------------------------------------------------------------------------------
// The parsed OpenMetrics summary

#[derive(Debug, Clone)]
struct OmSample {
    family: String,
    family_type: String,
    name: String,
    labels: Labels,
    value: f64,
    exemplar: Option<OmExemplar>,
}

#[derive(Debug, Clone)]
struct OmExemplar {
    labels: Labels,
    value: f64,
    timestamp: Option<f64>,
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) if s == "+Inf" => f64::INFINITY,
        Value::String(s) if s == "-Inf" => f64::NEG_INFINITY,
        Value::String(s) if s == "NaN" => f64::NAN,
        other => panic!("not a number in the checker's JSON: {other}"),
    }
}

fn string_map(v: &Value) -> Labels {
    v.as_object()
        .expect("labels object")
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().expect("label value is a string").to_string(),
            )
        })
        .collect()
}

fn om_samples(summary: &Value) -> Vec<OmSample> {
    let mut out = Vec::new();
    for (family, body) in summary["families"].as_object().expect("families object") {
        let family_type = body["type"].as_str().unwrap().to_string();
        for sample in body["samples"].as_array().unwrap() {
            let exemplar = sample.get("exemplar").map(|e| OmExemplar {
                labels: string_map(&e["labels"]),
                value: number(&e["value"]),
                timestamp: e.get("timestamp").map(number),
            });
            out.push(OmSample {
                family: family.clone(),
                family_type: family_type.clone(),
                name: sample["name"].as_str().unwrap().to_string(),
                labels: string_map(&sample["labels"]),
                value: number(&sample["value"]),
                exemplar,
            });
        }
    }
    out
}

/// Sample identity across formats: `le` compared as a number ("1" and "1.0" are one bound).
fn sample_key(name: &str, labels: &Labels) -> (String, Vec<(String, String)>) {
    let labels = labels
        .iter()
        .map(|(k, v)| {
            if k == "le" {
                (k.clone(), format!("{:?}", parse_le(v)))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    (name.to_string(), labels)
}

/// Samples both formats must agree on: every tasker_* and traces_span_metrics_* sample.
fn is_compared_sample(name: &str) -> bool {
    name.starts_with("tasker_") || name.starts_with("traces_span_metrics_")
}

/// The histogram families this test models span by span. Derived and comparison
/// histograms (tasker_worker_overhead_seconds, tasker_handler_execution_by_step_seconds, ...)
/// are checked by their own tests; here they only have to parse and agree across formats.
fn is_modelled_family(name: &str) -> bool {
    STAGE_HISTOGRAMS.contains(&name) || name.starts_with("traces_span_metrics_")
}

/// Every tasker_* and traces_span_metrics_* sample must have the same value in both formats,
/// and both formats must expose the same sample names.
fn check_formats_agree(text: &Exposition, om: &[OmSample]) {
    let mut problems = Vec::new();
    let om_values: BTreeMap<_, f64> = om
        .iter()
        .filter(|s| !s.name.ends_with("_created"))
        .map(|s| (sample_key(&s.name, &s.labels), s.value))
        .collect();
    let text_values: BTreeMap<_, f64> = text
        .samples
        .iter()
        .map(|s| (sample_key(&s.name, &s.labels), s.value))
        .collect();
    for (key, value) in &text_values {
        if !is_compared_sample(&key.0) {
            continue;
        }
        match om_values.get(key) {
            Some(v) if close(*v, *value) => {}
            Some(v) => problems.push(format!("{key:?}: text {value}, OpenMetrics {v}")),
            None => problems.push(format!(
                "{key:?}: in text ({value}), missing from OpenMetrics"
            )),
        }
    }
    for (key, value) in &om_values {
        if is_compared_sample(&key.0) && !text_values.contains_key(key) {
            problems.push(format!(
                "{key:?}: in OpenMetrics ({value}), missing from text"
            ));
        }
    }
    let text_names: BTreeSet<&str> = text.samples.iter().map(|s| s.name.as_str()).collect();
    let om_names: BTreeSet<&str> = om
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| !n.ends_with("_created"))
        .collect();
    for name in text_names.symmetric_difference(&om_names) {
        problems.push(format!("sample name {name} is in one format only"));
    }
    assert!(
        problems.is_empty(),
        "the text and OpenMetrics expositions disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// Exemplars on the modelled histograms: `trace_id` (32 hex) and `span_id` (16 hex) of the
/// slowest span observed in that bucket for that series, its value inside the bucket.
fn check_exemplars(om: &[OmSample], model: &Model, earliest_unix_s: f64) -> usize {
    let mut problems = Vec::new();
    let mut stage_series_with_exemplar = BTreeSet::new();
    let mut checked = 0;
    let hex_of = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let now_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for sample in om {
        let Some(exemplar) = &sample.exemplar else {
            continue;
        };
        if sample.family_type != "histogram" || !sample.name.ends_with("_bucket") {
            continue;
        }
        let mut series = sample.labels.clone();
        let Some(le) = series.remove("le") else {
            problems.push(format!(
                "{} {:?}: bucket without le",
                sample.name, sample.labels
            ));
            continue;
        };
        let key = (sample.family.clone(), series);
        let Some(observed) = model.get(&key) else {
            if is_modelled_family(&sample.family) {
                problems.push(format!(
                    "exemplar on unexpected series {} {:?}",
                    sample.name, sample.labels
                ));
            }
            continue;
        };
        checked += 1;
        let where_ = format!("{}{:?}", sample.name, sample.labels);
        let names: Vec<&str> = exemplar.labels.keys().map(String::as_str).collect();
        if names != ["span_id", "trace_id"] {
            problems.push(format!(
                "{where_}: exemplar labels are {names:?}, want trace_id and span_id"
            ));
            continue;
        }
        let (trace_id, span_id) = (&exemplar.labels["trace_id"], &exemplar.labels["span_id"]);
        if !hex_of(trace_id, 32) || !hex_of(span_id, 16) {
            problems.push(format!(
                "{where_}: trace_id {trace_id:?} must be 32 lowercase hex chars, span_id {span_id:?} 16"
            ));
        }
        // The bucket: (previous bound, le].
        let bound = parse_le(&le);
        let lower = om
            .iter()
            .filter(|s| {
                s.name == sample.name && {
                    let mut l = s.labels.clone();
                    l.remove("le");
                    l == key.1
                }
            })
            .map(|s| parse_le(&s.labels["le"]))
            .filter(|b| *b < bound)
            .fold(f64::NEG_INFINITY, f64::max);
        if !(exemplar.value > lower && exemplar.value <= bound) {
            problems.push(format!(
                "{where_}: exemplar value {} is outside its bucket ({lower}, {bound}]",
                exemplar.value
            ));
        }
        let slowest = observed
            .iter()
            .filter(|s| s.seconds() > lower && s.seconds() <= bound)
            .max_by_key(|s| s.duration_nanos);
        match slowest {
            None => problems.push(format!(
                "{where_}: exemplar {exemplar:?} on a bucket no span sent falls in"
            )),
            Some(slowest) => {
                if !close(exemplar.value, slowest.seconds())
                    || *trace_id != hex(&slowest.trace_id)
                    || *span_id != hex(&slowest.span_id)
                {
                    problems.push(format!(
                        "{where_}: exemplar is trace_id={trace_id} span_id={span_id} value={}; the slowest span \
                         in this bucket is trace_id={} span_id={} value={} ({} {})",
                        exemplar.value,
                        hex(&slowest.trace_id),
                        hex(&slowest.span_id),
                        slowest.seconds(),
                        slowest.service,
                        slowest.name
                    ));
                }
            }
        }
        if let Some(ts) = exemplar.timestamp
            && !(ts >= earliest_unix_s - 1.0 && ts <= now_unix_s + 5.0)
        {
            problems.push(format!(
                    "{where_}: exemplar timestamp {ts} is not a Unix time in seconds between the first span \
                     ({earliest_unix_s}) and now ({now_unix_s})"
                ));
        }
        if STAGE_HISTOGRAMS.contains(&sample.family.as_str()) {
            stage_series_with_exemplar.insert(key);
        }
    }
    // The slowest span of the interval is kept for every series that observed one.
    for key in model.keys() {
        if STAGE_HISTOGRAMS.contains(&key.0.as_str()) && !stage_series_with_exemplar.contains(key) {
            problems.push(format!(
                "{} {:?}: no bucket carries an exemplar",
                key.0, key.1
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "OpenMetrics exemplars are wrong:\n  {}",
        problems.join("\n  ")
    );
    assert!(
        !stage_series_with_exemplar.is_empty(),
        "no stage histogram bucket carries an exemplar"
    );
    checked
}

// ------------------------------------------------------------------------------------------
// The test

async fn post_spans(client: &reqwest::Client, url: &str, spans: &[SentSpan]) {
    let body = export_request(spans).encode_to_vec();
    let response = client
        .post(url)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "POST {url} with {} spans: {status} {text}",
        spans.len()
    );
}

async fn get_status(url: &str) -> u16 {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .status()
        .as_u16()
}

/// Sends the workflow and waits until every span is counted. The server keeps the slowest span
/// of each scrape interval as exemplar, so the spans must all land in one interval: the first
/// scrape comes only after a pause and must already see every span; if it does not (a very
/// slow machine), the run starts over on a fresh server with a longer pause.
async fn ingest_in_one_interval(spans: &[SentSpan], model: &Model) -> Option<(Server, Exposition)> {
    let expected = stage_series_count(model) as f64;
    for (attempt, pause_ms) in [300u64, 1_500, 5_000].into_iter().enumerate() {
        let server = start(test_config(|_| {})).await;
        let url = format!(
            "http://{}/v1/traces",
            server.http_addr().expect("OTLP/HTTP receiver is enabled")
        );
        let client = reqwest::Client::new();
        for chunk in spans.chunks(100) {
            post_spans(&client, &url, chunk).await;
        }
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        let first = support::scrape(&server).await;
        if stage_count_total(&first) >= expected {
            return Some((server, first));
        }
        // Wait for the rest only to tell a slow server from one that loses spans.
        let mut last = first;
        for _ in 0..200 {
            if stage_count_total(&last) >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = support::scrape(&server).await;
        }
        let counted = stage_count_total(&last);
        server.shutdown().await;
        assert!(
            counted >= expected,
            "after 20 s the stage histograms count {counted} spans; {expected} of the {} spans sent belong to \
             a stage\n--- exposition ---\n{}",
            spans.len(),
            last.text
        );
        eprintln!(
            "attempt {}: the spans were not all counted {pause_ms} ms after sending; retrying",
            attempt + 1
        );
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_openmetrics_expositions_pass_independent_checkers() {
    let spans = workflow_spans(0x5ba1_1e75);
    let model = model(&spans);
    let earliest = spans.iter().map(|s| s.start_unix_nano).min().unwrap() as f64 / 1e9;
    assert!(spans.len() >= 300, "a few hundred spans: {}", spans.len());
    assert!(
        spans.iter().any(SentSpan::is_error),
        "some spans have status ERROR"
    );

    let (server, _) = ingest_in_one_interval(&spans, &model)
        .await
        .expect("the spans never landed in one scrape interval in three attempts");

    // --- Prometheus text format 0.0.4 -----------------------------------------------------
    let (content_type, text_body) = scrape_as(&server, None).await;
    assert_eq!(
        content_type, TEXT_CONTENT_TYPE,
        "Content-Type of a scrape without Accept"
    );
    for line in text_body.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains(" # {"),
            "the text format 0.0.4 has no exemplars, but: {line}"
        );
    }
    let text = Exposition::parse(&text_body);
    check_counts_against_spans(&text, &spans, &model);
    check_with_promtool(text_body.clone()).await;

    // --- OpenMetrics 1.0 ----------------------------------------------------------------
    let (content_type, om_body) = scrape_as(&server, Some(PROMETHEUS_ACCEPT)).await;
    assert!(
        content_type.starts_with(OPENMETRICS_CONTENT_TYPE),
        "Content-Type for Prometheus' Accept header: {content_type:?}, want {OPENMETRICS_CONTENT_TYPE}..."
    );
    if !om_body.ends_with("# EOF\n") {
        let tail: String = om_body
            .chars()
            .rev()
            .take(120)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!("the OpenMetrics body must end with \"# EOF\\n\"; it ends with {tail:?}");
    }
    let summary = check_with_python(om_body.clone()).await;
    let om = om_samples(&summary);
    for family in STAGE_HISTOGRAMS
        .iter()
        .copied()
        .chain([SPAN_METRICS_DURATION])
    {
        let found = summary["families"]
            .get(family)
            .unwrap_or_else(|| panic!("OpenMetrics has no family {family}"));
        assert_eq!(found["type"], "histogram", "OpenMetrics TYPE of {family}");
    }
    for family in [
        "tasker_step_claim_calls",
        "tasker_handler_execution_errors",
        "traces_span_metrics_calls",
    ] {
        let found = summary["families"]
            .get(family)
            .unwrap_or_else(|| panic!("OpenMetrics has no counter family {family}"));
        assert_eq!(found["type"], "counter", "OpenMetrics TYPE of {family}");
    }
    check_formats_agree(&text, &om);
    let checked = check_exemplars(&om, &model, earliest);
    eprintln!(
        "{} spans; {checked} exemplars checked against the spans sent",
        spans.len()
    );

    // --- health -------------------------------------------------------------------------
    for path in ["/healthz", "/readyz"] {
        let url = format!("http://{}{path}", server.metrics_addr());
        assert_eq!(get_status(&url).await, 200, "GET {url}");
    }

    server.shutdown().await;
}
