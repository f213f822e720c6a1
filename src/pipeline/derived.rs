//! Derived durations: a classified span's offers to the join window, and the values of the
//! keys it completes.

use super::Pipeline;
use super::build::{DerivedMetric, JoinPart, LabelSlot};
use crate::collections::text::same_str;
use crate::config::limits::MAX_LABELS;
use crate::join::{Arrival, Completed, Eviction, Offer, PartSpan};
use crate::metrics::store::{Exemplar, Writer};
use crate::otlp::decode::{AnyValue, Batch, SpanView};
use crate::pipeline::labels::{ResourceValues, truncate};
use std::ops::Range;
use std::time::Instant;

impl Pipeline {
    /// Counts evicted keys: one write per derived metric and reason, not per key (a full
    /// window evicts a key for nearly every new one).
    pub(super) fn count_evictions(&self, w: &mut Writer, evicted: &Evicted) {
        for (d, counts) in evicted.0.iter().enumerate() {
            for (why, &n) in Eviction::ALL.iter().zip(counts) {
                if n > 0 {
                    let labels = [self.derived[d].name.as_str(), why.reason()];
                    w.add(self.join_metrics.evicted, &labels, n);
                }
            }
        }
    }

    /// A classified span's offer to one derived metric, if it carries the metric's key; its
    /// label values are copied into `texts`.
    pub(super) fn offering<'a>(
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
            count: found.count,
            labels: first..texts.values.len(),
        })
    }

    /// Makes a request's offers to the join window and observes the keys they complete.
    pub(super) fn offer(
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
                count: o.count,
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
            done.count,
            Some(exemplar),
        );
    }
}

/// Keys evicted from the join window, per derived metric and [`Eviction`] (by its index).
pub(super) struct Evicted(Vec<[u64; 2]>);

impl Evicted {
    pub(super) fn new(derived: usize) -> Evicted {
        Evicted(vec![[0; 2]; derived])
    }

    /// What the join window tells of each eviction.
    pub(super) fn counter(&mut self) -> impl FnMut(usize, Eviction) + '_ {
        |d, why| self.0[d][why as usize] += 1
    }
}

/// A classified span's offer to a derived metric, collected while the request is read and
/// made after it ([`crate::join::JoinWindow::offer_all`]).
pub(super) struct Offering<'a> {
    derived: usize,
    part: usize,
    key: &'a str,
    span: PartSpan,
    /// The span's adjusted count.
    count: f64,
    /// Its label values in the request's [`LabelTexts`].
    labels: Range<usize>,
}

/// The label values of a request's offerings, copied into one buffer (a value may live in
/// a per-span scratch buffer).
#[derive(Default)]
pub(super) struct LabelTexts {
    text: String,
    values: Vec<Option<Range<usize>>>,
}

impl LabelTexts {
    pub(super) fn with_capacity(values: usize, bytes: usize) -> LabelTexts {
        LabelTexts {
            text: String::with_capacity(bytes),
            values: Vec::with_capacity(values),
        }
    }

    pub(super) fn push(&mut self, value: Option<&str>) {
        let range = value.map(|v| {
            let start = self.text.len();
            self.text.push_str(v);
            start..self.text.len()
        });
        self.values.push(range);
    }

    pub(super) fn values(&self) -> Vec<Option<&str>> {
        let text = self.text.as_str();
        self.values
            .iter()
            .map(|r| r.clone().map(|r| &text[r]))
            .collect()
    }
}

/// A valid span's times and ids, as joins and breakdowns keep them.
pub(super) fn part_span(span: &SpanView) -> PartSpan {
    PartSpan {
        start_unix_nano: span.start_time_unix_nano,
        end_unix_nano: span.end_time_unix_nano,
        trace_id: span.trace_id.try_into().expect("checked: 16 bytes"),
        span_id: span.span_id.try_into().expect("checked: 8 bytes"),
    }
}

/// What a derived metric may take from a classified span.
pub(super) struct JoinedSpan<'a, 'b> {
    pub(super) batch: &'b Batch<'a>,
    pub(super) span: &'b SpanView<'a>,
    pub(super) service: &'b str,
    /// The span's adjusted count.
    pub(super) count: f64,
    pub(super) language: Option<&'b str>,
    pub(super) extra_values: &'b [ResourceValues<'a>],
}
