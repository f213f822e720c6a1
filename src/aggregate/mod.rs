//! Series storage: histograms and counters keyed by label values, sharded so that ingest on
//! different cores never contends. A request takes one shard for all its spans; a scrape
//! merges the shards into a [`Snapshot`] without stopping ingest for longer than a copy.
//!
//! Caps live here too: distinct values per label dimension and distinct series per metric.
//! Values past a cap become the overflow value and are counted.

mod series;

pub use series::{Exemplar, MetricId, MetricKind, MetricSpec, Snapshot, SnapshotSeries, Values};

use hashbrown::{HashMap, HashSet};
use series::{BorrowedKey, Cell, SeriesKey};
use std::cell::Cell as StdCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

/// A label dimension with a cap on distinct values (service, span name, an extra label...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DimensionId(pub usize);

#[derive(Debug)]
struct Dimension {
    name: String,
    cap: usize,
    values: RwLock<HashSet<Box<str>>>,
}

/// What storage needs to know up front.
#[derive(Debug, Clone)]
pub struct StoreSpec {
    pub metrics: Vec<MetricSpec>,
    /// (label name, cap) for every capped dimension.
    pub dimensions: Vec<(String, usize)>,
    pub overflow_value: String,
    pub max_series_per_metric: usize,
    /// Counter (labelled by dimension name) of label values replaced by the overflow value.
    pub label_overflow: Option<MetricId>,
    /// Counter (labelled by metric name) of observations folded into the overflow series.
    pub series_overflow: Option<MetricId>,
    /// Keep every observed value too (for offline analysis; memory grows with the input).
    pub keep_raw_values: bool,
}

#[derive(Debug, Default)]
struct Shard {
    /// Series key (as written, or as admitted) to the index of its cell.
    index: HashMap<SeriesKey, usize>,
    cells: Vec<(SeriesKey, Cell)>,
    /// Per dimension, values this shard knows are admitted globally.
    admitted: Vec<HashSet<Box<str>>>,
}

#[derive(Debug)]
pub struct Store {
    metrics: Vec<MetricSpec>,
    dimensions: Vec<Dimension>,
    overflow_value: String,
    max_series: usize,
    shards: Box<[Mutex<Shard>]>,
    /// Per metric: every series admitted by any shard, for the series cap.
    admitted_series: Vec<Mutex<HashSet<SeriesKey>>>,
    epoch: AtomicU64,
    label_overflow: Option<MetricId>,
    series_overflow: Option<MetricId>,
    /// Every observed value by series, when kept (offline replay wants exact percentiles).
    raw: Option<Mutex<BTreeMap<SeriesKey, Vec<f64>>>>,
}

thread_local! {
    static SHARD_HINT: StdCell<Option<usize>> = const { StdCell::new(None) };
}
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

impl Store {
    pub fn new(spec: StoreSpec) -> Store {
        let shard_count = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
            * 2;
        let dimension_count = spec.dimensions.len();
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
                        admitted: vec![HashSet::new(); dimension_count],
                        ..Shard::default()
                    })
                })
                .collect(),
            epoch: AtomicU64::new(1),
        }
    }

    pub fn metrics(&self) -> &[MetricSpec] {
        &self.metrics
    }

    pub fn dimension_name(&self, id: DimensionId) -> &str {
        &self.dimensions[id.0].name
    }

    pub fn overflow_value(&self) -> &str {
        &self.overflow_value
    }

    /// Locks this thread's shard for a batch of observations.
    pub fn writer(&self) -> Writer<'_> {
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
        }
    }

    /// Every observed value of every histogram series, when `keep_raw_values` was set.
    pub fn raw_values(&self) -> Vec<(MetricId, Vec<String>, Vec<f64>)> {
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

    /// Merges every shard. Also starts a new exemplar interval.
    pub fn snapshot(&self) -> Snapshot {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        let mut snapshot = Snapshot::new(&self.metrics);
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for (key, cell) in &shard.cells {
                snapshot.merge(key, cell);
            }
        }
        snapshot
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard cannot leave a series half-updated in a way that
    // matters more than losing the scrape; keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Observations for one batch, under one shard lock.
pub struct Writer<'s> {
    store: &'s Store,
    shard: MutexGuard<'s, Shard>,
    epoch: u64,
}

/// A label value as admitted: the value itself or the overflow value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Kept,
    Overflow,
}

impl<'s> Writer<'s> {
    /// Admits `value` into a capped dimension: values past the cap are replaced by the
    /// overflow value (and counted).
    pub fn admit(&mut self, dimension: DimensionId, value: &str) -> Admission {
        let d = dimension.0;
        if self.shard.admitted[d].contains(value) {
            return Admission::Kept;
        }
        let global = &self.store.dimensions[d];
        let known = global
            .values
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(value);
        let kept = known || {
            let mut values = global.values.write().unwrap_or_else(|p| p.into_inner());
            values.contains(value) || (values.len() < global.cap && values.insert(value.into()))
        };
        if kept {
            self.shard.admitted[d].insert(value.into());
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
    pub fn admitted<'v>(&mut self, dimension: DimensionId, value: &'v str) -> &'v str
    where
        's: 'v,
    {
        match self.admit(dimension, value) {
            Admission::Kept => value,
            Admission::Overflow => &self.store.overflow_value,
        }
    }

    fn cell(&mut self, metric: MetricId, labels: &[&str]) -> &mut Cell {
        let store: &'s Store = self.store;
        let borrowed = BorrowedKey {
            metric: metric.0,
            labels,
        };
        if let Some(&i) = self.shard.index.get(&borrowed) {
            return &mut self.shard.cells[i].1;
        }
        let key = SeriesKey::new(metric.0, labels);
        let key = match self.admit_series(metric, key) {
            Ok(key) => key,
            Err(overflow) => {
                if let Some(counter) = self.store.series_overflow.filter(|&c| c != metric) {
                    let store: &'s Store = self.store;
                    self.add(counter, &[store.metrics[metric.0].name.as_str()], 1);
                }
                overflow
            }
        };
        let shard = &mut *self.shard;
        let i = match shard.index.get(&key) {
            Some(&i) => i,
            None => {
                let i = shard.cells.len();
                let cell = Cell::new(&store.metrics[metric.0].kind);
                shard.cells.push((key.clone(), cell));
                shard.index.insert(key, i);
                i
            }
        };
        &mut shard.cells[i].1
    }

    /// Applies the per-metric series cap: a series past it becomes the overflow series
    /// (returned as the error).
    fn admit_series(&self, metric: MetricId, key: SeriesKey) -> Result<SeriesKey, SeriesKey> {
        let mut admitted = lock(&self.store.admitted_series[metric.0]);
        if admitted.contains(&key) {
            return Ok(key);
        }
        if admitted.len() < self.store.max_series {
            admitted.insert(key.clone());
            return Ok(key);
        }
        let overflow = vec![self.store.overflow_value.as_str(); key.labels.len()];
        let overflow = SeriesKey::new(metric.0, &overflow);
        admitted.insert(overflow.clone());
        Err(overflow)
    }

    /// Observes one duration, in seconds, with the span as exemplar candidate.
    pub fn observe(&mut self, metric: MetricId, labels: &[&str], seconds: f64, exemplar: Exemplar) {
        let epoch = self.epoch;
        let store: &'s Store = self.store;
        if let Some(raw) = &store.raw {
            lock(raw)
                .entry(SeriesKey::new(metric.0, labels))
                .or_default()
                .push(seconds);
        }
        let MetricKind::Histogram { bounds } = &store.metrics[metric.0].kind else {
            panic!(
                "observe on {} which is not a histogram",
                store.metrics[metric.0].name
            );
        };
        self.cell(metric, labels).observe(
            bounds,
            seconds,
            Exemplar {
                epoch,
                value: seconds,
                ..exemplar
            },
        );
    }

    /// Adds to a counter.
    pub fn add(&mut self, metric: MetricId, labels: &[&str], by: u64) {
        self.cell(metric, labels).add(by);
    }
}

#[cfg(test)]
mod tests;
