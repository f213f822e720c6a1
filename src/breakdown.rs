//! The per-correlation breakdown of the design note's "How to use this system", without a
//! trace backend: the spans of recent tasks are kept (bounded by count and age) and one
//! task is put back together from its correlation id or task uuid, across services and
//! traces: correlation id → task uuids → step uuids, by attributes, never by trace id.

use crate::config::Operation;
use crate::join::{PartSpan, value_nanos};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One classified span, as kept for breakdowns. Its seven texts share one allocation.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub stage: usize,
    pub span: PartSpan,
    /// Span name, service, handler language, correlation id, task uuid, step uuid and step
    /// name, one after the other; the last four may be absent.
    text: Box<str>,
    ends: [u32; TEXTS],
    present: u8,
}

const TEXTS: usize = 7;

/// The keys a span may carry, as [`SpanRecord::new`] takes them.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordKeys<'a> {
    pub correlation_id: Option<&'a str>,
    pub task_uuid: Option<&'a str>,
    pub step_uuid: Option<&'a str>,
    pub step_name: Option<&'a str>,
}

impl SpanRecord {
    pub fn new(
        stage: usize,
        span: PartSpan,
        [span_name, service, handler_language]: [&str; 3],
        keys: RecordKeys,
    ) -> SpanRecord {
        let texts = [
            Some(span_name),
            Some(service),
            Some(handler_language),
            keys.correlation_id,
            keys.task_uuid,
            keys.step_uuid,
            keys.step_name,
        ];
        let mut text = String::with_capacity(texts.iter().flatten().map(|t| t.len()).sum());
        let (mut ends, mut present) = ([0; TEXTS], 0);
        for (i, t) in texts.into_iter().enumerate() {
            if let Some(t) = t {
                text.push_str(t);
                present |= 1 << i;
            }
            ends[i] = u32::try_from(text.len()).expect("label values are capped in length");
        }
        SpanRecord {
            stage,
            span,
            text: text.into(),
            ends,
            present,
        }
    }

    fn text(&self, i: usize) -> Option<&str> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (self.present & (1 << i) != 0).then(|| &self.text[start as usize..self.ends[i] as usize])
    }

    pub fn span_name(&self) -> &str {
        self.text(0).unwrap_or_default()
    }

    pub fn service(&self) -> &str {
        self.text(1).unwrap_or_default()
    }

    pub fn handler_language(&self) -> &str {
        self.text(2).unwrap_or_default()
    }

    pub fn correlation_id(&self) -> Option<&str> {
        self.text(3)
    }

    pub fn task_uuid(&self) -> Option<&str> {
        self.text(4)
    }

    pub fn step_uuid(&self) -> Option<&str> {
        self.text(5)
    }

    pub fn step_name(&self) -> Option<&str> {
        self.text(6)
    }
}

/// A derived metric as a breakdown computes it from the spans it holds.
#[derive(Debug, Clone)]
pub struct DerivedRule {
    pub name: String,
    pub key: String,
    pub operation: Operation,
    /// (stage, optional span name) per part.
    pub parts: Vec<(usize, Option<String>)>,
}

pub struct SpanLog {
    inner: Mutex<Log>,
    max_spans: usize,
    max_age: Duration,
    stages: Vec<String>,
    derived: Vec<DerivedRule>,
    /// Attribute names of the step and task keys, as derived rules name them.
    step_key: String,
    task_keys: [String; 2],
}

/// The records in arrival order, with the hashes of their keys beside them in a dense array
/// of their own. Recording a span touches only the two queues' ends: no index to update
/// (and miss the cache on) per key; a breakdown, which is rare, scans the hashes instead
/// (24 bytes per record, about a megabyte at the default 50,000) and checks each matching
/// record's own keys, so two values that share a hash never mix.
#[derive(Default)]
struct Log {
    entries: VecDeque<Entry>,
    /// Per entry, in the same positions: the hash of each key it carries, 0 for none.
    hashes: VecDeque<[u64; KEYS]>,
    hasher: hashbrown::DefaultHashBuilder,
}

struct Entry {
    at: Instant,
    record: SpanRecord,
}

/// Correlation id, task uuid and step uuid.
const KEYS: usize = 3;

impl Log {
    fn key_hash(&self, key: &str) -> u64 {
        // 0 marks "no key" in `hashes`: a key that hashes to 0 is looked up as 1.
        self.hasher.hash_one(key).max(1)
    }

    /// Records carrying any of `keys`, oldest first.
    fn carrying<'l>(&'l self, keys: &BTreeSet<&str>) -> Vec<&'l SpanRecord> {
        let wanted: Vec<u64> = keys.iter().map(|k| self.key_hash(k)).collect();
        // A 4,096-bit filter of the wanted hashes: most records are told apart by three
        // lookups in 512 bytes, without comparing against every wanted hash.
        let mut filter = [0u64; 64];
        let bit = |h: u64| ((h >> 6) as usize % 64, h % 64);
        for &h in &wanted {
            let (word, b) = bit(h);
            filter[word] |= 1 << b;
        }
        let maybe = |h: &u64| {
            let (word, b) = bit(*h);
            filter[word] >> b & 1 == 1
        };
        self.hashes
            .iter()
            .enumerate()
            .filter(|(_, hashes)| {
                hashes
                    .iter()
                    .any(|h| *h != 0 && maybe(h) && wanted.contains(h))
            })
            .map(|(i, _)| &self.entries[i].record)
            .filter(|r| {
                record_keys(r)
                    .into_iter()
                    .flatten()
                    .any(|k| keys.contains(k))
            })
            .collect()
    }

    fn push(&mut self, record: SpanRecord, at: Instant) {
        let hashes = record_keys(&record).map(|key| key.map_or(0, |k| self.key_hash(k)));
        self.hashes.push_back(hashes);
        self.entries.push_back(Entry { at, record });
    }

    fn pop_oldest(&mut self) {
        self.hashes.pop_front();
        self.entries.pop_front();
    }
}

fn record_keys(record: &SpanRecord) -> [Option<&str>; KEYS] {
    [
        record.correlation_id(),
        record.task_uuid(),
        record.step_uuid(),
    ]
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
    pub fn new(
        config: &crate::config::BreakdownConfig,
        max_age: Duration,
        stages: Vec<String>,
        derived: Vec<DerivedRule>,
    ) -> SpanLog {
        SpanLog {
            inner: Mutex::default(),
            max_spans: config.max_spans,
            max_age,
            stages,
            derived,
            step_key: config.step_key.clone(),
            task_keys: [config.correlation_key.clone(), config.task_key.clone()],
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_spans > 0
    }

    /// Keeps the spans of one request (one lock per request).
    pub fn record(&self, records: Vec<SpanRecord>, now: Instant) {
        if records.is_empty() {
            return;
        }
        let mut log = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for record in records {
            log.push(record, now);
        }
        while log.entries.len() > self.max_spans
            || log
                .entries
                .front()
                .is_some_and(|e| now.saturating_duration_since(e.at) > self.max_age)
        {
            log.pop_oldest();
        }
    }

    /// The breakdown of the task with this correlation id or task uuid, if any span of it
    /// is still held.
    pub fn breakdown(&self, id: &str) -> Option<Breakdown> {
        let log = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let lookup = |key: &str| log.carrying(&BTreeSet::from([key]));
        // The id names a task (by correlation id or task uuid), not a step. A task's own
        // spans tie its correlation ids to its task uuids; step spans may carry a fresh
        // correlation id, so only task-level spans extend the set of correlation ids.
        let mut correlations: BTreeSet<&str> = BTreeSet::new();
        let mut tasks: BTreeSet<&str> = BTreeSet::new();
        let mut found: Vec<&SpanRecord> = Vec::new();
        let mut frontier = vec![id];
        while let Some(key) = frontier.pop() {
            for r in lookup(key) {
                let task_level = r.step_uuid().is_none();
                let by_correlation = task_level && r.correlation_id() == Some(key);
                if !(by_correlation || r.task_uuid() == Some(key)) {
                    continue;
                }
                found.push(r);
                if let Some(task) = r.task_uuid()
                    && tasks.insert(task)
                {
                    frontier.push(task);
                }
                if let Some(correlation) = r.correlation_id()
                    && task_level
                    && correlations.insert(correlation)
                {
                    frontier.push(correlation);
                }
            }
        }
        if found.is_empty() {
            return None;
        }
        let steps: BTreeSet<&str> = found.iter().filter_map(|r| r.step_uuid()).collect();
        found.extend(
            log.carrying(&steps)
                .into_iter()
                .filter(|r| r.step_uuid().is_some_and(|s| steps.contains(s))),
        );
        found.sort_by_key(|r| (r.span.start_unix_nano, r.span.span_id));
        found.dedup_by_key(|r| r.span.span_id);
        Some(self.assemble(&found, tasks))
    }

    fn timing(&self, r: &SpanRecord) -> StageTiming {
        StageTiming {
            stage: self.stages[r.stage].clone(),
            span_name: r.span_name().to_string(),
            service: r.service().to_string(),
            duration_ms: ms(r.span.end_unix_nano.saturating_sub(r.span.start_unix_nano)),
            start_unix_nano: r.span.start_unix_nano,
            trace_id: hex(&r.span.trace_id),
            span_id: hex(&r.span.span_id),
        }
    }

    /// Derived values for one group of spans (one step, or the whole task) whose key is `key`.
    fn derived_values(&self, spans: &[&SpanRecord], key: &str) -> BTreeMap<String, f64> {
        let mut values = BTreeMap::new();
        for rule in self.derived.iter().filter(|d| d.key == key) {
            let parts: Option<Vec<PartSpan>> = rule
                .parts
                .iter()
                .map(|(stage, name)| {
                    let mut matching = spans.iter().filter(|r| {
                        r.stage == *stage && name.as_deref().is_none_or(|n| n == r.span_name())
                    });
                    let first = matching.next()?.span;
                    // An envelope spans every span of the part; other operations use the first.
                    Some(match rule.operation {
                        Operation::Envelope => matching.fold(first, |acc, r| PartSpan {
                            start_unix_nano: acc.start_unix_nano.min(r.span.start_unix_nano),
                            end_unix_nano: acc.end_unix_nano.max(r.span.end_unix_nano),
                            ..acc
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

    fn assemble(&self, found: &[&SpanRecord], tasks: BTreeSet<&str>) -> Breakdown {
        let mut by_step: BTreeMap<&str, Vec<&SpanRecord>> = BTreeMap::new();
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
                    .find(|r| r.handler_language() != "unknown")
                    .or(spans.first());
                StepBreakdown {
                    step_uuid: step.to_string(),
                    step_name: spans.iter().find_map(|r| r.step_name()).map(str::to_string),
                    service: worker.map(|r| r.service().to_string()),
                    handler_language: worker.map(|r| r.handler_language().to_string()),
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
            task_uuids: tasks.into_iter().map(str::to_string).collect(),
            task_stages: task_level.iter().map(|r| self.timing(r)).collect(),
            steps,
            derived,
            total_ms: ms(end.saturating_sub(start)),
        }
    }
}

/// The breakdown as a table for people, like the design note's example.
pub fn render_table(b: &Breakdown) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "correlation_id {}   task_uuid {}   total {:.1} ms",
        if b.correlation_ids.is_empty() {
            "-".to_string()
        } else {
            b.correlation_ids.join(",")
        },
        if b.task_uuids.is_empty() {
            "-".to_string()
        } else {
            b.task_uuids.join(",")
        },
        b.total_ms
    );
    let row = |out: &mut String, indent: &str, t: &StageTiming| {
        let _ = writeln!(
            out,
            "{indent}{:<20} {:<34} {:<26} {:>9.1} ms",
            t.stage, t.span_name, t.service, t.duration_ms
        );
    };
    if !b.task_stages.is_empty() {
        let _ = writeln!(out, "\ntask");
        for t in &b.task_stages {
            row(&mut out, "  ", t);
        }
    }
    for s in &b.steps {
        let _ = writeln!(
            out,
            "\nstep {} ({})   {} {}",
            s.step_name.as_deref().unwrap_or("?"),
            s.step_uuid,
            s.service.as_deref().unwrap_or("?"),
            s.handler_language.as_deref().unwrap_or("?")
        );
        for t in &s.stages {
            row(&mut out, "  ", t);
        }
        for (name, v) in &s.derived {
            let _ = writeln!(
                out,
                "  {:<20} {:<61} {v:>9.1} ms",
                name.trim_end_matches("_ms"),
                "(derived)"
            );
        }
    }
    if !b.derived.is_empty() {
        let _ = writeln!(out);
        for (name, v) in &b.derived {
            let _ = writeln!(
                out,
                "{:<22} {:<61} {v:>9.1} ms",
                name.trim_end_matches("_ms"),
                "(derived)"
            );
        }
    }
    out
}

/// Fetches a breakdown from a running spanlens (`from` is its metrics address, such as
/// `http://127.0.0.1:9464`). Plain HTTP/1.1 over loopback or a trusted network.
pub fn fetch(from: &str, id: &str) -> Result<Breakdown, String> {
    use std::io::{Read, Write};
    let rest = from
        .strip_prefix("http://")
        .ok_or_else(|| format!("--from must be an http:// URL, got `{from}`"))?;
    let (authority, base) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let encoded: String = id
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect();
    let path = format!("/{}/api/v1/breakdown/{encoded}", base.trim_end_matches('/'));
    let path = path.replacen("//", "/", 1);
    let mut stream = std::net::TcpStream::connect(authority)
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("cannot read the response: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the response has no body")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err("chunked responses are not expected from spanlens".to_string());
    }
    match status {
        "200" => serde_json::from_str(body).map_err(|e| format!("unexpected breakdown JSON: {e}")),
        "404" => Err(format!("{id}: not found: {}", body.trim())),
        other => Err(format!("{from} answered HTTP {other}: {}", body.trim())),
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

    /// A task-level span of task `task` and a step span of its step, as one request.
    fn task(n: u8) -> Vec<SpanRecord> {
        let (correlation, task, step) = (format!("c{n}"), format!("t{n}"), format!("s{n}"));
        let names = ["create_task", "tasker-orchestration", "unknown"];
        let task_level = RecordKeys {
            correlation_id: Some(&correlation),
            task_uuid: Some(&task),
            ..RecordKeys::default()
        };
        let step_level = RecordKeys {
            task_uuid: Some(&task),
            step_uuid: Some(&step),
            ..task_level
        };
        vec![
            SpanRecord::new(0, span(n), names, task_level),
            SpanRecord::new(1, span(n + 100), ["step_claim", "w", "rust"], step_level),
        ]
    }

    #[test]
    fn the_log_holds_the_newest_spans_and_finds_them_by_any_key() {
        let config = BreakdownConfig {
            max_spans: 4,
            ..BreakdownConfig::default()
        };
        let stages = vec!["task_creation".to_string(), "step_claim".to_string()];
        let log = SpanLog::new(&config, Duration::from_secs(60), stages, Vec::new());
        let now = Instant::now();
        for n in 1..=3 {
            log.record(task(n), now);
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
        log.record(task(4), now + Duration::from_secs(61));
        assert_eq!(log.breakdown("c3"), None);
        assert!(log.breakdown("c4").is_some());
    }
}
