//! How the breakdown log keeps spans: one fixed-size record per span, with no allocation of
//! its own when its keys are canonical UUIDs. Texts that repeat (span names, services,
//! languages, step names) are interned once for the whole log and counted by the records
//! that use them; keys in the canonical UUID form (tasker's correlation ids, task and step
//! uuids) are kept as their 16 bytes, other keys interned like names (each distinct one an
//! allocation, shared by the records naming it). A record is 120 bytes, where it was about
//! 110 bytes plus its texts in an allocation of their own (about 350 bytes a span with the
//! queues' spare room).

use super::SpanRecord;
use crate::collections::interned::Interner;
use crate::join::PartSpan;
use std::collections::{BTreeSet, VecDeque};

/// Correlation id, task uuid and step uuid.
pub(crate) const KEYS: usize = 3;

/// A span as the log holds it.
struct Kept {
    /// Milliseconds from the log's origin to its arrival.
    at_ms: u64,
    span: PartSpan,
    /// Span name, service, handler language, step name ([`ABSENT`] for none).
    names: [u32; 4],
    keys: [Key; KEYS],
    stage: u16,
}

const ABSENT: u32 = u32::MAX;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Absent,
    Uuid([u8; 16]),
    /// An interned text's id, as bytes: a key aligned to 1 is 17 bytes, not 20.
    Text([u8; 4]),
}

/// A kept span with its texts, as a breakdown reads it.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub(crate) stage: usize,
    pub(crate) span: PartSpan,
    pub(crate) span_name: String,
    pub(crate) service: String,
    pub(crate) handler_language: String,
    pub(crate) step_name: Option<String>,
    /// Correlation id, task uuid, step uuid.
    pub(crate) keys: [Option<String>; KEYS],
}

/// A recent task or step, from the first start to the last end of its spans held.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Extent {
    /// Its correlation id (a task) or step uuid (a step).
    pub(crate) key: String,
    /// The id of its task page: the correlation id of a task, the task uuid of a step.
    pub(crate) link: String,
    pub(crate) step_name: Option<String>,
    pub(crate) service: Option<String>,
    pub(crate) handler_language: Option<String>,
    pub(crate) start_unix_nano: u64,
    pub(crate) end_unix_nano: u64,
}

/// The records in arrival order. Recording a span touches only the queue's end and the
/// texts it names: no index to update (and miss the cache on) per key. A breakdown, which is
/// rare, reads every record's keys instead (`pipeline/breakdown_lookup` measures it). A
/// copy of each key's hash beside the records would make that scan faster, but for 12 bytes
/// a span held all the time and three hashes per span recorded, for a rare question.
#[derive(Default)]
pub(crate) struct Log {
    kept: VecDeque<Kept>,
    texts: Interner,
}

impl Log {
    /// A log that holds up to `places` records without growing its queue (which doubles).
    pub(crate) fn with_capacity(places: usize) -> Log {
        Log {
            kept: VecDeque::with_capacity(places),
            ..Log::default()
        }
    }

    /// The most a log of `places` records holds: its queue, allocated up front and never
    /// grown (the oldest record goes before a new one comes past `places`), and texts of at most
    /// `text_len` bytes, each record naming up to four (span name, service, language, step
    /// name) and three keys, every one of them distinct in the worst case; and a lookup (one
    /// at a time) finding every record, each with its texts copied.
    pub(crate) fn bytes_bound(places: usize, text_len: usize) -> usize {
        use crate::collections::sizes::{exact, grown, text};
        use std::mem::size_of;
        let texts = places * (4 + KEYS);
        exact(places, size_of::<Kept>())
            + Interner::bytes_bound(texts, text_len)
            + grown(places, size_of::<Found>())
            + texts * text(text_len)
    }

    pub(crate) fn len(&self) -> usize {
        self.kept.len()
    }

    /// Arrival, in milliseconds from the log's origin, of the oldest record.
    pub(crate) fn oldest_ms(&self) -> Option<u64> {
        self.kept.front().map(|k| k.at_ms)
    }

    pub(crate) fn push(&mut self, record: &SpanRecord, at_ms: u64) {
        let stage = u16::try_from(record.stage).expect("fewer than 65,536 stages");
        let keys = record.keys.as_array();
        let [span_name, service, language] = record.names;
        let texts = &mut self.texts;
        let names = [
            texts.intern_in(span_name, 0),
            texts.intern_in(service, 1),
            texts.intern_in(language, 2),
            (record.keys.step_name).map_or(ABSENT, |n| texts.intern_in(n, 3)),
        ];
        let keys = keys.map(|key| match key {
            None => Key::Absent,
            Some(k) => {
                uuid_bytes(k).map_or_else(|| Key::Text(texts.intern(k).to_le_bytes()), Key::Uuid)
            }
        });
        self.kept.push_back(Kept {
            at_ms,
            span: record.span,
            names,
            keys,
            stage,
        });
    }

    pub(crate) fn pop_oldest(&mut self) {
        let Some(kept) = self.kept.pop_front() else {
            return;
        };
        for id in kept.names.into_iter().filter(|&id| id != ABSENT) {
            self.texts.release(id);
        }
        for key in kept.keys {
            if let Key::Text(id) = key {
                self.texts.release(u32::from_le_bytes(id));
            }
        }
    }

    /// Records carrying any of `keys`, oldest first.
    pub(crate) fn carrying(&self, keys: &BTreeSet<&str>) -> Vec<Found> {
        // Each key as records hold it; a text that is not held is carried by no record.
        let wanted: Vec<Key> = keys
            .iter()
            .filter_map(|k| match uuid_bytes(k) {
                Some(bytes) => Some(Key::Uuid(bytes)),
                None => self.texts.find(k).map(|id| Key::Text(id.to_le_bytes())),
            })
            .collect();
        self.kept
            .iter()
            .filter(|kept| kept.keys.iter().any(|key| wanted.contains(key)))
            .map(|kept| self.found(kept))
            .collect()
    }

    /// The `n` longest tasks (their own spans, by correlation id) and steps (their spans, by
    /// step uuid) among the records held, each from its first start to its last end, longest
    /// first. One pass over the records, with a small table per task and step.
    pub(crate) fn longest(&self, n: usize) -> [Vec<Extent>; 2] {
        #[derive(Clone, Copy)]
        struct Reach {
            start: u64,
            end: u64,
            /// The task key it links to (correlation id of a task, task uuid of a step).
            link: Key,
            /// A step's name, worker service and language (from a span whose language is
            /// known, else its first).
            names: [u32; 3],
        }
        let unknown = self.texts.find("unknown");
        let mut tasks: hashbrown::HashMap<Key, Reach> = hashbrown::HashMap::new();
        let mut steps: hashbrown::HashMap<Key, Reach> = hashbrown::HashMap::new();
        for kept in &self.kept {
            let [correlation, task, step] = kept.keys;
            let [_, service, language, step_name] = kept.names;
            let (table, key, link) = match step {
                Key::Absent if correlation != Key::Absent => (&mut tasks, correlation, correlation),
                Key::Absent => continue,
                step => (&mut steps, step, task),
            };
            let names = [step_name, service, language];
            let reach = table.entry(key).or_insert(Reach {
                start: kept.span.start_unix_nano,
                end: kept.span.end_unix_nano,
                link,
                names,
            });
            reach.start = reach.start.min(kept.span.start_unix_nano);
            reach.end = reach.end.max(kept.span.end_unix_nano);
            if reach.link == Key::Absent {
                reach.link = link;
            }
            if reach.names[0] == ABSENT {
                reach.names[0] = step_name;
            }
            if Some(reach.names[2]) == unknown && Some(language) != unknown {
                reach.names[1..].copy_from_slice(&names[1..]);
            }
        }
        [tasks, steps].map(|table| {
            let mut reaches: Vec<(Key, Reach)> = table
                .into_iter()
                .filter(|(_, r)| r.link != Key::Absent)
                .collect();
            reaches.sort_by_key(|(_, r)| std::cmp::Reverse(r.end.saturating_sub(r.start)));
            reaches.truncate(n);
            let text = |id: u32| (id != ABSENT).then(|| self.texts.get(id).to_string());
            reaches
                .into_iter()
                .map(|(key, r)| Extent {
                    key: self.key_text(key).unwrap_or_default(),
                    link: self.key_text(r.link).unwrap_or_default(),
                    step_name: text(r.names[0]),
                    service: text(r.names[1]),
                    handler_language: text(r.names[2]),
                    start_unix_nano: r.start,
                    end_unix_nano: r.end,
                })
                .collect()
        })
    }

    fn key_text(&self, key: Key) -> Option<String> {
        match key {
            Key::Absent => None,
            Key::Uuid(bytes) => Some(uuid_text(&bytes)),
            Key::Text(id) => Some(self.texts.get(u32::from_le_bytes(id)).to_string()),
        }
    }

    fn found(&self, kept: &Kept) -> Found {
        let text = |id: u32| (id != ABSENT).then(|| self.texts.get(id).to_string());
        let [span_name, service, language, step_name] = kept.names.map(text);
        Found {
            stage: usize::from(kept.stage),
            span: kept.span,
            span_name: span_name.unwrap_or_default(),
            service: service.unwrap_or_default(),
            handler_language: language.unwrap_or_default(),
            step_name,
            keys: kept.keys.map(|key| self.key_text(key)),
        }
    }
}

/// The runs of hex digits in the canonical text form of a UUID (8-4-4-4-12).
const DIGIT_RUNS: [std::ops::Range<usize>; 5] = [0..8, 9..13, 14..18, 19..23, 24..36];

/// The 16 bytes of a UUID written in its canonical form (lowercase hex, 8-4-4-4-12): only
/// that form, so that [`uuid_text`] gives back exactly the text that came in. Runs for
/// every key of every kept span: the digits are checked and converted without a branch
/// or a table lookup per digit, so the compiler can do them 16 or 32 at a time.
fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let text: &[u8; 36] = text.as_bytes().try_into().ok()?;
    let mut digits = [0u8; 32];
    let mut at = 0;
    for run in DIGIT_RUNS {
        if run.start > 0 && text[run.start - 1] != b'-' {
            return None;
        }
        digits[at..at + run.len()].copy_from_slice(&text[run.clone()]);
        at += run.len();
    }
    let mut invalid = 0u8;
    let mut nibbles = [0u8; 32];
    for (nibble, &c) in nibbles.iter_mut().zip(&digits) {
        let digit = c.wrapping_sub(b'0') < 10;
        let letter = c.wrapping_sub(b'a') < 6;
        invalid |= u8::from(!(digit | letter));
        // '0'..'9' → 0..9; 'a'..'f' (bit 6 set) → 1..6 + 9.
        *nibble = (c & 0x0F) + 9 * (c >> 6);
    }
    let mut bytes = [0u8; 16];
    for (byte, pair) in bytes.iter_mut().zip(nibbles.chunks_exact(2)) {
        *byte = (pair[0] << 4) | pair[1];
    }
    (invalid == 0).then_some(bytes)
}

fn uuid_text(bytes: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push(char::from(HEX[usize::from(b >> 4)]));
        text.push(char::from(HEX[usize::from(b & 15)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_uuids_are_kept_as_bytes_and_they_read_back_unchanged() {
        let canonical = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let bytes = uuid_bytes(canonical).expect("canonical");
        assert_eq!(bytes[0], 0x01);
        assert_eq!(bytes[15], 0x5b);
        assert_eq!(uuid_text(&bytes), canonical);
        for other in [
            "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B",
            "0190a1b2c3d47e5f8a9b0c1d2e3f4a5b",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5g",
            "0190a1b2-c3d4-7e5f+8a9b-0c1d2e3f4a5b",
            "{190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "task-1",
            "",
        ] {
            assert_eq!(uuid_bytes(other), None, "{other}");
        }
    }

    #[test]
    fn a_kept_span_reads_back_as_it_came_and_its_texts_go_with_it() {
        let span = PartSpan {
            start_unix_nano: 1,
            end_unix_nano: 2,
            trace_id: [7; 16],
            span_id: [8; 8],
        };
        let uuid = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let records: Vec<SpanRecord> = (0..3)
            .map(|i| SpanRecord {
                stage: i,
                span,
                names: ["step_claim", "tasker-worker", ["rust", "ruby", "rust"][i]],
                keys: super::super::RecordKeys {
                    correlation_id: Some(
                        ["corr-1", "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B", uuid][i],
                    ),
                    task_uuid: Some(uuid),
                    step_uuid: (i > 0).then_some("step-2"),
                    step_name: (i == 2).then_some("linear_step_1"),
                },
            })
            .collect();
        let mut log = Log::default();
        for (i, record) in records.iter().enumerate() {
            log.push(record, i as u64);
        }
        for (i, record) in records.iter().enumerate() {
            let found = log.carrying(&BTreeSet::from([record.keys.correlation_id.unwrap()]));
            let found = found
                .iter()
                .find(|f| f.stage == i)
                .expect("found by its key");
            assert_eq!(found.span, span);
            assert_eq!(
                [&found.span_name, &found.service, &found.handler_language],
                record.names
            );
            assert_eq!(found.step_name.as_deref(), record.keys.step_name);
            assert_eq!(
                found.keys.each_ref().map(|k| k.as_deref()),
                record.keys.as_array()
            );
        }
        assert_eq!(log.carrying(&BTreeSet::from(["step-2"])).len(), 2);
        // Uppercase is another key, not the canonical one read back.
        assert_eq!(log.carrying(&BTreeSet::from([uuid])).len(), 3);
        // Texts the log holds as names only, or not at all, are carried by no record.
        for name in ["linear_step_1", "tasker-worker", "corr-2"] {
            assert!(log.carrying(&BTreeSet::from([name])).is_empty(), "{name}");
        }
        assert_eq!(log.oldest_ms(), Some(0));
        while log.len() > 0 {
            log.pop_oldest();
        }
        assert_eq!(log.texts.in_use(), 0, "every text released");
        assert_eq!(std::mem::size_of::<Kept>(), 120);
    }
}
