//! The hot path's borrowed decoder against prost's owned decode of opentelemetry-proto's full
//! types: over generated requests both must read every projected field the same way, and on
//! arbitrary or mutated bytes the borrowed decoder must never panic and must accept whatever
//! prost accepts.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use proptest::prelude::*;
use prost::Message;
use spanlens::otlp::decode::{self, AttributeKeys, Batch};

fn any_value() -> impl Strategy<Value = Option<any_value::Value>> {
    prop_oneof![
        Just(None),
        ".{0,12}".prop_map(|s| Some(any_value::Value::StringValue(s))),
        any::<bool>().prop_map(|b| Some(any_value::Value::BoolValue(b))),
        any::<i64>().prop_map(|i| Some(any_value::Value::IntValue(i))),
        any::<f64>().prop_map(|d| Some(any_value::Value::DoubleValue(d))),
        prop::collection::vec(any::<u8>(), 0..8)
            .prop_map(|b| Some(any_value::Value::BytesValue(b))),
    ]
}

fn key_values() -> impl Strategy<Value = Vec<KeyValue>> {
    prop::collection::vec(
        ("[a-z._]{0,10}", any_value()).prop_map(|(key, value)| KeyValue {
            key,
            value: Some(AnyValue { value }),
            ..Default::default()
        }),
        0..5,
    )
}

fn ids(len: impl Strategy<Value = usize>) -> impl Strategy<Value = Vec<u8>> {
    len.prop_flat_map(|n| prop::collection::vec(any::<u8>(), n))
}

fn span() -> impl Strategy<Value = Span> {
    (
        (
            ids(prop_oneof![Just(16usize), 0usize..20]),
            ids(prop_oneof![Just(8usize), 0usize..10]),
            ids(prop_oneof![Just(0usize), Just(8usize)]),
        ),
        ".{0,16}",
        -1i32..7,
        (any::<u64>(), any::<u64>()),
        key_values(),
        prop::option::of((-1i32..4, ".{0,8}")),
        ".{0,6}",
        prop::collection::vec(".{0,6}", 0..3),
    )
        .prop_map(
            |(
                (trace_id, span_id, parent_span_id),
                name,
                kind,
                (start, end),
                attributes,
                status,
                trace_state,
                event_names,
            )| Span {
                trace_id,
                span_id,
                parent_span_id,
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                status: status.map(|(code, message)| Status { code, message }),
                trace_state,
                events: event_names
                    .into_iter()
                    .map(|name| span::Event {
                        name,
                        time_unix_nano: 5,
                        ..Default::default()
                    })
                    .collect(),
                flags: 1,
                ..Default::default()
            },
        )
}

fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    prop::collection::vec(
        (
            prop::option::of(key_values()),
            prop::collection::vec(prop::collection::vec(span(), 0..4), 0..3),
        )
            .prop_map(|(resource, scopes)| ResourceSpans {
                resource: resource.map(|attributes| Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_spans: scopes
                    .into_iter()
                    .map(|spans| ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "tasker-core".into(),
                            ..Default::default()
                        }),
                        spans,
                        schema_url: String::new(),
                    })
                    .collect(),
                schema_url: "s".into(),
            }),
        0..3,
    )
    .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

fn same_value(view: &decode::AnyValue, full: &Option<AnyValue>) -> bool {
    use any_value::Value as V;
    match (view, full.as_ref().and_then(|v| v.value.as_ref())) {
        (decode::AnyValue::Empty, None) => true,
        (decode::AnyValue::Str(a), Some(V::StringValue(b))) => a == b,
        (decode::AnyValue::Bool(a), Some(V::BoolValue(b))) => a == b,
        (decode::AnyValue::Int(a), Some(V::IntValue(b))) => a == b,
        (decode::AnyValue::Double(a), Some(V::DoubleValue(b))) => a.to_bits() == b.to_bits(),
        (decode::AnyValue::Bytes(a), Some(V::BytesValue(b))) => a == b,
        // Kept encoded by the projection: only the variant is comparable.
        (decode::AnyValue::Array(_), Some(V::ArrayValue(_))) => true,
        (decode::AnyValue::KvList(_), Some(V::KvlistValue(_))) => true,
        _ => false,
    }
}

fn assert_same(batch: &Batch, full: &ExportTraceServiceRequest) {
    let spans: Vec<(usize, usize, usize, &Span, Option<&Resource>)> = full
        .resource_spans
        .iter()
        .enumerate()
        .flat_map(|(r, rs)| {
            rs.scope_spans.iter().enumerate().flat_map(move |(s, ss)| {
                ss.spans
                    .iter()
                    .enumerate()
                    .map(move |(i, span)| (r, s, i, span, rs.resource.as_ref()))
            })
        })
        .collect();
    assert_eq!(batch.spans.len(), spans.len());
    assert_eq!(batch.resources.len(), full.resource_spans.len());
    for (view, (r, s, i, span, resource)) in batch.spans.iter().zip(spans) {
        assert_eq!(view.position, (r, s, i));
        assert_eq!(view.trace_id, &span.trace_id[..]);
        assert_eq!(view.span_id, &span.span_id[..]);
        assert_eq!(view.trace_state, span.trace_state.as_bytes());
        assert_eq!(view.parent_span_id, &span.parent_span_id[..]);
        assert_eq!(view.name, span.name);
        assert_eq!(view.kind, span.kind);
        assert_eq!(view.start_time_unix_nano, span.start_time_unix_nano);
        assert_eq!(view.end_time_unix_nano, span.end_time_unix_nano);
        assert_eq!(view.status_code, span.status.as_ref().map_or(0, |s| s.code));
        let attributes = batch.span_attributes(view);
        assert_eq!(attributes.len(), span.attributes.len());
        for (a, b) in attributes.iter().zip(&span.attributes) {
            assert_eq!(a.key, b.key);
            assert!(same_value(&a.value, &b.value), "{a:?} vs {b:?}");
        }
        let resource_view = &batch.resources[view.resource];
        let full_attributes = resource.map_or(&[][..], |r| &r.attributes[..]);
        let view_attributes = batch.resource_attributes(resource_view);
        assert_eq!(view_attributes.len(), full_attributes.len());
        for (a, b) in view_attributes.iter().zip(full_attributes) {
            assert_eq!(a.key, b.key);
            assert!(same_value(&a.value, &b.value));
        }
        let service = full_attributes.iter().rev().find_map(|kv| {
            match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) if kv.key == "service.name" => {
                    Some(s.as_str())
                }
                _ => None,
            }
        });
        assert_eq!(resource_view.service_name, service);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn borrowed_decode_reads_what_prost_reads(request in request()) {
        let bytes = request.encode_to_vec();
        let batch = Batch::decode(&bytes).expect("a prost-encoded request decodes");
        let full = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        assert_same(&batch, &full);
    }

    #[test]
    fn keeping_some_keys_is_the_full_decode_without_the_others(request in request(), mask in any::<u32>()) {
        let bytes = request.encode_to_vec();
        // Some of the span attribute keys the request has, chosen by the mask, and one it has not.
        let mut present: Vec<&str> = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .flat_map(|s| &s.attributes)
            .map(|a| a.key.as_str())
            .collect();
        present.sort();
        present.dedup();
        let mut keep: Vec<&str> = present
            .into_iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << (i % 32)) != 0)
            .map(|(_, k)| k)
            .collect();
        keep.push("not.in.any.request");
        let keys = AttributeKeys::new(keep.iter().copied());
        let kept = Batch::decode_keeping(&bytes, &keys).expect("a prost-encoded request decodes");
        let full = Batch::decode(&bytes).unwrap();
        prop_assert_eq!(&kept.spans.len(), &full.spans.len());
        prop_assert_eq!(kept.resources.len(), full.resources.len());
        for (k, f) in kept.spans.iter().zip(&full.spans) {
            prop_assert_eq!((k.name, k.trace_id, k.span_id), (f.name, f.trace_id, f.span_id));
            let expected: Vec<_> = full
                .span_attributes(f)
                .iter()
                .filter(|a| keep.contains(&a.key))
                .collect();
            let got: Vec<_> = kept.span_attributes(k).iter().collect();
            prop_assert_eq!(got, expected);
        }
        for (k, f) in kept.resources.iter().zip(&full.resources) {
            prop_assert_eq!(kept.resource_attributes(k), full.resource_attributes(f));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_prost_success_implies_ours(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let ours = Batch::decode(&bytes);
        if let Ok(full) = ExportTraceServiceRequest::decode(&bytes[..]) {
            let batch = ours.expect("prost accepted these bytes, so must we");
            assert_same(&batch, &full);
        }
    }

    #[test]
    fn mutated_requests_never_panic(request in request(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut bytes = request.encode_to_vec();
        if bytes.is_empty() {
            return Ok(());
        }
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let ours = Batch::decode(&bytes);
        if let Ok(full) = ExportTraceServiceRequest::decode(&bytes[..]) {
            assert_same(&ours.expect("prost accepted these bytes, so must we"), &full);
        }
    }
}
