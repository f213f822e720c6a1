//! One request through the flow: decode, check every span, admit, then classify, resolve
//! labels and observe each span.

use super::build::SpanMetrics;
use super::derived::{Evicted, JoinedSpan, LabelTexts, part_span};
use super::request_series::{Key, RequestSeries};
use super::{Outcome, Pipeline};
use crate::collections::text::same_str;
use crate::config::limits::MAX_LABELS;
use crate::join::breakdown::{RecordKeys, SpanRecord};
use crate::metrics::store::{Admission, Exemplar, Series, Writer};
use crate::otlp::Protocol;
use crate::otlp::decode::{AnyValue, Batch, SpanProblem, SpanView};
use crate::otlp::refusal::Refusal;
use crate::otlp::sampling::UNSAMPLED;
use crate::pipeline::classify::{SpanFacts, StageId};
use crate::pipeline::labels::{Found, ResourceValues, truncate};
use std::fmt::Write;
use std::time::Instant;

/// Rejection reasons named in a partial-success message.
const REASONS_SHOWN: usize = 3;

/// The label values a request's resources give, found once per request.
struct RequestValues<'a, 'r> {
    batch: &'r Batch<'a>,
    languages: ResourceValues<'a>,
    extras: Vec<ResourceValues<'a>>,
}

/// The handler language of a classified span: as it carries it (None: it carries none), and
/// as its stage series was labelled with (the default or the overflow value, maybe).
struct StageLanguage<'b> {
    language: Option<&'b str>,
    admitted: &'b str,
}

/// A request's span-metric series (calls, duration), known by resource, kind and status
/// code, and span name, as its spans carry them.
type SpanSeries<'a> = RequestSeries<'a, [Series; 2]>;

/// A request's stage series (histogram, calls, errors), known by resource and stage, and
/// handler language as its spans carry it (if they do), for stages with no extra labels.
type StageSeries<'a> = RequestSeries<'a, [Series; 3]>;

/// A span being observed, its adjusted count, and its exemplar (its duration the value).
type Observed<'a, 'b> = (&'b SpanView<'a>, f64, Exemplar);

impl Pipeline {
    /// [`Pipeline::ingest`], where `admit` (given the indexes of rejected spans and the
    /// number accepted) may still refuse a valid request as a whole before anything of it is
    /// observed: forwarding does when its queue is full.
    pub(crate) fn ingest_admitting(
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
        let (outcome, rejected) = self.check(protocol, &batch, admit)?;
        self.observe(protocol, &batch, &rejected);
        Ok(outcome)
    }

    /// Checks every span of a request, counts what was received and refused, and lets
    /// `admit` refuse the request as a whole. Returns the outcome and the indexes of the
    /// rejected spans.
    fn check(
        &self,
        protocol: Protocol,
        batch: &Batch,
        admit: impl FnOnce(&[usize], usize) -> Result<(), Refusal>,
    ) -> Result<(Outcome, Vec<usize>), Refusal> {
        let problems: Vec<(usize, SpanProblem)> = batch
            .spans
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.problem().map(|p| (i, p)))
            .collect();
        let mut outcome = Outcome {
            accepted: batch.spans.len() - problems.len(),
            rejected: problems.len(),
            message: describe(batch, &problems),
        };
        let rejected: Vec<usize> = problems.iter().map(|(i, _)| *i).collect();
        let all_invalid = outcome.accepted == 0 && outcome.rejected > 0;
        let admitted = match all_invalid {
            true => Ok(()),
            false => admit(&rejected, outcome.accepted),
        };
        let p = protocol.as_str();
        let mut w = self.store.writer();
        w.add(self.own.received, &[p], batch.spans.len() as u64);
        for (_, problem) in &problems {
            w.add(self.own.refused_spans, &[p, problem.reason()], 1);
        }
        if all_invalid {
            w.add(self.own.refused_requests, &[p, "invalid_spans"], 1);
            let message = std::mem::take(&mut outcome.message);
            return Err(Refusal::AllSpansInvalid(message));
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
        Ok((outcome, rejected))
    }

    /// Observes the valid spans of an admitted request (`rejected`: the indexes of the
    /// others, in order): span metrics, stage metrics, comparisons, the breakdown log and
    /// the join window. Spans seen before are counted as duplicates and nothing more.
    fn observe<'a>(&self, protocol: Protocol, batch: &Batch<'a>, rejected: &[usize]) {
        let p = protocol.as_str();
        let mut w = self.store.writer();
        let request = RequestValues {
            batch,
            languages: self.handler_language.per_resource(batch),
            extras: self
                .extras
                .iter()
                .map(|(r, _)| r.per_resource(batch))
                .collect(),
        };
        let n = batch.spans.len();
        let mut services: Vec<Option<&str>> = vec![None; batch.resources.len()];
        let mut bufs: [String; MAX_LABELS] = Default::default();
        let mut rejected = rejected.iter().copied().peekable();
        let mut fresh = {
            let mut rejected = rejected.clone();
            // Sized up front: collected from a filter, it grew (and was copied) many times.
            let mut ids: Vec<(&[u8], &[u8])> = Vec::with_capacity(n);
            ids.extend(
                (batch.spans.iter().enumerate())
                    .filter(|(i, _)| rejected.next_if_eq(i).is_none())
                    .map(|(_, s)| (s.trace_id, s.span_id)),
            );
            self.recent.first_times(&ids).into_iter()
        };
        let now = Instant::now();
        let mut evicted = Evicted::new(self.derived.len());
        // Sized for the request up front: grown span by span they were copied many times.
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
        let mut adjusted_total = 0.0;
        for (index, span) in batch.spans.iter().enumerate() {
            if rejected.next_if_eq(&index).is_some() {
                continue;
            }
            if !fresh.next().expect("one answer per valid span") {
                w.add(self.join_metrics.duplicates, &[p], 1);
                continue;
            }
            let count = self.adjusted.of(batch, span).unwrap_or_else(|ignored| {
                w.add(self.own.sampling_ignored, &[p, ignored.reason()], 1);
                UNSAMPLED
            });
            adjusted_total += count;
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
                let observed = (span, count, exemplar);
                self.observe_span_metrics(&mut w, m, &mut span_series, service, observed);
            }
            let facts = SpanFacts {
                name: span.name,
                service: raw_service,
                attributes: batch.span_attributes(span),
            };
            let Some(StageId(stage)) = self.classifier.classify(&facts) else {
                continue;
            };
            let ([histogram, calls, errors], labelled) = self.stage_series(
                &mut w,
                &mut stage_series,
                &request,
                span,
                (stage, service),
                &mut bufs,
            );
            w.observe_in(histogram, seconds, count, Some(exemplar));
            w.add_to(calls, count);
            w.add_to(errors, if span.is_error() { count } else { 0.0 });
            let observed = (span, count, exemplar);
            self.observe_comparisons(&mut w, &request, observed, stage, labelled.admitted);
            if self.span_log.enabled()
                && let Some(record) = self.record(batch, span, stage, service)
            {
                records.push(record);
                // May be written in a buffer of this span's: copied, set after the loop.
                record_languages.push(Some(labelled.admitted));
            }
            for join in &self.joins_by_stage[stage] {
                if join.span_name.as_deref().is_some_and(|n| n != span.name) {
                    continue;
                }
                let found = JoinedSpan {
                    batch,
                    span,
                    service,
                    count,
                    language: labelled.language,
                    extra_values: &request.extras,
                };
                offerings.extend(self.offering(join, &found, &mut texts));
            }
        }
        let protocol = [p];
        let adjusted = w.series(self.own.adjusted, w.label_set(&protocol));
        w.add_to(adjusted, adjusted_total);
        self.offer(&mut w, &offerings, &texts, now, &mut evicted);
        self.count_evictions(&mut w, &evicted);
        drop(w);
        for (record, language) in records.iter_mut().zip(record_languages.values()) {
            record.names[2] = language.unwrap_or_default();
        }
        self.span_log.record(&records, now);
    }

    /// The histogram, calls and errors series of a classified span's stage. Those of a stage
    /// labelled by service and handler language alone are found once per request for each
    /// (resource, language) its spans carry as text, and known by slot after that.
    fn stage_series<'a: 'k, 's: 'k, 'k>(
        &'s self,
        w: &mut Writer<'s>,
        known: &mut StageSeries<'a>,
        request: &RequestValues<'a, '_>,
        span: &SpanView<'a>,
        (stage_id, service): (usize, &'k str),
        bufs: &'k mut [String; MAX_LABELS],
    ) -> ([Series; 3], StageLanguage<'k>) {
        let stage = &self.stages[stage_id];
        let mut bufs = bufs.iter_mut();
        let language_buf = bufs.next().expect("slot");
        let found =
            (self.handler_language).find_in_request(request.batch, span, &request.languages);
        let language = found.map(|found| truncate(found.written(language_buf), self.max_label_len));
        let given_language = language.unwrap_or(self.handler_language.default_value());
        let key = match found {
            Some(Found::Scalar(_)) => None,
            _ if !stage.extras.is_empty() => None,
            _ => Some(Key {
                numbers: [span.resource as u64, stage_id as u64],
                text: found.and_then(Found::text),
            }),
        };
        let (series, admitted) = match key.and_then(|key| known.get(&key)) {
            Some(series) => (series, given_language),
            None => {
                let mut labels = [""; MAX_LABELS];
                labels[0] = service;
                let (language, admission) =
                    w.admitted_as(self.dimensions.handler_language, given_language);
                labels[1] = language;
                for (slot, &extra) in stage.extras.iter().enumerate() {
                    let (resolver, dimension) = &self.extras[extra];
                    let buf = bufs.next().expect("slot");
                    let value = resolver.resolve(request.batch, span, &request.extras[extra], buf);
                    labels[2 + slot] = w.admitted(*dimension, truncate(value, self.max_label_len));
                }
                let set = w.label_set(&labels[..2 + stage.extras.len()]);
                let series = [stage.histogram, stage.calls, stage.errors]
                    .map(|metric| w.series(metric, set));
                if let Some(key) = key {
                    known.remember(key, series, admission == Admission::Kept);
                }
                (series, language)
            }
        };
        (series, StageLanguage { language, admitted })
    }

    /// Observes a classified span in the comparison histograms of its stage, by step and
    /// the handler language its stage series was labelled with.
    fn observe_comparisons<'a>(
        &self,
        w: &mut Writer,
        request: &RequestValues<'a, '_>,
        (span, count, exemplar): Observed<'a, '_>,
        stage: usize,
        language: &str,
    ) {
        for &(histogram, step) in &self.comparisons_by_stage[stage] {
            let (resolver, dimension) = &self.extras[step];
            let mut buf = String::new();
            let value = resolver.resolve(request.batch, span, &request.extras[step], &mut buf);
            let step = w.admitted(*dimension, truncate(value, self.max_label_len));
            w.observe(
                histogram,
                &[step, language],
                exemplar.value,
                count,
                Some(exemplar),
            );
        }
    }

    /// Counts a span (by its adjusted count) and observes its duration (the exemplar's
    /// value) in the span metrics.
    /// The series of a (resource, name, kind, status) seen before in the request are written
    /// by slot: no admission of the name, hash of the label values or lookup for that span.
    fn observe_span_metrics<'a>(
        &self,
        w: &mut Writer,
        m: &SpanMetrics,
        known: &mut SpanSeries<'a>,
        service: &str,
        (span, count, exemplar): Observed<'a, '_>,
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
        w.add_to(calls, count);
        w.observe_in(duration, exemplar.value, count, Some(exemplar));
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
