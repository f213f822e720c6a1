//! Series storage: histograms and counters keyed by label values, sharded so that ingest on
//! different cores never contends. A request takes one shard for all its spans; a scrape
//! merges the shards into a [`Snapshot`] without stopping ingest for longer than a copy.
//!
//! Caps live here too: distinct values per label dimension and distinct series per metric.
//! Values past a cap become the overflow value and are counted.
//!
//! Series can expire ([`StoreSpec::series_idle_timeout`]): each snapshot starts a new *tick*
//! of a coarse clock and drops the series no shard has written since a tick that began at
//! least the timeout ago, with their slots under the series cap and the label values nothing
//! admitted since. Writers read the tick once per batch and store it with each write.

mod bound;
mod native;
mod series;

pub(crate) use bound::StoreBound;
pub(crate) use native::{Native, NativeSpec};
pub use series::Snapshot;
pub(crate) use series::{
    Cell, Exemplar, LabelSet, MetricId, MetricKind, MetricSpec, Values, bucket_of,
};

use crate::collections::text::Text;
use hashbrown::hash_map::Entry;
use hashbrown::hash_table::OccupiedEntry;
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use series::SeriesKey;
use std::cell::Cell as StdCell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// A label dimension with a cap on distinct values (service, span name, an extra label...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DimensionId(pub(crate) usize);

#[derive(Debug)]
struct Dimension {
    name: String,
    cap: usize,
    /// Admitted values, each with the last tick it is known to have been admitted in: set by
    /// the shard that admits it first, raised by shards that miss it in their cache, and by
    /// each expiry pass from the ticks of the shards' cache hits.
    values: RwLock<HashMap<Box<str>, AtomicU64>>,
}

/// What storage needs to know up front.
#[derive(Debug, Clone)]
pub(crate) struct StoreSpec {
    pub(crate) metrics: Vec<MetricSpec>,
    /// (label name, cap) for every capped dimension.
    pub(crate) dimensions: Vec<(String, usize)>,
    pub(crate) overflow_value: String,
    pub(crate) max_series_per_metric: usize,
    /// Counter (labelled by dimension name) of label values replaced by the overflow value.
    pub(crate) label_overflow: Option<MetricId>,
    /// Counter (labelled by metric name) of observations folded into the overflow series.
    pub(crate) series_overflow: Option<MetricId>,
    /// Keep every observed value too (for offline analysis; memory grows with the input;
    /// never expired).
    pub(crate) keep_raw_values: bool,
    /// Drop series no shard has written for this long, so that churning label values (pods,
    /// step names, values chosen by a client) keep memory and `/metrics` bounded. `None` keeps
    /// every series for the life of the process.
    ///
    /// An expired series frees its slot under `max_series_per_metric`, and a label value frees
    /// its place under its dimension's cap once no live series uses it (once it has not been
    /// admitted for as long). Any series may expire, the overflow series and the store's own
    /// overflow counters included.
    ///
    /// Expiry runs at each [`Store::snapshot`] (see [`Store::expire_idle`]) and measures time
    /// in snapshot intervals: a series goes no sooner than `timeout` after its last write and
    /// at most about two snapshot intervals later. While a series lives its counters and
    /// histograms only grow; one written again after it expired restarts from zero, which
    /// Prometheus reads as a counter reset. `rate` and `increase` see the first new value
    /// only when their window still holds a sample from before the series expired: keep the
    /// timeout well above the longest range your queries and alerts use.
    pub(crate) series_idle_timeout: Option<Duration>,
    /// Metrics whose series never expire (spanlens's own counters: their labels do not
    /// churn, and the final accounting reads them).
    pub(crate) never_expire: Vec<MetricId>,
}

/// One series in one shard.
#[derive(Debug)]
struct Slot {
    key: SeriesKey,
    /// [`SeriesKey::series_hash`], kept: the index is rebuilt from it, and a lookup compares
    /// it before the labels.
    hash: u64,
    cell: Cell,
    /// Tick of the last write.
    written: u64,
}

#[derive(Debug, Default)]
struct Shard {
    /// The index of every slot, by its series hash.
    index: HashTable<usize>,
    slots: Vec<Slot>,
    /// Per dimension, values this shard knows are admitted globally, with the tick this shard
    /// last admitted each in.
    admitted: Vec<HashMap<Box<str>, u64>>,
    /// Per metric, the slot written last: consecutive writes to one series (a span's calls,
    /// errors and histogram; spans of one step in a row) skip the index.
    last: Vec<Option<usize>>,
}

/// The coarse clock of expiry: ticks are numbered from 0 (store creation); each expiry pass
/// starts the next one.
#[derive(Debug, Default)]
struct Ticks {
    /// Ticks that started less than the timeout ago, oldest first, with their start.
    started: VecDeque<(u64, Instant)>,
    /// Slots last written in a tick before this one have been idle for the timeout: the latest
    /// tick that started at least the timeout ago (0 until one has).
    cutoff: u64,
    /// The latest `now` of a pass: time never runs backwards for the store.
    latest: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Store {
    metrics: Vec<MetricSpec>,
    dimensions: Vec<Dimension>,
    overflow_value: String,
    max_series: usize,
    shards: Box<[Mutex<Shard>]>,
    /// Per metric: every series admitted by any shard, for the series cap, with the tick a
    /// shard last created a slot for it in.
    admitted_series: Vec<Mutex<HashMap<SeriesKey, u64>>>,
    epoch: AtomicU64,
    idle_timeout: Option<Duration>,
    /// By metric index: its series never expire.
    kept: Vec<bool>,
    /// The current tick, read by each writer.
    tick: AtomicU64,
    /// Held for a whole expiry pass: passes never overlap.
    ticks: Mutex<Ticks>,
    label_overflow: Option<MetricId>,
    series_overflow: Option<MetricId>,
    /// Every observed value by series, when kept (offline replay wants exact percentiles).
    raw: Option<Mutex<BTreeMap<SeriesKey, Vec<f64>>>>,
    /// Hashes label values for every shard's index (a series has one hash in all shards).
    hasher: DefaultHashBuilder,
}

thread_local! {
    static SHARD_HINT: StdCell<Option<usize>> = const { StdCell::new(None) };
}
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

impl Store {
    pub(crate) fn new(spec: StoreSpec) -> Store {
        let kept = (0..spec.metrics.len())
            .map(|m| spec.never_expire.contains(&MetricId(m)))
            .collect();
        let shard_count = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
            * 2;
        let dimension_count = spec.dimensions.len();
        let metric_count = spec.metrics.len();
        Store {
            admitted_series: spec.metrics.iter().map(|_| Mutex::default()).collect(),
            label_overflow: spec.label_overflow,
            series_overflow: spec.series_overflow,
            raw: spec.keep_raw_values.then(Mutex::default),
            metrics: spec.metrics,
            dimensions: spec
                .dimensions
                .into_iter()
                .map(|(name, cap)| Dimension {
                    name,
                    cap,
                    values: RwLock::default(),
                })
                .collect(),
            overflow_value: spec.overflow_value,
            max_series: spec.max_series_per_metric,
            shards: (0..shard_count)
                .map(|_| {
                    Mutex::new(Shard {
                        admitted: vec![HashMap::new(); dimension_count],
                        last: vec![None; metric_count],
                        ..Shard::default()
                    })
                })
                .collect(),
            epoch: AtomicU64::new(1),
            idle_timeout: spec.series_idle_timeout,
            kept,
            tick: AtomicU64::new(0),
            ticks: Mutex::default(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    pub(crate) fn metrics(&self) -> &[MetricSpec] {
        &self.metrics
    }

    /// Locks this thread's shard for a batch of observations.
    pub(crate) fn writer(&self) -> Writer<'_> {
        let hint = SHARD_HINT.with(|h| {
            h.get().unwrap_or_else(|| {
                let hint = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
                h.set(Some(hint));
                hint
            })
        });
        let shard = lock(&self.shards[hint % self.shards.len()]);
        Writer {
            store: self,
            shard,
            epoch: self.epoch.load(Ordering::Relaxed),
            // Read under the shard lock: a writer that takes the shard after an expiry pass
            // has visited it sees that pass's tick (see `expire_idle`).
            tick: self.tick.load(Ordering::Relaxed),
            next_set: StdCell::new(0),
            same_labels: None,
        }
    }

    /// Every observed value of every histogram series, when `keep_raw_values` was set.
    pub(crate) fn raw_values(&self) -> Vec<(MetricId, Vec<String>, Vec<f64>)> {
        let Some(raw) = &self.raw else {
            return Vec::new();
        };
        lock(raw)
            .iter()
            .map(|(key, values)| {
                let labels = key.labels.iter().map(|l| l.to_string()).collect();
                (MetricId(key.metric), labels, values.clone())
            })
            .collect()
    }

    /// Merges every shard, after expiring idle series ([`Store::expire_idle`]). Also starts a
    /// new exemplar interval.
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.expire_idle(Instant::now());
        self.copy()
    }

    /// Merges every shard as they are, for readers besides the scrape (the operator page):
    /// no new exemplar interval, no expiry, so that those keep the scrapes' pace.
    pub(crate) fn copy(&self) -> Snapshot {
        let mut copies = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            copies.extend(
                shard
                    .slots
                    .iter()
                    .map(|slot| (slot.key.clone(), slot.cell.clone())),
            );
        }
        Snapshot::merged(&self.metrics, copies)
    }

    /// Drops the series idle for the configured timeout at `now`, and the label values and
    /// series-cap slots only they used; returns how many series went. Does nothing without a
    /// timeout. [`Store::snapshot`] calls it; `now` earlier than a previous call's counts as
    /// that call's.
    ///
    /// Starts a new tick. A series is idle when no shard has written it since a tick that
    /// started at least the timeout before `now`. Shards are locked one at a time, each for a
    /// pass over its slots and admitted values; work is proportional to the number of series
    /// and values (times the number of shards for the series that expire).
    pub(crate) fn expire_idle(&self, now: Instant) -> usize {
        let Some(timeout) = self.idle_timeout else {
            return 0;
        };
        let mut ticks = lock(&self.ticks);
        let now = ticks.latest.map_or(now, |latest| latest.max(now));
        ticks.latest = Some(now);
        while let Some(&(tick, started)) = ticks.started.front()
            && started.checked_add(timeout).is_some_and(|end| end <= now)
        {
            ticks.cutoff = tick;
            ticks.started.pop_front();
        }
        // Ticks older than `cutoff` ended before it started. A writer holds the tick current
        // when it locked its shard, and this pass locks every shard after starting the next
        // tick, so once it is over no writer holds a tick before the current one: writers
        // active during a pass hold the previous tick or later, which is `cutoff` or later.
        let cutoff = ticks.cutoff;
        let previous = self.tick.fetch_add(1, Ordering::Relaxed);
        ticks.started.push_back((previous + 1, now));

        // 1. Take the idle slots out of every shard, merged by key; forget cached values not
        //    admitted since `cutoff`, and report the ticks of the others to their dimension
        //    (those last admitted before `previous` were reported, with that tick, last pass).
        let mut idle: HashMap<SeriesKey, (u64, Cell)> = HashMap::new();
        for shard in self.shards.iter() {
            let mut guard = lock(shard);
            let shard = &mut *guard;
            let mut i = 0;
            while i < shard.slots.len() {
                if shard.slots[i].written >= cutoff || self.kept[shard.slots[i].key.metric] {
                    i += 1;
                    continue;
                }
                let Slot {
                    key, hash, cell, ..
                } = shard.slots.swap_remove(i);
                index_entry(&mut shard.index, hash, i).remove();
                if let Some(moved) = shard.slots.get(i) {
                    // It was the last slot.
                    let last = shard.slots.len();
                    *index_entry(&mut shard.index, moved.hash, last).get_mut() = i;
                }
                match idle.entry(key) {
                    Entry::Occupied(mut total) => total.get_mut().1.merge(&cell),
                    Entry::Vacant(total) => {
                        total.insert((hash, cell));
                    }
                }
            }
            shrink(shard);
            shard.last.fill(None);
            for (cache, dimension) in shard.admitted.iter_mut().zip(&self.dimensions) {
                let values = read(&dimension.values);
                cache.retain(|value, &mut last| {
                    last >= cutoff
                        && (last < previous
                            || values
                                .get(value)
                                .map(|known| known.fetch_max(last, Ordering::Relaxed))
                                .is_some())
                });
            }
        }

        // 2. A series idle in one shard may be live in another (or written again since): fold
        //    its idle counts into that slot, so that it keeps counting up.
        for shard in self.shards.iter() {
            if idle.is_empty() {
                break;
            }
            let mut guard = lock(shard);
            let shard = &mut *guard;
            let Shard { index, slots, .. } = shard;
            idle.retain(
                |key, (hash, cell)| match index.find(*hash, |&i| slots[i].key == *key) {
                    Some(&i) => {
                        slots[i].cell.merge(cell);
                        false
                    }
                    None => true,
                },
            );
        }

        // 3. The rest is gone: free its slots under the series cap, unless a shard created the
        //    series again since (then with a tick not before `cutoff`).
        let mut gone: Vec<SeriesKey> = idle.into_keys().collect();
        let expired = gone.len();
        gone.sort_unstable_by_key(|key| key.metric);
        for keys in gone.chunk_by(|a, b| a.metric == b.metric) {
            let mut admitted = lock(&self.admitted_series[keys[0].metric]);
            for key in keys {
                if admitted.get(key).is_some_and(|&last| last < cutoff) {
                    admitted.remove(key);
                }
            }
            if admitted.capacity() > 4 * admitted.len() + 64 {
                admitted.shrink_to_fit();
            }
        }

        // 4. Values no shard has admitted since `cutoff` are used by no live series: every
        //    write admits its values in the same batch, with the same tick.
        for dimension in &self.dimensions {
            let mut values = write(&dimension.values);
            values.retain(|_, last| *last.get_mut() >= cutoff);
            if values.capacity() > 4 * values.len() + 64 {
                values.shrink_to_fit();
            }
        }
        expired
    }

    /// Live series over every metric (a series written in several shards counts once).
    /// Takes every shard lock in turn and copies every key.
    #[cfg(test)]
    pub(crate) fn series_count(&self) -> usize {
        let mut keys = hashbrown::HashSet::new();
        for shard in self.shards.iter() {
            keys.extend(lock(shard).slots.iter().map(|slot| slot.key.clone()));
        }
        keys.len()
    }
}

/// The index entry of the slot at `at`, with this hash.
fn index_entry(index: &mut HashTable<usize>, hash: u64, at: usize) -> OccupiedEntry<'_, usize> {
    index
        .find_entry(hash, |&i| i == at)
        .unwrap_or_else(|_| panic!("every slot is indexed"))
}

/// Gives back the memory of a shard that churned through many more series than it holds.
fn shrink(shard: &mut Shard) {
    let Shard { index, slots, .. } = shard;
    if slots.capacity() > 4 * slots.len() + 64 {
        slots.shrink_to_fit();
        index.shrink_to_fit(|&i| slots[i].hash);
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard cannot leave a series half-updated in a way that
    // matters more than losing the scrape; keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Observations for one batch, under one shard lock.
pub(crate) struct Writer<'s> {
    store: &'s Store,
    shard: MutexGuard<'s, Shard>,
    epoch: u64,
    /// The expiry tick, stored with every write and admission.
    tick: u64,
    /// The id of the next [`LabelSet`] made.
    next_set: StdCell<u64>,
    /// The last label set found or written, by id, and the slot whose key holds its values.
    /// The series of one set (a stage's histogram, calls and errors) are created sharing
    /// one `labels` allocation, so the set's next series are known by that allocation
    /// instead of by comparing every value again. Slots stay where they are while the
    /// writer holds the shard.
    same_labels: Option<(u64, usize)>,
}

/// A series found or made by [`Writer::series`], to write again without another lookup:
/// its slot in the writer's shard, where it stays while that writer holds the shard. Only
/// for the writer that gave it. One word (slot, metric, and whether it is the labels' own
/// series): copied by halves or bytes, it stalled the loads that read it back whole.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Series(u64);

impl Series {
    const OWN: u64 = 1 << 63;

    fn new(slot: usize, metric: MetricId, own: bool) -> Series {
        let slot = u32::try_from(slot).expect("fewer than 2^32 series in a shard");
        let metric = u32::try_from(metric.0)
            .ok()
            .filter(|&m| m < 1 << 31)
            .expect("fewer than 2^31 metrics");
        Series(u64::from(slot) | u64::from(metric) << 32 | if own { Series::OWN } else { 0 })
    }

    fn slot(self) -> usize {
        (self.0 as u32) as usize
    }

    fn metric(self) -> usize {
        ((self.0 & !Series::OWN) >> 32) as usize
    }

    /// Whether the series is the one of the labels asked for: false when the series cap
    /// folded them into the overflow series (whose every write counts as folded).
    pub(crate) fn is_own(self) -> bool {
        self.0 & Series::OWN != 0
    }
}

/// A label value as admitted: the value itself or the overflow value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Kept,
    Overflow,
}

impl<'s> Writer<'s> {
    /// Admits `value` into a capped dimension: values past the cap are replaced by the
    /// overflow value (and counted).
    pub(crate) fn admit(&mut self, dimension: DimensionId, value: &str) -> Admission {
        let d = dimension.0;
        let tick = self.tick;
        if let Some(last) = self.shard.admitted[d].get_mut(&Text(value)) {
            *last = tick;
            return Admission::Kept;
        }
        let global = &self.store.dimensions[d];
        let known = read(&global.values)
            .get(value)
            .map(|last| last.fetch_max(tick, Ordering::Relaxed))
            .is_some();
        let kept = known || {
            let mut values = write(&global.values);
            let room = values.len() < global.cap;
            match values.get_mut(value) {
                Some(last) => {
                    let last = last.get_mut();
                    *last = (*last).max(tick);
                    true
                }
                None if room => {
                    values.insert(value.into(), AtomicU64::new(tick));
                    true
                }
                None => false,
            }
        };
        if kept {
            self.shard.admitted[d].insert(value.into(), tick);
            Admission::Kept
        } else {
            if let Some(counter) = self.store.label_overflow {
                let name: &str = &self.store.dimensions[d].name;
                self.add(counter, &[name], 1);
            }
            Admission::Overflow
        }
    }

    /// The value to use for `value` in `dimension`.
    pub(crate) fn admitted<'v>(&mut self, dimension: DimensionId, value: &'v str) -> &'v str
    where
        's: 'v,
    {
        self.admitted_as(dimension, value).0
    }

    /// [`Writer::admitted`], with how `value` was admitted.
    pub(crate) fn admitted_as<'v>(
        &mut self,
        dimension: DimensionId,
        value: &'v str,
    ) -> (&'v str, Admission)
    where
        's: 'v,
    {
        match self.admit(dimension, value) {
            Admission::Kept => (value, Admission::Kept),
            Admission::Overflow => (&self.store.overflow_value, Admission::Overflow),
        }
    }

    /// Hashes label values once for the series of every metric written with them.
    pub(crate) fn label_set<'l>(&self, labels: &'l [&'l str]) -> LabelSet<'l> {
        let id = self.next_set.get();
        self.next_set.set(id + 1);
        LabelSet::new(&self.store.hasher, labels, id)
    }

    /// The series of `labels` in this shard, created if new, marked as written now.
    pub(crate) fn series(&mut self, metric: MetricId, labels: LabelSet) -> Series {
        let tick = self.tick;
        let hash = labels.series_hash(metric.0);
        let known = self.known_values(&labels);
        let shard = &*self.shard;
        let named = |i: &usize| {
            let slot = &shard.slots[*i];
            slot.hash == hash
                && match known {
                    Some(values) if Arc::ptr_eq(values, &slot.key.labels) => {
                        slot.key.metric == metric.0
                    }
                    _ => labels.names(metric.0, &slot.key),
                }
        };
        let hit = shard.last[metric.0]
            .filter(named)
            .or_else(|| shard.index.find(hash, named).copied());
        let (i, holds_set) = match hit {
            Some(i) => (i, true),
            None => self.create(metric, labels),
        };
        if holds_set {
            self.same_labels = Some((labels.id, i));
        }
        self.shard.last[metric.0] = Some(i);
        self.shard.slots[i].written = tick;
        Series::new(i, metric, holds_set)
    }

    /// The values of `labels` as a slot's key holds them, when the set was found or written
    /// last (see `same_labels`).
    #[inline]
    fn known_values(&self, labels: &LabelSet) -> Option<&Arc<[Box<str>]>> {
        let (id, slot) = self.same_labels?;
        (id == labels.id).then(|| &self.shard.slots[slot].key.labels)
    }

    /// The slot of a series this shard has none for: a new one, unless the series cap turns
    /// it into the overflow series and this shard has that one. True when the slot's key
    /// holds the set's values (not the overflow series'). A new series shares the values of
    /// the set's series found or written last, when there is one.
    fn create(&mut self, metric: MetricId, labels: LabelSet) -> (usize, bool) {
        let store: &'s Store = self.store;
        let key = match self.known_values(&labels) {
            Some(values) => SeriesKey {
                metric: metric.0,
                labels: values.clone(),
            },
            None => SeriesKey::new(metric.0, labels.labels),
        };
        let (key, holds_set) = match self.admit_series(metric, key) {
            Ok(key) => (key, true),
            Err(overflow) => {
                if let Some(counter) = store.series_overflow.filter(|&c| c != metric) {
                    self.add(counter, &[store.metrics[metric.0].name.as_str()], 1);
                }
                (overflow, false)
            }
        };
        let hash = key.series_hash(&store.hasher);
        let Shard { index, slots, .. } = &mut *self.shard;
        if let Some(&i) = index.find(hash, |&i| slots[i].key == key) {
            return (i, holds_set);
        }
        let i = slots.len();
        slots.push(Slot {
            key,
            hash,
            cell: Cell::new(&store.metrics[metric.0].kind),
            written: self.tick,
        });
        index.insert_unique(hash, i, |&j| slots[j].hash);
        (i, holds_set)
    }

    /// Applies the per-metric series cap: a series past it becomes the overflow series
    /// (returned as the error).
    fn admit_series(&self, metric: MetricId, key: SeriesKey) -> Result<SeriesKey, SeriesKey> {
        let mut admitted = lock(&self.store.admitted_series[metric.0]);
        if let Some(last) = admitted.get_mut(&key) {
            *last = (*last).max(self.tick);
            return Ok(key);
        }
        if admitted.len() < self.store.max_series {
            admitted.insert(key.clone(), self.tick);
            return Ok(key);
        }
        let overflow = vec![self.store.overflow_value.as_str(); key.labels.len()];
        let overflow = SeriesKey::new(metric.0, &overflow);
        let last = admitted.entry(overflow.clone()).or_insert(self.tick);
        *last = (*last).max(self.tick);
        Err(overflow)
    }

    /// Observes one duration, in seconds, as `count` observations (a span's adjusted count),
    /// with the span (if any) as exemplar candidate.
    pub(crate) fn observe(
        &mut self,
        metric: MetricId,
        labels: &[&str],
        seconds: f64,
        count: f64,
        exemplar: Option<Exemplar>,
    ) {
        self.observe_set(metric, self.label_set(labels), seconds, count, exemplar);
    }

    /// [`Writer::observe`] with values hashed by [`Writer::label_set`].
    pub(crate) fn observe_set(
        &mut self,
        metric: MetricId,
        labels: LabelSet,
        seconds: f64,
        count: f64,
        exemplar: Option<Exemplar>,
    ) {
        let series = self.series(metric, labels);
        self.observe_in(series, seconds, count, exemplar);
    }

    /// [`Writer::observe`] in a series this writer found or made.
    pub(crate) fn observe_in(
        &mut self,
        series: Series,
        seconds: f64,
        count: f64,
        exemplar: Option<Exemplar>,
    ) {
        let epoch = self.epoch;
        let store: &'s Store = self.store;
        let slot = &mut self.shard.slots[series.slot()];
        if let Some(raw) = &store.raw {
            lock(raw).entry(slot.key.clone()).or_default().push(seconds);
        }
        let spec = &store.metrics[series.metric()];
        assert!(
            matches!(spec.kind, MetricKind::Histogram { .. }),
            "observe on {} which is not a histogram",
            spec.name
        );
        slot.cell.observe(
            &spec.kind,
            seconds,
            count,
            exemplar.map(|e| Exemplar {
                epoch,
                value: seconds,
                ..e
            }),
        );
    }

    /// Adds to a counter.
    pub(crate) fn add(&mut self, metric: MetricId, labels: &[&str], by: u64) {
        self.add_set(metric, self.label_set(labels), by);
    }

    /// [`Writer::add`] with values hashed by [`Writer::label_set`].
    pub(crate) fn add_set(&mut self, metric: MetricId, labels: LabelSet, by: u64) {
        let series = self.series(metric, labels);
        self.add_to(series, by as f64);
    }

    /// Adds an adjusted count to a counter series this writer found or made.
    pub(crate) fn add_to(&mut self, series: Series, by: f64) {
        self.shard.slots[series.slot()].cell.add(by);
    }
}

#[cfg(test)]
mod tests;
