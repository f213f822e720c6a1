//! One request through the flow: decode, check every span, classify, resolve labels and
//! observe. Also owns spanlens's own counters, so that every outcome is counted in one place.

pub(crate) mod classify;
pub(crate) mod dedupe;
pub(crate) mod labels;
pub(crate) mod request_series;

mod adjusted;
mod build;
mod derived;
mod ingest;

pub use build::BuildError;

use crate::config::{BreakdownConfig, Config};
use crate::join::JoinWindow;
use crate::join::breakdown::{Breakdown, Extent, SpanLog};
use crate::metrics::store::{DimensionId, MetricId, Snapshot, Store, StoreBound, Values};
use crate::otlp::Protocol;
use crate::otlp::decode::{AttributeKeys, Batch, DecodeError};
use crate::otlp::refusal::Refusal;
use adjusted::AdjustedCounts;
use build::{
    DerivedMetric, Dimensions, JoinMetrics, JoinPart, OwnMetrics, SpanMetrics, StageMetrics,
};
use classify::Classifier;
use dedupe::RecentSpans;
use derived::Evicted;
use labels::LabelResolver;
use std::time::Instant;
/// What happened to an accepted request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub accepted: usize,
    pub rejected: usize,
    /// Why spans were rejected (the first few), for `partial_success.error_message`.
    pub(crate) message: String,
}

/// Every value observed in one series: (metric name, label pairs, values).
pub(crate) type RawSeries = (String, Vec<(String, String)>, Vec<f64>);

/// See [`Pipeline::memory_bound`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PipelineBound {
    pub(crate) store: StoreBound,
    pub(crate) join: usize,
    pub(crate) breakdown: usize,
    pub(crate) dedupe: usize,
}

pub struct Pipeline {
    store: Store,
    /// The span attributes something here reads; decode skips the others.
    attribute_keys: AttributeKeys,
    /// Where a span's adjusted count comes from.
    adjusted: AdjustedCounts,
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

impl Pipeline {
    pub fn new(config: &Config) -> Result<Pipeline, BuildError> {
        Pipeline::build(config, false)
    }

    /// A pipeline that also keeps every observed value, for exact offline percentiles
    /// (`spanlens replay`).
    pub fn keeping_raw_values(config: &Config) -> Result<Pipeline, BuildError> {
        Pipeline::build(config, true)
    }

    /// Every observed value of the stage and derived histograms: (metric name, label pairs,
    /// values), when built with [`Pipeline::keeping_raw_values`].
    pub(crate) fn raw_values(&self) -> Vec<RawSeries> {
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

    /// What its bounded parts hold at most, every cap reached (`spanlens check-config
    /// --memory`): the series store, the join window, the breakdown log and the table of
    /// recent span ids, in bytes; at most `writers` threads write series.
    pub(crate) fn memory_bound(&self, writers: usize) -> PipelineBound {
        PipelineBound {
            store: self.store.memory_bound(self.max_label_len, writers),
            join: self.join.memory_bound(self.max_label_len),
            breakdown: self.span_log.memory_bound(self.max_label_len),
            dedupe: self.recent.memory_bound(),
        }
    }

    /// Every series now. Evicts join keys that waited too long first, so that the eviction
    /// counters are current even without traffic.
    pub fn snapshot(&self) -> Snapshot {
        self.taken(Store::snapshot)
    }

    /// Every series now, for the operator page: as [`Pipeline::snapshot`], but the exemplar
    /// intervals and series expiry keep the pace of the scrapes (see [`Store::copy`]).
    pub(crate) fn copy(&self) -> Snapshot {
        self.taken(Store::copy)
    }

    fn taken(&self, take: fn(&Store) -> Snapshot) -> Snapshot {
        let mut evicted = Evicted::new(self.derived.len());
        self.join.sweep(Instant::now(), &mut evicted.counter());
        self.count_evictions(&mut self.store.writer(), &evicted);
        let mut snapshot = take(&self.store);
        for (d, pending) in self.derived.iter().zip(self.join.pending()) {
            snapshot.set_gauge(self.join_metrics.pending, &[&d.name], pending as f64);
        }
        snapshot
    }

    /// Spans accepted since start, over every protocol (for the final log line).
    pub fn accepted_total(&self) -> u64 {
        self.store
            .snapshot()
            .series(self.own.accepted)
            .map(|s| match s.values {
                Values::Counter(n) => n as u64,
                Values::Gauge(_) | Values::Histogram { .. } => 0,
            })
            .sum()
    }

    /// Observes how long a request whose spans were processed took, from its headers to its
    /// answer.
    pub(crate) fn observe_request(&self, protocol: Protocol, took: std::time::Duration) {
        self.store.writer().observe(
            self.own.request_duration,
            &[protocol.as_str()],
            took.as_secs_f64(),
            1.0,
            None,
        );
    }

    /// Counts a request refused before decoding (too large, wrong content type...).
    pub(crate) fn count_refused_request(&self, protocol: Protocol, reason: &str) {
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

    /// The `n` longest recent tasks and steps, from the spans kept for breakdowns.
    pub(crate) fn longest_recent(&self, n: usize) -> [Vec<Extent>; 2] {
        self.span_log.longest(n)
    }

    /// The breakdown of one task by correlation id or task uuid, from recent spans.
    pub fn breakdown(&self, id: &str) -> Option<Breakdown> {
        self.span_log.breakdown(id)
    }
}

#[cfg(test)]
mod tests;
