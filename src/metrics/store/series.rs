//! One series: its key (metric and label values) and its cell (histogram or counter), and
//! the snapshot that merges cells from every shard.

use super::native::{Native, NativeSpec};
use crate::collections::text::same_str;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct MetricId(pub(crate) usize);

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MetricKind {
    Counter,
    /// A value set at snapshot time (see [`Snapshot::set_gauge`]), never by ingest.
    Gauge,
    /// Upper bounds in seconds, increasing; +Inf is implied. With a native spec each series
    /// keeps a native histogram too.
    Histogram {
        bounds: Arc<[f64]>,
        native: Option<NativeSpec>,
    },
}

/// A metric family: its name, help and label names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MetricSpec {
    pub(crate) name: String,
    pub(crate) help: String,
    pub(crate) kind: MetricKind,
    pub(crate) label_names: Vec<String>,
}

impl MetricSpec {
    pub(crate) fn new(name: &str, help: &str, kind: MetricKind, labels: &[&str]) -> MetricSpec {
        MetricSpec {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            label_names: labels.iter().map(|l| l.to_string()).collect(),
        }
    }
}

/// Owned label values of one series, shared by the copies of the key (a shard's slot and
/// index, the series cap's set, snapshots): a copy is a reference count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SeriesKey {
    pub(crate) metric: usize,
    pub(crate) labels: Arc<[Box<str>]>,
}

impl SeriesKey {
    pub(crate) fn new(metric: usize, labels: &[&str]) -> SeriesKey {
        SeriesKey {
            metric,
            labels: labels.iter().map(|&l| Box::from(l)).collect(),
        }
    }

    /// The hash a shard indexes this series by (the same as its [`LabelSet`]'s).
    pub(crate) fn series_hash(&self, hasher: &impl BuildHasher) -> u64 {
        let labels = labels_hash(hasher, self.labels.iter().map(|l| &**l));
        with_metric(labels, self.metric)
    }
}

/// A series' label values, borrowed from a request, with their hash: a span's calls, errors
/// and histogram share one set, hashed once. The hash names the values only;
/// [`LabelSet::series_hash`] adds the metric. `id` tells sets apart within one writer (see
/// `Writer::label_set`), so that a set's values, once compared with a series' key, need not
/// be compared again with keys that share that key's labels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LabelSet<'a> {
    pub(crate) labels: &'a [&'a str],
    hash: u64,
    pub(super) id: u64,
}

impl<'a> LabelSet<'a> {
    pub(crate) fn new(hasher: &impl BuildHasher, labels: &'a [&'a str], id: u64) -> LabelSet<'a> {
        LabelSet {
            labels,
            hash: labels_hash(hasher, labels.iter().copied()),
            id,
        }
    }

    /// The hash of this set's series of `metric`, as a series key's `series_hash` gives it.
    pub(crate) fn series_hash(&self, metric: usize) -> u64 {
        with_metric(self.hash, metric)
    }

    /// Whether `key` is this set's series of `metric`.
    pub(crate) fn names(&self, metric: usize, key: &SeriesKey) -> bool {
        metric == key.metric
            && self.labels.len() == key.labels.len()
            && self
                .labels
                .iter()
                .zip(key.labels.iter())
                .all(|(a, b)| same_str(a, b))
    }
}

fn labels_hash<'a>(hasher: &impl BuildHasher, labels: impl Iterator<Item = &'a str>) -> u64 {
    let mut state = hasher.build_hasher();
    for label in labels {
        state.write(label.as_bytes());
        state.write_u8(0xff);
    }
    state.finish()
}

/// Mixes a metric into a label hash: every bit of the result depends on both (a shard's
/// table reads both its top and its bottom bits).
fn with_metric(labels: u64, metric: usize) -> u64 {
    let mixed = (labels ^ metric as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    mixed ^ (mixed >> 29)
}

/// The span kept as a histogram's exemplar: the slowest of the current scrape interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Exemplar {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    /// Observed value, in seconds (set by the store).
    pub(crate) value: f64,
    /// Span end, Unix nanoseconds.
    pub(crate) timestamp_unix_nano: u64,
    /// Scrape interval it was observed in (set by the store).
    pub(crate) epoch: u64,
}

impl Exemplar {
    /// Whether `self` should replace `current`: a newer interval, or slower in the same one.
    fn beats(&self, current: &Option<Exemplar>) -> bool {
        match current {
            None => true,
            Some(c) => self.epoch > c.epoch || (self.epoch == c.epoch && self.value > c.value),
        }
    }
}

/// One series' values: in a shard as written, in a [`Snapshot`] merged over shards.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    /// Adjusted counts (see [`crate::otlp::sampling`]) add up to non-integers.
    Counter(f64),
    Gauge(f64),
    Histogram {
        /// Per bucket (not cumulative); the last one is +Inf. Adjusted counts, as a
        /// counter's.
        counts: Box<[f64]>,
        sum: f64,
        exemplar: Option<Exemplar>,
        /// The same observations in native buckets, when the metric keeps them.
        native: Option<Box<Native>>,
    },
}

impl Cell {
    pub(crate) fn new(kind: &MetricKind) -> Cell {
        match kind {
            MetricKind::Counter => Cell::Counter(0.0),
            MetricKind::Gauge => Cell::Gauge(0.0),
            MetricKind::Histogram { bounds, native } => Cell::Histogram {
                counts: vec![0.0; bounds.len() + 1].into_boxed_slice(),
                sum: 0.0,
                exemplar: None,
                native: native.as_ref().map(|spec| Box::new(Native::new(spec))),
            },
        }
    }

    /// Observes `value` as `count` observations (a span's adjusted count); a count of zero
    /// observes nothing, the exemplar included.
    pub(crate) fn observe(
        &mut self,
        kind: &MetricKind,
        value: f64,
        count: f64,
        candidate: Option<Exemplar>,
    ) {
        if count == 0.0 {
            return;
        }
        if let (
            Cell::Histogram {
                counts,
                sum,
                exemplar,
                native,
            },
            MetricKind::Histogram {
                bounds,
                native: spec,
            },
        ) = (self, kind)
        {
            counts[bucket_of(bounds, value)] += count;
            if let (Some(native), Some(spec)) = (native, spec) {
                native.observe(spec, value, count);
            }
            *sum += value * count;
            if let Some(candidate) = candidate
                && candidate.beats(exemplar)
            {
                *exemplar = Some(candidate);
            }
        }
    }

    pub(crate) fn add(&mut self, by: f64) {
        if let Cell::Counter(n) = self {
            *n += by;
        }
    }

    /// Adds `other` (the same series, from another shard) into `self`: counts and sums add
    /// up, the better exemplar is kept.
    pub(crate) fn merge(&mut self, other: &Cell) {
        match (self, other) {
            (Cell::Counter(a), Cell::Counter(b)) => *a += b,
            (Cell::Gauge(a), Cell::Gauge(b)) => *a += b,
            (
                Cell::Histogram {
                    counts,
                    sum,
                    exemplar,
                    native,
                },
                Cell::Histogram {
                    counts: more,
                    sum: more_sum,
                    exemplar: other,
                    native: more_native,
                },
            ) => {
                if let (Some(native), Some(more)) = (native, more_native) {
                    native.merge(more);
                }
                for (a, b) in counts.iter_mut().zip(more.iter()) {
                    *a += b;
                }
                *sum += more_sum;
                if let Some(other) = other
                    && other.beats(exemplar)
                {
                    *exemplar = Some(*other);
                }
            }
            _ => unreachable!("one metric id has one kind"),
        }
    }
}

/// The bucket (index into a histogram's counts, +Inf last) of the first bound that holds
/// `value`: the number of bounds below it, as the bounds increase. Counted over every bound
/// without a branch (a default histogram has 14): a binary search's branches depend on each
/// value and mispredict, which made it a visible share of the in-process bench.
pub(crate) fn bucket_of(bounds: &[f64], value: f64) -> usize {
    bounds.iter().map(|&b| usize::from(b < value)).sum()
}

/// Values of one series, merged over shards.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Values {
    Counter(f64),
    Gauge(f64),
    Histogram {
        /// Cumulative counts per bound, then +Inf.
        cumulative: Vec<f64>,
        sum: f64,
        exemplar: Option<Exemplar>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SnapshotSeries {
    pub(crate) labels: Box<[Box<str>]>,
    pub(crate) values: Values,
}

/// Every series of every metric at one moment, sorted by metric then labels.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(crate) metrics: Vec<MetricSpec>,
    /// Sorted by key, one entry per key.
    series: Vec<(SeriesKey, Cell)>,
}

impl Snapshot {
    /// The snapshot of the shards' copies of their series: sorted by key, the copies of one
    /// series (made by different shards) added up.
    pub(super) fn merged(metrics: &[MetricSpec], mut copies: Vec<(SeriesKey, Cell)>) -> Snapshot {
        copies.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut series: Vec<(SeriesKey, Cell)> = Vec::with_capacity(copies.len());
        for (key, cell) in copies {
            match series.last_mut() {
                Some((last, total)) if *last == key => total.merge(&cell),
                _ => series.push((key, cell)),
            }
        }
        Snapshot {
            metrics: metrics.to_vec(),
            series,
        }
    }

    /// The series of one metric in label order, borrowed: label values and merged cell.
    pub(crate) fn cells(
        &self,
        metric: MetricId,
    ) -> impl Iterator<Item = (&[Box<str>], &Cell)> + '_ {
        let start = self.series.partition_point(|(k, _)| k.metric < metric.0);
        self.series[start..]
            .iter()
            .take_while(move |(k, _)| k.metric == metric.0)
            .map(|(key, cell)| (&*key.labels, cell))
    }

    /// The series of one metric, in label order.
    pub(crate) fn series(&self, metric: MetricId) -> impl Iterator<Item = SnapshotSeries> + '_ {
        self.cells(metric).map(|(labels, cell)| SnapshotSeries {
            labels: labels.into(),
            values: match cell {
                Cell::Counter(n) => Values::Counter(*n),
                Cell::Gauge(v) => Values::Gauge(*v),
                Cell::Histogram {
                    counts,
                    sum,
                    exemplar,
                    ..
                } => Values::Histogram {
                    cumulative: counts
                        .iter()
                        .scan(0.0, |acc, c| {
                            *acc += c;
                            Some(*acc)
                        })
                        .collect(),
                    sum: *sum,
                    exemplar: *exemplar,
                },
            },
        })
    }

    /// Sets a gauge series, for values read at snapshot time (such as keys waiting to join).
    pub(crate) fn set_gauge(&mut self, metric: MetricId, labels: &[&str], value: f64) {
        self.set(SeriesKey::new(metric.0, labels), Cell::Gauge(value));
    }

    /// Adds a metric family whose values are read at snapshot time (such as forwarding's).
    pub(crate) fn add_metric(&mut self, spec: MetricSpec) -> MetricId {
        self.metrics.push(spec);
        MetricId(self.metrics.len() - 1)
    }

    /// Sets a counter series read at snapshot time.
    pub(crate) fn set_counter(&mut self, metric: MetricId, labels: &[&str], value: u64) {
        self.set(
            SeriesKey::new(metric.0, labels),
            Cell::Counter(value as f64),
        );
    }

    fn set(&mut self, key: SeriesKey, cell: Cell) {
        match self.series.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.series[i].1 = cell,
            Err(i) => self.series.insert(i, (key, cell)),
        }
    }

    /// Looks up one series by its label values.
    #[cfg(test)]
    pub(crate) fn get(&self, metric: MetricId, labels: &[&str]) -> Option<SnapshotSeries> {
        self.series(metric)
            .find(|s| s.labels.iter().map(|l| &**l).eq(labels.iter().copied()))
    }
}
