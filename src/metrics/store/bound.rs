//! The most memory a store can hold with every metric at `max_series_per_metric` and every
//! label at its cap (`spanlens check-config --memory`), from the sizes of its real types.

use super::series::SeriesKey;
use super::{Cell, Exemplar, MetricKind, Native, Slot, Snapshot, Store};
use crate::collections::sizes::{allocation, exact, grown, hash_table, text};
use std::mem::size_of;
use std::sync::Arc;

/// What a full store holds, by part, in bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoreBound {
    /// Series the caps allow, over every metric (each metric's overflow series included).
    pub(crate) series: usize,
    /// Series the caps allow one metric, its overflow series included.
    pub(crate) series_per_metric: usize,
    /// The most a histogram's cell holds outside itself (classic and native buckets), grown
    /// as a shard's cell grows.
    pub(crate) histogram_heap_bytes: usize,
    /// Copies a series can have: one in the shard of each thread that writes it, at most
    /// one per shard.
    pub(crate) copies: usize,
    /// Every shard's copy of every series (slot, index entry, buckets, native buckets, label
    /// texts), and the series cap's set.
    pub(crate) series_bytes: usize,
    /// The admitted values of every capped label, once per dimension and once per shard.
    pub(crate) label_bytes: usize,
    /// A scrape's snapshot: every shard's copy taken out, then merged.
    pub(crate) snapshot_bytes: usize,
    /// The largest rendering of a full store, over the three exposition formats.
    pub(crate) rendering_bytes: usize,
}

/// The longest text a count or sum can render as: the shortest round-trip decimal of the
/// smallest subnormal (adjusted counts are any number up to 2^56), which has no exponent.
const LONGEST_VALUE: f64 = 5e-324;

impl Store {
    /// The bound of this store with label values of at most `max_label_len` bytes, written
    /// by at most `writers` threads.
    pub(crate) fn memory_bound(&self, max_label_len: usize, writers: usize) -> StoreBound {
        let shards = self.shards.len().min(writers);
        let per_metric = self.max_series + 1;
        let series = self.metrics.len() * per_metric;
        let key_bytes = |labels: usize| {
            // The shared label list (an Arc's two counts, then the boxed texts) and the texts.
            exact(1, 2 * size_of::<usize>() + labels * size_of::<Box<str>>())
                + labels * text(max_label_len)
        };
        let mut in_shard = 0;
        let mut cloned = 0;
        let mut merged = 0;
        let mut cap_sets = 0;
        let mut histogram_heap_bytes = 0;
        for spec in &self.metrics {
            // A shard's cells grow by pushing and resizing; a snapshot's copies are clones.
            let cell = cell_heap(&spec.kind, grown);
            histogram_heap_bytes = histogram_heap_bytes.max(cell);
            // A shard may build its own key for a series it has not seen (a copy of the texts).
            in_shard += per_metric * (cell + key_bytes(spec.label_names.len()));
            cloned += per_metric * cell_heap(&spec.kind, exact);
            merged += per_metric * cell;
            cap_sets += hash_table(per_metric, size_of::<(SeriesKey, u64)>())
                + per_metric * key_bytes(spec.label_names.len());
        }
        let shard_tables =
            grown(series, size_of::<Slot>()) + hash_table(series, size_of::<usize>());
        let series_bytes = shards * (in_shard + shard_tables) + cap_sets;

        let label_bytes: usize = (self.dimensions.iter())
            .map(|d| {
                let values = d.cap + 1;
                let entry = size_of::<(Box<str>, u64)>();
                (1 + shards) * (hash_table(values, entry) + values * text(max_label_len))
            })
            .sum();

        // Every shard's copies cloned into one list, then merged into another, each series'
        // first copy taking the others in (and growing as a shard's cell does).
        let copies = shards * series;
        let entry = size_of::<(SeriesKey, Cell)>();
        let snapshot_bytes = grown(copies, entry) + exact(copies, entry) + shards * cloned + merged;

        StoreBound {
            series,
            series_per_metric: per_metric,
            histogram_heap_bytes,
            copies: shards,
            series_bytes,
            label_bytes,
            snapshot_bytes,
            rendering_bytes: per_metric * self.rendering_per_series(max_label_len),
        }
    }

    /// The largest rendering of one series of every metric, over the exposition formats: label
    /// values of `max_label_len` quotes (escaped, twice as long), the longest values, an
    /// exemplar, and as many native buckets as a series keeps, each apart from the next.
    fn rendering_per_series(&self, max_label_len: usize) -> usize {
        use crate::metrics::exposition::{Encoding, Format, render_into};
        let value: Box<str> = "\"".repeat(max_label_len).into();
        let copies = (self.metrics.iter().enumerate())
            .map(|(metric, spec)| {
                let key = SeriesKey {
                    metric,
                    labels: Arc::from(vec![value.clone(); spec.label_names.len()]),
                };
                (key, worst_cell(&spec.kind))
            })
            .collect();
        let snapshot = Snapshot::merged(&self.metrics, copies);
        let mut out = Vec::new();
        [
            Encoding::Text(Format::Text),
            Encoding::Text(Format::OpenMetrics),
            Encoding::Protobuf,
        ]
        .into_iter()
        .map(|encoding| {
            render_into(&mut out, &snapshot, encoding);
            out.len()
        })
        .max()
        .unwrap_or(0)
    }
}

/// What a cell of `kind` holds outside itself at most: its classic buckets and its native
/// histogram, whose counts take `counts(len, size)`.
fn cell_heap(kind: &MetricKind, counts: fn(usize, usize) -> usize) -> usize {
    match kind {
        MetricKind::Counter | MetricKind::Gauge => 0,
        MetricKind::Histogram { bounds, native } => {
            exact(bounds.len() + 1, size_of::<f64>())
                + native.as_ref().map_or(0, |spec| {
                    allocation(size_of::<Native>()) + counts(spec.buckets_bound(), size_of::<f64>())
                })
        }
    }
}

/// A cell that renders as long as any of its kind.
fn worst_cell(kind: &MetricKind) -> Cell {
    let mut cell = Cell::new(kind);
    if let Cell::Histogram {
        counts,
        sum,
        exemplar,
        native,
    } = &mut cell
    {
        counts.fill(LONGEST_VALUE);
        *sum = LONGEST_VALUE;
        *exemplar = Some(Exemplar {
            trace_id: [0xff; 16],
            span_id: [0xff; 8],
            value: LONGEST_VALUE,
            timestamp_unix_nano: u64::MAX,
            epoch: 0,
        });
        if let (
            Some(native),
            MetricKind::Histogram {
                native: Some(spec), ..
            },
        ) = (native, kind)
        {
            native.spread(spec, LONGEST_VALUE);
        }
    } else if let Cell::Counter(value) | Cell::Gauge(value) = &mut cell {
        *value = LONGEST_VALUE;
    }
    cell
}

#[cfg(test)]
impl Store {
    /// What the store holds now, from the capacities of its containers (without the
    /// allocator's rounding): every shard's slots, index, cells and keys, the series caps'
    /// sets and the labels' admitted values.
    pub(super) fn held_bytes(&self) -> usize {
        let key = |k: &SeriesKey| {
            2 * size_of::<usize>()
                + k.labels.len() * size_of::<Box<str>>()
                + k.labels.iter().map(|l| l.len()).sum::<usize>()
        };
        let cell = |c: &Cell| match c {
            Cell::Histogram { counts, native, .. } => {
                counts.len() * size_of::<f64>()
                    + native
                        .as_ref()
                        .map_or(0, |n| size_of::<Native>() + n.capacity() * size_of::<f64>())
            }
            _ => 0,
        };
        let texts = |values: &mut dyn Iterator<Item = &Box<str>>| -> usize {
            values.map(|v| v.len()).sum()
        };
        let mut held = 0;
        for shard in self.shards.iter() {
            let shard = super::lock(shard);
            held += shard.slots.capacity() * size_of::<Slot>() + shard.index.allocation_size();
            held += (shard.slots.iter())
                .map(|s| key(&s.key) + cell(&s.cell))
                .sum::<usize>();
            held += (shard.admitted.iter())
                .map(|a| a.allocation_size() + texts(&mut a.keys()))
                .sum::<usize>();
        }
        for set in &self.admitted_series {
            let set = super::lock(set);
            held += set.allocation_size() + set.keys().map(key).sum::<usize>();
        }
        for dimension in &self.dimensions {
            let values = super::read(&dimension.values);
            held += values.allocation_size() + texts(&mut values.keys());
        }
        held
    }
}
