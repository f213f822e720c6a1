//! The page's 1- and 5-minute windows: a ring of samples, each the cumulative state of the
//! histograms and counters the page shows, summed to the page's rows and taken on a timer
//! from the same snapshot a scrape takes (with the slowest recent tasks and steps of the
//! breakdown log, read once per sample). A window is the difference of the newest sample
//! and the newest one at least the window older; nothing here runs under ingest's locks.

use crate::collections::sizes::{exact, text};
use crate::join::breakdown::Extent;
use crate::metrics::store::{Cell, MetricKind, Native, Snapshot, StoreBound};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::mem::size_of;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A histogram the page shows, with the counters beside it and the labels its rows keep.
#[derive(Debug, Clone)]
pub(crate) struct Family {
    pub(crate) histogram: String,
    /// A stage's calls and errors counters (same labels as its histogram); a derived or
    /// comparison histogram counts its own observations and has no errors.
    pub(crate) counters: Option<[String; 2]>,
    /// The labels a row is keyed by; the histogram's other labels are summed over.
    pub(crate) row_labels: Vec<String>,
}

/// One row's cumulative values at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Totals {
    /// Per classic bucket, not cumulative, +Inf last.
    pub(crate) buckets: Vec<f64>,
    pub(crate) native: Option<Native>,
    pub(crate) calls: f64,
    pub(crate) errors: f64,
}

impl Totals {
    fn add(&mut self, cell: &Cell) {
        if let Cell::Histogram { counts, native, .. } = cell {
            if self.buckets.len() < counts.len() {
                self.buckets.resize(counts.len(), 0.0);
            }
            for (a, b) in self.buckets.iter_mut().zip(counts.iter()) {
                *a += b;
            }
            match (&mut self.native, native) {
                (Some(mine), Some(more)) => mine.merge(more),
                (mine @ None, Some(more)) => *mine = Some((**more).clone()),
                _ => {}
            }
        }
    }

    /// Observations in the histogram.
    pub(crate) fn count(&self) -> f64 {
        self.buckets.iter().sum()
    }

    /// What was added since `earlier` (the same row, an earlier sample); a row whose count
    /// went down was reset (its series expired and came back) and counts from zero.
    fn since(&self, earlier: Option<&Totals>) -> Totals {
        let Some(earlier) = earlier.filter(|e| e.count() <= self.count()) else {
            return self.clone();
        };
        Totals {
            buckets: (self.buckets.iter().enumerate())
                .map(|(i, c)| (c - earlier.buckets.get(i).copied().unwrap_or(0.0)).max(0.0))
                .collect(),
            native: match (&self.native, &earlier.native) {
                (Some(now), Some(then)) => Some(now.since(then)),
                (now, _) => now.clone(),
            },
            calls: (self.calls - earlier.calls).max(0.0),
            errors: (self.errors - earlier.errors).max(0.0),
        }
    }

    /// The `q` quantile in seconds: from the native histogram where there is one, else from
    /// the classic buckets; None without observations.
    pub(crate) fn quantile(&self, q: f64, bounds: &[f64]) -> Option<f64> {
        match &self.native {
            Some(native) => native_quantile(native, q),
            None => classic_quantile(bounds, &self.buckets, q),
        }
    }
}

/// Label values of a row, in its family's `row_labels` order.
pub(crate) type RowKey = Vec<String>;

/// Every family's rows at one moment, and the other values the page shows.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    pub(crate) at: Option<Instant>,
    /// By family (index into the ring's families).
    pub(crate) rows: Vec<BTreeMap<RowKey, Totals>>,
    /// Classic bucket bounds per family (empty when the histogram is missing).
    pub(crate) bounds: Vec<Arc<[f64]>>,
    /// Spanlens's own series the page lists: (metric name, label pairs) → value.
    pub(crate) health: BTreeMap<(String, Vec<(String, String)>), f64>,
    /// The slowest recent tasks and steps in the breakdown log.
    pub(crate) longest: [Vec<Extent>; 2],
}

impl Sample {
    /// Reduces a snapshot to the page's rows: each histogram series added into its row.
    pub(crate) fn of(
        snapshot: &Snapshot,
        families: &[Family],
        health: &[&str],
        at: Instant,
    ) -> Sample {
        let ids: HashMap<&str, usize> = (snapshot.metrics.iter().enumerate())
            .map(|(i, m)| (m.name.as_str(), i))
            .collect();
        let mut sample = Sample {
            at: Some(at),
            ..Sample::default()
        };
        for family in families {
            let mut rows: BTreeMap<RowKey, Totals> = BTreeMap::new();
            let mut bounds: Arc<[f64]> = Arc::from(Vec::new());
            let metric = |name: &str| ids.get(name).map(|&i| (i, &snapshot.metrics[i]));
            if let Some((id, spec)) = metric(&family.histogram) {
                if let MetricKind::Histogram { bounds: b, .. } = &spec.kind {
                    bounds = b.clone();
                }
                let keys = positions(&spec.label_names, &family.row_labels);
                for (labels, cell) in snapshot.cells(crate::metrics::store::MetricId(id)) {
                    rows.entry(row_key(labels, &keys)).or_default().add(cell);
                }
                for (which, name) in family.counters.iter().flatten().enumerate() {
                    let Some((id, spec)) = metric(name) else {
                        continue;
                    };
                    let keys = positions(&spec.label_names, &family.row_labels);
                    for (labels, cell) in snapshot.cells(crate::metrics::store::MetricId(id)) {
                        if let Cell::Counter(n) = cell {
                            let row = rows.entry(row_key(labels, &keys)).or_default();
                            match which {
                                0 => row.calls += n,
                                _ => row.errors += n,
                            }
                        }
                    }
                }
                if family.counters.is_none() {
                    for row in rows.values_mut() {
                        row.calls = row.count();
                    }
                }
            }
            sample.rows.push(rows);
            sample.bounds.push(bounds);
        }
        for name in health {
            let Some(&id) = ids.get(name) else { continue };
            let label_names = &snapshot.metrics[id].label_names;
            for (labels, cell) in snapshot.cells(crate::metrics::store::MetricId(id)) {
                let value = match cell {
                    Cell::Counter(v) | Cell::Gauge(v) => *v,
                    Cell::Histogram { .. } => continue,
                };
                let pairs = (label_names.iter().cloned())
                    .zip(labels.iter().map(|l| l.to_string()))
                    .collect();
                sample.health.insert((name.to_string(), pairs), value);
            }
        }
        sample
    }
}

/// Where each of `wanted` is among `names` (None: not a label of this metric).
fn positions(names: &[String], wanted: &[String]) -> Vec<Option<usize>> {
    wanted
        .iter()
        .map(|w| names.iter().position(|n| n == w))
        .collect()
}

fn row_key(labels: &[Box<str>], positions: &[Option<usize>]) -> RowKey {
    positions
        .iter()
        .map(|p| p.map_or_else(String::new, |i| labels[i].to_string()))
        .collect()
}

/// One window of one family: each row's additions, over `seconds` of samples.
#[derive(Debug)]
pub(crate) struct Window {
    pub(crate) seconds: f64,
    pub(crate) rows: BTreeMap<RowKey, Totals>,
}

/// The samples windows are measured from: every sample of the last short window, and one
/// sample a minute (an anchor) for the long one, so that the ring holds a few samples
/// more than a minute's worth whatever the interval (at 10 s: 7 recent and 6 anchors).
pub(crate) struct Ring {
    held: Mutex<Held>,
    /// How far back every sample is kept (the short window).
    short: Duration,
    /// How far back anchors are kept (the long window).
    long: Duration,
}

#[derive(Default)]
struct Held {
    /// Every sample of the last `short`, and the newest one at least that old; newest last.
    recent: VecDeque<Arc<Sample>>,
    /// A sample at least [`ANCHOR_EVERY`] after the one before, back to the newest one at
    /// least `long` old; newest last.
    anchors: VecDeque<Arc<Sample>>,
}

/// How far apart anchors are: the long window covers up to this much more than its length.
const ANCHOR_EVERY: Duration = Duration::from_secs(60);

/// The most samples a ring holds when they are taken every `interval`: those of the last
/// `short` and the newest older one, and the anchors of the last `long` and the newest older
/// one (an anchor is also a recent sample; counted twice here).
pub(crate) fn held_at_most(short: Duration, long: Duration, interval: Duration) -> usize {
    let within = |window: Duration, every: Duration| {
        (window.as_secs_f64() / every.as_secs_f64().max(1e-3)).ceil() as usize
    };
    within(short, interval) + 2 + within(long, ANCHOR_EVERY) + 2
}

/// Labels a series of spanlens's own that the page lists carries at most.
const HEALTH_LABELS: usize = 2;

/// The most one sample holds with every series cap of `store` reached and texts of
/// `max_label` bytes: each family with a row per series of its histogram (classic and
/// native buckets) and per series of its counters, the `health` metrics' series, and the
/// `slowest` tasks and steps. A B-tree's node is at least half full: an entry takes at most
/// twice its size.
pub(crate) fn sample_bytes_bound(
    families: &[Family],
    store: &StoreBound,
    max_label: usize,
    health: usize,
    slowest: usize,
) -> usize {
    let texts = |n: usize| exact(n, size_of::<String>()) + n * text(max_label);
    let per_metric = store.series_per_metric;
    let rows: usize = (families.iter())
        .map(|f| {
            let row = 2 * size_of::<(RowKey, Totals)>() + texts(f.row_labels.len());
            let counters = f.counters.as_ref().map_or(0, |c| c.len());
            size_of::<BTreeMap<RowKey, Totals>>()
                + per_metric * (row + store.histogram_heap_bytes)
                + counters * per_metric * row
        })
        .sum();
    let health_row = 2 * size_of::<((String, Vec<(String, String)>), f64)>()
        + text(max_label)
        + 2 * texts(HEALTH_LABELS);
    let longest = 2 * slowest * (size_of::<Extent>() + 5 * text(max_label));
    size_of::<Sample>() + rows + health * per_metric * health_row + longest
}

/// Drops the oldest of `samples` while the second oldest is at least `keep` older than `now`.
fn keep_back(samples: &mut VecDeque<Arc<Sample>>, now: Instant, keep: Duration) {
    while samples.len() > 2
        && let Some(second) = samples[1].at
        && now.duration_since(second) >= keep
    {
        samples.pop_front();
    }
}

impl Ring {
    pub(crate) fn new(short: Duration, long: Duration) -> Ring {
        Ring {
            held: Mutex::default(),
            short,
            long,
        }
    }

    pub(crate) fn push(&self, sample: Sample) {
        let Some(now) = sample.at else { return };
        let sample = Arc::new(sample);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let anchored = (held.anchors.back()).and_then(|a| a.at);
        if anchored.is_none_or(|at| now.duration_since(at) >= ANCHOR_EVERY) {
            held.anchors.push_back(sample.clone());
        }
        held.recent.push_back(sample);
        keep_back(&mut held.recent, now, self.short);
        keep_back(&mut held.anchors, now, self.long);
    }

    /// The newest sample, and for each window the newest sample at least that old (else the
    /// oldest there is).
    pub(crate) fn windows<const N: usize>(
        &self,
        lengths: [Duration; N],
    ) -> Option<(Arc<Sample>, [Arc<Sample>; N])> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let newest = held.recent.back()?.clone();
        let now = newest.at?;
        let oldest = (held.anchors.front().into_iter().chain(held.recent.front()))
            .min_by_key(|s| s.at)
            .cloned()
            .unwrap_or_else(|| newest.clone());
        let bases = lengths.map(|length| {
            (held.recent.iter().rev().chain(held.anchors.iter().rev()))
                .find(|s| s.at.is_some_and(|at| now.duration_since(at) >= length))
                .cloned()
                .unwrap_or_else(|| oldest.clone())
        });
        Some((newest, bases))
    }
}

/// Seconds from `base` to `newest`.
pub(crate) fn covered(newest: &Sample, base: &Sample) -> f64 {
    match (newest.at, base.at) {
        (Some(now), Some(then)) => now.duration_since(then).as_secs_f64(),
        _ => 0.0,
    }
}

/// The window from `base` to `newest` of family `family`.
pub(crate) fn window(newest: &Sample, base: &Sample, family: usize) -> Window {
    let seconds = covered(newest, base);
    let before = base.rows.get(family);
    let rows = (newest.rows[family].iter())
        .map(|(key, totals)| {
            let earlier = before.and_then(|rows| rows.get(key));
            (key.clone(), totals.since(earlier))
        })
        .collect();
    Window { seconds, rows }
}

/// Prometheus's `histogram_quantile` over classic buckets (`counts` per bucket, +Inf last):
/// linear within the bucket holding the rank, the first bucket starting at 0, and the
/// highest finite bound when the rank falls in +Inf.
pub(crate) fn classic_quantile(bounds: &[f64], counts: &[f64], q: f64) -> Option<f64> {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 || counts.len() != bounds.len() + 1 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut below = 0.0;
    for (i, &count) in counts.iter().enumerate() {
        if below + count >= rank && count > 0.0 {
            let Some(&upper) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lower = if i == 0 {
                0.0f64.min(upper)
            } else {
                bounds[i - 1]
            };
            return Some(lower + (upper - lower) * (rank - below) / count);
        }
        below += count;
    }
    bounds.last().copied()
}

/// A quantile of a native histogram as Prometheus 3 estimates it: within the bucket holding
/// the rank, exponential interpolation between its bounds (2^((i-1)/2^schema) and
/// 2^(i/2^schema)); linear from 0 in the zero bucket. Negative buckets (no duration has
/// them) count below zero.
pub(crate) fn native_quantile(native: &Native, q: f64) -> Option<f64> {
    let total = native.count();
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut below: f64 = native.negative().map(|(_, c)| c).sum();
    if rank <= below {
        return Some(0.0);
    }
    let zero = native.zero_count();
    if zero > 0.0 && below + zero >= rank {
        return Some(native.zero_threshold() * (rank - below) / zero);
    }
    below += zero;
    let width = 2f64.powi(-i32::from(native.schema()));
    let mut last = None;
    for (index, count) in native.positive() {
        let (log_lower, log_upper) = ((index - 1) as f64 * width, index as f64 * width);
        if below + count >= rank {
            let fraction = (rank - below) / count;
            return Some((log_lower + (log_upper - log_lower) * fraction).exp2());
        }
        below += count;
        last = Some(log_upper.exp2());
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::store::NativeSpec;

    #[test]
    fn classic_quantiles_interpolate_as_prometheus_does() {
        let bounds = [0.01, 0.1, 1.0];
        // 10 below 10 ms, 80 in (10, 100] ms, 10 in (100 ms, 1 s], none above.
        let counts = [10.0, 80.0, 10.0, 0.0];
        assert_eq!(classic_quantile(&bounds, &counts, 0.05), Some(0.005));
        let p50 = classic_quantile(&bounds, &counts, 0.5).unwrap();
        assert!((p50 - (0.01 + 0.09 * 40.0 / 80.0)).abs() < 1e-12, "{p50}");
        let p95 = classic_quantile(&bounds, &counts, 0.95).unwrap();
        assert!((p95 - (0.1 + 0.9 * 5.0 / 10.0)).abs() < 1e-12, "{p95}");
        // In +Inf: the highest finite bound.
        assert_eq!(
            classic_quantile(&bounds, &[0.0, 0.0, 1.0, 3.0], 0.9),
            Some(1.0)
        );
        assert_eq!(classic_quantile(&bounds, &[0.0; 4], 0.5), None);
    }

    #[test]
    fn native_quantiles_interpolate_exponentially_within_a_bucket() {
        let spec = NativeSpec::new(0, 160, 1e-9);
        let mut native = Native::new(&spec);
        // Schema 0: bucket 1 is (1, 2], bucket 2 is (2, 4].
        native.observe(&spec, 1.5, 4.0);
        native.observe(&spec, 3.0, 4.0);
        assert_eq!(native_quantile(&native, 0.5), Some(2.0));
        // A quarter into (2, 4], exponentially: 2 * 2^0.25.
        let q = native_quantile(&native, 0.625).unwrap();
        assert!((q - 2.0 * 2f64.powf(0.25)).abs() < 1e-12, "{q}");
        assert_eq!(native_quantile(&native, 1.0), Some(4.0));
        native.observe(&spec, 0.0, 8.0);
        assert_eq!(native_quantile(&native, 0.25), Some(0.5e-9));
        assert_eq!(native_quantile(&Native::new(&spec), 0.5), None);
    }

    #[test]
    fn a_window_is_the_difference_of_two_samples_and_a_reset_counts_from_zero() {
        let row = |buckets: Vec<f64>, calls: f64, errors: f64| Totals {
            buckets,
            native: None,
            calls,
            errors,
        };
        let start = Instant::now();
        let sample = |secs: u64, rows: Vec<(&str, Totals)>| Sample {
            at: Some(start + Duration::from_secs(secs)),
            rows: vec![
                rows.into_iter()
                    .map(|(k, t)| (vec![k.to_string()], t))
                    .collect(),
            ],
            ..Sample::default()
        };
        let ring = Ring::new(Duration::from_secs(60), Duration::from_secs(300));
        ring.push(sample(0, vec![("a", row(vec![1.0, 0.0], 1.0, 0.0))]));
        ring.push(sample(
            30,
            vec![
                ("a", row(vec![3.0, 1.0], 4.0, 1.0)),
                ("b", row(vec![2.0, 0.0], 2.0, 0.0)),
            ],
        ));
        ring.push(sample(
            70,
            vec![
                ("a", row(vec![5.0, 1.0], 6.0, 1.0)),
                ("b", row(vec![1.0, 0.0], 1.0, 0.0)),
            ],
        ));
        let windows = [Duration::from_secs(60), Duration::from_secs(300)];
        let (newest, [minute, five]) = ring.windows(windows).unwrap();
        let last_minute = window(&newest, &minute, 0);
        assert_eq!(
            last_minute.seconds, 70.0,
            "the newest sample a minute old: the first"
        );
        let five = window(&newest, &five, 0);
        assert_eq!(five.seconds, 70.0, "the ring reaches back 70 s only");
        assert_eq!(
            five.rows[&vec!["a".to_string()]],
            row(vec![4.0, 1.0], 5.0, 1.0)
        );
        // b went down: its series restarted, so its window is what it has now.
        assert_eq!(
            five.rows[&vec!["b".to_string()]],
            row(vec![1.0, 0.0], 1.0, 0.0)
        );
        // Every 10 s to 400 s: the minute's samples, and one a minute back past 5 minutes.
        for secs in (80..=400).step_by(10) {
            ring.push(sample(
                secs,
                vec![("a", row(vec![secs as f64, 1.0], 7.0, 1.0))],
            ));
        }
        let (newest, [minute, five]) = ring.windows(windows).unwrap();
        assert_eq!(window(&newest, &minute, 0).seconds, 60.0);
        assert_eq!(
            window(&newest, &five, 0).seconds,
            330.0,
            "the anchor at 70 s"
        );
        let held = ring.held.lock().unwrap();
        let at = |s: &VecDeque<Arc<Sample>>| -> Vec<u64> {
            s.iter()
                .map(|s| s.at.unwrap().duration_since(start).as_secs())
                .collect()
        };
        assert_eq!(at(&held.recent), [340, 350, 360, 370, 380, 390, 400]);
        assert_eq!(at(&held.anchors), [70, 130, 190, 250, 310, 370]);
        let most = held_at_most(windows[0], windows[1], Duration::from_secs(10));
        assert!(held.recent.len() + held.anchors.len() <= most, "{most}");
    }

    #[test]
    fn a_sample_of_a_full_store_holds_less_than_its_bound() {
        use crate::metrics::store::{DimensionId, MetricId, MetricSpec, Store, StoreSpec};
        const MAX_SERIES: usize = 300;
        const LABEL: usize = 40;
        let histogram = MetricKind::Histogram {
            bounds: Arc::from(vec![0.01, 0.1, 1.0]),
            native: Some(NativeSpec::new(3, 160, 1e-9)),
        };
        let store = Store::new(StoreSpec {
            metrics: vec![
                MetricSpec::new("h_seconds", "h", histogram, &["service", "step"]),
                MetricSpec::new("c_total", "c", MetricKind::Counter, &["service"]),
            ],
            dimensions: vec![("service".into(), 1000)],
            overflow_value: "__overflow__".into(),
            max_series_per_metric: MAX_SERIES,
            label_overflow: None,
            series_overflow: None,
            keep_raw_values: false,
            series_idle_timeout: None,
            never_expire: Vec::new(),
        });
        // Past the series cap, every row of its own with texts as long as allowed, and the
        // native buckets over the whole range of durations; the counters' rows apart.
        let longest = u64::MAX as f64 / 1e9;
        let mut w = store.writer();
        for i in 0..2 * MAX_SERIES {
            let value = format!("{i:x<LABEL$}");
            let value = w.admitted(DimensionId(0), &value).to_string();
            for seconds in [1e-9, 2e-9, longest, longest / 3.0] {
                w.observe(MetricId(0), &[&value, &value], seconds, 1.0, None);
            }
            w.add(MetricId(1), &[&format!("{i:y<LABEL$}")], 1);
        }
        drop(w);
        let family = Family {
            histogram: "h_seconds".to_string(),
            counters: Some(["c_total".to_string(), "c_total".to_string()]),
            row_labels: vec!["service".to_string()],
        };
        let families = [family];
        let sample = Sample::of(&store.snapshot(), &families, &[], Instant::now());
        let rows = &sample.rows[0];
        assert!(rows.len() > 2 * MAX_SERIES, "{}", rows.len());
        let held: usize = (rows.iter())
            .map(|(key, totals)| {
                size_of::<(RowKey, Totals)>()
                    + key.capacity() * size_of::<String>()
                    + key.iter().map(String::capacity).sum::<usize>()
                    + totals.buckets.capacity() * size_of::<f64>()
                    + totals
                        .native
                        .as_ref()
                        .map_or(0, |n| n.capacity() * size_of::<f64>())
            })
            .sum();
        let bound = sample_bytes_bound(&families, &store.memory_bound(LABEL, 1), LABEL, 0, 0);
        assert!(held <= bound, "held {held}, bound {bound}");
        assert!(bound <= 5 * held, "held {held}, bound {bound}: loose");
    }
}
