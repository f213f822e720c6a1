//! One request through the flow: decode, check every span, classify, resolve labels and
//! observe. Also owns spanlens's own counters, so that every outcome is counted in one place.

pub mod classify;
pub mod dedupe;
pub mod labels;
pub mod request_series;

use crate::collections::text::same_str;
use crate::config::BreakdownConfig;
use crate::config::Config;
use crate::config::limits::{MAX_EXTRA_LABELS, MAX_LABELS};
use crate::config::validate::checked_duration;
use crate::config::validate::parse_duration;
use crate::join::breakdown::{Breakdown, DerivedRule, RecordKeys, SpanLog, SpanRecord};
use crate::join::{Arrival, Completed, Eviction, JoinSpec, JoinWindow, Offer, PartSpan};
use crate::metrics::store::{
    Admission, DimensionId, Exemplar, MetricId, MetricKind, MetricSpec, Series, Snapshot, Store,
    StoreSpec, Values, Writer,
};
use crate::otlp::Protocol;
use crate::otlp::decode::{AnyValue, SpanView};
use crate::otlp::decode::{AttributeKeys, Batch, DecodeError, SpanProblem};
use crate::otlp::refusal::Refusal;
use crate::pipeline::classify::{Classifier, SpanFacts, StageId};
use crate::pipeline::dedupe::RecentSpans;
use crate::pipeline::labels::ResourceValues;
use crate::pipeline::labels::{Found, LabelResolver, truncate};
use crate::pipeline::request_series::{Key, RequestSeries};
use std::fmt::Write;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

/// What happened to an accepted request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub accepted: usize,
    pub rejected: usize,
    /// Why spans were rejected (the first few), for `partial_success.error_message`.
    pub message: String,
}

/// Every value observed in one series: (metric name, label pairs, values).
pub type RawSeries = (String, Vec<(String, String)>, Vec<f64>);

/// Rejection reasons named in a partial-success message.
const REASONS_SHOWN: usize = 3;

struct StageMetrics {
    histogram: MetricId,
    calls: MetricId,
    errors: MetricId,
    /// Indexes into `Pipeline::extras`.
    extras: Vec<usize>,
}

struct SpanMetrics {
    calls: MetricId,
    duration: MetricId,
}

/// A request's span-metric series (calls, duration), known by resource, kind and status
/// code, and span name, as its spans carry them.
type SpanSeries<'a> = RequestSeries<'a, [Series; 2]>;

/// A request's stage series (histogram, calls, errors), known by resource and stage, and
/// handler language as its spans carry it (if they do), for stages with no extra labels.
type StageSeries<'a> = RequestSeries<'a, [Series; 3]>;

struct OwnMetrics {
    received: MetricId,
    accepted: MetricId,
    refused_spans: MetricId,
    refused_requests: MetricId,
    request_duration: MetricId,
}

/// Bucket bounds of spanlens_request_duration_seconds: fine around a millisecond, where a
/// 512-span request is answered, and up to the receivers' timeouts.
const REQUEST_DURATION_BUCKETS: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.00125, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

struct Dimensions {
    service: DimensionId,
    handler_language: DimensionId,
    span_name: DimensionId,
}

/// A derived metric as the pipeline runs it.
struct DerivedMetric {
    name: String,
    histogram: MetricId,
    key: String,
    labels: Vec<LabelSlot>,
}

#[derive(Clone, Copy)]
enum LabelSlot {
    Service,
    HandlerLanguage,
    /// Index into `Pipeline::extras`.
    Extra(usize),
}

/// A stage's span as a part of a derived metric.
struct JoinPart {
    derived: usize,
    part: usize,
    span_name: Option<String>,
}

#[derive(Clone, Copy)]
struct JoinMetrics {
    duplicates: MetricId,
    evicted: MetricId,
    late: MetricId,
    repeated: MetricId,
    pending: MetricId,
}

pub struct Pipeline {
    store: Store,
    /// The span attributes something here reads; decode skips the others.
    attribute_keys: AttributeKeys,
    span_log: SpanLog,
    breakdown_keys: BreakdownConfig,
    recent: RecentSpans,
    join: JoinWindow,
    derived: Vec<DerivedMetric>,
    /// Per stage: the derived metrics its spans are part of.
    joins_by_stage: Vec<Vec<JoinPart>>,
    /// Per stage: comparison histograms (by step label, an index into `extras`).
    comparisons_by_stage: Vec<Vec<(MetricId, usize)>>,
    join_metrics: JoinMetrics,
    classifier: Classifier,
    stages: Vec<StageMetrics>,
    handler_language: LabelResolver,
    /// Extra labels: resolver and dimension.
    extras: Vec<(LabelResolver, DimensionId)>,
    span_metrics: Option<SpanMetrics>,
    own: OwnMetrics,
    dimensions: Dimensions,
    max_label_len: usize,
}

/// Builds the metric table from a config.
struct Table {
    metrics: Vec<MetricSpec>,
}

impl Table {
    fn add(&mut self, name: &str, help: &str, kind: MetricKind, labels: &[&str]) -> MetricId {
        self.metrics.push(MetricSpec {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            label_names: labels.iter().map(|l| l.to_string()).collect(),
        });
        MetricId(self.metrics.len() - 1)
    }
}

fn histogram(buckets: &Option<Vec<f64>>, config: &Config) -> MetricKind {
    MetricKind::Histogram {
        bounds: Arc::from(
            buckets
                .as_ref()
                .unwrap_or(&config.metrics.default_buckets)
                .as_slice(),
        ),
    }
}

impl Pipeline {
    pub fn new(config: &Config) -> Result<Pipeline, String> {
        Pipeline::build(config, false)
    }

    /// A pipeline that also keeps every observed value, for exact offline percentiles
    /// (`spanlens replay`).
    pub fn keeping_raw_values(config: &Config) -> Result<Pipeline, String> {
        Pipeline::build(config, true)
    }

    /// Every observed value of the stage and derived histograms: (metric name, label pairs,
    /// values), when built with [`Pipeline::keeping_raw_values`].
    pub fn raw_values(&self) -> Vec<RawSeries> {
        let metrics = self.store.metrics();
        let wanted: Vec<MetricId> = self
            .stages
            .iter()
            .map(|s| s.histogram)
            .chain(self.derived.iter().map(|d| d.histogram))
            .collect();
        self.store
            .raw_values()
            .into_iter()
            .filter(|(metric, _, _)| wanted.contains(metric))
            .map(|(metric, labels, values)| {
                let spec = &metrics[metric.0];
                let pairs = spec.label_names.iter().cloned().zip(labels).collect();
                (spec.name.clone(), pairs, values)
            })
            .collect()
    }

    fn build(config: &Config, keep_raw_values: bool) -> Result<Pipeline, String> {
        let mut table = Table {
            metrics: Vec::new(),
        };
        let own = OwnMetrics {
            received: table.add(
                "spanlens_spans_received_total",
                "Spans received, by protocol.",
                MetricKind::Counter,
                &["protocol"],
            ),
            accepted: table.add(
                "spanlens_spans_accepted_total",
                "Spans accepted, by protocol (resent duplicates included; they are not observed again, see spanlens_spans_duplicate_total).",
                MetricKind::Counter,
                &["protocol"],
            ),
            refused_spans: table.add(
                "spanlens_spans_refused_total",
                "Spans refused, by protocol and reason.",
                MetricKind::Counter,
                &["protocol", "reason"],
            ),
            refused_requests: table.add(
                "spanlens_requests_refused_total",
                "Requests refused as a whole, by protocol and reason.",
                MetricKind::Counter,
                &["protocol", "reason"],
            ),
            request_duration: table.add(
                "spanlens_request_duration_seconds",
                "Time from an export request's headers to its answer, for requests whose spans were processed (accepted in whole or in part), by protocol: reading and decompressing the body, decoding, processing and queueing for forwarding.",
                MetricKind::Histogram {
                    bounds: Arc::from(REQUEST_DURATION_BUCKETS.as_slice()),
                },
                &["protocol"],
            ),
        };
        let join_metrics = JoinMetrics {
            duplicates: table.add("spanlens_spans_duplicate_total", "Spans seen again (same trace and span id, resent by a retrying exporter) and not counted again, by protocol.", MetricKind::Counter, &["protocol"]),
            evicted: table.add("spanlens_join_evicted_total", "Keys of derived metrics that left the join window incomplete, by derived metric and reason (timeout: waited longer than join.max_wait; capacity: oldest when join.max_pending was reached).", MetricKind::Counter, &["derived", "reason"]),
            late: table.add("spanlens_join_late_spans_total", "Spans that arrived for a key already completed, by derived metric.", MetricKind::Counter, &["derived"]),
            repeated: table.add("spanlens_join_repeated_spans_total", "Spans for a part a waiting key already had (not used), by derived metric.", MetricKind::Counter, &["derived"]),
            pending: table.add("spanlens_join_pending", "Keys waiting for their missing parts, by derived metric.", MetricKind::Gauge, &["derived"]),
        };
        let label_overflow = table.add("spanlens_label_overflow_total", "Label values replaced by the overflow value because the label reached its max_values, by label.", MetricKind::Counter, &["label"]);
        let series_overflow = table.add("spanlens_series_overflow_total", "Observations folded into the overflow series because the metric reached max_series_per_metric, by metric.", MetricKind::Counter, &["metric"]);

        let labels = &config.labels;
        let mut dimensions = vec![
            ("service".to_string(), labels.service.max_values),
            (
                "handler_language".to_string(),
                labels.handler_language.max_values,
            ),
            ("span_name".to_string(), config.span_metrics.max_span_names),
        ];
        let extra_names: Vec<&String> = labels.extra.keys().collect();
        let mut extras = Vec::new();
        for (name, label) in &labels.extra {
            dimensions.push((name.clone(), label.max_values));
            extras.push((
                LabelResolver::compile(label)?,
                DimensionId(dimensions.len() - 1),
            ));
        }

        let stage_names: Vec<&String> = config.stages.keys().collect();
        let mut stages = Vec::new();
        for stage in config.stages.values() {
            if stage.extra_labels.len() > MAX_EXTRA_LABELS {
                return Err(format!(
                    "a stage may have at most {MAX_EXTRA_LABELS} extra labels"
                ));
            }
            let mut label_names = vec!["service", "handler_language"];
            label_names.extend(stage.extra_labels.iter().map(String::as_str));
            let extras = stage
                .extra_labels
                .iter()
                .map(|l| {
                    extra_names
                        .iter()
                        .position(|n| *n == l)
                        .ok_or(format!("unknown extra label {l}"))
                })
                .collect::<Result<_, _>>()?;
            stages.push(StageMetrics {
                histogram: table.add(
                    &stage.histogram,
                    &stage.help,
                    histogram(&stage.buckets, config),
                    &label_names,
                ),
                calls: table.add(
                    &stage.calls,
                    &format!("Spans counted in {}.", stage.histogram),
                    MetricKind::Counter,
                    &label_names,
                ),
                errors: table.add(
                    &stage.errors,
                    &format!("Spans with status ERROR counted in {}.", stage.histogram),
                    MetricKind::Counter,
                    &label_names,
                ),
                extras,
            });
        }
        let mut joins_by_stage: Vec<Vec<JoinPart>> = stages.iter().map(|_| Vec::new()).collect();
        let mut derived = Vec::new();
        let mut join_specs = Vec::new();
        for (index, (name, d)) in config.derived.iter().enumerate() {
            let labels = d
                .labels
                .iter()
                .map(|l| match l.as_str() {
                    "service" => Ok(LabelSlot::Service),
                    "handler_language" => Ok(LabelSlot::HandlerLanguage),
                    other => extra_names
                        .iter()
                        .position(|n| *n == other)
                        .map(LabelSlot::Extra)
                        .ok_or(format!("derived.{name}: unknown label {other}")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            for (part, p) in d.parts.iter().enumerate() {
                let stage = stage_names
                    .iter()
                    .position(|s| **s == p.stage)
                    .ok_or(format!("derived.{name}: unknown stage {}", p.stage))?;
                joins_by_stage[stage].push(JoinPart {
                    derived: index,
                    part,
                    span_name: p.span_name.clone(),
                });
            }
            let label_names: Vec<&str> = d.labels.iter().map(String::as_str).collect();
            derived.push(DerivedMetric {
                name: name.clone(),
                histogram: table.add(
                    &d.histogram,
                    &d.help,
                    histogram(&d.buckets, config),
                    &label_names,
                ),
                key: d.key.clone(),
                labels,
            });
            join_specs.push(JoinSpec {
                operation: d.operation,
                parts: d.parts.len(),
                labels: d.labels.len(),
            });
        }
        let mut comparisons_by_stage: Vec<Vec<(MetricId, usize)>> =
            stages.iter().map(|_| Vec::new()).collect();
        for (name, c) in &config.comparisons {
            let stage = stage_names
                .iter()
                .position(|s| **s == c.stage)
                .ok_or(format!("comparisons.{name}: unknown stage {}", c.stage))?;
            let step = extra_names
                .iter()
                .position(|n| **n == c.step_label)
                .ok_or(format!(
                    "comparisons.{name}: unknown label {}",
                    c.step_label
                ))?;
            let labels = [c.step_label.as_str(), "handler_language"];
            let histogram = table.add(
                &c.histogram,
                &c.help,
                histogram(&c.buckets, config),
                &labels,
            );
            comparisons_by_stage[stage].push((histogram, step));
        }
        let max_wait =
            parse_duration(&config.join.max_wait).ok_or("join.max_wait is not a duration")?;
        let derived_rules = config
            .derived
            .values()
            .zip(&derived)
            .map(|(d, metric)| DerivedRule {
                name: metric.name.clone(),
                key: d.key.clone(),
                operation: d.operation,
                parts: d
                    .parts
                    .iter()
                    .map(|p| {
                        let stage = stage_names.iter().position(|s| **s == p.stage);
                        (stage.expect("checked above"), p.span_name.clone())
                    })
                    .collect(),
            })
            .collect();
        let span_log = SpanLog::new(
            &config.breakdown,
            parse_duration(&config.breakdown.max_age)
                .ok_or("breakdown.max_age is not a duration")?,
            stage_names.iter().map(|s| s.to_string()).collect(),
            derived_rules,
        );
        let span_labels = ["service_name", "span_name", "span_kind", "status_code"];
        let span_metrics = config.span_metrics.enabled.then(|| SpanMetrics {
            calls: table.add(
                &config.span_metrics.calls,
                "Spans, by service, name, kind and status.",
                MetricKind::Counter,
                &span_labels,
            ),
            duration: table.add(
                &config.span_metrics.duration,
                "Span durations, by service, name, kind and status.",
                histogram(&config.span_metrics.buckets, config),
                &span_labels,
            ),
        });
        let classifier = Classifier::compile(&config.rules, |name| {
            stage_names.iter().position(|s| *s == name).map(StageId)
        })?;
        let handler_language = LabelResolver::compile(&labels.handler_language)?;
        let attribute_keys = AttributeKeys::new(
            classifier
                .attribute_keys()
                .chain(handler_language.span_keys())
                .chain(extras.iter().flat_map(|(r, _)| r.span_keys()))
                .chain(derived.iter().map(|d| d.key.as_str()))
                // Read only for the breakdown log: with it off, decode skips them too.
                .chain(
                    span_log
                        .enabled()
                        .then(|| config.breakdown.attribute_keys())
                        .into_iter()
                        .flatten(),
                ),
        );
        Ok(Pipeline {
            attribute_keys,
            span_log,
            breakdown_keys: config.breakdown.clone(),
            recent: RecentSpans::new(config.join.dedupe_spans),
            join: JoinWindow::new(join_specs, config.join.max_pending, max_wait),
            derived,
            joins_by_stage,
            comparisons_by_stage,
            join_metrics,
            store: Store::new(StoreSpec {
                metrics: table.metrics,
                dimensions,
                overflow_value: config.metrics.overflow_value.clone(),
                max_series_per_metric: config.metrics.max_series_per_metric,
                label_overflow: Some(label_overflow),
                series_overflow: Some(series_overflow),
                keep_raw_values,
                series_idle_timeout: Some(checked_duration(&config.metrics.series_idle_timeout))
                    .filter(|d| !d.is_zero()),
                never_expire: vec![
                    own.received,
                    own.accepted,
                    own.refused_spans,
                    own.refused_requests,
                    own.request_duration,
                    join_metrics.duplicates,
                    join_metrics.evicted,
                    join_metrics.late,
                    join_metrics.repeated,
                    label_overflow,
                    series_overflow,
                ],
            }),
            classifier,
            stages,
            handler_language,
            extras,
            span_metrics,
            own,
            dimensions: Dimensions {
                service: DimensionId(0),
                handler_language: DimensionId(1),
                span_name: DimensionId(2),
            },
            max_label_len: config.metrics.max_label_value_length,
        })
    }

    /// Every series now. Evicts join keys that waited too long first, so that the eviction
    /// counters are current even without traffic.
    pub fn snapshot(&self) -> Snapshot {
        let mut evicted = Evicted::new(self.derived.len());
        self.join.sweep(Instant::now(), &mut evicted.counter());
        self.count_evictions(&mut self.store.writer(), &evicted);
        let mut snapshot = self.store.snapshot();
        for (d, pending) in self.derived.iter().zip(self.join.pending()) {
            snapshot.set_gauge(self.join_metrics.pending, &[&d.name], pending as f64);
        }
        snapshot
    }

    /// Counts evicted keys: one write per derived metric and reason, not per key (a full
    /// window evicts a key for nearly every new one).
    fn count_evictions(&self, w: &mut Writer, evicted: &Evicted) {
        for (d, counts) in evicted.0.iter().enumerate() {
            for (why, &n) in Eviction::ALL.iter().zip(counts) {
                if n > 0 {
                    let labels = [self.derived[d].name.as_str(), why.reason()];
                    w.add(self.join_metrics.evicted, &labels, n);
                }
            }
        }
    }

    /// Spans accepted since start, over every protocol (for the final log line).
    pub fn accepted_total(&self) -> u64 {
        self.store
            .snapshot()
            .series(self.own.accepted)
            .map(|s| match s.values {
                Values::Counter(n) => n,
                Values::Gauge(_) | Values::Histogram { .. } => 0,
            })
            .sum()
    }

    /// Observes how long a request whose spans were processed took, from its headers to its
    /// answer.
    pub fn observe_request(&self, protocol: Protocol, took: std::time::Duration) {
        self.store.writer().observe(
            self.own.request_duration,
            &[protocol.as_str()],
            took.as_secs_f64(),
            None,
        );
    }

    /// Counts a request refused before decoding (too large, wrong content type...).
    pub fn count_refused_request(&self, protocol: Protocol, reason: &str) {
        self.store
            .writer()
            .add(self.own.refused_requests, &[protocol.as_str(), reason], 1);
    }

    /// Decodes a request as ingest does: span attributes nothing in the config reads are
    /// skipped unread.
    pub fn decode<'a>(&'a self, bytes: &'a [u8]) -> Result<Batch<'a>, DecodeError> {
        Batch::decode_keeping(bytes, &self.attribute_keys)
    }

    /// Decodes an OTLP protobuf `ExportTraceServiceRequest` and observes its usable spans.
    pub fn ingest(&self, protocol: Protocol, bytes: &[u8]) -> Result<Outcome, Refusal> {
        self.ingest_admitting(protocol, bytes, |_, _| Ok(()))
    }

    /// [`Pipeline::ingest`], where `admit` (given the indexes of rejected spans and the
    /// number accepted) may still refuse a valid request as a whole before anything of it is
    /// observed: forwarding does when its queue is full.
    pub fn ingest_admitting(
        &self,
        protocol: Protocol,
        bytes: &[u8],
        admit: impl FnOnce(&[usize], usize) -> Result<(), Refusal>,
    ) -> Result<Outcome, Refusal> {
        let batch = match self.decode(bytes) {
            Ok(batch) => batch,
            Err(e) => {
                self.count_refused_request(protocol, "malformed");
                return Err(Refusal::Malformed(e.to_string()));
            }
        };
        let problems: Vec<(usize, SpanProblem)> = batch
            .spans
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.problem().map(|p| (i, p)))
            .collect();
        let mut outcome = Outcome {
            accepted: batch.spans.len() - problems.len(),
            rejected: problems.len(),
            message: describe(&batch, &problems),
        };
        let all_invalid = outcome.accepted == 0 && outcome.rejected > 0;
        let admitted = match all_invalid {
            true => Ok(()),
            false => {
                let rejected: Vec<usize> = problems.iter().map(|(i, _)| *i).collect();
                admit(&rejected, outcome.accepted)
            }
        };
        let p = protocol.as_str();
        let mut w = self.store.writer();
        w.add(self.own.received, &[p], batch.spans.len() as u64);
        for (_, problem) in &problems {
            w.add(self.own.refused_spans, &[p, problem.reason()], 1);
        }
        if all_invalid {
            w.add(self.own.refused_requests, &[p, "invalid_spans"], 1);
            return Err(Refusal::AllSpansInvalid(std::mem::take(
                &mut outcome.message,
            )));
        }
        if let Err(refusal) = admitted {
            let reason = refusal.reason();
            w.add(
                self.own.refused_spans,
                &[p, reason],
                outcome.accepted as u64,
            );
            w.add(self.own.refused_requests, &[p, reason], 1);
            return Err(refusal);
        }
        w.add(self.own.accepted, &[p], outcome.accepted as u64);

        let language_values = self.handler_language.per_resource(&batch);
        let extra_values: Vec<_> = self
            .extras
            .iter()
            .map(|(r, _)| r.per_resource(&batch))
            .collect();
        let n = batch.spans.len();
        let mut services: Vec<Option<&str>> = vec![None; batch.resources.len()];
        let mut bufs: [String; MAX_LABELS] = Default::default();
        let mut problems = problems.iter().map(|(i, _)| *i).peekable();
        let mut fresh = {
            let mut valid = problems.clone();
            // Sized up front: collected from a filter, it grew (and was copied) ~8 times.
            let mut ids: Vec<(&[u8], &[u8])> = Vec::with_capacity(n);
            ids.extend(
                (batch.spans.iter().enumerate())
                    .filter(|(i, _)| valid.next_if_eq(i).is_none())
                    .map(|(_, s)| (s.trace_id, s.span_id)),
            );
            self.recent.first_times(&ids).into_iter()
        };
        let now = Instant::now();
        let mut evicted = Evicted::new(self.derived.len());
        // Sized for the request up front: grown span by span they were copied ~9 times.
        let (mut records, mut record_languages) = match self.span_log.enabled() {
            true => (Vec::with_capacity(n), LabelTexts::with_capacity(n, 8 * n)),
            false => (Vec::new(), LabelTexts::default()),
        };
        let (mut offerings, mut texts) = match !self.derived.is_empty() {
            true => (
                Vec::with_capacity(n),
                LabelTexts::with_capacity(2 * n, 16 * n),
            ),
            false => (Vec::new(), LabelTexts::default()),
        };
        // Room for the few series a request's spans share, without regrowing.
        let mut span_series = SpanSeries::with_capacity(64);
        let mut stage_series = StageSeries::with_capacity(16);
        for (index, span) in batch.spans.iter().enumerate() {
            if problems.next_if_eq(&index).is_some() {
                continue;
            }
            if !fresh.next().expect("one answer per valid span") {
                w.add(self.join_metrics.duplicates, &[p], 1);
                continue;
            }
            let raw_service = batch.resources[span.resource]
                .service_name
                .unwrap_or("unknown_service");
            // Admitted once per resource that has a span to observe.
            let service = *services[span.resource].get_or_insert_with(|| {
                w.admitted(
                    self.dimensions.service,
                    truncate(raw_service, self.max_label_len),
                )
            });
            let seconds = span.duration_nanos() as f64 / 1e9;
            let exemplar = Exemplar {
                trace_id: span.trace_id.try_into().expect("checked: 16 bytes"),
                span_id: span.span_id.try_into().expect("checked: 8 bytes"),
                value: seconds,
                timestamp_unix_nano: span.end_time_unix_nano,
                epoch: 0,
            };
            if let Some(m) = &self.span_metrics {
                self.observe_span_metrics(&mut w, m, &mut span_series, span, service, exemplar);
            }
            let facts = SpanFacts {
                name: span.name,
                service: raw_service,
                attributes: batch.span_attributes(span),
            };
            let Some(stage) = self.classifier.classify(&facts) else {
                continue;
            };
            let stage_id = stage.0;
            let stage = &self.stages[stage_id];
            let mut bufs = bufs.iter_mut();
            let language_buf = bufs.next().expect("slot");
            let found = self
                .handler_language
                .find_in_request(&batch, span, &language_values);
            let language =
                found.map(|found| truncate(found.written(language_buf), self.max_label_len));
            let given_language = language.unwrap_or(self.handler_language.default_value());
            // A stage labelled by service and handler language alone has its series found
            // once per request for each (resource, language) its spans carry as text.
            let key = match found {
                Some(Found::Scalar(_)) => None,
                _ if !stage.extras.is_empty() => None,
                _ => Some(Key {
                    numbers: [span.resource as u64, stage_id as u64],
                    text: found.and_then(Found::text),
                }),
            };
            let known = key.and_then(|key| stage_series.get(&key));
            let ([histogram, calls, errors], admitted_language) = match known {
                Some(series) => (series, given_language),
                None => {
                    let mut labels = [""; MAX_LABELS];
                    labels[0] = service;
                    let (language, admission) =
                        w.admitted_as(self.dimensions.handler_language, given_language);
                    labels[1] = language;
                    for (slot, &extra) in stage.extras.iter().enumerate() {
                        let (resolver, dimension) = &self.extras[extra];
                        let value = resolver.resolve(
                            &batch,
                            span,
                            &extra_values[extra],
                            bufs.next().expect("slot"),
                        );
                        labels[2 + slot] =
                            w.admitted(*dimension, truncate(value, self.max_label_len));
                    }
                    let set = w.label_set(&labels[..2 + stage.extras.len()]);
                    let series = [stage.histogram, stage.calls, stage.errors]
                        .map(|metric| w.series(metric, set));
                    if let Some(key) = key {
                        stage_series.remember(key, series, admission == Admission::Kept);
                    }
                    (series, language)
                }
            };
            w.observe_in(histogram, seconds, Some(exemplar));
            w.add_to(calls, 1);
            w.add_to(errors, u64::from(span.is_error()));
            for &(histogram, step) in &self.comparisons_by_stage[stage_id] {
                let (resolver, dimension) = &self.extras[step];
                let mut buf = String::new();
                let value = resolver.resolve(&batch, span, &extra_values[step], &mut buf);
                let step = w.admitted(*dimension, truncate(value, self.max_label_len));
                // The stage's handler language, as admitted above.
                w.observe(
                    histogram,
                    &[step, admitted_language],
                    seconds,
                    Some(exemplar),
                );
            }
            if self.span_log.enabled()
                && let Some(record) = self.record(&batch, span, stage_id, service)
            {
                records.push(record);
                // May be written in a buffer of this span's: copied, set after the loop.
                record_languages.push(Some(admitted_language));
            }
            for join in &self.joins_by_stage[stage_id] {
                if join.span_name.as_deref().is_some_and(|n| n != span.name) {
                    continue;
                }
                let found = JoinedSpan {
                    batch: &batch,
                    span,
                    service,
                    language,
                    extra_values: &extra_values,
                };
                offerings.extend(self.offering(join, &found, &mut texts));
            }
        }
        self.offer(&mut w, &offerings, &texts, now, &mut evicted);
        self.count_evictions(&mut w, &evicted);
        drop(w);
        for (record, language) in records.iter_mut().zip(record_languages.values()) {
            record.names[2] = language.unwrap_or_default();
        }
        self.span_log.record(&records, now);
        Ok(outcome)
    }

    /// Counts a span and observes its duration (the exemplar's value) in the span metrics.
    /// The series of a (resource, name, kind, status) seen before in the request are written
    /// by slot: no admission of the name, hash of the label values or lookup for that span.
    fn observe_span_metrics<'a>(
        &self,
        w: &mut Writer,
        m: &SpanMetrics,
        known: &mut SpanSeries<'a>,
        span: &SpanView<'a>,
        service: &str,
        exemplar: Exemplar,
    ) {
        let key = Key {
            numbers: [
                span.resource as u64,
                u64::from(span.kind as u32) << 32 | u64::from(span.status_code as u32),
            ],
            text: Some(span.name),
        };
        let [calls, duration] = match known.get(&key) {
            Some(series) => series,
            None => {
                let name = truncate(span.name, self.max_label_len);
                let (name, admission) = w.admitted_as(self.dimensions.span_name, name);
                let labels = [service, name, span.kind_name(), span.status_name()];
                let labels = w.label_set(&labels);
                let series = [m.calls, m.duration].map(|metric| w.series(metric, labels));
                known.remember(key, series, admission == Admission::Kept);
                series
            }
        };
        w.add_to(calls, 1);
        w.observe_in(duration, exemplar.value, Some(exemplar));
    }

    /// The span as kept for breakdowns, if it carries a key that ties it to a task; its
    /// handler language is left empty for the caller.
    fn record<'a>(
        &self,
        batch: &Batch<'a>,
        span: &SpanView<'a>,
        stage: usize,
        service: &'a str,
    ) -> Option<SpanRecord<'a>> {
        let keys = self.breakdown_keys.attribute_keys();
        let mut found: [Option<&str>; 4] = Default::default();
        for a in batch.span_attributes(span) {
            let AnyValue::Str(v) = a.value else { continue };
            let slot = keys.iter().position(|&key| same_str(a.key, key));
            if let Some(slot) = slot {
                found[slot] = Some(truncate(v, self.max_label_len));
            }
        }
        let [correlation_id, task_uuid, step_uuid, step_name] = found;
        if correlation_id.is_none() && task_uuid.is_none() && step_uuid.is_none() {
            return None;
        }
        let part = part_span(span);
        let names = [truncate(span.name, self.max_label_len), service, ""];
        let keys = RecordKeys {
            correlation_id,
            task_uuid,
            step_uuid,
            step_name,
        };
        Some(SpanRecord {
            stage,
            span: part,
            names,
            keys,
        })
    }

    /// The breakdown of one task by correlation id or task uuid, from recent spans.
    pub fn breakdown(&self, id: &str) -> Option<Breakdown> {
        self.span_log.breakdown(id)
    }

    /// A classified span's offer to one derived metric, if it carries the metric's key; its
    /// label values are copied into `texts`.
    fn offering<'a>(
        &self,
        join: &JoinPart,
        found: &JoinedSpan<'a, '_>,
        texts: &mut LabelTexts,
    ) -> Option<Offering<'a>> {
        let d = &self.derived[join.derived];
        let key = found
            .batch
            .span_attributes(found.span)
            .iter()
            .find_map(|a| match a.value {
                AnyValue::Str(v) if same_str(a.key, &d.key) => Some(v),
                _ => None,
            })?;
        let mut buf = String::new();
        let first = texts.values.len();
        for slot in &d.labels {
            let value = match *slot {
                LabelSlot::Service => Some(found.service),
                LabelSlot::HandlerLanguage => found.language,
                LabelSlot::Extra(i) => self.extras[i]
                    .0
                    .find(found.batch, found.span, &found.extra_values[i], &mut buf)
                    .map(|v| truncate(v, self.max_label_len)),
            };
            texts.push(value);
        }
        Some(Offering {
            derived: join.derived,
            part: join.part,
            key,
            span: part_span(found.span),
            labels: first..texts.values.len(),
        })
    }

    /// Makes a request's offers to the join window and observes the keys they complete.
    fn offer(
        &self,
        w: &mut Writer,
        offerings: &[Offering],
        texts: &LabelTexts,
        now: Instant,
        evicted: &mut Evicted,
    ) {
        if offerings.is_empty() {
            return;
        }
        let values = texts.values();
        let arrivals: Vec<Arrival> = offerings
            .iter()
            .map(|o| Arrival {
                derived: o.derived,
                key: o.key,
                part: o.part,
                span: o.span,
                labels: &values[o.labels.clone()],
            })
            .collect();
        let answers = self.join.offer_all(&arrivals, now, &mut evicted.counter());
        for (i, answer) in answers {
            let d = &self.derived[arrivals[i].derived];
            match answer {
                Offer::Waiting => {}
                Offer::Late => w.add(self.join_metrics.late, &[&d.name], 1),
                Offer::Repeated => w.add(self.join_metrics.repeated, &[&d.name], 1),
                Offer::Complete(done) => self.observe_completed(w, d, done),
            }
        }
    }

    fn observe_completed(&self, w: &mut Writer, d: &DerivedMetric, done: Completed) {
        let mut values = [""; MAX_LABELS];
        for (i, slot) in d.labels.iter().enumerate() {
            let (dimension, default) = match *slot {
                LabelSlot::Service => (self.dimensions.service, "unknown_service"),
                LabelSlot::HandlerLanguage => (
                    self.dimensions.handler_language,
                    self.handler_language.default_value(),
                ),
                LabelSlot::Extra(e) => (self.extras[e].1, self.extras[e].0.default_value()),
            };
            values[i] = w.admitted(dimension, done.labels[i].as_deref().unwrap_or(default));
        }
        let exemplar = Exemplar {
            trace_id: done.exemplar.trace_id,
            span_id: done.exemplar.span_id,
            value: done.seconds,
            timestamp_unix_nano: done.exemplar.end_unix_nano,
            epoch: 0,
        };
        w.observe(
            d.histogram,
            &values[..d.labels.len()],
            done.seconds,
            Some(exemplar),
        );
    }
}

/// Keys evicted from the join window, per derived metric and [`Eviction`] (by its index).
struct Evicted(Vec<[u64; 2]>);

impl Evicted {
    fn new(derived: usize) -> Evicted {
        Evicted(vec![[0; 2]; derived])
    }

    /// What the join window tells of each eviction.
    fn counter(&mut self) -> impl FnMut(usize, Eviction) + '_ {
        |d, why| self.0[d][why as usize] += 1
    }
}

/// A classified span's offer to a derived metric, collected while the request is read and
/// made after it ([`JoinWindow::offer_all`]).
struct Offering<'a> {
    derived: usize,
    part: usize,
    key: &'a str,
    span: PartSpan,
    /// Its label values in the request's [`LabelTexts`].
    labels: Range<usize>,
}

/// The label values of a request's offerings, copied into one buffer (a value may live in
/// a per-span scratch buffer).
#[derive(Default)]
struct LabelTexts {
    text: String,
    values: Vec<Option<Range<usize>>>,
}

impl LabelTexts {
    fn with_capacity(values: usize, bytes: usize) -> LabelTexts {
        LabelTexts {
            text: String::with_capacity(bytes),
            values: Vec::with_capacity(values),
        }
    }

    fn push(&mut self, value: Option<&str>) {
        let range = value.map(|v| {
            let start = self.text.len();
            self.text.push_str(v);
            start..self.text.len()
        });
        self.values.push(range);
    }

    fn values(&self) -> Vec<Option<&str>> {
        let text = self.text.as_str();
        self.values
            .iter()
            .map(|r| r.clone().map(|r| &text[r]))
            .collect()
    }
}

/// A valid span's times and ids, as joins and breakdowns keep them.
fn part_span(span: &SpanView) -> PartSpan {
    PartSpan {
        start_unix_nano: span.start_time_unix_nano,
        end_unix_nano: span.end_time_unix_nano,
        trace_id: span.trace_id.try_into().expect("checked: 16 bytes"),
        span_id: span.span_id.try_into().expect("checked: 8 bytes"),
    }
}

/// What a derived metric may take from a classified span.
struct JoinedSpan<'a, 'b> {
    batch: &'b Batch<'a>,
    span: &'b SpanView<'a>,
    service: &'b str,
    language: Option<&'b str>,
    extra_values: &'b [ResourceValues<'a>],
}

/// A readable account of the first few rejected spans.
fn describe(batch: &Batch, problems: &[(usize, SpanProblem)]) -> String {
    let mut message = String::new();
    if problems.is_empty() {
        return message;
    }
    let _ = write!(
        message,
        "{} of {} spans rejected: ",
        problems.len(),
        batch.spans.len()
    );
    for (n, (i, problem)) in problems.iter().take(REASONS_SHOWN).enumerate() {
        let span = &batch.spans[*i];
        let (rs, ss, s) = span.position;
        if n > 0 {
            message.push_str("; ");
        }
        let _ = write!(
            message,
            "resource_spans[{rs}].scope_spans[{ss}].spans[{s}] ({:?}): {problem}",
            span.name
        );
    }
    if problems.len() > REASONS_SHOWN {
        let _ = write!(message, "; and {} more", problems.len() - REASONS_SHOWN);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::exposition::{Format, render};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn span(id: u8, name: &str, millis: u64, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: vec![id; 8],
            name: name.into(),
            kind: 1,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_000_000 + millis * 1_000_000,
            attributes,
            ..Default::default()
        }
    }

    fn request(service: &str, spans: Vec<Span>) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    fn lines(pipeline: &Pipeline) -> Vec<String> {
        render(&pipeline.snapshot(), Format::Text)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn has(lines: &[String], line: &str) {
        assert!(
            lines.iter().any(|l| l == line),
            "missing {line}\n{}",
            lines.join("\n")
        );
    }

    #[test]
    fn handler_language_chain_prefers_span_then_resource_then_service_name() {
        let pipeline = Pipeline::new(&Config::default_profile()).unwrap();
        let language = |l| vec![kv("handler.language", l)];
        pipeline
            .ingest(
                Protocol::Grpc,
                &request(
                    "tasker-rust-worker",
                    vec![
                        span(1, "step_claim", 15, vec![]),
                        span(2, "step_claim", 15, language("python")),
                    ],
                ),
            )
            .unwrap();
        pipeline
            .ingest(
                Protocol::Grpc,
                &request(
                    "tasker-orchestration",
                    vec![span(3, "step_claim", 15, vec![])],
                ),
            )
            .unwrap();
        let lines = lines(&pipeline);
        has(
            &lines,
            r#"tasker_step_claim_calls_total{service="tasker-rust-worker",handler_language="rust"} 1"#,
        );
        has(
            &lines,
            r#"tasker_step_claim_calls_total{service="tasker-rust-worker",handler_language="python"} 1"#,
        );
        has(
            &lines,
            r#"tasker_step_claim_calls_total{service="tasker-orchestration",handler_language="unknown"} 1"#,
        );
    }

    #[test]
    fn extra_labels_are_capped_and_overflow_is_counted() {
        let mut config = Config::default_profile();
        config
            .stages
            .get_mut("handler_execution")
            .unwrap()
            .extra_labels = vec!["namespace".into()];
        config.labels.extra.get_mut("namespace").unwrap().max_values = 2;
        let pipeline = Pipeline::new(&config).unwrap();
        let spans = [
            "linear_workflow",
            "diamond_workflow",
            "tree_workflow",
            "linear_workflow",
        ]
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            span(
                i as u8 + 1,
                "worker.step_execution",
                42,
                vec![kv("namespace", ns)],
            )
        })
        .collect();
        pipeline
            .ingest(
                Protocol::HttpProtobuf,
                &request("tasker-ruby-worker", spans),
            )
            .unwrap();
        // read_messages names its namespace only through the queue.
        let claim = span(
            9,
            "read_messages",
            5,
            vec![kv("queue", "worker_linear_workflow_queue")],
        );
        config.stages.get_mut("step_claim").unwrap().extra_labels = vec!["namespace".into()];
        let with_claim = Pipeline::new(&config).unwrap();
        with_claim
            .ingest(Protocol::Grpc, &request("tasker-ruby-worker", vec![claim]))
            .unwrap();
        let lines = lines(&pipeline);
        let base = r#"service="tasker-ruby-worker",handler_language="ruby""#;
        has(
            &lines,
            &format!(
                r#"tasker_handler_execution_calls_total{{{base},namespace="linear_workflow"}} 2"#
            ),
        );
        has(
            &lines,
            &format!(
                r#"tasker_handler_execution_calls_total{{{base},namespace="diamond_workflow"}} 1"#
            ),
        );
        has(
            &lines,
            &format!(
                r#"tasker_handler_execution_calls_total{{{base},namespace="__overflow__"}} 1"#
            ),
        );
        has(
            &lines,
            r#"spanlens_label_overflow_total{label="namespace"} 1"#,
        );
        has(
            &self::lines(&with_claim),
            &format!(r#"tasker_step_claim_calls_total{{{base},namespace="linear_workflow"}} 1"#),
        );
    }

    #[test]
    fn span_metrics_count_every_span_past_a_cap_within_one_request() {
        // Names a and b are kept; c and d are past max_span_names, each of their spans
        // counted. With one series a metric, the spans of every other series are folded,
        // each counted.
        let names = ["a", "b", "c", "a", "c", "d", "b", "c"];
        let spans = |names: &[&str]| {
            let made = names.iter().enumerate();
            made.map(|(i, n)| span(i as u8 + 1, n, 3, vec![])).collect()
        };
        let mut config = Config::default_profile();
        config.span_metrics.max_span_names = 2;
        let pipeline = Pipeline::new(&config).unwrap();
        pipeline
            .ingest(Protocol::Grpc, &request("svc", spans(&names)))
            .unwrap();
        let lines = lines(&pipeline);
        let calls = |name: &str, n: u64| {
            format!(
                r#"traces_span_metrics_calls_total{{service_name="svc",span_name="{name}",span_kind="SPAN_KIND_INTERNAL",status_code="STATUS_CODE_UNSET"}} {n}"#
            )
        };
        has(&lines, &calls("a", 2));
        has(&lines, &calls("b", 2));
        has(&lines, &calls("__overflow__", 4));
        has(
            &lines,
            r#"spanlens_label_overflow_total{label="span_name"} 4"#,
        );

        config.metrics.max_series_per_metric = 1;
        let pipeline = Pipeline::new(&config).unwrap();
        pipeline
            .ingest(Protocol::Grpc, &request("svc", spans(&names[..4])))
            .unwrap();
        let lines = self::lines(&pipeline);
        has(&lines, &calls("a", 2));
        let overflow = r#"{service_name="__overflow__",span_name="__overflow__",span_kind="__overflow__",status_code="__overflow__"}"#;
        has(
            &lines,
            &format!("traces_span_metrics_calls_total{overflow} 2"),
        );
        has(
            &lines,
            &format!("traces_span_metrics_duration_seconds_count{overflow} 2"),
        );
        // The fold counter has one series too: the duration's folds are in its overflow.
        for metric in ["traces_span_metrics_calls_total", "__overflow__"] {
            has(
                &lines,
                &format!(r#"spanlens_series_overflow_total{{metric="{metric}"}} 2"#),
            );
        }
    }

    #[test]
    fn stage_metrics_count_every_span_past_a_cap_within_one_request() {
        // python and 7 (an int attribute, written as text) are kept; ruby is past the cap.
        let number = KeyValue {
            key: "handler.language".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(7)),
            }),
            ..Default::default()
        };
        let languages = ["python", "7", "ruby", "7", "python", "ruby", "ruby"];
        let spans = languages.iter().enumerate().map(|(i, &l)| {
            let attribute = match l {
                "7" => number.clone(),
                l => kv("handler.language", l),
            };
            span(i as u8 + 1, "step_claim", 15, vec![attribute])
        });
        let mut config = Config::default_profile();
        config.labels.handler_language.max_values = 2;
        let pipeline = Pipeline::new(&config).unwrap();
        pipeline
            .ingest(Protocol::Grpc, &request("svc", spans.collect()))
            .unwrap();
        let lines = lines(&pipeline);
        for (language, n) in [("python", 2), ("7", 2), ("__overflow__", 3)] {
            has(
                &lines,
                &format!(
                    r#"tasker_step_claim_calls_total{{service="svc",handler_language="{language}"}} {n}"#
                ),
            );
        }
        has(
            &lines,
            r#"spanlens_label_overflow_total{label="handler_language"} 3"#,
        );
    }

    #[test]
    fn decode_keeps_the_breakdown_keys_only_while_breakdowns_are_on() {
        let mut config = Config::default_profile();
        let on = Pipeline::new(&config).unwrap();
        config.breakdown.max_spans = 0;
        let off = Pipeline::new(&config).unwrap();
        // task_uuid is read by the breakdown log alone; step_uuid by derived durations too.
        assert!(on.attribute_keys.keeps("task_uuid"));
        assert!(!off.attribute_keys.keeps("task_uuid"));
        assert!(off.attribute_keys.keeps("step_uuid"));
        assert!(off.attribute_keys.keeps("step_name"));
    }

    #[test]
    fn long_label_values_are_truncated_on_a_character_boundary() {
        let mut config = Config::default_profile();
        config.metrics.max_label_value_length = 10;
        let pipeline = Pipeline::new(&config).unwrap();
        pipeline
            .ingest(
                Protocol::Grpc,
                &request("ééééééééé-service", vec![span(1, "step_claim", 1, vec![])]),
            )
            .unwrap();
        has(
            &lines(&pipeline),
            r#"tasker_step_claim_calls_total{service="ééééé",handler_language="unknown"} 1"#,
        );
    }

    #[test]
    fn partial_rejection_counts_only_good_spans_and_explains_the_rest() {
        let pipeline = Pipeline::new(&Config::default_profile()).unwrap();
        let mut bad = span(2, "step_claim", 5, vec![]);
        bad.trace_id = vec![1; 15];
        let mut late = span(3, "step_claim", 5, vec![]);
        late.end_time_unix_nano = 0;
        let outcome = pipeline
            .ingest(
                Protocol::HttpJson,
                &request(
                    "tasker-rust-worker",
                    vec![span(1, "step_claim", 5, vec![]), bad, late],
                ),
            )
            .unwrap();
        assert_eq!((outcome.accepted, outcome.rejected), (1, 2));
        assert_eq!(
            outcome.message,
            "2 of 3 spans rejected: resource_spans[0].scope_spans[0].spans[1] (\"step_claim\"): trace_id is 15 bytes, must be 16; \
             resource_spans[0].scope_spans[0].spans[2] (\"step_claim\"): end_time_unix_nano is missing"
        );
        let lines = lines(&pipeline);
        has(
            &lines,
            r#"tasker_step_claim_calls_total{service="tasker-rust-worker",handler_language="rust"} 1"#,
        );
        has(
            &lines,
            r#"spanlens_spans_refused_total{protocol="http_json",reason="invalid_trace_id"} 1"#,
        );
        has(
            &lines,
            r#"spanlens_spans_refused_total{protocol="http_json",reason="missing_timestamp"} 1"#,
        );
        has(
            &lines,
            r#"spanlens_spans_accepted_total{protocol="http_json"} 1"#,
        );
        has(
            &lines,
            r#"spanlens_spans_received_total{protocol="http_json"} 3"#,
        );
    }

    fn at(mut span: Span, start_ms: u64) -> Span {
        let length = span.end_time_unix_nano - span.start_time_unix_nano;
        span.start_time_unix_nano = 1_700_000_000_000_000_000 + start_ms * 1_000_000;
        span.end_time_unix_nano = span.start_time_unix_nano + length;
        span
    }

    #[test]
    fn derived_durations_join_across_requests_in_any_order_without_double_counting() {
        let pipeline = Pipeline::new(&Config::default_profile()).unwrap();
        let step = |id, name, ms| {
            span(
                id,
                name,
                ms,
                vec![kv("step_uuid", "s-1"), kv("correlation_id", "c-1")],
            )
        };
        let submit = at(step(2, "submit_result", 23), 100);
        let claim = at(step(1, "step_claim", 15), 0);
        let process = at(step(3, "process_result", 8), 130);
        let create = at(
            span(
                4,
                "create_task",
                18,
                vec![
                    kv("correlation_id", "c-1"),
                    kv("task_name", "mathematical_sequence"),
                ],
            ),
            0,
        );
        let finalize = at(
            span(5, "finalize_task", 10, vec![kv("correlation_id", "c-1")]),
            200,
        );
        // The worker's submission arrives first, then its claim, twice (a retrying exporter).
        pipeline
            .ingest(Protocol::Grpc, &request("tasker-ruby-worker", vec![submit]))
            .unwrap();
        for _ in 0..2 {
            pipeline
                .ingest(
                    Protocol::Grpc,
                    &request("tasker-ruby-worker", vec![claim.clone()]),
                )
                .unwrap();
        }
        pipeline
            .ingest(
                Protocol::Grpc,
                &request("tasker-orchestration", vec![finalize, process, create]),
            )
            .unwrap();
        let lines = lines(&pipeline);
        let worker = r#"service="tasker-ruby-worker",handler_language="ruby""#;
        has(
            &lines,
            &format!("tasker_worker_overhead_seconds_sum{{{worker}}} 0.038"),
        );
        has(
            &lines,
            &format!("tasker_worker_overhead_seconds_count{{{worker}}} 1"),
        );
        // From the end of the submission (123 ms) to the start of processing (130 ms).
        has(
            &lines,
            &format!("tasker_result_propagation_seconds_sum{{{worker}}} 0.007"),
        );
        // From the start of creation (0) to the end of finalization (210 ms).
        has(
            &lines,
            r#"tasker_task_e2e_duration_seconds_sum{task_name="mathematical_sequence"} 0.21"#,
        );
        has(
            &lines,
            &format!("tasker_step_claim_calls_total{{{worker}}} 1"),
        );
        has(
            &lines,
            r#"spanlens_spans_duplicate_total{protocol="grpc"} 1"#,
        );
        has(
            &lines,
            r#"spanlens_join_pending{derived="worker_overhead"} 0"#,
        );
    }

    #[test]
    fn handler_execution_is_compared_by_normalised_step_across_languages() {
        let pipeline = Pipeline::new(&Config::default_profile()).unwrap();
        for (id, service, step, ms) in [
            (1, "tasker-rust-worker", "linear_step_1", 10),
            (2, "tasker-python-worker", "linear_step_1_py", 30),
            (3, "tasker-typescript-worker", "linear_step_1_ts", 20),
        ] {
            let handler = span(id, "worker.step_execution", ms, vec![kv("step_name", step)]);
            pipeline
                .ingest(Protocol::Grpc, &request(service, vec![handler]))
                .unwrap();
        }
        let lines = lines(&pipeline);
        for (language, sum) in [("rust", "0.01"), ("python", "0.03"), ("typescript", "0.02")] {
            has(
                &lines,
                &format!(
                    r#"tasker_handler_execution_by_step_seconds_sum{{step="linear_step_1",handler_language="{language}"}} {sum}"#
                ),
            );
        }
    }

    #[test]
    fn a_request_with_no_usable_span_is_refused_whole() {
        let pipeline = Pipeline::new(&Config::default_profile()).unwrap();
        let mut bad = span(0, "step_claim", 5, vec![]);
        bad.span_id = vec![0; 8];
        let refusal = pipeline
            .ingest(Protocol::Grpc, &request("s", vec![bad]))
            .unwrap_err();
        assert!(
            matches!(refusal, Refusal::AllSpansInvalid(ref m) if m.contains("span_id is all zeros")),
            "{refusal}"
        );
        let malformed = pipeline
            .ingest(Protocol::Grpc, b"\x0a\x05\x12")
            .unwrap_err();
        assert_eq!(
            malformed,
            Refusal::Malformed("request: field 1 ends past the end of its message".into())
        );
        let lines = lines(&pipeline);
        has(
            &lines,
            r#"spanlens_requests_refused_total{protocol="grpc",reason="invalid_spans"} 1"#,
        );
        has(
            &lines,
            r#"spanlens_requests_refused_total{protocol="grpc",reason="malformed"} 1"#,
        );
        assert!(!lines.iter().any(|l| l.starts_with("tasker_step_claim")));
    }
}
