//! The per-correlation breakdown of the design note's "How to use this system", without a
//! trace backend: the spans of recent tasks are kept (bounded by count and age) and one
//! task is put back together from its correlation id or task uuid, across services and
//! traces: correlation id → task uuids → step uuids, by attributes, never by trace id.

use crate::config::Operation;
use crate::join::{PartSpan, Times, value_nanos};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod kept;
mod waterfall;

pub(crate) use kept::Extent;
use kept::{Found, KEYS, Log};
pub(crate) use waterfall::Waterfall;

/// One classified span to keep for breakdowns, borrowed from its request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpanRecord<'a> {
    pub(crate) stage: usize,
    pub(crate) span: PartSpan,
    /// Span name, service and handler language.
    pub(crate) names: [&'a str; 3],
    pub(crate) keys: RecordKeys<'a>,
}

/// The keys a span may carry.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RecordKeys<'a> {
    pub(crate) correlation_id: Option<&'a str>,
    pub(crate) task_uuid: Option<&'a str>,
    pub(crate) step_uuid: Option<&'a str>,
    pub(crate) step_name: Option<&'a str>,
}

impl<'a> RecordKeys<'a> {
    /// Correlation id, task uuid and step uuid: the keys a breakdown looks spans up by.
    fn as_array(&self) -> [Option<&'a str>; KEYS] {
        [self.correlation_id, self.task_uuid, self.step_uuid]
    }
}

impl Found {
    fn correlation_id(&self) -> Option<&str> {
        self.keys[0].as_deref()
    }

    fn task_uuid(&self) -> Option<&str> {
        self.keys[1].as_deref()
    }

    fn step_uuid(&self) -> Option<&str> {
        self.keys[2].as_deref()
    }
}

/// A derived metric as a breakdown computes it from the spans it holds.
#[derive(Debug, Clone)]
pub(crate) struct DerivedRule {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) operation: Operation,
    /// (stage, optional span name) per part.
    pub(crate) parts: Vec<(usize, Option<String>)>,
}

pub(crate) struct SpanLog {
    inner: Mutex<Log>,
    /// Arrivals are kept as milliseconds from here.
    origin: Instant,
    max_spans: usize,
    max_age: Duration,
    stages: Vec<String>,
    derived: Vec<DerivedRule>,
    /// Attribute names of the step and task keys, as derived rules name them.
    step_key: String,
    task_keys: [String; 2],
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct StageTiming {
    pub stage: String,
    pub span_name: String,
    pub service: String,
    pub duration_ms: f64,
    pub start_unix_nano: u64,
    pub trace_id: String,
    pub span_id: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct StepBreakdown {
    pub step_uuid: String,
    pub step_name: Option<String>,
    /// The worker that handled it (from its handler, claim or submission span).
    pub service: Option<String>,
    pub handler_language: Option<String>,
    pub stages: Vec<StageTiming>,
    /// Derived values of this step, in milliseconds.
    pub derived: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Breakdown {
    pub correlation_ids: Vec<String>,
    pub task_uuids: Vec<String>,
    /// Spans of the task itself (creation, enqueueing, finalization...), by start.
    pub task_stages: Vec<StageTiming>,
    pub steps: Vec<StepBreakdown>,
    /// Derived values keyed by correlation id or task uuid, in milliseconds.
    pub derived: BTreeMap<String, f64>,
    /// From the first start to the last end of every span found, in milliseconds.
    pub total_ms: f64,
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SpanLog {
    pub(crate) fn new(
        config: &crate::config::BreakdownConfig,
        max_age: Duration,
        stages: Vec<String>,
        derived: Vec<DerivedRule>,
    ) -> SpanLog {
        SpanLog {
            inner: Mutex::new(Log::with_capacity(config.max_spans)),
            origin: Instant::now(),
            max_spans: config.max_spans,
            max_age,
            stages,
            derived,
            step_key: config.step_key.clone(),
            task_keys: [config.correlation_key.clone(), config.task_key.clone()],
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.max_spans > 0
    }

    /// The most the log holds, full, with texts of at most `max_label_len` bytes (see
    /// [`Log::bytes_bound`]).
    pub(crate) fn memory_bound(&self, max_label_len: usize) -> usize {
        Log::bytes_bound(self.max_spans, max_label_len)
    }

    /// Keeps the spans of one request (one lock per request).
    pub(crate) fn record(&self, records: &[SpanRecord], now: Instant) {
        if records.is_empty() {
            return;
        }
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let now_ms = millis(now.saturating_duration_since(self.origin));
        let max_age_ms = millis(self.max_age);
        let mut log = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // The oldest go first, so that the log never holds more than `max_spans` (its queues
        // were sized for that many: past it they would double).
        let newest = &records[records.len().saturating_sub(self.max_spans)..];
        while log.len() > self.max_spans - newest.len() {
            log.pop_oldest();
        }
        for record in newest {
            log.push(record, now_ms);
        }
        while log
            .oldest_ms()
            .is_some_and(|at| now_ms.saturating_sub(at) > max_age_ms)
        {
            log.pop_oldest();
        }
    }

    /// The breakdown of the task with this correlation id or task uuid, if any span of it
    /// is still held.
    pub(crate) fn breakdown(&self, id: &str) -> Option<Breakdown> {
        let log = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let lookup = |key: &str| log.carrying(&BTreeSet::from([key]));
        // The id names a task (by correlation id or task uuid), not a step. A task's own
        // spans tie its correlation ids to its task uuids; step spans may carry a fresh
        // correlation id, so only task-level spans extend the set of correlation ids.
        let mut correlations: BTreeSet<String> = BTreeSet::new();
        let mut tasks: BTreeSet<String> = BTreeSet::new();
        let mut found: Vec<Found> = Vec::new();
        let mut frontier = vec![id.to_string()];
        while let Some(key) = frontier.pop() {
            for r in lookup(&key) {
                let task_level = r.step_uuid().is_none();
                let by_correlation = task_level && r.correlation_id() == Some(&key);
                if !(by_correlation || r.task_uuid() == Some(&key)) {
                    continue;
                }
                if let Some(task) = r.task_uuid()
                    && tasks.insert(task.to_string())
                {
                    frontier.push(task.to_string());
                }
                if let Some(correlation) = r.correlation_id()
                    && task_level
                    && correlations.insert(correlation.to_string())
                {
                    frontier.push(correlation.to_string());
                }
                found.push(r);
            }
        }
        if found.is_empty() {
            return None;
        }
        let steps: BTreeSet<String> = found
            .iter()
            .filter_map(|r| r.step_uuid().map(str::to_string))
            .collect();
        let steps: BTreeSet<&str> = steps.iter().map(String::as_str).collect();
        found.extend(
            log.carrying(&steps)
                .into_iter()
                .filter(|r| r.step_uuid().is_some_and(|s| steps.contains(s))),
        );
        drop(log);
        found.sort_by_key(|r| (r.span.start_unix_nano, r.span.span_id));
        found.dedup_by_key(|r| r.span.span_id);
        Some(self.assemble(&found.iter().collect::<Vec<_>>(), tasks))
    }

    /// The `n` longest recent tasks and steps (see [`Log::longest`]).
    pub(crate) fn longest(&self, n: usize) -> [Vec<Extent>; 2] {
        let log = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        log.longest(n)
    }

    fn timing(&self, r: &Found) -> StageTiming {
        StageTiming {
            stage: self.stages[r.stage].clone(),
            span_name: r.span_name.clone(),
            service: r.service.clone(),
            duration_ms: ms(r.span.end_unix_nano.saturating_sub(r.span.start_unix_nano)),
            start_unix_nano: r.span.start_unix_nano,
            trace_id: hex(&r.span.trace_id),
            span_id: hex(&r.span.span_id),
        }
    }

    /// Derived values for one group of spans (one step, or the whole task) whose key is `key`.
    fn derived_values(&self, spans: &[&Found], key: &str) -> BTreeMap<String, f64> {
        let mut values = BTreeMap::new();
        for rule in self.derived.iter().filter(|d| d.key == key) {
            let parts: Option<Vec<Times>> = rule
                .parts
                .iter()
                .map(|(stage, name)| {
                    let mut matching = spans.iter().filter(|r| {
                        r.stage == *stage && name.as_deref().is_none_or(|n| n == r.span_name)
                    });
                    let first = matching.next()?.span.times();
                    // An envelope spans every span of the part; other operations use the first.
                    Some(match rule.operation {
                        Operation::Envelope => matching.fold(first, |acc, r| Times {
                            start_unix_nano: acc.start_unix_nano.min(r.span.start_unix_nano),
                            end_unix_nano: acc.end_unix_nano.max(r.span.end_unix_nano),
                        }),
                        _ => first,
                    })
                })
                .collect();
            if let Some(parts) = parts {
                values.insert(
                    format!("{}_ms", rule.name),
                    ms(value_nanos(rule.operation, &parts)),
                );
            }
        }
        values
    }

    fn assemble(&self, found: &[&Found], tasks: BTreeSet<String>) -> Breakdown {
        let mut by_step: BTreeMap<&str, Vec<&Found>> = BTreeMap::new();
        let mut task_level = Vec::new();
        for r in found {
            match r.step_uuid() {
                Some(step) => by_step.entry(step).or_default().push(r),
                None => task_level.push(*r),
            }
        }
        let mut steps: Vec<StepBreakdown> = by_step
            .iter()
            .map(|(step, spans)| {
                let worker = spans
                    .iter()
                    .find(|r| r.handler_language != "unknown")
                    .or(spans.first());
                StepBreakdown {
                    step_uuid: step.to_string(),
                    step_name: spans.iter().find_map(|r| r.step_name.clone()),
                    service: worker.map(|r| r.service.clone()),
                    handler_language: worker.map(|r| r.handler_language.clone()),
                    stages: spans.iter().map(|r| self.timing(r)).collect(),
                    derived: self.derived_values(spans, &self.step_key),
                }
            })
            .collect();
        steps.sort_by_key(|s| s.stages.first().map(|t| t.start_unix_nano));
        let mut derived = self.derived_values(found, &self.task_keys[0]);
        derived.extend(self.derived_values(found, &self.task_keys[1]));
        let start = found
            .iter()
            .map(|r| r.span.start_unix_nano)
            .min()
            .unwrap_or(0);
        let end = found
            .iter()
            .map(|r| r.span.end_unix_nano)
            .max()
            .unwrap_or(0);
        Breakdown {
            correlation_ids: found
                .iter()
                .filter(|r| r.step_uuid().is_none())
                .filter_map(|r| r.correlation_id())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(str::to_string)
                .collect(),
            task_uuids: tasks.into_iter().collect(),
            task_stages: task_level.iter().map(|r| self.timing(r)).collect(),
            steps,
            derived,
            total_ms: ms(end.saturating_sub(start)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BreakdownConfig;

    fn span(n: u8) -> PartSpan {
        PartSpan {
            start_unix_nano: 1_000 * u64::from(n),
            end_unix_nano: 1_000 * u64::from(n) + 500,
            trace_id: [n; 16],
            span_id: [n; 8],
        }
    }

    /// For each task, a task-level span and a span of its step, all in one request, kept.
    fn record_tasks(log: &SpanLog, tasks: &[u8], now: Instant) {
        let ids: Vec<[String; 3]> = tasks
            .iter()
            .map(|n| [format!("c{n}"), format!("t{n}"), format!("s{n}")])
            .collect();
        let records: Vec<SpanRecord> = tasks
            .iter()
            .zip(&ids)
            .flat_map(|(&n, [correlation, task, step])| {
                let task_level = RecordKeys {
                    correlation_id: Some(correlation),
                    task_uuid: Some(task),
                    ..RecordKeys::default()
                };
                let step_level = RecordKeys {
                    task_uuid: Some(task),
                    step_uuid: Some(step),
                    ..task_level
                };
                [
                    SpanRecord {
                        stage: 0,
                        span: span(n),
                        names: ["create_task", "tasker-orchestration", "unknown"],
                        keys: task_level,
                    },
                    SpanRecord {
                        stage: 1,
                        span: span(n + 100),
                        names: ["step_claim", "w", "rust"],
                        keys: step_level,
                    },
                ]
            })
            .collect();
        log.record(&records, now);
    }

    fn log_of(max_spans: usize) -> SpanLog {
        let config = BreakdownConfig {
            max_spans,
            ..BreakdownConfig::default()
        };
        let stages = vec!["task_creation".to_string(), "step_claim".to_string()];
        SpanLog::new(&config, Duration::from_secs(60), stages, Vec::new())
    }

    #[test]
    fn a_request_larger_than_the_log_leaves_its_newest_spans() {
        let log = log_of(3);
        record_tasks(&log, &[1, 2, 3], Instant::now());
        assert_eq!(log.breakdown("c1"), None);
        assert_eq!(log.breakdown("c2"), None, "task 2's own span went");
        let task2 = log.breakdown("t2").expect("its step span stayed");
        assert_eq!(task2.steps[0].step_uuid, "s2");
        assert_eq!(log.breakdown("c3").map(|b| b.steps.len()), Some(1));
    }

    #[test]
    fn the_log_holds_the_newest_spans_and_finds_them_by_any_key() {
        let log = log_of(4);
        let now = Instant::now();
        for n in 1..=3 {
            record_tasks(&log, &[n], now);
        }
        // Task 1 was pushed out by tasks 2 and 3; the others are found by either id.
        assert_eq!(log.breakdown("c1"), None);
        assert_eq!(log.breakdown("t1"), None);
        for id in ["c2", "t2", "c3", "t3"] {
            let found = log.breakdown(id).unwrap_or_else(|| panic!("{id} kept"));
            let n = &id[1..];
            assert_eq!(found.correlation_ids, [format!("c{n}")], "{id}");
            assert_eq!(found.task_uuids, [format!("t{n}")], "{id}");
            assert_eq!(found.steps.len(), 1, "{id}");
            assert_eq!(found.steps[0].step_uuid, format!("s{n}"), "{id}");
        }
        // A step uuid is not a task id.
        assert_eq!(log.breakdown("s3"), None);
        // Older than max_age: gone at the next record.
        record_tasks(&log, &[4], now + Duration::from_secs(61));
        assert_eq!(log.breakdown("c3"), None);
        assert!(log.breakdown("c4").is_some());
    }
}
