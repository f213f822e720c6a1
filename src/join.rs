//! The join window: derived durations need several spans that share a key attribute
//! (`step_uuid`, `correlation_id`), arriving in any order, in different requests, from
//! different services. A key waits here until all its parts have arrived, then yields one
//! value; a key that waits longer than `max_wait`, or is the oldest when the window is full,
//! is evicted and counted. Keys completed recently are remembered, so a late span of a
//! finished key is counted as late instead of opening a key that could never complete.

use crate::config::Operation;
use hashbrown::{HashMap, HashSet};
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One span's part of a join.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartSpan {
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// One span offered to a join: which derived metric, which key, which part, and its
/// values for the derived metric's labels (None where it has none).
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub derived: usize,
    pub key: &'a str,
    pub part: usize,
    pub span: PartSpan,
    pub labels: &'a [Option<&'a str>],
}

/// What a join needs to know about one derived metric.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    pub operation: Operation,
    pub parts: usize,
    pub labels: usize,
}

/// A finished join.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub seconds: f64,
    /// Label values, each from the first part (in part order) that had one.
    pub labels: Box<[Option<Box<str>>]>,
    /// The part that ended last.
    pub exemplar: PartSpan,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Offer {
    /// The key still misses parts.
    Waiting,
    Complete(Completed),
    /// The key was completed already.
    Late,
    /// The key already has this part (and the operation does not merge repeats).
    Repeated,
}

/// Why keys left the window without completing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Timeout,
    Capacity,
}

struct Pending {
    derived: usize,
    parts: Box<[Option<PartSpan>]>,
    /// Label values per part (parts × labels), so that labels come from the first part in
    /// part order that has them, whatever order the spans arrive in.
    labels: Box<[Option<Box<str>>]>,
    seq: u64,
}

/// Keys are known by a 64-bit hash of (derived metric, key text), as completed keys always
/// were: no key text is copied or hashed twice per span. Two keys that collide would be
/// joined as one: a new key meets one of the at most a few `max_pending` keys held with a
/// probability of about their number ÷ 2⁶⁴ (below 10⁻¹⁴ at the default 50,000).
#[derive(Default)]
struct Shard {
    pending: HashMap<u64, Pending>,
    /// Arrival order: (seq, arrival, key hash); entries of completed keys are skipped.
    order: VecDeque<(u64, Instant, u64)>,
    completed: HashSet<u64>,
    completed_before: HashSet<u64>,
    next_seq: u64,
}

/// The pending key an order entry stands for, if it is still waiting.
fn live(pending: &HashMap<u64, Pending>, seq: u64, hash: u64) -> Option<&Pending> {
    pending.get(&hash).filter(|p| p.seq == seq)
}

pub struct JoinWindow {
    specs: Vec<JoinSpec>,
    shards: Box<[Mutex<Shard>]>,
    max_wait: Duration,
    per_shard: usize,
    hasher: hashbrown::DefaultHashBuilder,
}

const SHARDS: usize = 16;

impl JoinWindow {
    pub fn new(specs: Vec<JoinSpec>, max_pending: usize, max_wait: Duration) -> JoinWindow {
        JoinWindow {
            specs,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_wait,
            per_shard: max_pending.div_ceil(SHARDS).max(1),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(hash >> 59) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Offers one span. `evicted` is told of keys evicted to make room or for waiting too
    /// long.
    pub fn offer(
        &self,
        arrival: Arrival,
        now: Instant,
        evicted: &mut impl FnMut(usize, Eviction),
    ) -> Offer {
        let Arrival {
            derived,
            key,
            part,
            span,
            labels,
        } = arrival;
        let spec = &self.specs[derived];
        let hash = self.hasher.hash_one((derived, key));
        let mut shard = self.shard(hash);
        self.expire(&mut shard, now, evicted);
        // A waiting key is not completed: the completed sets are only asked about new keys.
        if !shard.pending.contains_key(&hash) {
            if shard.completed.contains(&hash) || shard.completed_before.contains(&hash) {
                return Offer::Late;
            }
            if shard.pending.len() >= self.per_shard {
                evict_oldest(&mut shard, evicted);
            }
            let seq = shard.next_seq;
            shard.next_seq += 1;
            shard.order.push_back((seq, now, hash));
            shard.pending.insert(
                hash,
                Pending {
                    derived,
                    parts: vec![None; spec.parts].into_boxed_slice(),
                    labels: vec![None; spec.parts * spec.labels].into_boxed_slice(),
                    seq,
                },
            );
            if shard.order.len() > 2 * self.per_shard + 64 {
                compact(&mut shard);
            }
        }
        let pending = shard.pending.get_mut(&hash).expect("inserted above");
        match (&mut pending.parts[part], spec.operation) {
            (slot @ None, _) => *slot = Some(span),
            (Some(seen), Operation::Envelope) => {
                seen.start_unix_nano = seen.start_unix_nano.min(span.start_unix_nano);
                if span.end_unix_nano > seen.end_unix_nano {
                    seen.end_unix_nano = span.end_unix_nano;
                    seen.trace_id = span.trace_id;
                    seen.span_id = span.span_id;
                }
            }
            (Some(_), _) => return Offer::Repeated,
        }
        let own = &mut pending.labels[part * spec.labels..(part + 1) * spec.labels];
        for (slot, value) in own.iter_mut().zip(labels) {
            if slot.is_none() {
                *slot = value.map(Box::from);
            }
        }
        if pending.parts.iter().any(Option::is_none) {
            return Offer::Waiting;
        }
        let pending = shard.pending.remove(&hash).expect("present");
        shard.completed.insert(hash);
        if shard.completed.len() >= self.per_shard {
            shard.completed_before = std::mem::take(&mut shard.completed);
        }
        let parts: Vec<PartSpan> = pending.parts.iter().map(|p| p.expect("complete")).collect();
        let labels = (0..spec.labels)
            .map(|l| (0..spec.parts).find_map(|p| pending.labels[p * spec.labels + l].clone()))
            .collect();
        Offer::Complete(Completed {
            seconds: value(spec.operation, &parts),
            labels,
            exemplar: *parts
                .iter()
                .max_by_key(|p| p.end_unix_nano)
                .expect("at least one part"),
        })
    }

    /// Evicts every key that has waited longer than `max_wait`.
    pub fn sweep(&self, now: Instant, evicted: &mut impl FnMut(usize, Eviction)) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            self.expire(&mut shard, now, evicted);
        }
    }

    /// Keys waiting now, per derived metric.
    pub fn pending(&self) -> Vec<usize> {
        let mut counts = vec![0; self.specs.len()];
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for pending in shard.pending.values() {
                counts[pending.derived] += 1;
            }
        }
        counts
    }

    fn expire(&self, shard: &mut Shard, now: Instant, evicted: &mut impl FnMut(usize, Eviction)) {
        while let Some(&(seq, since, hash)) = shard.order.front() {
            let live = live(&shard.pending, seq, hash).map(|p| p.derived);
            if live.is_some() && now.saturating_duration_since(since) < self.max_wait {
                break;
            }
            shard.order.pop_front();
            if let Some(derived) = live {
                shard.pending.remove(&hash);
                evicted(derived, Eviction::Timeout);
            }
        }
    }
}

fn evict_oldest(shard: &mut Shard, evicted: &mut impl FnMut(usize, Eviction)) {
    while let Some((seq, _, hash)) = shard.order.pop_front() {
        if let Some(derived) = live(&shard.pending, seq, hash).map(|p| p.derived) {
            shard.pending.remove(&hash);
            evicted(derived, Eviction::Capacity);
            return;
        }
    }
}

/// Drops order entries whose keys completed, keeping the rest in arrival order.
fn compact(shard: &mut Shard) {
    let pending = &shard.pending;
    shard
        .order
        .retain(|&(seq, _, hash)| live(pending, seq, hash).is_some());
}

fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

fn duration(p: &PartSpan) -> u64 {
    p.end_unix_nano.saturating_sub(p.start_unix_nano)
}

/// The derived value; differences and gaps below zero (clock skew between hosts) are 0.
pub fn value(operation: Operation, parts: &[PartSpan]) -> f64 {
    seconds(value_nanos(operation, parts))
}

/// The derived value in nanoseconds.
pub fn value_nanos(operation: Operation, parts: &[PartSpan]) -> u64 {
    match operation {
        Operation::Sum => parts.iter().map(duration).sum(),
        Operation::Difference => duration(&parts[0]).saturating_sub(duration(&parts[1])),
        Operation::Gap => parts[1]
            .start_unix_nano
            .saturating_sub(parts[0].end_unix_nano),
        Operation::Envelope => {
            let start = parts.iter().map(|p| p.start_unix_nano).min().unwrap_or(0);
            let end = parts.iter().map(|p| p.end_unix_nano).max().unwrap_or(0);
            end.saturating_sub(start)
        }
    }
}

#[cfg(test)]
mod tests;
