//! Assertions on the histograms and counters of a scrape, against values a test computed
//! from its fixture.

use super::{Exposition, parse_le};

/// The default profile's bucket bounds (seconds); every histogram also has +Inf.
pub const DEFAULT_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0,
];
pub const EPSILON: f64 = 1e-9;

/// The default bounds and +Inf.
pub fn expected_bounds() -> Vec<f64> {
    DEFAULT_BUCKETS
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .collect()
}

pub fn assert_close(got: Option<f64>, want: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no such sample (want {want})"));
    assert!(
        (got - want).abs() < EPSILON,
        "{what}: got {got}, want {want}"
    );
}

pub fn assert_count(got: Option<f64>, want: usize, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no such sample (want {want})"));
    assert_eq!(got, want as f64, "{what}");
}

/// A counter that may be absent when its expected value is 0.
pub fn assert_count_or_absent(got: Option<f64>, want: usize, what: &str) {
    assert_eq!(got.unwrap_or(0.0), want as f64, "{what}");
}

/// Bucket bounds (as floats) are exactly the default ones plus +Inf; every cumulative count,
/// `_sum` and `_count` of one series agree with the observed `values`.
pub fn assert_histogram(
    exposition: &Exposition,
    name: &str,
    labels: &[(&str, &str)],
    values: &[f64],
) {
    let buckets = exposition.buckets(name, labels);
    let bounds: Vec<f64> = buckets.iter().map(|(le, _)| parse_le(le)).collect();
    assert_eq!(
        bounds,
        expected_bounds(),
        "{name} {labels:?}: bucket bounds"
    );
    for (le, count) in &buckets {
        let bound = parse_le(le);
        let want = values.iter().filter(|v| **v <= bound).count();
        assert_eq!(
            *count, want as f64,
            "{name}_bucket {labels:?} le={le}: values {values:?}"
        );
    }
    assert_close(
        exposition.value(&format!("{name}_sum"), labels),
        values.iter().sum(),
        &format!("{name}_sum {labels:?}"),
    );
    assert_count(
        exposition.value(&format!("{name}_count"), labels),
        values.len(),
        &format!("{name}_count {labels:?}"),
    );
}

/// Literal cumulative counts, in bound order (0.001 ... 10, +Inf), at exactly those bounds.
pub fn assert_buckets_literal(
    exposition: &Exposition,
    name: &str,
    labels: &[(&str, &str)],
    want: [u64; 15],
) {
    let got: Vec<(f64, f64)> = exposition
        .buckets(name, labels)
        .iter()
        .map(|(le, c)| (parse_le(le), *c))
        .collect();
    let want: Vec<(f64, f64)> = expected_bounds()
        .into_iter()
        .zip(want.iter().map(|c| *c as f64))
        .collect();
    assert_eq!(got, want, "{name} {labels:?}: (le, cumulative count)");
}
