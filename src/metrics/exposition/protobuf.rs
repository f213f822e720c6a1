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
//! above 0 or it has bucket deltas (spans alone do not count), decides that by the family's
//! first series for the whole family, and then ingests only the native histogram: the classic
//! buckets serve for exemplars only (its source, and seen by experiment with crafted
//! messages). A native histogram with no observation is marked with an empty span, the mark
//! later Prometheus versions look for; 2.42 reads it as native only with a zero threshold
//! above 0 (the default profile's is 1e-9).
//!
//! Counts are written as integers while every count of the series is one, and as client
//! model's float fields once any is not (adjusted counts of sampled spans): the classic
//! `sample_count_float` and `cumulative_count_float`, the native `zero_count_float` and
//! absolute `positive_count` / `negative_count` instead of deltas.

use super::{SPAN_ID, TRACE_ID, families, hex, is_whole};
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
    for (id, spec, series) in families(snapshot) {
        // Per kind: the `MetricType`, and a size above most series' (bytes), from which the
        // bytes of the family's length and of each series' are guessed, so that they are
        // seldom moved (see `delimited`).
        let (kind, typical) = match spec.kind {
            MetricKind::Counter => (COUNTER, 100),
            MetricKind::Gauge => (GAUGE, 100),
            MetricKind::Histogram { .. } => (HISTOGRAM, 1024),
        };
        let family = snapshot.cells(id).count() * typical;
        delimited(out, varint_len(family as u64), |out| {
            // MetricFamily: name 1, help 2, type 3, metric 4.
            bytes_field(out, 1, spec.name.as_bytes());
            bytes_field(out, 2, spec.help.as_bytes());
            varint_field(out, 3, kind);
            for (labels, cell) in series {
                sized_message(out, 4, varint_len(typical as u64), |out| {
                    metric(out, spec, labels, cell)
                });
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
        (Cell::Counter(n), _) => message(out, 3, |out| double_field(out, 1, *n)),
        (
            Cell::Histogram {
                counts,
                sum,
                exemplar,
                native,
            },
            MetricKind::Histogram { bounds, .. },
        ) => sized_message(out, 7, 2, |out| {
            // Histogram: sample_count 1 (or sample_count_float 4), sample_sum 2, bucket 3
            // (cumulative_count 1 or cumulative_count_float 4, upper_bound 2, exemplar 3).
            let whole = counts.iter().all(|c| is_whole(*c))
                && native.as_ref().is_none_or(|n| n.counts().all(is_whole));
            count_field(out, whole, (1, 4), counts.iter().sum());
            double_field(out, 2, *sum);
            let exemplar_bucket = exemplar.map(|e| bucket_of(bounds, e.value));
            let upper_bounds = bounds.iter().copied().chain([f64::INFINITY]);
            let mut cumulative = 0.0;
            for (i, (count, bound)) in counts.iter().zip(upper_bounds).enumerate() {
                cumulative += count;
                match exemplar.filter(|_| exemplar_bucket == Some(i)) {
                    None if whole => bucket(out, cumulative as u64, bound),
                    found => message(out, 3, |out| {
                        count_field(out, whole, (1, 4), cumulative);
                        double_field(out, 2, bound);
                        if let Some(e) = found {
                            message(out, 3, |out| exemplar_message(out, &e));
                        }
                    }),
                }
            }
            if let Some(native) = native {
                native_fields(out, native, whole);
            }
        }),
        (Cell::Histogram { .. }, MetricKind::Counter | MetricKind::Gauge) => {
            unreachable!("kinds agree")
        }
    }
}

/// A classic `Bucket` without exemplar as field 3 of `Histogram`. A histogram series writes
/// one per bound, so this one is made in a fixed-size array and appended whole (a copy of
/// fixed size is a few moves, one of variable size a call to `memmove`), then cut to size.
fn bucket(out: &mut Vec<u8>, cumulative: u64, bound: f64) {
    let (count, count_len) = varint_bytes(cumulative);
    // Tag, length, then cumulative_count (tag, at most 10 bytes), upper_bound (tag, 8 bytes).
    let mut message = [0; 2 + 11 + 9];
    message[0] = 3 << 3 | LEN;
    message[1] = (1 + count_len + 9) as u8;
    message[2] = 1 << 3 | VARINT;
    message[3..13].copy_from_slice(&count);
    message[3 + count_len] = 2 << 3 | FIXED64;
    message[4 + count_len..12 + count_len].copy_from_slice(&bound.to_le_bytes());
    let end = out.len() + 12 + count_len;
    out.extend_from_slice(&message);
    out.truncate(end);
}

/// A count as its integer field (`whole`) or its float field: the field numbers in that
/// order.
fn count_field(out: &mut Vec<u8>, whole: bool, (integer, float): (u32, u32), count: f64) {
    match whole {
        true => varint_field(out, integer, count as u64),
        false => double_field(out, float, count),
    }
}

/// The native histogram's fields of `Histogram`: schema 5, zero_threshold 6, zero_count 7
/// (or zero_count_float 8), negative_span 9 and negative_delta 10 (or negative_count 11),
/// positive_span 12 and positive_delta 13 (or positive_count 14).
fn native_fields(out: &mut Vec<u8>, native: &Native, whole: bool) {
    sint_field(out, 5, i64::from(native.schema()));
    double_field(out, 6, native.zero_threshold());
    count_field(out, whole, (7, 8), native.zero_count());
    buckets(out, 9, (10, 11), whole, || native.negative());
    buckets(out, 12, (13, 14), whole, || native.positive());
    if native.count() == 0.0 {
        message(out, 12, |out| {
            sint_field(out, 1, 0);
            varint_field(out, 2, 0);
        });
    }
}

/// Populated buckets (index, count; by increasing index) as `BucketSpan`s (offset 1, length
/// 2) in field `spans`, then their counts: as deltas in field `deltas` when `whole`, else as
/// they are in field `floats`.
fn buckets<I: Iterator<Item = (i32, f64)>>(
    out: &mut Vec<u8>,
    spans: u32,
    (deltas, floats): (u32, u32),
    whole: bool,
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
        match whole {
            true => {
                sint_field(out, deltas, count as i64 - previous);
                previous = count as i64;
            }
            false => double_field(out, floats, count),
        }
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

/// A `LabelPair` (name 1, value 2) as field `field`. Its length is known before it is
/// written (a series writes several), so it is written once, in place.
fn label(out: &mut Vec<u8>, field: u32, name: &[u8], value: &[u8]) {
    let len = |bytes: &[u8]| 1 + varint_len(bytes.len() as u64) + bytes.len();
    tag(out, field, LEN);
    varint(out, (len(name) + len(value)) as u64);
    bytes_field(out, 1, name);
    bytes_field(out, 2, value);
}

#[inline(always)]
fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire_type));
}

#[inline]
fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    tag(out, field, VARINT);
    varint(out, value);
}

/// A `sint32` or `sint64` field (zigzag: small magnitudes take few bytes either side of 0;
/// the two encode alike for values that fit 32 bits).
#[inline]
fn sint_field(out: &mut Vec<u8>, field: u32, value: i64) {
    tag(out, field, VARINT);
    varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

#[inline]
fn double_field(out: &mut Vec<u8>, field: u32, value: f64) {
    tag(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

#[inline]
fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A nested message as field `field`: its body written by `body`. Most are under 128 bytes.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    sized_message(out, field, 1, body);
}

/// [`message`] for a message whose length usually takes `prefix` bytes as a varint (2 from
/// 128 bytes to 16 KiB).
fn sized_message(out: &mut Vec<u8>, field: u32, prefix: usize, body: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, LEN);
    delimited(out, prefix, body);
}

/// What `body` writes, preceded by its length as a varint. The body is written in place
/// after `reserved` bytes kept for the length, and moved when the length takes more or
/// fewer: a good guess saves moving every byte of the message once more.
fn delimited(out: &mut Vec<u8>, reserved: usize, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.resize(at + reserved, 0);
    body(out);
    let len = out.len() - at - reserved;
    let (prefix, prefix_len) = varint_bytes(len as u64);
    if prefix_len > reserved {
        out.resize(out.len() + prefix_len - reserved, 0);
    }
    if prefix_len != reserved {
        out.copy_within(at + reserved..at + reserved + len, at + prefix_len);
        out.truncate(at + prefix_len + len);
    }
    out[at..at + prefix_len].copy_from_slice(&prefix[..prefix_len]);
}

/// `value` as a varint; most (tags, short lengths) are one byte, pushed inline.
#[inline(always)]
fn varint(out: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        out.push(value as u8);
    } else {
        let (bytes, len) = varint_bytes(value);
        out.extend_from_slice(&bytes[..len]);
    }
}

/// The bytes `value` takes as a varint.
fn varint_len(value: u64) -> usize {
    // One byte for each 7 bits up to the highest bit set, one for 0.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
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
        #[prost(double, optional, tag = "8")]
        zero_count_float: Option<f64>,
        #[prost(message, repeated, tag = "9")]
        negative_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, packed = "false", tag = "10")]
        negative_delta: Vec<i64>,
        #[prost(double, repeated, packed = "false", tag = "11")]
        negative_count: Vec<f64>,
        #[prost(message, repeated, tag = "12")]
        positive_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, packed = "false", tag = "13")]
        positive_delta: Vec<i64>,
        #[prost(double, repeated, packed = "false", tag = "14")]
        positive_count: Vec<f64>,
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
        let whole = native.counts().all(is_whole);
        let mut out = Vec::new();
        native_fields(&mut out, native, whole);
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
            native.observe(&spec, value, 1.0);
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
                ..NativeHistogram::default()
            }
        );
    }

    #[test]
    fn adjusted_counts_that_are_not_whole_take_the_float_fields() {
        let spec = NativeSpec::new(0, 160, 0.001);
        let mut native = Native::new(&spec);
        native.observe(&spec, 1.5, 2.5);
        native.observe(&spec, 3.0, 4.0);
        native.observe(&spec, 0.0, 1.0);
        assert_eq!(
            encoded(&native),
            NativeHistogram {
                schema: Some(0),
                zero_threshold: Some(0.001),
                zero_count_float: Some(1.0),
                positive_span: vec![span(1, 2)],
                positive_count: vec![2.5, 4.0],
                ..NativeHistogram::default()
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
            for reserved in 1..=3 {
                let mut out = vec![0xee];
                delimited(&mut out, reserved, |out| {
                    out.extend((0..len).map(|i| i as u8))
                });
                let mut rest = &out[1..];
                let decoded = prost::decode_length_delimiter(&mut rest).expect("a length");
                assert_eq!(decoded, len);
                assert!(rest.iter().copied().eq((0..len).map(|i| i as u8)), "{len}");
                assert_eq!(out[0], 0xee);
            }
        }
    }

    #[test]
    fn a_bucket_as_the_general_encoder_writes_it() {
        for cumulative in [0, 1, 127, 128, 1 << 40, u64::MAX] {
            for bound in [0.25, f64::INFINITY] {
                let mut fast = vec![7];
                bucket(&mut fast, cumulative, bound);
                let mut general = vec![7];
                message(&mut general, 3, |out| {
                    varint_field(out, 1, cumulative);
                    double_field(out, 2, bound);
                });
                assert_eq!(fast, general, "{cumulative} {bound}");
            }
        }
    }

    #[test]
    fn varint_lengths() {
        for value in [0, 1, 127, 128, 16_383, 16_384, 1 << 35, u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(varint_len(value), out.len(), "{value}");
            assert_eq!(varint_bytes(value).1, out.len(), "{value}");
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
