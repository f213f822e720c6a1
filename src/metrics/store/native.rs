//! Native histograms, as Prometheus defines them: sparse exponential buckets. At schema `s`
//! bucket `i` holds the values in (base^(i-1), base^i], base = 2^(2^-s); values of at most
//! the zero threshold (in magnitude) fall in one zero bucket; negative values mirror the
//! positive buckets. A series keeps at most `max_buckets` populated buckets: one more lowers
//! its schema by one (every two neighbouring buckets merge), so memory stays bounded and the
//! resolution adapts to the spread of the values.
//!
//! A value's bucket is found at the configured schema from its binary exponent and a table of
//! the bucket bounds within one power of two (exact comparisons, no logarithm), then shifted
//! down to the series' current schema.

use crate::config::limits::{MIN_NATIVE_BUCKETS, NATIVE_SCHEMAS as SCHEMAS};
use std::sync::Arc;

/// How every native histogram of a metric is kept.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NativeSpec {
    /// The schema a series starts at.
    schema: i8,
    max_buckets: usize,
    zero_threshold: f64,
    layout: Arc<Layout>,
}

/// The bounds within one power of two at a schema of 1 or more, and where to start looking
/// for a mantissa among them.
#[derive(Debug, PartialEq)]
struct Layout {
    /// 2^(j/2^schema) for j in 0..=2^schema (the rest unused), inline: one pointer from the
    /// spec to every table a value's bucket reads.
    bounds: [f64; 257],
    /// By the top 8 bits of a mantissa: the number of bounds below the smallest mantissa
    /// with those bits.
    start: [u16; 256],
}

impl NativeSpec {
    /// `schema` within [`SCHEMAS`], `max_buckets` at least [`MIN_NATIVE_BUCKETS`] (config
    /// checks both).
    pub(crate) fn new(schema: i8, max_buckets: usize, zero_threshold: f64) -> NativeSpec {
        assert!(SCHEMAS.contains(&schema) && max_buckets >= MIN_NATIVE_BUCKETS);
        let per_octave = 1usize << schema.max(0);
        let mut bounds = [f64::INFINITY; 257];
        for (j, bound) in bounds.iter_mut().enumerate().take(per_octave + 1) {
            *bound = (j as f64 / per_octave as f64).exp2();
        }
        let mut start = [0u16; 256];
        for (k, s) in start.iter_mut().enumerate() {
            let mantissa = 1.0 + k as f64 / 256.0;
            *s = bounds.iter().filter(|&&b| b < mantissa).count() as u16;
        }
        NativeSpec {
            schema,
            max_buckets,
            zero_threshold,
            layout: Arc::new(Layout { bounds, start }),
        }
    }

    /// The most bucket counts a native histogram of this spec holds. Every value
    /// observed is a duration in whole nanoseconds, as seconds: none is negative, and the
    /// positive ones lie between [`SMALLEST_OBSERVED`] and [`LARGEST_OBSERVED`]. The counts
    /// are one run from the lowest populated bucket to the highest (empty ones between
    /// included, so a run can be far longer than `max_buckets`), widest at the starting
    /// schema.
    pub(crate) fn buckets_bound(&self) -> usize {
        let lowest = self.index(SMALLEST_OBSERVED.max(self.zero_threshold));
        (self.index(LARGEST_OBSERVED) - lowest + 1) as usize
    }

    /// The bucket of a value above the zero threshold, at the spec's schema.
    fn index(&self, magnitude: f64) -> i32 {
        let (exponent, mantissa) = split(magnitude);
        if self.schema <= 0 {
            // The bucket at schema 0 (powers of two as bounds), then merged down.
            let at_zero = exponent + i32::from(mantissa > 1.0);
            return lower(at_zero, -self.schema);
        }
        let bounds = &self.layout.bounds;
        let top = ((mantissa.to_bits() >> 44) & 0xff) as usize;
        let mut j = usize::from(self.layout.start[top]);
        while bounds[j] < mantissa {
            j += 1;
        }
        (exponent << self.schema) + j as i32
    }
}

/// The smallest positive duration, one nanosecond, in seconds.
const SMALLEST_OBSERVED: f64 = 1e-9;

/// The largest duration, `u64::MAX` nanoseconds, in seconds.
const LARGEST_OBSERVED: f64 = u64::MAX as f64 / 1e9;

/// `value` (finite, positive) as 2^exponent × mantissa, mantissa in [1, 2).
fn split(value: f64) -> (i32, f64) {
    let value = value.min(f64::MAX);
    let bits = value.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // Subnormal: scale into the normal range first.
        let (exponent, mantissa) = split(value * 2f64.powi(64));
        return (exponent - 64, mantissa);
    }
    let mantissa = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    (biased - 1023, mantissa)
}

/// The index at `by` schemas lower of bucket `index`: ceil(index / 2^by).
fn lower(index: i32, by: i8) -> i32 {
    ((index - 1) >> by) + 1
}

/// A native histogram in a cell: a shard's, or a snapshot's merge of them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Native {
    schema: i8,
    zero_threshold: f64,
    max_buckets: usize,
    zero_count: f64,
    positive: Buckets,
    negative: Buckets,
}

/// Consecutive bucket counts from index `first` on, with how many are not zero.
#[derive(Debug, Clone, Default, PartialEq)]
struct Buckets {
    first: i32,
    counts: Vec<f64>,
    populated: usize,
}

impl Buckets {
    /// Most observations land in a bucket already counted: that case stays inline.
    #[inline]
    fn add(&mut self, index: i32, by: f64) {
        // An index below `first` wraps to beyond the end.
        let at = index.wrapping_sub(self.first) as u32 as usize;
        if let Some(count) = self.counts.get_mut(at)
            && *count > 0.0
        {
            *count += by;
            return;
        }
        self.add_to_new(index, by);
    }

    /// A bucket not counted yet: grows the run of counts to hold it when needed.
    #[inline(never)]
    fn add_to_new(&mut self, index: i32, by: f64) {
        if self.counts.is_empty() {
            self.first = index;
        } else if index < self.first {
            let grow = (self.first - index) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0.0, grow));
            self.first = index;
        }
        let at = (index - self.first) as usize;
        if at >= self.counts.len() {
            self.counts.resize(at + 1, 0.0);
        }
        if self.counts[at] == 0.0 {
            self.populated += 1;
        }
        self.counts[at] += by;
    }

    /// The populated buckets, by increasing index.
    fn iter(&self) -> impl Iterator<Item = (i32, f64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0.0)
            .map(|(at, c)| (self.first + at as i32, *c))
    }

    /// The same counts `by` schemas lower.
    fn lowered(&self, by: i8) -> Buckets {
        let mut lowered = Buckets::default();
        for (index, count) in self.iter() {
            lowered.add(lower(index, by), count);
        }
        lowered
    }
}

impl Native {
    pub(crate) fn new(spec: &NativeSpec) -> Native {
        Native {
            schema: spec.schema,
            zero_threshold: spec.zero_threshold,
            max_buckets: spec.max_buckets,
            zero_count: 0.0,
            positive: Buckets::default(),
            negative: Buckets::default(),
        }
    }

    /// Counts `count` in each of `max_buckets` buckets, every other one from 1 on: as many
    /// populated buckets as a series keeps, none next to another (the longest rendering).
    pub(crate) fn spread(&mut self, spec: &NativeSpec, count: f64) {
        let width = 2f64.powi(-i32::from(spec.schema));
        for i in 0..spec.max_buckets {
            self.observe(spec, (2.0 * i as f64 * width).exp2() * 1.0001, count);
        }
    }

    /// Observes `value` as `count` (> 0) observations.
    pub(crate) fn observe(&mut self, spec: &NativeSpec, value: f64, count: f64) {
        let magnitude = value.abs();
        // NaN, too, counts in the zero bucket: it has no other.
        if magnitude.is_nan() || magnitude <= self.zero_threshold {
            self.zero_count += count;
            return;
        }
        let index = lower(spec.index(magnitude), spec.schema - self.schema);
        match value > 0.0 {
            true => self.positive.add(index, count),
            false => self.negative.add(index, count),
        }
        self.fit();
    }

    /// Adds `other` (the same series from another shard) into `self`, at the lower of the
    /// two schemas.
    pub(crate) fn merge(&mut self, other: &Native) {
        let (mut other, schema) = (other.clone(), self.schema.min(other.schema));
        self.lower_to(schema);
        other.lower_to(schema);
        self.zero_count += other.zero_count;
        for (mine, theirs) in [
            (&mut self.positive, &other.positive),
            (&mut self.negative, &other.negative),
        ] {
            for (index, count) in theirs.iter() {
                mine.add(index, count);
            }
        }
        self.fit();
    }

    /// The observations made since `earlier` (this series' copy of an earlier moment): both
    /// at the lower of their schemas, bucket by bucket, never below zero.
    pub(crate) fn since(&self, earlier: &Native) -> Native {
        let (mut now, mut then) = (self.clone(), earlier.clone());
        let schema = now.schema.min(then.schema);
        now.lower_to(schema);
        then.lower_to(schema);
        let minus = |now: &Buckets, then: &Buckets| {
            let before: std::collections::HashMap<i32, f64> = then.iter().collect();
            let mut left = Buckets::default();
            for (index, count) in now.iter() {
                let added = count - before.get(&index).copied().unwrap_or(0.0);
                if added > 0.0 {
                    left.add(index, added);
                }
            }
            left
        };
        Native {
            zero_count: (now.zero_count - then.zero_count).max(0.0),
            positive: minus(&now.positive, &then.positive),
            negative: minus(&now.negative, &then.negative),
            ..now
        }
    }

    /// Lowers the schema until at most `max_buckets` buckets are populated (or the schema is
    /// the lowest there is).
    fn fit(&mut self) {
        while self.positive.populated + self.negative.populated > self.max_buckets
            && self.schema > *SCHEMAS.start()
        {
            self.lower_to(self.schema - 1);
        }
    }

    fn lower_to(&mut self, schema: i8) {
        let by = self.schema - schema;
        if by > 0 {
            self.positive = self.positive.lowered(by);
            self.negative = self.negative.lowered(by);
            self.schema = schema;
        }
    }

    pub(crate) fn schema(&self) -> i8 {
        self.schema
    }

    pub(crate) fn zero_threshold(&self) -> f64 {
        self.zero_threshold
    }

    pub(crate) fn zero_count(&self) -> f64 {
        self.zero_count
    }

    /// The populated positive buckets (index, count), by increasing index.
    pub(crate) fn positive(&self) -> impl Iterator<Item = (i32, f64)> + '_ {
        self.positive.iter()
    }

    /// The populated negative buckets (index, count) by increasing index: bucket i holds the
    /// values in [-base^i, -base^(i-1)).
    pub(crate) fn negative(&self) -> impl Iterator<Item = (i32, f64)> + '_ {
        self.negative.iter()
    }

    /// Every bucket's count, the zero bucket's first.
    pub(crate) fn counts(&self) -> impl Iterator<Item = f64> + '_ {
        let buckets = self.negative.counts.iter().chain(&self.positive.counts);
        std::iter::once(self.zero_count).chain(buckets.copied())
    }

    /// The bucket counts it has room for.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.positive.counts.capacity() + self.negative.counts.capacity()
    }

    /// Observations counted, over every bucket.
    pub(crate) fn count(&self) -> f64 {
        self.counts().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bucket i at schema s holds (base^(i-1), base^i]: the reference, by logarithm.
    fn reference_index(value: f64, schema: i8) -> i32 {
        (value.log2() * 2f64.powi(i32::from(schema))).ceil() as i32
    }

    fn bound(index: i32, schema: i8) -> f64 {
        (f64::from(index) * 2f64.powi(-i32::from(schema))).exp2()
    }

    #[test]
    fn every_schema_puts_values_in_the_bucket_the_definition_gives() {
        let values = [
            1e-9, 3.7e-7, 0.001, 0.0123, 0.04, 0.1, 0.25, 0.5, 0.999, 1.0, 1.5, 2.0, 3.0, 17.3,
            1e6, 5e-310,
        ];
        for schema in SCHEMAS {
            let spec = NativeSpec::new(schema, 160, 0.0);
            for value in values {
                let got = spec.index(value);
                // Exactly on a bound, and just above it: the bound belongs to the lower bucket.
                assert!(
                    value <= bound(got, schema) * (1.0 + 1e-12),
                    "{value} s{schema} {got}"
                );
                assert!(
                    value > bound(got - 1, schema) * (1.0 - 1e-12),
                    "{value} s{schema}"
                );
                if (value.log2() * 2f64.powi(schema.into())).fract().abs() > 1e-9 {
                    assert_eq!(
                        got,
                        reference_index(value, schema),
                        "{value} at schema {schema}"
                    );
                }
            }
        }
    }

    #[test]
    fn bounds_belong_to_the_bucket_below_them() {
        for schema in SCHEMAS {
            let spec = NativeSpec::new(schema, 160, 0.0);
            for index in [-40, -9, -1, 0, 1, 2, 7, 8, 9, 33] {
                let b = bound(index, schema);
                // The table's bound is the one the comparison uses; powers of two are exact.
                if schema <= 0 || index % (1 << schema) == 0 {
                    assert_eq!(spec.index(b), index, "bound {b} at schema {schema}");
                }
                assert_eq!(
                    spec.index(b * (1.0 + 1e-9)),
                    index + 1,
                    "above {b} (s{schema})"
                );
            }
        }
    }

    #[test]
    fn lowering_merges_pairs_of_buckets() {
        for index in -20..20 {
            for by in 1..4 {
                let lowered = lower(index, by);
                let width = 1 << by;
                // Bucket `lowered` covers the buckets (lowered-1)*width+1 ..= lowered*width.
                assert!((lowered - 1) * width < index && index <= lowered * width);
            }
        }
    }

    #[test]
    fn too_many_buckets_lower_the_schema_instead_of_growing() {
        let spec = NativeSpec::new(8, 10, 1e-9);
        let mut native = Native::new(&spec);
        let values: Vec<f64> = (0..1000).map(|i| 0.001 * 1.01f64.powi(i)).collect();
        for &v in &values {
            native.observe(&spec, v, 1.0);
        }
        let populated = native.positive().count();
        assert!(populated <= 10, "{populated} buckets");
        assert!(native.schema() < 8);
        assert_eq!(native.count(), 1000.0);
        // Every value is still inside its (coarser) bucket.
        let at = NativeSpec::new(native.schema().max(-4), 10, 0.0);
        let buckets: Vec<(i32, f64)> = native.positive().collect();
        let mut expected = Buckets::default();
        for &v in &values {
            expected.add(at.index(v), 1.0);
        }
        assert_eq!(buckets, expected.iter().collect::<Vec<_>>());
    }

    #[test]
    fn zero_and_negative_values() {
        let spec = NativeSpec::new(3, 160, 0.001);
        let mut native = Native::new(&spec);
        for v in [0.0, 0.0005, -0.0005, f64::NAN, -0.5, -0.5, 0.5] {
            native.observe(&spec, v, 1.0);
        }
        assert_eq!(native.zero_count(), 4.0);
        assert_eq!(native.negative().collect::<Vec<_>>(), vec![(-8, 2.0)]);
        assert_eq!(native.positive().collect::<Vec<_>>(), vec![(-8, 1.0)]);
        assert_eq!(native.count(), 7.0);
    }

    #[test]
    fn since_an_earlier_copy_leaves_the_newer_observations() {
        let spec = NativeSpec::new(3, 160, 1e-9);
        let mut earlier = Native::new(&spec);
        for v in [0.010, 0.020, 0.0] {
            earlier.observe(&spec, v, 1.0);
        }
        let mut now = earlier.clone();
        for v in [0.020, 0.400, 0.0] {
            now.observe(&spec, v, 2.0);
        }
        let added = now.since(&earlier);
        assert_eq!(added.count(), 6.0);
        assert_eq!(added.zero_count(), 2.0);
        let index = |v: f64| spec.index(v);
        assert_eq!(
            added.positive().collect::<Vec<_>>(),
            [(index(0.020), 2.0), (index(0.400), 2.0)]
        );
        // A copy at a lower schema (more buckets since) meets the earlier one there.
        let mut lowered = now.clone();
        lowered.lower_to(1);
        assert_eq!(lowered.since(&earlier).schema(), 1);
        assert_eq!(lowered.since(&earlier).count(), 6.0);
    }

    #[test]
    fn merging_copies_at_different_schemas_meets_at_the_lower() {
        let spec = NativeSpec::new(4, 6, 0.0);
        let (mut wide, mut narrow) = (Native::new(&spec), Native::new(&spec));
        for i in 0..40 {
            wide.observe(&spec, 1.0 + f64::from(i) * 0.3, 1.0);
        }
        narrow.observe(&spec, 1.01, 1.0);
        narrow.observe(&spec, 1.02, 1.0);
        assert!(wide.schema() < narrow.schema());
        let mut merged = narrow.clone();
        merged.merge(&wide);
        assert_eq!(merged.schema(), wide.schema());
        assert_eq!(merged.count(), 42.0);
        let mut the_other_way = wide.clone();
        the_other_way.merge(&narrow);
        assert_eq!(merged, the_other_way);
    }
}
