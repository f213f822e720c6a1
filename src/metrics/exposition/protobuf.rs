//! Prometheus's protobuf exposition: one `io.prometheus.client.MetricFamily` message per
//! family, each preceded by its length as a varint (`encoding=delimited`), encoded here by
//! hand with the field numbers of client_model's `metrics.proto` (proto2).
//!
//! A histogram series is one `Histogram` message with its classic buckets (cumulative, +Inf
//! included), its exemplar on the bucket whose bound holds the exemplar's value (that is
//! where Prometheus 2.42 reads exemplars, of classic and native histograms alike:
//! client_model 0.3 has no histogram-level exemplars), and, when the series keeps one, its
//! native histogram in the same message: schema, zero bucket, and the populated buckets as
//! spans (offset from the end of the previous span, the first from index 0) and deltas (each
//! count minus the one before it, the first minus 0).
//!
//! Prometheus 2.42 takes a histogram for native when its zero threshold or zero count is
//! above 0 or it has bucket deltas, decides that by the family's first series for the whole
//! family, and then ingests only the native histogram (the classic buckets serve for
//! exemplars only). A native histogram with no observation is marked with an empty span, the
//! mark later Prometheus versions look for.

use super::{SPAN_ID, TRACE_ID, families, hex};
use crate::metrics::store::{Cell, Exemplar, MetricKind, MetricSpec, Native, Snapshot, bucket_of};

/// `MetricType` values.
const COUNTER: u64 = 0;
const GAUGE: u64 = 1;
const HISTOGRAM: u64 = 4;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

pub(super) fn render_into(out: &mut Vec<u8>, snapshot: &Snapshot) {
    out.clear();
    for (spec, series) in families(snapshot) {
        delimited(out, |out| {
            // MetricFamily: name 1, help 2, type 3, metric 4.
            bytes_field(out, 1, spec.name.as_bytes());
            bytes_field(out, 2, spec.help.as_bytes());
            varint_field(
                out,
                3,
                match spec.kind {
                    MetricKind::Counter => COUNTER,
                    MetricKind::Gauge => GAUGE,
                    MetricKind::Histogram { .. } => HISTOGRAM,
                },
            );
            for (labels, cell) in series {
                message(out, 4, |out| metric(out, spec, labels, cell));
            }
        });
    }
}

/// A `Metric`: label 1, gauge 2, counter 3, histogram 7.
fn metric(out: &mut Vec<u8>, spec: &MetricSpec, labels: &[Box<str>], cell: &Cell) {
    for (name, value) in spec.label_names.iter().zip(labels) {
        label(out, 1, name.as_bytes(), value.as_bytes());
    }
    match (cell, &spec.kind) {
        // Gauge and Counter: value 1.
        (Cell::Gauge(v), _) => message(out, 2, |out| double_field(out, 1, *v)),
        (Cell::Counter(n), _) => message(out, 3, |out| double_field(out, 1, *n as f64)),
        (
            Cell::Histogram {
                counts,
                sum,
                exemplar,
                native,
            },
            MetricKind::Histogram { bounds, .. },
        ) => message(out, 7, |out| {
            // Histogram: sample_count 1, sample_sum 2, bucket 3 (cumulative_count 1,
            // upper_bound 2, exemplar 3).
            varint_field(out, 1, counts.iter().sum());
            double_field(out, 2, *sum);
            let exemplar_bucket = exemplar.map(|e| bucket_of(bounds, e.value));
            let upper_bounds = bounds.iter().copied().chain([f64::INFINITY]);
            let mut cumulative = 0;
            for (i, (count, bound)) in counts.iter().zip(upper_bounds).enumerate() {
                cumulative += count;
                message(out, 3, |out| {
                    varint_field(out, 1, cumulative);
                    double_field(out, 2, bound);
                    if let Some(e) = exemplar.filter(|_| exemplar_bucket == Some(i)) {
                        message(out, 3, |out| exemplar_message(out, &e));
                    }
                });
            }
            if let Some(native) = native {
                native_fields(out, native);
            }
        }),
        (Cell::Histogram { .. }, MetricKind::Counter | MetricKind::Gauge) => {
            unreachable!("kinds agree")
        }
    }
}

/// The native histogram's fields of `Histogram`: schema 5, zero_threshold 6, zero_count 7,
/// negative_span 9 and negative_delta 10, positive_span 12 and positive_delta 13.
fn native_fields(out: &mut Vec<u8>, native: &Native) {
    sint_field(out, 5, i64::from(native.schema()));
    double_field(out, 6, native.zero_threshold());
    varint_field(out, 7, native.zero_count());
    buckets(out, 9, 10, || native.negative());
    buckets(out, 12, 13, || native.positive());
    if native.count() == 0 {
        message(out, 12, |out| {
            sint_field(out, 1, 0);
            varint_field(out, 2, 0);
        });
    }
}

/// Populated buckets (index, count; by increasing index) as `BucketSpan`s (offset 1, length
/// 2) in field `spans`, then as deltas in field `deltas`.
fn buckets<I: Iterator<Item = (i32, u64)>>(
    out: &mut Vec<u8>,
    spans: u32,
    deltas: u32,
    populated: impl Fn() -> I,
) {
    // A span: its offset, and its length so far.
    let mut span: Option<(i32, u32)> = None;
    // The index after the last bucket seen.
    let mut next = 0;
    for (index, _) in populated() {
        span = match span {
            Some((offset, length)) if index == next => Some((offset, length + 1)),
            _ => {
                if let Some((offset, length)) = span {
                    bucket_span(out, spans, offset, length);
                }
                Some((index - next, 1))
            }
        };
        next = index + 1;
    }
    if let Some((offset, length)) = span {
        bucket_span(out, spans, offset, length);
    }
    let mut previous = 0;
    for (_, count) in populated() {
        sint_field(out, deltas, count as i64 - previous as i64);
        previous = count;
    }
}

fn bucket_span(out: &mut Vec<u8>, field: u32, offset: i32, length: u32) {
    message(out, field, |out| {
        sint_field(out, 1, i64::from(offset));
        varint_field(out, 2, u64::from(length));
    });
}

/// An `Exemplar`: label 1 (trace_id, span_id in hex), value 2, timestamp 3
/// (`google.protobuf.Timestamp`: seconds 1, nanos 2).
fn exemplar_message(out: &mut Vec<u8>, e: &Exemplar) {
    let mut digits = [0; 32];
    for (name, id) in [(TRACE_ID, &e.trace_id[..]), (SPAN_ID, &e.span_id[..])] {
        for (slot, digit) in digits.iter_mut().zip(hex(id)) {
            *slot = digit;
        }
        label(out, 1, name.as_bytes(), &digits[..2 * id.len()]);
    }
    double_field(out, 2, e.value);
    message(out, 3, |out| {
        varint_field(out, 1, e.timestamp_unix_nano / 1_000_000_000);
        varint_field(out, 2, e.timestamp_unix_nano % 1_000_000_000);
    });
}

/// A `LabelPair` (name 1, value 2) as field `field`.
fn label(out: &mut Vec<u8>, field: u32, name: &[u8], value: &[u8]) {
    message(out, field, |out| {
        bytes_field(out, 1, name);
        bytes_field(out, 2, value);
    });
}

fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire_type));
}

fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    tag(out, field, VARINT);
    varint(out, value);
}

/// A `sint32` or `sint64` field (zigzag: small magnitudes take few bytes either side of 0;
/// the two encode alike for values that fit 32 bits).
fn sint_field(out: &mut Vec<u8>, field: u32, value: i64) {
    tag(out, field, VARINT);
    varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

fn double_field(out: &mut Vec<u8>, field: u32, value: f64) {
    tag(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A nested message as field `field`: its body written by `body`.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, LEN);
    delimited(out, body);
}

/// What `body` writes, preceded by its length as a varint. The body is written in place
/// after one byte kept for the length, and moved up when the length takes more: most
/// messages here are under 128 bytes.
fn delimited(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.push(0);
    body(out);
    let len = out.len() - at - 1;
    let (prefix, prefix_len) = varint_bytes(len as u64);
    if prefix_len > 1 {
        out.resize(out.len() + prefix_len - 1, 0);
        out.copy_within(at + 1..at + 1 + len, at + prefix_len);
    }
    out[at..at + prefix_len].copy_from_slice(&prefix[..prefix_len]);
}

fn varint(out: &mut Vec<u8>, value: u64) {
    let (bytes, len) = varint_bytes(value);
    out.extend_from_slice(&bytes[..len]);
}

/// `value` as a varint: seven bits a byte, least significant first; the bytes and how many.
fn varint_bytes(mut value: u64) -> ([u8; 10], usize) {
    let mut bytes = [0; 10];
    let mut len = 0;
    while value >= 0x80 {
        bytes[len] = (value as u8) | 0x80;
        value >>= 7;
        len += 1;
    }
    bytes[len] = value as u8;
    (bytes, len + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::store::NativeSpec;

    /// The native part of client_model's `Histogram` and its `BucketSpan`, decoded by prost.
    #[derive(Clone, PartialEq, prost::Message)]
    struct NativeHistogram {
        #[prost(sint32, optional, tag = "5")]
        schema: Option<i32>,
        #[prost(double, optional, tag = "6")]
        zero_threshold: Option<f64>,
        #[prost(uint64, optional, tag = "7")]
        zero_count: Option<u64>,
        #[prost(message, repeated, tag = "9")]
        negative_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, packed = "false", tag = "10")]
        negative_delta: Vec<i64>,
        #[prost(message, repeated, tag = "12")]
        positive_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, packed = "false", tag = "13")]
        positive_delta: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct BucketSpan {
        #[prost(sint32, optional, tag = "1")]
        offset: Option<i32>,
        #[prost(uint32, optional, tag = "2")]
        length: Option<u32>,
    }

    fn span(offset: i32, length: u32) -> BucketSpan {
        BucketSpan {
            offset: Some(offset),
            length: Some(length),
        }
    }

    fn encoded(native: &Native) -> NativeHistogram {
        let mut out = Vec::new();
        native_fields(&mut out, native);
        prost::Message::decode(&out[..]).expect("decodes")
    }

    #[test]
    fn native_buckets_as_spans_and_deltas() {
        // Schema 0: bucket i holds (2^(i-1), 2^i].
        let spec = NativeSpec::new(0, 160, 0.001);
        let mut native = Native::new(&spec);
        for value in [
            1.5, 1.9, 3.0, 100.0, 120.0, 110.0, 0.0, -0.3, -0.0001, -5.0, -6.0,
        ] {
            native.observe(&spec, value);
        }
        assert_eq!(
            encoded(&native),
            NativeHistogram {
                schema: Some(0),
                zero_threshold: Some(0.001),
                zero_count: Some(2),
                // -0.3 in bucket -1, -5 and -6 in bucket 3.
                negative_span: vec![span(-1, 1), span(3, 1)],
                negative_delta: vec![1, 1],
                // 1.5 and 1.9 in bucket 1, 3 in 2, the three of 100-120 in 7.
                positive_span: vec![span(1, 2), span(4, 1)],
                positive_delta: vec![2, -1, 2],
            }
        );
    }

    #[test]
    fn an_empty_native_histogram_has_an_empty_span() {
        let native = Native::new(&NativeSpec::new(3, 160, 0.0));
        let decoded = encoded(&native);
        assert_eq!(decoded.positive_span, vec![span(0, 0)]);
        assert!(decoded.positive_delta.is_empty() && decoded.negative_span.is_empty());
        assert_eq!(decoded.schema, Some(3));
    }

    #[test]
    fn lengths_of_any_size_prefix_their_message() {
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 2_100_000] {
            let mut out = vec![0xee];
            delimited(&mut out, |out| out.extend((0..len).map(|i| i as u8)));
            let mut rest = &out[1..];
            let decoded = prost::decode_length_delimiter(&mut rest).expect("a length");
            assert_eq!(decoded, len);
            assert!(rest.iter().copied().eq((0..len).map(|i| i as u8)), "{len}");
            assert_eq!(out[0], 0xee);
        }
    }

    #[test]
    fn zigzag_as_protobuf_defines_it() {
        for (value, want) in [(0, 0), (-1, 1), (1, 2), (-2, 3), (i64::MAX, u64::MAX - 1)] {
            let mut out = Vec::new();
            sint_field(&mut out, 1, value);
            let mut expected = vec![0x08];
            varint(&mut expected, want);
            assert_eq!(out, expected, "{value}");
        }
    }
}
