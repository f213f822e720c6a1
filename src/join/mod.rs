//! The join window: derived durations need several spans that share a key attribute
//! (`step_uuid`, `correlation_id`), arriving in any order, in different requests, from
//! different services. A key waits here until all its parts have arrived, then yields one
//! value; a key that waits longer than `max_wait`, or is the oldest when the window is full,
//! is evicted and counted. Keys completed recently are remembered, so a late span of a
//! finished key is counted as late instead of opening a key that could never complete.

pub mod breakdown;

use crate::collections::interned::Interner;
use crate::collections::recent::RecentHashes;
use crate::collections::shards::for_each_shard;
use crate::config::Operation;
use crate::config::limits::MAX_JOIN_WAIT;
use hashbrown::HashTable;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One span's part of a join. A span offered to a join always has a start time (spans
/// without one are refused), so the window marks a part that has not arrived with a start
/// of 0 ([`PartSpan::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PartSpan {
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl PartSpan {
    pub(crate) fn times(&self) -> Times {
        Times {
            start_unix_nano: self.start_unix_nano,
            end_unix_nano: self.end_unix_nano,
        }
    }

    /// The span as a sampled part, standing for `count` operations.
    fn sample(&self, count: f64) -> Sample {
        let (_, random) = self.trace_id.split_at(8);
        Sample {
            count,
            trace: u64::from_le_bytes(random.try_into().expect("8 bytes")),
        }
    }
}

/// When a part started and ended: all a derived value needs of it, but for sampling.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Times {
    pub(crate) start_unix_nano: u64,
    pub(crate) end_unix_nano: u64,
}

/// A part whose span stands for other than one operation (its adjusted count), and its
/// trace: the last 8 bytes of the trace id (the random ones), as parts of one trace share
/// one sampling decision.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    count: f64,
    trace: u64,
}

/// One span offered to a join: which derived metric, which key, which part, and its
/// values for the derived metric's labels (None where it has none).
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub derived: usize,
    pub key: &'a str,
    pub part: usize,
    pub span: PartSpan,
    /// The span's adjusted count.
    pub count: f64,
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
    pub(crate) seconds: f64,
    /// How many operations the value stands for: see [`adjusted_count`].
    pub(crate) count: f64,
    /// Label values, each from the first part (in part order) that had one.
    pub(crate) labels: Box<[Option<Box<str>>]>,
    /// The part that ended last.
    pub(crate) exemplar: PartSpan,
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
    Timeout = 0,
    Capacity = 1,
}

impl Eviction {
    /// Every reason, each at its index (`why as usize`).
    pub(crate) const ALL: [Eviction; 2] = [Eviction::Timeout, Eviction::Capacity];

    /// The `reason` label of the eviction counter.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Eviction::Timeout => "timeout",
            Eviction::Capacity => "capacity",
        }
    }
}

/// A waiting key: 88 bytes, 96 with its slot's hash (a part's ids are kept only while it
/// is the one that ended last, the completed value's exemplar).
struct Pending {
    /// By part, its times (a start of 0 while it has not arrived); per label, its value and
    /// the part that gave it: labels come from the first part in part order that has them,
    /// whatever order the spans arrive in.
    values: Values,
    /// Trace and span id of `exemplar_part`, the part that ended last (the last in part
    /// order of those that ended at the same time); [`NO_PART`] before any arrived.
    exemplar: SpanIds,
    exemplar_part: u8,
    derived: u16,
    /// Milliseconds from the window's origin to the key's first part, modulo 2³² (see
    /// [`JoinWindow::millis_since_origin`]); it fills what was padding.
    opened: u32,
    /// By part, the [`Sample`] of a part whose span was sampled: allocated when the first
    /// such part arrives, so that unsampled traffic pays a (thin) pointer a key and no more.
    samples: Option<Box<Samples>>,
}

/// The samples of a key's parts, by part, behind one thin pointer.
struct Samples(Box<[Option<Sample>]>);

/// No part: of a label not given yet, or the exemplar before any part arrived. Every part
/// is below it, so the first part to give a label always takes it.
const NO_PART: u8 = u8::MAX;

#[derive(Clone, Copy, Default)]
struct SpanIds {
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

impl Pending {
    /// Keeps part `part`'s sample, unless its span stands for one operation.
    fn sampled(&mut self, part: usize, sample: Sample) {
        if sample.count != 1.0 {
            let parts = self.values.parts().len();
            let samples = self
                .samples
                .get_or_insert_with(|| Box::new(Samples(vec![None; parts].into_boxed_slice())));
            samples.0[part] = Some(sample);
        }
    }

    /// Keeps `span`'s ids if its part, which it has just given or extended to `span`'s end,
    /// now ends last.
    fn mark_exemplar(&mut self, part: u8, span: &PartSpan) {
        let ends_last = match self.exemplar_part {
            NO_PART => true,
            current if current == part => true,
            current => {
                let end = self.values.parts()[usize::from(current)].end_unix_nano;
                (span.end_unix_nano, part) > (end, current)
            }
        };
        if ends_last {
            self.exemplar = SpanIds {
                trace_id: span.trace_id,
                span_id: span.span_id,
            };
            self.exemplar_part = part;
        }
    }
}

/// A key's parts and labels: up to two of each in place, more in allocations of their own.
/// Every derived metric of the default profile has two parts and at most two labels, so an
/// offer reads its key's slot and nothing behind a pointer: in a full window each of those
/// was a cache miss, and each key an allocation and a free. One enum for both, 48 bytes:
/// one of its own for each would take 64.
enum Values {
    Inline {
        parts: [Times; 2],
        labels: [LabelValue; 2],
        /// How many of `parts` and of `labels` the key has.
        lens: [u8; 2],
    },
    Boxed(Box<[Times]>, Box<[LabelValue]>),
}

impl Values {
    fn new(parts: usize, labels: usize) -> Values {
        match (u8::try_from(parts), u8::try_from(labels)) {
            (Ok(p), Ok(l)) if p <= 2 && l <= 2 => Values::Inline {
                parts: [Times::default(); 2],
                labels: [LabelValue::default(); 2],
                lens: [p, l],
            },
            _ => Values::Boxed(
                vec![Times::default(); parts].into_boxed_slice(),
                vec![LabelValue::default(); labels].into_boxed_slice(),
            ),
        }
    }

    /// The key's parts and its labels.
    fn get(&self) -> (&[Times], &[LabelValue]) {
        match self {
            Values::Inline {
                parts,
                labels,
                lens: [p, l],
            } => (&parts[..usize::from(*p)], &labels[..usize::from(*l)]),
            Values::Boxed(parts, labels) => (parts, labels),
        }
    }

    fn get_mut(&mut self) -> (&mut [Times], &mut [LabelValue]) {
        match self {
            Values::Inline {
                parts,
                labels,
                lens: [p, l],
            } => (
                &mut parts[..usize::from(*p)],
                &mut labels[..usize::from(*l)],
            ),
            Values::Boxed(parts, labels) => (parts, labels),
        }
    }

    fn parts(&self) -> &[Times] {
        self.get().0
    }

    fn labels(&self) -> &[LabelValue] {
        self.get().1
    }
}

/// A label value, interned in the key's shard: waiting keys name few distinct values
/// (services, languages), and a key that never completes allocates none of its own. Its
/// text's id is kept as bytes: aligned to 1, two labels take 10 bytes, not 16.
#[derive(Clone, Copy)]
struct LabelValue {
    text: [u8; 4],
    /// The part that gave it, [`NO_PART`] while none has.
    part: u8,
}

impl Default for LabelValue {
    fn default() -> LabelValue {
        LabelValue {
            text: [0; 4],
            part: NO_PART,
        }
    }
}

impl LabelValue {
    fn new(text: u32, part: u8) -> LabelValue {
        LabelValue {
            text: text.to_le_bytes(),
            part,
        }
    }

    fn given(&self) -> Option<u32> {
        (self.part != NO_PART).then_some(u32::from_le_bytes(self.text))
    }
}

/// How the join index hashes a key: by the low half of its hash, in both halves, so that
/// the table's bucket (low bits) and its one-byte tag (top bits) both come from bits that
/// differ between the keys of one shard. The top bits pick the shard ([`shard_of`]): as the
/// tag, they left it 8 values instead of 128, and a probe read a slot for one entry in 8.
fn index_hash(hash: u64) -> u64 {
    let low = hash & u64::from(u32::MAX);
    low << 32 | low
}

/// A key in arrival order; `pending` is None once the key completed or left (a hole, dropped
/// when it reaches the front or when the queue is compacted).
struct Slot {
    hash: u64,
    pending: Option<Pending>,
}

/// Keys are known by a 64-bit hash of (derived metric, key text), as completed keys always
/// were: no key text is copied or hashed twice per span. Two keys that collide would be
/// joined as one: a new key meets one of the at most a few `max_pending` keys held with a
/// probability of about their number ÷ 2⁶⁴ (below 10⁻¹⁴ at the default 50,000).
///
/// A lookup in `index` tells whether a span's key waits (and where); a key that does not
/// wait completed recently if `completed` remembers it, or else is new. The oldest waiting
/// key is found at the front of `slots` without a lookup.
struct Shard {
    /// The position of each waiting key's slot, found by the hash the slot holds: 5 bytes
    /// an entry where a map from hash to position would take 17. The table hashes a key by the
    /// low half of its hash ([`index_hash`]).
    index: HashTable<u32>,
    slots: VecDeque<Slot>,
    /// Position of `slots[0]`, counted from the shard's first slot modulo 2³² (a queue
    /// holds far fewer slots).
    base: u32,
    /// Slots that are not holes.
    waiting: usize,
    /// Recently completed keys, about `2 × per_shard` of them: a fixed table, so that
    /// remembering them neither grows `index` nor costs more than 8 bytes a key.
    completed: RecentHashes,
    /// The label values of the waiting keys (a field per label position).
    texts: Interner,
}

impl Shard {
    /// A shard with room for `per_shard` waiting keys, allocated up front (it is touched,
    /// and resident, only as keys arrive): growing by doubling, the queue and the index each
    /// left their smaller allocations behind, resident until the allocator returned them.
    fn new(per_shard: usize) -> Shard {
        Shard {
            index: HashTable::with_capacity(per_shard),
            slots: VecDeque::with_capacity(queue_places(per_shard)),
            base: 0,
            waiting: 0,
            completed: RecentHashes::new(2 * per_shard),
            texts: Interner::default(),
        }
    }

    /// Where the slot of the waiting key of `hash` is in `slots`.
    fn find(&self, hash: u64) -> Option<usize> {
        let Shard { index, slots, .. } = self;
        let at = |position: u32| position.wrapping_sub(self.base) as usize;
        index
            .find(index_hash(hash), |&p| slots[at(p)].hash == hash)
            .map(|&p| at(p))
    }

    /// Forgets the waiting key in `slots[at]`.
    fn unindex(&mut self, at: usize) {
        let position = self.base.wrapping_add(at as u32);
        if let Ok(entry) = self
            .index
            .find_entry(index_hash(self.slots[at].hash), |&p| p == position)
        {
            entry.remove();
        }
    }

    /// Indexes the waiting key in `slots[at]`.
    fn reindex(&mut self, at: usize) {
        let Shard {
            index, slots, base, ..
        } = self;
        let position = base.wrapping_add(at as u32);
        let rehash = |&p: &u32| index_hash(slots[p.wrapping_sub(*base) as usize].hash);
        index.insert_unique(index_hash(slots[at].hash), position, rehash);
    }

    fn pop_front(&mut self) -> Option<Slot> {
        if self.slots.front()?.pending.is_some() {
            self.unindex(0);
        }
        let slot = self.slots.pop_front()?;
        self.base = self.base.wrapping_add(1);
        if let Some(pending) = &slot.pending {
            self.waiting -= 1;
            self.release_labels(pending);
        }
        Some(slot)
    }

    fn release_labels(&mut self, pending: &Pending) {
        for text in pending.values.labels().iter().filter_map(LabelValue::given) {
            self.texts.release(text);
        }
    }

    /// Drops the holes, keeping the waiting keys in arrival order.
    fn compact(&mut self) {
        self.slots.retain(|s| s.pending.is_some());
        self.index.clear();
        for at in 0..self.slots.len() {
            self.reindex(at);
        }
    }
}

pub struct JoinWindow {
    specs: Vec<JoinSpec>,
    shards: Box<[Mutex<Shard>]>,
    /// In milliseconds, as keys' opening times are kept; at most 2³¹ (24.8 days), so that
    /// a key's age modulo 2³² is its age.
    max_wait: u32,
    per_shard: usize,
    hasher: hashbrown::DefaultHashBuilder,
    /// Keys' opening times are kept as milliseconds from here.
    origin: Instant,
}

const SHARDS: usize = 16;

/// Slots a shard's queue holds at most: its waiting keys and holes up to a quarter of them
/// (and 64), past which it is compacted, for at most about five re-placed keys per
/// completed one. (Holes up to as many as the keys would take a third of the window's memory.)
fn queue_places(per_shard: usize) -> usize {
    per_shard + per_shard / 4 + 64
}

fn shard_of(hash: u64) -> usize {
    (hash >> 59) as usize % SHARDS
}

impl JoinWindow {
    /// # Panics
    /// With more than 65,536 derived metrics or a derived metric of more than 254 parts
    /// (configuration validation allows far fewer).
    pub fn new(specs: Vec<JoinSpec>, max_pending: usize, max_wait: Duration) -> JoinWindow {
        assert!(specs.len() <= 1 << 16, "at most 65,536 derived metrics");
        assert!(
            specs.iter().all(|s| s.parts < usize::from(NO_PART)),
            "fewer than 255 parts"
        );
        let per_shard = max_pending.div_ceil(SHARDS).max(1);
        JoinWindow {
            specs,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard::new(per_shard)))
                .collect(),
            max_wait: max_wait.min(MAX_JOIN_WAIT).as_millis() as u32,
            per_shard,
            hasher: hashbrown::DefaultHashBuilder::default(),
            origin: Instant::now(),
        }
    }

    /// The most the window holds, full: in each shard its index and queue (allocated up
    /// front), the completed keys' table, what a key keeps behind pointers (parts and labels
    /// past two, sampled parts) and the interned label values of its keys, at most
    /// `max_label_len` bytes each. Key texts are never kept (keys are known by their hash).
    pub(crate) fn memory_bound(&self, max_label_len: usize) -> usize {
        use crate::collections::sizes::{allocation, exact, hash_table};
        use std::mem::size_of;
        let per_key = (self.specs.iter())
            .map(|spec| {
                let boxed = match Values::new(spec.parts, spec.labels) {
                    Values::Inline { .. } => 0,
                    Values::Boxed(..) => {
                        exact(spec.parts, size_of::<Times>())
                            + exact(spec.labels, size_of::<LabelValue>())
                    }
                };
                boxed
                    + allocation(size_of::<Samples>())
                    + exact(spec.parts, size_of::<Option<Sample>>())
            })
            .max()
            .unwrap_or(0);
        let labels = self.specs.iter().map(|s| s.labels).max().unwrap_or(0);
        let per_shard = hash_table(self.per_shard, size_of::<u32>())
            + exact(queue_places(self.per_shard), size_of::<Slot>())
            + self.per_shard * per_key
            + Interner::bytes_bound(self.per_shard * labels, max_label_len);
        let completed: usize = (self.shards.iter())
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .completed
                    .bytes()
            })
            .sum();
        SHARDS * per_shard + completed
    }

    /// Milliseconds from the origin to `now`, modulo 2³² (49.7 days). Ages are differences
    /// modulo 2³² too, right while a key is younger than 49.7 days: keys past `max_wait`
    /// (24.8 days at most) are evicted at every scrape and at every offer to their shard.
    fn millis_since_origin(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.origin).as_millis() as u32
    }

    /// Offers spans; answers the offers that are not [`Offer::Waiting`] (most are), each
    /// with its arrival's index, in arrival order. `evicted` is told of keys evicted to make
    /// room or for waiting too long. The offers run shard by shard, one lock each and in
    /// arrival order within a shard (spans of one key always meet in one shard), so that the
    /// cache misses of a request's offers overlap.
    pub fn offer_all(
        &self,
        arrivals: &[Arrival],
        now: Instant,
        evicted: &mut impl FnMut(usize, Eviction),
    ) -> Vec<(usize, Offer)> {
        let hashes: Vec<u64> = arrivals
            .iter()
            .map(|a| self.hasher.hash_one((a.derived, a.key)))
            .collect();
        let mut answers = Vec::new();
        let shards: Vec<usize> = hashes.iter().map(|&h| shard_of(h)).collect();
        let now = self.millis_since_origin(now);
        for_each_shard(&shards, |s, items| {
            let mut shard = self.shards[s].lock().unwrap_or_else(|p| p.into_inner());
            self.expire(&mut shard, now, evicted);
            // A new key's offer looks it up in `completed` (RecentHashes::touch).
            for &i in items {
                shard.completed.touch(hashes[i]);
            }
            for &i in items {
                match self.offer(&mut shard, hashes[i], arrivals[i], now, evicted) {
                    Offer::Waiting => {}
                    answer => answers.push((i, answer)),
                }
            }
        });
        answers.sort_unstable_by_key(|(i, _)| *i);
        answers
    }

    fn offer(
        &self,
        shard: &mut Shard,
        hash: u64,
        arrival: Arrival,
        now: u32,
        evicted: &mut impl FnMut(usize, Eviction),
    ) -> Offer {
        let Arrival {
            derived,
            key: _,
            part,
            span,
            count,
            labels,
        } = arrival;
        let spec = &self.specs[derived];
        let at = match shard.find(hash) {
            Some(at) => at,
            None if shard.completed.contains(hash) => return Offer::Late,
            None => self.open(shard, hash, derived, now, evicted),
        };
        let slot = &mut shard.slots[at];
        let pending = slot
            .pending
            .as_mut()
            .expect("a waiting key's slot holds it");
        debug_assert!(
            span.start_unix_nano != 0,
            "an offered span has a start time"
        );
        let part_index = u8::try_from(part).expect("fewer than 255 parts");
        let extended = match (&mut pending.values.get_mut().0[part], spec.operation) {
            (seen, _) if !arrived(seen) => {
                *seen = span.times();
                pending.sampled(part, span.sample(count));
                true
            }
            (seen, Operation::Envelope) => {
                seen.start_unix_nano = seen.start_unix_nano.min(span.start_unix_nano);
                let later = span.end_unix_nano > seen.end_unix_nano;
                seen.end_unix_nano = seen.end_unix_nano.max(span.end_unix_nano);
                later
            }
            (_, _) => return Offer::Repeated,
        };
        if extended {
            pending.mark_exemplar(part_index, &span);
        }
        let given = pending.values.get_mut().1.iter_mut().zip(labels);
        for (i, (slot, value)) in given.enumerate() {
            if let Some(value) = value
                && part_index < slot.part
            {
                if let Some(replaced) = slot.given() {
                    shard.texts.release(replaced);
                }
                *slot = LabelValue::new(shard.texts.intern_in(value, i), part_index);
            }
        }
        if !pending.values.parts().iter().all(arrived) {
            return Offer::Waiting;
        }
        shard.unindex(at);
        let pending = shard.slots[at].pending.take().expect("present");
        shard.waiting -= 1;
        shard.completed.insert(hash);
        let parts = pending.values.parts();
        let labels = pending
            .values
            .labels()
            .iter()
            .map(|l| l.given().map(|text| Box::from(shard.texts.get(text))))
            .collect();
        shard.release_labels(&pending);
        let last = parts[usize::from(pending.exemplar_part)];
        Offer::Complete(Completed {
            seconds: seconds(value_nanos(spec.operation, parts)),
            count: pending
                .samples
                .as_ref()
                .map_or(1.0, |s| adjusted_count(&s.0)),
            labels,
            exemplar: PartSpan {
                start_unix_nano: last.start_unix_nano,
                end_unix_nano: last.end_unix_nano,
                trace_id: pending.exemplar.trace_id,
                span_id: pending.exemplar.span_id,
            },
        })
    }

    /// A new waiting key, after evicting the oldest if the shard is full; where its slot is.
    fn open(
        &self,
        shard: &mut Shard,
        hash: u64,
        derived: usize,
        now: u32,
        evicted: &mut impl FnMut(usize, Eviction),
    ) -> usize {
        if shard.waiting >= self.per_shard {
            while let Some(slot) = shard.pop_front() {
                if let Some(pending) = slot.pending {
                    evicted(usize::from(pending.derived), Eviction::Capacity);
                    break;
                }
            }
        }
        if shard.slots.len() >= queue_places(self.per_shard) {
            shard.compact();
        }
        let spec = &self.specs[derived];
        shard.slots.push_back(Slot {
            hash,
            pending: Some(Pending {
                values: Values::new(spec.parts, spec.labels),
                exemplar: SpanIds::default(),
                exemplar_part: NO_PART,
                derived: u16::try_from(derived).expect("at most 65,536 derived metrics"),
                opened: now,
                samples: None,
            }),
        });
        shard.waiting += 1;
        let at = shard.slots.len() - 1;
        shard.reindex(at);
        at
    }

    /// Evicts every key that has waited longer than `max_wait`.
    pub(crate) fn sweep(&self, now: Instant, evicted: &mut impl FnMut(usize, Eviction)) {
        let now = self.millis_since_origin(now);
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
            for pending in shard.slots.iter().filter_map(|s| s.pending.as_ref()) {
                counts[usize::from(pending.derived)] += 1;
            }
        }
        counts
    }

    /// Drops the holes at the front and evicts the keys there that waited longer than
    /// `max_wait`; `now` from [`JoinWindow::millis_since_origin`]. Both times are whole
    /// milliseconds, rounded down: an age of `max_wait` + 1 or more is one over `max_wait`
    /// in fact.
    fn expire(&self, shard: &mut Shard, now: u32, evicted: &mut impl FnMut(usize, Eviction)) {
        while let Some(front) = shard.slots.front() {
            let waiting = front
                .pending
                .as_ref()
                .is_some_and(|p| age(now, p.opened) <= self.max_wait);
            if waiting {
                break;
            }
            if let Some(pending) = shard.pop_front().and_then(|s| s.pending) {
                evicted(usize::from(pending.derived), Eviction::Timeout);
            }
        }
    }
}

/// How long a key opened at `opened` has waited at `now` (both from
/// [`JoinWindow::millis_since_origin`], modulo 2³²). Concurrent requests read the clock
/// before they take a shard's lock, so a key may have been opened by a request that read it
/// later than `now`: the difference wraps to just below 2³², and the key has waited
/// nothing. A clock read up to 2³⁰ ms (12 days) late is told apart that way from a real wait,
/// which `max_wait` (at most 2³¹ ms) ends long before 2³² − 2³⁰.
fn age(now: u32, opened: u32) -> u32 {
    const LATER: u32 = 1 << 30;
    let age = now.wrapping_sub(opened);
    if age > u32::MAX - LATER { 0 } else { age }
}

fn arrived(part: &Times) -> bool {
    part.start_unix_nano != 0
}

fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

fn duration(p: &Times) -> u64 {
    p.end_unix_nano.saturating_sub(p.start_unix_nano)
}

/// The adjusted count of a derived value: the product of the adjusted counts of its parts'
/// traces, each trace once. Services sample whole traces, each on its own, so parts of one
/// trace were kept together (with the probability of one of them) while parts of different
/// traces were each kept with their own probability: a value is seen with the product of
/// its traces' probabilities, and stands for the inverse of it.
/// Parts that stand for one operation (not in `samples`) multiply by 1.
fn adjusted_count(samples: &[Option<Sample>]) -> f64 {
    let sampled: Vec<Sample> = samples.iter().flatten().copied().collect();
    let first_of_its_trace =
        |(i, s): &(usize, &Sample)| sampled[..*i].iter().all(|t| t.trace != s.trace);
    sampled
        .iter()
        .enumerate()
        .filter(first_of_its_trace)
        .map(|(_, s)| s.count)
        .product()
}

/// The derived value in nanoseconds; a sum past u64 (absurd span times) saturates;
/// differences and gaps below zero (clock skew between hosts) are 0.
pub(crate) fn value_nanos(operation: Operation, parts: &[Times]) -> u64 {
    match operation {
        Operation::Sum => parts.iter().map(duration).fold(0, u64::saturating_add),
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
