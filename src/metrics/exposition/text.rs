//! The text formats: Prometheus text 0.0.4, and OpenMetrics 1.0 with the slowest span of
//! each histogram series as exemplar on the bucket that holds it.

use super::{Format, SPAN_ID, TRACE_ID, families, hex, is_whole};
use crate::metrics::store::{Cell, Exemplar, MetricId, MetricKind, Snapshot, bucket_of};
use std::fmt::Write;

/// A text rendering of `snapshot`.
pub fn render(snapshot: &Snapshot, format: Format) -> String {
    let mut out = String::new();
    render_into(&mut out, snapshot, format);
    out
}

/// [`render`] into `out`, cleared first; its memory is reused.
pub(super) fn render_into(out: &mut String, snapshot: &Snapshot, format: Format) {
    out.clear();
    out.reserve(estimated_len(snapshot));
    for (_, spec, series) in families(snapshot) {
        let family = match (format, &spec.kind) {
            (Format::OpenMetrics, MetricKind::Counter) => {
                spec.name.strip_suffix("_total").unwrap_or(&spec.name)
            }
            _ => &spec.name,
        };
        let kind = match spec.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram { .. } => "histogram",
        };
        let _ = writeln!(out, "# HELP {family} {}", escape_help(&spec.help));
        let _ = writeln!(out, "# TYPE {family} {kind}");
        if format == Format::OpenMetrics && family.ends_with("_seconds") {
            let _ = writeln!(out, "# UNIT {family} seconds");
        }
        // Per metric: sample names and bucket bounds, written once.
        let names = SampleNames::new(&spec.name, &spec.kind, format);
        let mut prefix = String::new();
        for (labels, cell) in series {
            // Per series: its label set, escaped once, reused by every line of the series.
            prefix.clear();
            for (i, (name, value)) in spec.label_names.iter().zip(labels).enumerate() {
                prefix.push(if i == 0 { '{' } else { ',' });
                prefix.push_str(name);
                prefix.push_str("=\"");
                escape_label_value(&mut prefix, value);
                prefix.push('"');
            }
            match (cell, &spec.kind) {
                (Cell::Counter(n), _) => {
                    line_start(out, &spec.name, &prefix);
                    push_count(out, *n, format);
                    out.push('\n');
                }
                (Cell::Gauge(v), _) => {
                    line_start(out, &spec.name, &prefix);
                    write_float(out, *v, format);
                    out.push('\n');
                }
                (
                    Cell::Histogram {
                        counts,
                        sum,
                        exemplar,
                        ..
                    },
                    MetricKind::Histogram { bounds, .. },
                ) => {
                    // The exemplar goes on the first bucket whose bound holds its value.
                    let exemplar_bucket = exemplar.map(|e| bucket_of(bounds, e.value));
                    let mut cumulative = 0.0;
                    for (i, (count, le)) in counts.iter().zip(&names.le).enumerate() {
                        cumulative += count;
                        out.push_str(&names.bucket);
                        out.push_str(if prefix.is_empty() { "{" } else { &prefix });
                        if !prefix.is_empty() {
                            out.push(',');
                        }
                        out.push_str("le=\"");
                        out.push_str(le);
                        out.push_str("\"} ");
                        push_histogram_count(out, cumulative, format);
                        match (format, exemplar) {
                            (Format::OpenMetrics, Some(e)) if exemplar_bucket == Some(i) => {
                                write_exemplar(out, e, format)
                            }
                            _ => {}
                        }
                        out.push('\n');
                    }
                    line_start(out, &names.sum, &prefix);
                    write_float(out, *sum, format);
                    out.push('\n');
                    line_start(out, &names.count, &prefix);
                    push_histogram_count(out, cumulative, format);
                    out.push('\n');
                }
                (Cell::Histogram { .. }, MetricKind::Counter | MetricKind::Gauge) => {
                    unreachable!("kinds agree")
                }
            }
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
}

/// About the length of the rendering, a little over for ordinary label values, so that the
/// output is allocated once instead of grown by copying (a scrape of 5,000 histogram series
/// is some megabytes).
fn estimated_len(snapshot: &Snapshot) -> usize {
    // Per line: a sample name's suffix, the `le` label, a value and an exemplar's share.
    const LINE: usize = 48;
    let mut len = 4096;
    for (index, spec) in snapshot.metrics.iter().enumerate() {
        let lines = match &spec.kind {
            MetricKind::Histogram { bounds, .. } => bounds.len() + 3,
            MetricKind::Counter | MetricKind::Gauge => 1,
        };
        let names: usize = spec.label_names.iter().map(|n| n.len() + 4).sum();
        len += spec.help.len() + 3 * spec.name.len() + 64;
        for (labels, _) in snapshot.cells(MetricId(index)) {
            let values: usize = labels.iter().map(|v| v.len()).sum();
            len += lines * (spec.name.len() + names + values + LINE);
        }
    }
    len
}

/// `n` in decimal, without the formatting machinery (a scrape writes one per bucket line).
/// A counter's value: as an integer while it is a whole number (most are), as a float when
/// adjusted counts (sampled spans) made it a fraction.
fn push_count(out: &mut String, count: f64, format: Format) {
    match is_whole(count) {
        true => push_u64(out, count as u64),
        false => write_float(out, count, format),
    }
}

/// A histogram's bucket or count value: as [`push_count`], except in OpenMetrics, whose
/// histogram values must be integers (1.0): a fraction is rounded to the nearest, which
/// keeps the buckets cumulative and every value non-decreasing from scrape to scrape. The
/// text format and the protobuf one carry the fraction.
fn push_histogram_count(out: &mut String, count: f64, format: Format) {
    match format {
        Format::OpenMetrics => push_count(out, count.round(), format),
        Format::Text => push_count(out, count, format),
    }
}

fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
    }
}

/// The names and bucket bounds of one metric's samples, formatted once per render.
struct SampleNames {
    bucket: String,
    sum: String,
    count: String,
    /// `le` values of the buckets, `+Inf` last (empty for counters and gauges).
    le: Vec<String>,
}

impl SampleNames {
    fn new(name: &str, kind: &MetricKind, format: Format) -> SampleNames {
        let le = match kind {
            MetricKind::Histogram { bounds, .. } => bounds
                .iter()
                .map(|b| {
                    let mut le = String::new();
                    write_float(&mut le, *b, format);
                    le
                })
                .chain(std::iter::once("+Inf".to_string()))
                .collect(),
            MetricKind::Counter | MetricKind::Gauge => Vec::new(),
        };
        SampleNames {
            bucket: format!("{name}_bucket"),
            sum: format!("{name}_sum"),
            count: format!("{name}_count"),
            le,
        }
    }
}

/// A sample's name and its escaped label set (`{...` without the closing brace, or empty),
/// then the space before the value.
fn line_start(out: &mut String, name: &str, prefix: &str) {
    out.push_str(name);
    if !prefix.is_empty() {
        out.push_str(prefix);
        out.push('}');
    }
    out.push(' ');
}

fn write_exemplar(out: &mut String, e: &Exemplar, format: Format) {
    out.push_str(" # {");
    id_label(out, TRACE_ID, &e.trace_id);
    out.push(',');
    id_label(out, SPAN_ID, &e.span_id);
    out.push_str("} ");
    write_float(out, e.value, format);
    out.push(' ');
    push_u64(out, e.timestamp_unix_nano / 1_000_000_000);
    let millis = (e.timestamp_unix_nano % 1_000_000_000) / 1_000_000;
    out.push('.');
    for digit in [millis / 100, millis / 10 % 10, millis % 10] {
        out.push(char::from(b'0' + digit as u8));
    }
}

/// `name="<id in hex>"`.
fn id_label(out: &mut String, name: &str, id: &[u8]) {
    out.push_str(name);
    out.push_str("=\"");
    out.extend(hex(id).map(char::from));
    out.push('"');
}

/// Shortest round-trip decimal; OpenMetrics wants integral floats written as `1.0`.
fn write_float(out: &mut String, v: f64, format: Format) {
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    let start = out.len();
    let _ = write!(out, "{v}");
    if format == Format::OpenMetrics && !out[start..].contains('.') {
        out.push_str(".0");
    }
}

fn escape_label_value(out: &mut String, v: &str) {
    if !v.contains(['\\', '"', '\n']) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::store::{MetricSpec, Store, StoreSpec};
    use std::sync::Arc;

    fn snapshot() -> Snapshot {
        snapshot_counting(1.0)
    }

    /// The test snapshot, each span standing for `count` operations.
    fn snapshot_counting(count: f64) -> Snapshot {
        let store = Store::new(StoreSpec {
            metrics: vec![
                MetricSpec::new(
                    "claim_duration_seconds",
                    "Claim time.\nSecond line",
                    MetricKind::Histogram {
                        bounds: Arc::from(vec![0.01, 1.0]),
                        native: None,
                    },
                    &["service"],
                ),
                MetricSpec::new(
                    "claim_calls_total",
                    "Claims.",
                    MetricKind::Counter,
                    &["service"],
                ),
            ],
            dimensions: vec![],
            overflow_value: "__overflow__".into(),
            max_series_per_metric: 10,
            label_overflow: None,
            series_overflow: None,
            keep_raw_values: false,
            series_idle_timeout: None,
            never_expire: Vec::new(),
        });
        let mut w = store.writer();
        let e = Exemplar {
            trace_id: [0xab; 16],
            span_id: [0xcd; 8],
            value: 0.0,
            timestamp_unix_nano: 1_700_000_000_250_000_000,
            epoch: 0,
        };
        w.observe(MetricId(0), &["a\"b"], 0.005, count, Some(e));
        w.observe(MetricId(0), &["a\"b"], 0.5, count, Some(e));
        let calls = w.series(MetricId(1), w.label_set(&["a\"b"]));
        w.add_to(calls, 2.0 * count);
        drop(w);
        store.snapshot()
    }

    #[test]
    fn text_format() {
        assert_eq!(
            render(&snapshot(), Format::Text),
            "\
# HELP claim_duration_seconds Claim time.\\nSecond line
# TYPE claim_duration_seconds histogram
claim_duration_seconds_bucket{service=\"a\\\"b\",le=\"0.01\"} 1
claim_duration_seconds_bucket{service=\"a\\\"b\",le=\"1\"} 2
claim_duration_seconds_bucket{service=\"a\\\"b\",le=\"+Inf\"} 2
claim_duration_seconds_sum{service=\"a\\\"b\"} 0.505
claim_duration_seconds_count{service=\"a\\\"b\"} 2
# HELP claim_calls_total Claims.
# TYPE claim_calls_total counter
claim_calls_total{service=\"a\\\"b\"} 2
"
        );
    }

    #[test]
    fn openmetrics_format_with_exemplar_on_its_bucket() {
        let text = render(&snapshot(), Format::OpenMetrics);
        let ids = format!(
            "trace_id=\"{}\",span_id=\"{}\"",
            "ab".repeat(16),
            "cd".repeat(8)
        );
        assert_eq!(
            text,
            format!(
                "\
# HELP claim_duration_seconds Claim time.\\nSecond line
# TYPE claim_duration_seconds histogram
# UNIT claim_duration_seconds seconds
claim_duration_seconds_bucket{{service=\"a\\\"b\",le=\"0.01\"}} 1
claim_duration_seconds_bucket{{service=\"a\\\"b\",le=\"1.0\"}} 2 # {{{ids}}} 0.5 1700000000.250
claim_duration_seconds_bucket{{service=\"a\\\"b\",le=\"+Inf\"}} 2
claim_duration_seconds_sum{{service=\"a\\\"b\"}} 0.505
claim_duration_seconds_count{{service=\"a\\\"b\"}} 2
# HELP claim_calls Claims.
# TYPE claim_calls counter
claim_calls_total{{service=\"a\\\"b\"}} 2
# EOF
"
            )
        );
    }

    #[test]
    fn integers_and_hex_as_fmt_writes_them() {
        for n in [0, 7, 10, 99, 100, 1_234_567, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
        let digits: Vec<u8> = hex(&[0x00, 0x0f, 0xa0, 0xff]).collect();
        assert_eq!(digits, b"000fa0ff");
    }

    #[test]
    fn fractional_adjusted_counts_are_written_exactly_except_openmetrics_histograms() {
        let snapshot = snapshot_counting(1.25);
        let text = render(&snapshot, Format::Text);
        for line in [
            "claim_duration_seconds_bucket{service=\"a\\\"b\",le=\"0.01\"} 1.25",
            "claim_duration_seconds_bucket{service=\"a\\\"b\",le=\"+Inf\"} 2.5",
            "claim_duration_seconds_count{service=\"a\\\"b\"} 2.5",
            "claim_calls_total{service=\"a\\\"b\"} 2.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let om = render(&snapshot, Format::OpenMetrics);
        for line in [
            "claim_duration_seconds_bucket{service=\"a\\\"b\",le=\"0.01\"} 1",
            "claim_duration_seconds_bucket{service=\"a\\\"b\",le=\"+Inf\"} 3",
            "claim_duration_seconds_count{service=\"a\\\"b\"} 3",
            "claim_calls_total{service=\"a\\\"b\"} 2.5",
        ] {
            assert!(om.lines().any(|l| l.starts_with(line)), "{line} in\n{om}");
        }
    }
}
