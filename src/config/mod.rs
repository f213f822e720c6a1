//! spanlens's configuration: YAML, parsed from a string plus an environment map, with every
//! problem reported at once by path and line. The default profile is `config/spanlens.yaml`,
//! embedded in the binary.

mod duration;
mod env;
pub mod forward;
pub mod limits;
mod lines;
pub mod security;
mod url;
pub(crate) mod validate;

pub use duration::PromDuration;
use lines::LineIndex;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
pub use url::TraceUrl;
pub(crate) use url::percent_encoded;

/// The default profile's YAML text.
pub const DEFAULT_PROFILE: &str = include_str!("../../config/spanlens.yaml");

/// A whole configuration. Build it with [`Config::parse`], [`Config::load`] or
/// [`Config::default_profile`]: those validate it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where spans come in.
    #[serde(default)]
    pub receivers: ReceiversConfig,
    /// The scrape endpoint and the limits every metric shares.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// How label values are found.
    pub labels: LabelsConfig,
    /// One histogram (and calls / errors counters) per stage, by stage name.
    pub stages: BTreeMap<String, StageConfig>,
    /// Classification rules, in order: the first match gives a span its stage.
    pub rules: Vec<RuleConfig>,
    /// The generic spanmetrics-style metrics.
    #[serde(default)]
    pub span_metrics: SpanMetricsConfig,
    /// What `spanlens rules` generates besides each stage's own alert.
    #[serde(default)]
    pub alerting: AlertingConfig,
    /// Durations that join several spans by a key attribute, by name.
    #[serde(default)]
    pub derived: BTreeMap<String, DerivedConfig>,
    /// A stage's latency by step and handler language, compared against one baseline
    /// language (FFI overhead: Ruby, Python, TypeScript handlers against Rust).
    #[serde(default)]
    pub comparisons: BTreeMap<String, ComparisonConfig>,
    /// The join window behind derived durations, and duplicate detection.
    #[serde(default)]
    pub join: JoinConfig,
    /// Recent spans kept for `GET /api/v1/breakdown/{id}`.
    #[serde(default)]
    pub breakdown: BreakdownConfig,
    /// Downstream OTLP endpoints that receive every accepted request (off when none).
    #[serde(default)]
    pub forward: forward::ForwardConfig,
    /// How many operations a span stands for when services sample traces at the head.
    #[serde(default)]
    pub sampling: SamplingConfig,
    /// The operator page on the metrics endpoint (`/`, `/task/{id}`, `/compare`).
    #[serde(default)]
    pub page: PageConfig,
}

/// The operator page served on the metrics endpoint, with its TLS and bearer token.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PageConfig {
    /// A trace backend's page for one trace: an http:// or https:// URL holding
    /// `{trace_id}` (32 hex digits), such as Jaeger's `http://jaeger:16686/trace/{trace_id}`.
    /// Unset: trace ids are shown without links.
    pub trace_url: Option<TraceUrl>,
    /// How often the page's windows (last 1 and 5 minutes) take a snapshot of the
    /// histograms, between 1s and 1m; the 5-minute window covers up to a minute more.
    pub sample_interval: PromDuration,
    /// Rows in the lists of slowest recent tasks and steps.
    pub slowest: usize,
}

impl Default for PageConfig {
    fn default() -> Self {
        PageConfig {
            trace_url: None,
            sample_interval: PromDuration::secs(10),
            slowest: 10,
        }
    }
}

/// Where a span's adjusted count comes from: every counter and histogram observation of a
/// span is weighted by it, so that sampled traffic is counted as the traffic it stands for.
/// A span with no sampling information counts 1.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Read OpenTelemetry probability sampling from the span's W3C tracestate: `ot=th:<hex>`
    /// (rejection threshold T: 2^56 / (2^56 - T) operations) or the older `ot=p:<n>` (2^n).
    pub tracestate: bool,
    /// A span attribute (else resource attribute) holding the adjusted count as a number,
    /// as Tempo's `span_multiplier_key`; it wins over the tracestate where present.
    pub multiplier_attribute: Option<String>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            tracestate: true,
            multiplier_attribute: None,
        }
    }
}

/// What is kept for per-task breakdowns, and the attributes that tie a task together.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakdownConfig {
    /// Classified spans kept (about 120 bytes each); 0 turns breakdowns off.
    pub max_spans: usize,
    /// Spans older than this are dropped (a Prometheus duration).
    pub max_age: PromDuration,
    /// Attribute naming the request a task came from.
    pub correlation_key: String,
    /// Attribute naming the task.
    pub task_key: String,
    /// Attribute naming the step.
    pub step_key: String,
    /// Attribute with the step's name.
    pub step_name_key: String,
}

impl BreakdownConfig {
    /// The span attributes a breakdown reads: correlation id, task, step, step name.
    pub fn attribute_keys(&self) -> [&str; 4] {
        [
            &self.correlation_key,
            &self.task_key,
            &self.step_key,
            &self.step_name_key,
        ]
        .map(String::as_str)
    }
}

impl Default for BreakdownConfig {
    fn default() -> Self {
        BreakdownConfig {
            max_spans: 50_000,
            max_age: PromDuration::minutes(15),
            correlation_key: "correlation_id".to_string(),
            task_key: "task_uuid".to_string(),
            step_key: "step_uuid".to_string(),
            step_name_key: "step_name".to_string(),
        }
    }
}

/// A stage's spans, histogrammed by step and handler language, and recording rules that set
/// each language's quantile against the baseline language's for the same step.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComparisonConfig {
    /// HELP text of the histogram.
    pub help: String,
    /// Histogram name, in seconds; labelled by the step label and handler_language.
    pub histogram: String,
    /// The stage whose spans are compared.
    pub stage: String,
    /// A label from labels.extra naming the step (normalise names there with a regex).
    pub step_label: String,
    /// The handler language the others are set against.
    #[serde(default = "default_baseline")]
    pub baseline: String,
    /// The quantile compared.
    #[serde(default = "default_quantile")]
    pub quantile: f64,
    /// Bucket upper bounds in seconds; metrics.default_buckets when unset.
    pub buckets: Option<Vec<f64>>,
}

fn default_baseline() -> String {
    "rust".to_string()
}

/// A duration no single span carries, computed from the spans that share a key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedConfig {
    /// HELP text of the histogram.
    pub help: String,
    /// Histogram name, in seconds.
    pub histogram: String,
    /// Span attribute whose value joins the parts, such as `step_uuid` or `correlation_id`.
    pub key: String,
    /// `sum` of the parts' durations; `difference` first minus second; `gap` from the end of
    /// the first to the start of the second; `envelope` from the earliest start to the latest end.
    pub operation: Operation,
    /// The spans to join: a stage, optionally narrowed to one span name.
    pub parts: Vec<PartConfig>,
    /// Labels of the histogram: `service`, `handler_language` or names from labels.extra,
    /// each taken from the first part that has a value.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Bucket upper bounds in seconds; metrics.default_buckets when unset.
    pub buckets: Option<Vec<f64>>,
    /// Latency alerts, each optionally for a subset of the series (label regexes).
    #[serde(default)]
    pub alerts: Vec<DerivedAlert>,
    /// A latency objective: recorded slow ratios and burn-rate alerts, by `labels`.
    pub slo: Option<SloConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Sum,
    Difference,
    Gap,
    Envelope,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartConfig {
    /// A stage name from `stages`.
    pub stage: String,
    /// Only spans of the stage with this exact name.
    pub span_name: Option<String>,
}

/// A derived metric's alert.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedAlert {
    /// Appended to the alert name (CamelCase), such as `Linear`.
    #[serde(default)]
    pub name: String,
    /// Label regexes (fully anchored by Prometheus) selecting the series this alert watches.
    #[serde(default)]
    pub matchers: BTreeMap<String, String>,
    #[serde(default = "default_quantile")]
    pub quantile: f64,
    /// Fire above this many seconds; with classic histograms (`alerting.histograms`), a
    /// bucket bound of the histogram.
    pub above_seconds: f64,
    #[serde(default = "default_for", rename = "for")]
    pub for_duration: PromDuration,
    #[serde(default = "default_severity")]
    pub severity: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JoinConfig {
    /// How long a key waits for its missing parts before it is evicted (a Prometheus duration).
    pub max_wait: PromDuration,
    /// Keys waiting at once, over every derived metric; the oldest are evicted past it.
    pub max_pending: usize,
    /// Span ids remembered to drop resent duplicates (8 bytes each, allocated at start).
    pub dedupe_spans: usize,
}

impl Default for JoinConfig {
    fn default() -> Self {
        JoinConfig {
            max_wait: PromDuration::minutes(5),
            max_pending: 50_000,
            dedupe_spans: 262_144,
        }
    }
}

/// Settings shared by every generated rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Window of the recorded rates and quantiles (a Prometheus duration).
    pub rate_window: PromDuration,
    /// A latency alert needs at least this many spans per second in its series, so that a
    /// quiet service never pages.
    pub min_calls_per_second: f64,
    /// Regression alerts fire when the quantile is this many times its value `regression_offset` ago.
    pub regression_ratio: f64,
    /// How far back the regression alert compares (same hour yesterday: 1d).
    pub regression_offset: PromDuration,
    /// How long a regression must last before it fires.
    pub regression_for: PromDuration,
    /// Base URL of the runbook; each alert links to its own section.
    pub runbook_url: String,
    /// Prometheus job that scrapes spanlens, for the scrape-failure alert.
    pub job: String,
    /// Which series of each histogram the quantile rules, latency alerts and SLO rules read.
    pub histograms: HistogramKind,
}

/// The series a rule reads a histogram from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistogramKind {
    /// `<name>_bucket{le}` and `<name>_count`: every Prometheus has them from a text or
    /// OpenMetrics scrape. Thresholds must be bucket bounds.
    #[default]
    Classic,
    /// The native histogram `<name>`: Prometheus started with
    /// `--enable-feature=native-histograms` (protobuf scrapes), and
    /// `metrics.native_histograms.enabled`. Thresholds may be any value.
    Native,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            rate_window: PromDuration::minutes(5),
            min_calls_per_second: 0.05,
            regression_ratio: 1.5,
            regression_offset: PromDuration::days(1),
            regression_for: PromDuration::minutes(30),
            runbook_url: "https://github.com/spanlens/spanlens/blob/main/docs/RUNBOOK.md"
                .to_string(),
            job: "spanlens".to_string(),
            histograms: HistogramKind::Classic,
        }
    }
}

/// A stage's latency alert.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageAlert {
    /// The quantile watched, such as 0.95.
    #[serde(default = "default_quantile")]
    pub quantile: f64,
    /// Fire when the quantile is above this many seconds. With classic histograms
    /// (`alerting.histograms`) it must be one of the histogram's bucket bounds, or the
    /// quantile would be interpolated around it.
    pub above_seconds: f64,
    /// How long the condition must hold (a Prometheus duration).
    #[serde(default = "default_for", rename = "for")]
    pub for_duration: PromDuration,
    /// The `severity` label Alertmanager routes on.
    #[serde(default = "default_severity")]
    pub severity: String,
}

fn default_quantile() -> f64 {
    0.95
}

fn default_for() -> PromDuration {
    PromDuration::minutes(10)
}

fn default_severity() -> String {
    "warning".to_string()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiversConfig {
    /// OTLP/gRPC listener.
    pub grpc: ListenerConfig,
    /// OTLP/HTTP listener.
    pub http: ListenerConfig,
    /// Largest request body, in bytes, after decompression.
    pub max_request_bytes: usize,
    /// Requests being read or processed at once over both receivers; more are answered
    /// 503 / UNAVAILABLE with Retry-After.
    pub max_pending_requests: usize,
    /// Connections open at once over both receivers; further ones are closed as they arrive
    /// (spanlens_connections_refused_total). Near the process's file limit, idle
    /// connections are closed first, the longest idle first.
    pub max_connections: usize,
    /// Refuse requests (503 / UNAVAILABLE) when resident memory plus what they may take
    /// would pass this many bytes; 0 turns the check off.
    pub memory_limit_bytes: u64,
    /// What refused clients are told to wait (a Prometheus duration).
    pub retry_after: PromDuration,
    /// An HTTP/1 request head must arrive within this, or the connection is closed; also the
    /// TLS handshake's limit.
    pub header_read_timeout: PromDuration,
    /// A request body must arrive within this (HTTP 408 / gRPC DEADLINE_EXCEEDED).
    pub body_read_timeout: PromDuration,
    /// A bearer token both receivers require.
    pub auth: Option<security::AuthConfig>,
}

impl Default for ReceiversConfig {
    fn default() -> Self {
        ReceiversConfig {
            grpc: ListenerConfig::grpc(),
            http: ListenerConfig::http(),
            max_request_bytes: 8 * 1024 * 1024,
            max_pending_requests: 64,
            max_connections: 4096,
            memory_limit_bytes: 0,
            retry_after: PromDuration::secs(1),
            header_read_timeout: PromDuration::secs(10),
            body_read_timeout: PromDuration::secs(30),
            auth: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Off: the listener is not started.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address to bind, such as 127.0.0.1:4317 (port 0 picks a free port).
    pub endpoint: SocketAddr,
    /// HTTP/2 streams one connection may have open at once.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING interval; a connection whose peer does not answer within
    /// keepalive_timeout is closed.
    #[serde(default = "default_keepalive_interval")]
    pub keepalive_interval: PromDuration,
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: PromDuration,
    /// TLS (and mutual TLS with client_ca_file); plain text when unset.
    pub tls: Option<security::TlsServerConfig>,
}

fn yes() -> bool {
    true
}

fn default_max_concurrent_streams() -> u32 {
    100
}

fn default_keepalive_interval() -> PromDuration {
    PromDuration::secs(30)
}

fn default_keepalive_timeout() -> PromDuration {
    PromDuration::secs(10)
}

impl ListenerConfig {
    /// A listener on 127.0.0.1:`port` with the default limits.
    pub fn on(port: u16) -> Self {
        ListenerConfig {
            enabled: true,
            endpoint: SocketAddr::from(([127, 0, 0, 1], port)),
            max_concurrent_streams: default_max_concurrent_streams(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_timeout: default_keepalive_timeout(),
            tls: None,
        }
    }

    fn grpc() -> Self {
        ListenerConfig::on(4317)
    }

    fn http() -> Self {
        ListenerConfig::on(4318)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of /metrics, /healthz and /readyz.
    pub endpoint: SocketAddr,
    /// Bucket upper bounds, in seconds, for histograms that set none.
    pub default_buckets: Vec<f64>,
    /// Label value standing in for values past a cap.
    pub overflow_value: String,
    /// Label values are cut to this many bytes.
    pub max_label_value_length: usize,
    /// Distinct series per metric before new ones fold into the overflow series.
    pub max_series_per_metric: usize,
    /// A series not observed for this long disappears and frees its place under the caps
    /// (a Prometheus duration; 0s keeps series forever). A series that comes back restarts
    /// from zero, which Prometheus reads as a counter reset.
    pub series_idle_timeout: PromDuration,
    /// Native histograms kept beside every stage and derived histogram.
    pub native_histograms: NativeHistogramsConfig,
    /// TLS on the metrics endpoint.
    pub tls: Option<security::TlsServerConfig>,
    /// A bearer token scrapes must carry (Prometheus: `authorization: { credentials_file }`).
    pub auth: Option<security::AuthConfig>,
}

/// Native (sparse exponential) histograms: served in the Prometheus protobuf exposition to a
/// scraper that asks for it, beside the classic buckets, which every format keeps.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NativeHistogramsConfig {
    /// Keep them; false saves their memory when no scraper reads them.
    pub enabled: bool,
    /// Resolution, -4 to 8: each power of two is cut into 2^schema buckets, each bucket's
    /// upper bound 2^(2^-schema) times its lower one (schema 3: 8 buckets, 9% apart).
    pub schema: i8,
    /// Populated buckets a series may hold; one more halves its resolution (lowers its schema
    /// by one) instead of growing.
    pub max_buckets: usize,
    /// Observations of at most this many seconds fall in the zero bucket.
    pub zero_threshold: f64,
}

impl Default for NativeHistogramsConfig {
    fn default() -> Self {
        NativeHistogramsConfig {
            enabled: true,
            schema: 3,
            max_buckets: 160,
            zero_threshold: 1e-9,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            endpoint: SocketAddr::from(([127, 0, 0, 1], 9464)),
            default_buckets: vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0,
            ],
            overflow_value: "__overflow__".to_string(),
            max_label_value_length: 128,
            max_series_per_metric: 10_000,
            series_idle_timeout: PromDuration::hours(1),
            native_histograms: NativeHistogramsConfig::default(),
            tls: None,
            auth: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsConfig {
    /// The `service` label (resource attribute service.name).
    pub service: ServiceLabelConfig,
    /// The `handler_language` label.
    pub handler_language: LabelConfig,
    /// Optional labels, by label name, that stages turn on with `extra_labels`.
    #[serde(default)]
    pub extra: BTreeMap<String, LabelConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceLabelConfig {
    /// Distinct services kept before the overflow value is used.
    pub max_values: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelConfig {
    /// Tried in order; the first that yields a value wins.
    pub sources: Vec<LabelSource>,
    /// Value when no source yields one.
    pub default: String,
    /// Distinct values kept before the overflow value is used.
    pub max_values: usize,
}

/// Where a label value can come from: exactly one of the three fields is set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSource {
    /// A span attribute (optionally a regex capture of it).
    pub span_attribute: Option<AttributeSource>,
    /// A resource attribute (optionally a regex capture of it).
    pub resource_attribute: Option<AttributeSource>,
    /// A regex capture of the resource's service.name.
    pub service_name: Option<ServiceNameSource>,
}

/// A [`LabelSource`] with its one field picked out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LabelSourceKind<'a> {
    SpanAttribute(&'a AttributeSource),
    ResourceAttribute(&'a AttributeSource),
    ServiceName(&'a ServiceNameSource),
}

impl LabelSource {
    /// The source, or None when not exactly one field is set.
    pub fn kind(&self) -> Option<LabelSourceKind<'_>> {
        match (
            &self.span_attribute,
            &self.resource_attribute,
            &self.service_name,
        ) {
            (Some(a), None, None) => Some(LabelSourceKind::SpanAttribute(a)),
            (None, Some(a), None) => Some(LabelSourceKind::ResourceAttribute(a)),
            (None, None, Some(s)) => Some(LabelSourceKind::ServiceName(s)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeSource {
    /// Attribute key, such as `namespace`.
    pub key: String,
    /// When set, the value is the regex's `value` group (or first group) on a match; no match
    /// means this source yields nothing.
    pub regex: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNameSource {
    /// Regex with a `value` group (or a first group), such as
    /// `^tasker-(?P<value>rust|ruby)-worker$`.
    pub regex: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// HELP text of the stage's metrics.
    pub help: String,
    /// Histogram name, in seconds: `..._duration_seconds`.
    pub histogram: String,
    /// Calls counter name: `..._total`.
    pub calls: String,
    /// Errors counter name (span status ERROR): `..._total`.
    pub errors: String,
    /// Extra labels (names from labels.extra) after service and handler_language.
    #[serde(default)]
    pub extra_labels: Vec<String>,
    /// Bucket upper bounds in seconds; metrics.default_buckets when unset.
    pub buckets: Option<Vec<f64>>,
    /// The latency alert `spanlens rules` generates for this stage; none when unset.
    pub alert: Option<StageAlert>,
    /// A latency objective: recorded slow ratios and burn-rate alerts, by service and
    /// handler_language.
    pub slo: Option<SloConfig>,
}

/// A latency service-level objective: `objective` of the spans take at most `threshold`.
/// `spanlens rules` records the ratio of slower spans over 5m, 30m, 1h, 6h and 3d and alerts
/// when the error budget (1 - objective) burns fast (1h and 5m above 14.4 times it) or slowly
/// (6h and 30m above 6 times it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    /// Share of spans that must be fast enough, strictly between 0 and 1, such as 0.99.
    pub objective: f64,
    /// A span slower than this is slow (a Prometheus duration). With classic histograms it
    /// must be a bucket bound of the histogram.
    pub threshold: PromDuration,
}

impl SloConfig {
    /// The threshold in seconds, exactly as a bucket bound written in seconds would read.
    pub fn threshold_seconds(&self) -> f64 {
        self.threshold.get().as_millis() as f64 / 1000.0
    }

    /// The error budget: the share of spans allowed to be slow.
    pub fn budget(&self) -> f64 {
        1.0 - self.objective
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The stage a matching span belongs to.
    pub stage: String,
    /// Exact span name.
    pub span_name: Option<String>,
    /// Span name regex (use ^...$ to anchor).
    pub span_name_regex: Option<String>,
    /// Exact service.name.
    pub service: Option<String>,
    /// service.name regex.
    pub service_regex: Option<String>,
    /// Span attributes that must all match.
    #[serde(default)]
    pub attributes: Vec<AttributeMatch>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeMatch {
    /// Span attribute key.
    pub key: String,
    /// The value, exactly (non-string values compare by their text form).
    pub equals: Option<String>,
    /// A regex the value must match.
    pub regex: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanMetricsConfig {
    /// Off: only stage metrics are kept.
    pub enabled: bool,
    /// Calls counter name.
    pub calls: String,
    /// Duration histogram name.
    pub duration: String,
    /// Distinct span names kept before the overflow value is used.
    pub max_span_names: usize,
    /// Bucket upper bounds in seconds; metrics.default_buckets when unset.
    pub buckets: Option<Vec<f64>>,
}

impl Default for SpanMetricsConfig {
    fn default() -> Self {
        SpanMetricsConfig {
            enabled: true,
            calls: "traces_span_metrics_calls_total".to_string(),
            duration: "traces_span_metrics_duration_seconds".to_string(),
            max_span_names: 1000,
            buckets: None,
        }
    }
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the document, such as `rules[3].span_name_regex`.
    pub path: String,
    /// 1-based line, when it could be found.
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name, or `<embedded default>`.
    pub origin: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        writeln!(
            f,
            "{}: {count} problem{}",
            self.origin,
            if count == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            match p.line {
                Some(line) => write!(f, "  {}:{line}: ", self.origin)?,
                None => write!(f, "  {}: ", self.origin)?,
            }
            if p.path.is_empty() {
                writeln!(f, "{}", p.message)?;
            } else {
                writeln!(f, "{}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems and places them on lines.
pub(crate) struct Problems<'a> {
    lines: &'a LineIndex,
    list: Vec<Problem>,
    /// Fields that did not parse and were read as their default instead: they are reported
    /// once, and checks of the stand-in value say nothing more about them.
    defaulted: Vec<String>,
}

impl Problems<'_> {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        if self.defaulted.contains(&path) {
            return;
        }
        self.list.push(Problem {
            line: self.lines.line_of(&path),
            path,
            message: message.into(),
        });
    }
}

impl Config {
    /// The embedded default profile.
    pub fn default_profile() -> Config {
        Config::parse(DEFAULT_PROFILE, "<embedded default>", &HashMap::new())
            .expect("the embedded default profile is valid (checked by tests)")
    }

    /// Reads, expands and validates a config file against the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            problems: vec![Problem {
                path: String::new(),
                line: None,
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Config::parse(&text, &origin, &std::env::vars().collect())
    }

    /// Parses and validates config text. `origin` names it in messages; `env` supplies
    /// `${NAME}` references.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            origin: origin.to_string(),
            problems,
        };
        let text =
            env::expand(text, env).map_err(|unset| {
                fail(unset
                .into_iter()
                .map(|u| Problem {
                    path: String::new(),
                    line: Some(u.line),
                    message: format!(
                        "environment variable {} is not set; set it or write ${{{}:-default}}",
                        u.name, u.name
                    ),
                })
                .collect())
            })?;
        let document: yaml_serde::Value = yaml_serde::from_str(&text).map_err(|e| {
            fail(vec![Problem {
                path: String::new(),
                line: e.location().map(|l| l.line()),
                message: format!("not valid YAML: {e}"),
            }])
        })?;
        let lines = LineIndex::build(&text);
        let mut problems = Problems {
            lines: &lines,
            list: Vec::new(),
            defaulted: Vec::new(),
        };
        let sections = read_sections(document, &mut problems);
        validate::check(&sections, &mut problems);
        match sections.complete() {
            Some(config) if problems.list.is_empty() => Ok(config),
            _ => Err(fail(problems.list)),
        }
    }
}

/// The sections that could be read; a section that failed to deserialize is None, and the
/// checks that need it are skipped while the others still run.
#[derive(Default)]
pub(crate) struct Sections {
    pub(crate) receivers: Option<ReceiversConfig>,
    pub(crate) metrics: Option<MetricsConfig>,
    pub(crate) labels: Option<LabelsConfig>,
    pub(crate) stages: Option<BTreeMap<String, StageConfig>>,
    pub(crate) rules: Option<Vec<RuleConfig>>,
    pub(crate) span_metrics: Option<SpanMetricsConfig>,
    pub(crate) alerting: Option<AlertingConfig>,
    pub(crate) derived: Option<BTreeMap<String, DerivedConfig>>,
    pub(crate) join: Option<JoinConfig>,
    pub(crate) breakdown: Option<BreakdownConfig>,
    pub(crate) comparisons: Option<BTreeMap<String, ComparisonConfig>>,
    pub(crate) forward: Option<forward::ForwardConfig>,
    pub(crate) sampling: Option<SamplingConfig>,
    pub(crate) page: Option<PageConfig>,
}

impl Sections {
    fn complete(self) -> Option<Config> {
        Some(Config {
            receivers: self.receivers?,
            metrics: self.metrics?,
            labels: self.labels?,
            stages: self.stages?,
            rules: self.rules?,
            span_metrics: self.span_metrics?,
            alerting: self.alerting?,
            derived: self.derived?,
            join: self.join?,
            breakdown: self.breakdown?,
            comparisons: self.comparisons?,
            forward: self.forward?,
            sampling: self.sampling?,
            page: self.page?,
        })
    }
}

/// Deserializes section by section, and stages and rules item by item, so that one bad item
/// does not hide the problems of the others.
fn read_sections(document: yaml_serde::Value, problems: &mut Problems) -> Sections {
    let yaml_serde::Value::Mapping(root) = document else {
        problems.add("", "the document must be a mapping of sections (receivers, metrics, labels, stages, rules, span_metrics)");
        return Sections::default();
    };
    let mut sections: HashMap<String, yaml_serde::Value> = HashMap::new();
    for (key, value) in root {
        let Some(key) = key.as_str().map(str::to_string) else {
            problems.add("", "section names must be strings");
            continue;
        };
        match key.as_str() {
            "receivers" | "metrics" | "labels" | "stages" | "rules" | "span_metrics"
            | "alerting" | "derived" | "comparisons" | "join" | "breakdown" | "forward"
            | "sampling" | "page" => {
                sections.insert(key, value);
            }
            other => problems.add(
                other,
                "unknown section; expected one of receivers, metrics, labels, stages, rules, span_metrics, alerting, derived, comparisons, join, breakdown, forward, sampling, page",
            ),
        }
    }
    let mut section = |name: &str| sections.remove(name);
    let receivers = optional(section("receivers"), "receivers", problems);
    let metrics = optional(section("metrics"), "metrics", problems);
    let span_metrics = optional(section("span_metrics"), "span_metrics", problems);
    let alerting = optional(section("alerting"), "alerting", problems);
    let join = optional(section("join"), "join", problems);
    let comparisons = match section("comparisons") {
        None => Some(BTreeMap::new()),
        value => named_items(
            value,
            "comparisons",
            "must be a mapping from comparison name to its definition",
            problems,
        ),
    };
    let breakdown = optional(section("breakdown"), "breakdown", problems);
    let forward = optional(section("forward"), "forward", problems);
    let sampling = optional(section("sampling"), "sampling", problems);
    let page = optional(section("page"), "page", problems);
    let derived = match section("derived") {
        None => Some(BTreeMap::new()),
        value => named_items(
            value,
            "derived",
            "must be a mapping from derived metric name to its definition",
            problems,
        ),
    };
    let labels = required(section("labels"), "labels", problems);
    let stages = match section("stages") {
        None => {
            problems.add("stages", "missing section: at least one stage is needed");
            None
        }
        value => named_items(
            value,
            "stages",
            "must be a mapping from stage name to its metrics",
            problems,
        ),
    };
    let rules = match section("rules") {
        Some(yaml_serde::Value::Sequence(items)) => {
            let mut rules = Some(Vec::new());
            for (i, value) in items.into_iter().enumerate() {
                let item = typed::<RuleConfig>(value, &format!("rules[{i}]"), problems);
                match (rules.as_mut(), item) {
                    (Some(rules), Some(item)) => rules.push(item),
                    _ => rules = None,
                }
            }
            rules
        }
        Some(_) => {
            problems.add("rules", "must be a list of rules");
            None
        }
        None => {
            problems.add("rules", "missing section: at least one rule is needed");
            None
        }
    };
    Sections {
        receivers,
        metrics,
        labels,
        stages,
        rules,
        span_metrics,
        alerting,
        derived,
        join,
        breakdown,
        comparisons,
        forward,
        sampling,
        page,
    }
}

/// A mapping from names to items, each deserialized on its own.
fn named_items<T: DeserializeOwned>(
    value: Option<yaml_serde::Value>,
    path: &str,
    not_a_mapping: &str,
    problems: &mut Problems,
) -> Option<BTreeMap<String, T>> {
    let Some(yaml_serde::Value::Mapping(map)) = value else {
        problems.add(path, not_a_mapping);
        return None;
    };
    let mut items = Some(BTreeMap::new());
    for (key, value) in map {
        let name = key.as_str().unwrap_or_default().to_string();
        let item = typed::<T>(value, &format!("{path}.{name}"), problems);
        match (items.as_mut(), item) {
            (Some(items), Some(item)) => {
                items.insert(name, item);
            }
            _ => items = None,
        }
    }
    items
}

fn optional<T: DeserializeOwned + Default>(
    value: Option<yaml_serde::Value>,
    path: &str,
    problems: &mut Problems,
) -> Option<T> {
    match value {
        None => Some(T::default()),
        Some(value) => typed(value, path, problems),
    }
}

fn required<T: DeserializeOwned>(
    value: Option<yaml_serde::Value>,
    path: &str,
    problems: &mut Problems,
) -> Option<T> {
    match value {
        None => {
            problems.add(path, "missing section");
            None
        }
        Some(value) => typed(value, path, problems),
    }
}

/// Deserializes one item. A duration that does not parse is reported and left out, so that
/// the field is read as its default and the item's other problems are still found; any other
/// error ends the item.
fn typed<T: DeserializeOwned>(
    mut value: yaml_serde::Value,
    path: &str,
    problems: &mut Problems,
) -> Option<T> {
    loop {
        let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(item) => return Some(item),
            Err(error) => error,
        };
        let inner = error.path().to_string();
        let full = if inner == "." || inner.is_empty() {
            path.to_string()
        } else if inner.starts_with('[') {
            format!("{path}{inner}")
        } else {
            format!("{path}.{inner}")
        };
        let message = error.inner().to_string();
        let left_out =
            message.contains(duration::NOT_A_DURATION) && leave_out(&mut value, error.path());
        problems.add(full.clone(), message);
        if !left_out {
            return None;
        }
        problems.defaulted.push(full);
    }
}

/// Removes the mapping entry at `path` from `value`; false when there is none.
fn leave_out(value: &mut yaml_serde::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((Segment::Map { key }, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = value;
    for segment in parents {
        let next = match (segment, node) {
            (Segment::Map { key }, yaml_serde::Value::Mapping(map)) => map.get_mut(key.as_str()),
            (Segment::Seq { index }, yaml_serde::Value::Sequence(items)) => items.get_mut(*index),
            _ => None,
        };
        let Some(next) = next else { return false };
        node = next;
    }
    match node {
        yaml_serde::Value::Mapping(map) => map.remove(key.as_str()).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
