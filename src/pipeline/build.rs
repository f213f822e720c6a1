//! A pipeline built from a config: the metric table, the label dimensions, the stages,
//! derived metrics and comparisons, and the classifier. The config was validated, so a
//! [`BuildError`] means a config that validation let through by mistake; it names the field.

use super::Pipeline;
use super::adjusted::AdjustedCounts;
use super::classify::{Classifier, StageId};
use super::dedupe::RecentSpans;
use super::labels::LabelResolver;
use crate::config::limits::MAX_EXTRA_LABELS;
use crate::config::{ComparisonConfig, Config, DerivedConfig, StageConfig};
use crate::join::breakdown::{DerivedRule, SpanLog};
use crate::join::{JoinSpec, JoinWindow};
use crate::metrics::store::{
    DimensionId, MetricId, MetricKind, MetricSpec, NativeSpec, Store, StoreSpec,
};
use crate::otlp::decode::AttributeKeys;
use std::sync::Arc;
use thiserror::Error;

/// A config the pipeline cannot be built from; `path` is the field, as `check-config` names it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BuildError {
    #[error("{path}: unknown stage `{stage}`")]
    UnknownStage { path: String, stage: String },
    #[error("{path}: `{label}` is not a label under labels.extra")]
    UnknownLabel { path: String, label: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

pub(super) struct StageMetrics {
    pub(super) histogram: MetricId,
    pub(super) calls: MetricId,
    pub(super) errors: MetricId,
    /// Indexes into `Pipeline::extras`.
    pub(super) extras: Vec<usize>,
}

pub(super) struct SpanMetrics {
    pub(super) calls: MetricId,
    pub(super) duration: MetricId,
}

pub(super) struct OwnMetrics {
    pub(super) received: MetricId,
    pub(super) accepted: MetricId,
    pub(super) adjusted: MetricId,
    pub(super) sampling_ignored: MetricId,
    pub(super) refused_spans: MetricId,
    pub(super) refused_requests: MetricId,
    pub(super) request_duration: MetricId,
}

/// Bucket bounds of spanlens_request_duration_seconds: fine around a millisecond, where a
/// 512-span request is answered, and up to the receivers' timeouts.
const REQUEST_DURATION_BUCKETS: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.00125, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

pub(super) struct Dimensions {
    pub(super) service: DimensionId,
    pub(super) handler_language: DimensionId,
    pub(super) span_name: DimensionId,
}

/// A derived metric as the pipeline runs it.
pub(super) struct DerivedMetric {
    pub(super) name: String,
    pub(super) histogram: MetricId,
    pub(super) key: String,
    pub(super) labels: Vec<LabelSlot>,
}

#[derive(Clone, Copy)]
pub(super) enum LabelSlot {
    Service,
    HandlerLanguage,
    /// Index into `Pipeline::extras`.
    Extra(usize),
}

/// A stage's span as a part of a derived metric.
pub(super) struct JoinPart {
    pub(super) derived: usize,
    pub(super) part: usize,
    pub(super) span_name: Option<String>,
}

#[derive(Clone, Copy)]
pub(super) struct JoinMetrics {
    pub(super) duplicates: MetricId,
    pub(super) evicted: MetricId,
    pub(super) late: MetricId,
    pub(super) repeated: MetricId,
    pub(super) pending: MetricId,
}

/// Builds the metric table from a config, in the order the exposition lists them.
struct Table {
    metrics: Vec<MetricSpec>,
}

impl Table {
    fn add(&mut self, name: &str, help: &str, kind: MetricKind, labels: &[&str]) -> MetricId {
        self.metrics.push(MetricSpec::new(name, help, kind, labels));
        MetricId(self.metrics.len() - 1)
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: &Option<Vec<f64>>,
        config: &Config,
        labels: &[&str],
    ) -> MetricId {
        let bounds = buckets.as_ref().unwrap_or(&config.metrics.default_buckets);
        let native = &config.metrics.native_histograms;
        let kind = MetricKind::Histogram {
            bounds: Arc::from(bounds.as_slice()),
            native: native
                .enabled
                .then(|| NativeSpec::new(native.schema, native.max_buckets, native.zero_threshold)),
        };
        self.add(name, help, kind, labels)
    }
}

/// Stage and extra-label names of the config, found by name.
struct Names<'c> {
    stages: Vec<&'c str>,
    extras: Vec<&'c str>,
}

impl Names<'_> {
    fn stage(&self, stage: &str, path: String) -> Result<usize, BuildError> {
        let found = self.stages.iter().position(|s| *s == stage);
        found.ok_or_else(|| BuildError::UnknownStage {
            path,
            stage: stage.to_string(),
        })
    }

    fn extra(&self, label: &str, path: String) -> Result<usize, BuildError> {
        let found = self.extras.iter().position(|l| *l == label);
        found.ok_or_else(|| BuildError::UnknownLabel {
            path,
            label: label.to_string(),
        })
    }
}

/// The derived metrics as the pipeline runs them, and what the join window and the
/// breakdown log are given of them.
struct Derived {
    metrics: Vec<DerivedMetric>,
    /// Per stage: the derived metrics its spans are part of.
    joins_by_stage: Vec<Vec<JoinPart>>,
    specs: Vec<JoinSpec>,
    rules: Vec<DerivedRule>,
}

impl Pipeline {
    pub(super) fn build(config: &Config, keep_raw_values: bool) -> Result<Pipeline, BuildError> {
        let mut table = Table {
            metrics: Vec::new(),
        };
        let own = own_metrics(&mut table);
        let join_metrics = join_metrics(&mut table);
        let label_overflow = table.add("spanlens_label_overflow_total", "Label values replaced by the overflow value because the label reached its max_values, by label.", MetricKind::Counter, &["label"]);
        let series_overflow = table.add("spanlens_series_overflow_total", "Observations folded into the overflow series because the metric reached max_series_per_metric, by metric.", MetricKind::Counter, &["metric"]);
        let labels = &config.labels;
        let names = Names {
            stages: config.stages.keys().map(String::as_str).collect(),
            extras: labels.extra.keys().map(String::as_str).collect(),
        };
        let mut dimensions = vec![
            ("service".to_string(), labels.service.max_values),
            (
                "handler_language".to_string(),
                labels.handler_language.max_values,
            ),
            ("span_name".to_string(), config.span_metrics.max_span_names),
        ];
        let mut extras = Vec::new();
        for (name, label) in &labels.extra {
            dimensions.push((name.clone(), label.max_values));
            let resolver = LabelResolver::compile(label, &format!("labels.extra.{name}"))?;
            extras.push((resolver, DimensionId(dimensions.len() - 1)));
        }
        let stages = config
            .stages
            .iter()
            .map(|(name, stage)| stage_metrics(&mut table, config, &names, name, stage))
            .collect::<Result<Vec<_>, _>>()?;
        let derived = derived_metrics(&mut table, config, &names)?;
        let mut comparisons_by_stage: Vec<Vec<(MetricId, usize)>> =
            stages.iter().map(|_| Vec::new()).collect();
        for (name, c) in &config.comparisons {
            let (stage, comparison) = comparison(&mut table, config, &names, name, c)?;
            comparisons_by_stage[stage].push(comparison);
        }
        let span_log = SpanLog::new(
            &config.breakdown,
            config.breakdown.max_age.get(),
            names.stages.iter().map(|s| s.to_string()).collect(),
            derived.rules,
        );
        let span_labels = ["service_name", "span_name", "span_kind", "status_code"];
        let span_metrics = config.span_metrics.enabled.then(|| {
            let m = &config.span_metrics;
            SpanMetrics {
                calls: table.add(
                    &m.calls,
                    "Spans, by service, name, kind and status.",
                    MetricKind::Counter,
                    &span_labels,
                ),
                duration: table.histogram(
                    &m.duration,
                    "Span durations, by service, name, kind and status.",
                    &m.buckets,
                    config,
                    &span_labels,
                ),
            }
        });
        let adjusted = AdjustedCounts::new(&config.sampling);
        let classifier = Classifier::compile(&config.rules, |name, path| {
            names.stage(name, path).map(StageId)
        })?;
        let handler_language =
            LabelResolver::compile(&labels.handler_language, "labels.handler_language")?;
        let attribute_keys = AttributeKeys::new(
            classifier
                .attribute_keys()
                .chain(handler_language.span_keys())
                .chain(extras.iter().flat_map(|(r, _)| r.span_keys()))
                .chain(derived.metrics.iter().map(|d| d.key.as_str()))
                .chain(adjusted.span_key())
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
            adjusted,
            span_log,
            breakdown_keys: config.breakdown.clone(),
            recent: RecentSpans::new(config.join.dedupe_spans),
            join: JoinWindow::new(
                derived.specs,
                config.join.max_pending,
                config.join.max_wait.get(),
            ),
            derived: derived.metrics,
            joins_by_stage: derived.joins_by_stage,
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
                series_idle_timeout: Some(config.metrics.series_idle_timeout.get())
                    .filter(|d| !d.is_zero()),
                never_expire: vec![
                    own.received,
                    own.accepted,
                    own.adjusted,
                    own.sampling_ignored,
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
}

fn own_metrics(table: &mut Table) -> OwnMetrics {
    OwnMetrics {
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
        adjusted: table.add(
            "spanlens_spans_adjusted_total",
            "Operations the spans observed stand for, by protocol: the sum of their adjusted counts (sampling: config `sampling`). Divided by spanlens_spans_accepted_total, the sampling ratio.",
            MetricKind::Counter,
            &["protocol"],
        ),
        sampling_ignored: table.add(
            "spanlens_sampling_ignored_total",
            "Spans whose sampling value (tracestate ot=th or ot=p, or the multiplier attribute) was malformed and which counted 1, by protocol and reason.",
            MetricKind::Counter,
            &["protocol", "reason"],
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
                native: None,
            },
            &["protocol"],
        ),
    }
}

fn join_metrics(table: &mut Table) -> JoinMetrics {
    JoinMetrics {
        duplicates: table.add("spanlens_spans_duplicate_total", "Spans seen again (same trace and span id, resent by a retrying exporter) and not counted again, by protocol.", MetricKind::Counter, &["protocol"]),
        evicted: table.add("spanlens_join_evicted_total", "Keys of derived metrics that left the join window incomplete, by derived metric and reason (timeout: waited longer than join.max_wait; capacity: oldest when join.max_pending was reached).", MetricKind::Counter, &["derived", "reason"]),
        late: table.add("spanlens_join_late_spans_total", "Spans that arrived for a key already completed, by derived metric.", MetricKind::Counter, &["derived"]),
        repeated: table.add("spanlens_join_repeated_spans_total", "Spans for a part a waiting key already had (not used), by derived metric.", MetricKind::Counter, &["derived"]),
        pending: table.add("spanlens_join_pending", "Keys waiting for their missing parts, by derived metric.", MetricKind::Gauge, &["derived"]),
    }
}

/// A stage's histogram, calls and errors, labelled by service, handler language and its extras.
fn stage_metrics(
    table: &mut Table,
    config: &Config,
    names: &Names,
    name: &str,
    stage: &StageConfig,
) -> Result<StageMetrics, BuildError> {
    let path = format!("stages.{name}.extra_labels");
    if stage.extra_labels.len() > MAX_EXTRA_LABELS {
        return Err(BuildError::Invalid {
            path,
            message: format!("a stage may have at most {MAX_EXTRA_LABELS} extra labels"),
        });
    }
    let mut label_names = vec!["service", "handler_language"];
    label_names.extend(stage.extra_labels.iter().map(String::as_str));
    let extras = (stage.extra_labels.iter().enumerate())
        .map(|(i, label)| names.extra(label, format!("{path}[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(StageMetrics {
        histogram: table.histogram(
            &stage.histogram,
            &stage.help,
            &stage.buckets,
            config,
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
    })
}

fn derived_metrics(
    table: &mut Table,
    config: &Config,
    names: &Names,
) -> Result<Derived, BuildError> {
    let mut derived = Derived {
        metrics: Vec::new(),
        joins_by_stage: names.stages.iter().map(|_| Vec::new()).collect(),
        specs: Vec::new(),
        rules: Vec::new(),
    };
    for (index, (name, d)) in config.derived.iter().enumerate() {
        let path = format!("derived.{name}");
        let mut parts = Vec::with_capacity(d.parts.len());
        for (part, p) in d.parts.iter().enumerate() {
            let stage = names.stage(&p.stage, format!("{path}.parts[{part}].stage"))?;
            derived.joins_by_stage[stage].push(JoinPart {
                derived: index,
                part,
                span_name: p.span_name.clone(),
            });
            parts.push((stage, p.span_name.clone()));
        }
        derived
            .metrics
            .push(derived_metric(table, config, names, &path, name, d)?);
        derived.specs.push(JoinSpec {
            operation: d.operation,
            parts: d.parts.len(),
            labels: d.labels.len(),
        });
        derived.rules.push(DerivedRule {
            name: name.clone(),
            key: d.key.clone(),
            operation: d.operation,
            parts,
        });
    }
    Ok(derived)
}

fn derived_metric(
    table: &mut Table,
    config: &Config,
    names: &Names,
    path: &str,
    name: &str,
    d: &DerivedConfig,
) -> Result<DerivedMetric, BuildError> {
    let labels = (d.labels.iter().enumerate())
        .map(|(i, label)| match label.as_str() {
            "service" => Ok(LabelSlot::Service),
            "handler_language" => Ok(LabelSlot::HandlerLanguage),
            other => names
                .extra(other, format!("{path}.labels[{i}]"))
                .map(LabelSlot::Extra),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let label_names: Vec<&str> = d.labels.iter().map(String::as_str).collect();
    Ok(DerivedMetric {
        name: name.to_string(),
        histogram: table.histogram(&d.histogram, &d.help, &d.buckets, config, &label_names),
        key: d.key.clone(),
        labels,
    })
}

/// A comparison's histogram and step label, and the stage whose spans it observes.
fn comparison(
    table: &mut Table,
    config: &Config,
    names: &Names,
    name: &str,
    c: &ComparisonConfig,
) -> Result<(usize, (MetricId, usize)), BuildError> {
    let path = format!("comparisons.{name}");
    let stage = names.stage(&c.stage, format!("{path}.stage"))?;
    let step = names.extra(&c.step_label, format!("{path}.step_label"))?;
    let labels = [c.step_label.as_str(), "handler_language"];
    let histogram = table.histogram(&c.histogram, &c.help, &c.buckets, config, &labels);
    Ok((stage, (histogram, step)))
}
