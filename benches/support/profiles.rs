//! The default profile with some of its features turned off, to measure what each costs
//! per span (BENCHMARKS.md). Shared by the `pipeline` bench and the `ingest_instructions`
//! example.

use spanlens::config::Config;

/// Features of the default profile that can be turned off one by one, by name.
pub const FEATURES: [&str; 6] = [
    "span_metrics",
    "derived",
    "comparisons",
    "dedupe",
    "breakdown",
    "native_histograms",
];

/// What is left with all of [`FEATURES`] but the native histograms off: decode, classify and
/// the stage metrics (histogram, calls and errors by service and handler language).
pub const STAGES_ONLY: &[&str] = FEATURES.split_at(5).0;

/// The stages of the flow the in-process target names (issue 3: "decode + classify +
/// aggregate"): every histogram and counter a span is observed into on its own (stage
/// metrics, span metrics, comparisons), without what ties spans together or keeps them
/// (the join window, a stage of its own in DESIGN.md's flow; duplicate detection; the
/// breakdown log).
pub const DECODE_CLASSIFY_AGGREGATE: &[&str] = &["derived", "dedupe", "breakdown"];

/// The default profile without the named features.
///
/// # Panics
/// On a name not in [`FEATURES`].
pub fn default_profile_without(features: &[&str]) -> Config {
    let mut config = Config::default_profile();
    for &feature in features {
        match feature {
            "span_metrics" => config.span_metrics.enabled = false,
            "derived" => config.derived.clear(),
            "comparisons" => config.comparisons.clear(),
            "dedupe" => config.join.dedupe_spans = 0,
            "breakdown" => config.breakdown.max_spans = 0,
            "native_histograms" => config.metrics.native_histograms.enabled = false,
            other => panic!("no feature {other:?}; the features are {FEATURES:?}"),
        }
    }
    config
}
