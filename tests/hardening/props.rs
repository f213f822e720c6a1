//! Hardening item 8 — Property tests of the decoding path and the classifier, in the normal
//! test run: arbitrary bytes and damaged requests into `json::to_protobuf`, `body::decode`
//! (every encoding, with a limit), `decode::Batch::decode` and `Pipeline::ingest` of the
//! default profile never panic; refusals are errors; decompression honours the limit to the
//! byte; every span of a request is either accepted or rejected, exactly once.

use crate::otlp::{default_pipeline, gzip, span_count};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use proptest::prelude::*;
use prost::Message;
use spanlens::otlp::Protocol;
use spanlens::otlp::body::{BodyError, Encoding};
use spanlens::otlp::decode::Batch;
use spanlens::otlp::refusal::Refusal;

const NAMES: &[&str] = &[
    "step_claim",
    "execute_handler",
    "submit_result",
    "create_task",
    "enqueue_steps",
    "process_result",
    "read_messages",
    "worker.step_execution",
    "resolve",
    "worker.step_completion_received",
    "create_task_from_request",
    "create_and_enqueue_task_from_request",
    "enqueue_ready_steps",
    "handle_step_execution_result",
    "handle_step_result_with_metadata",
    "finalize_task",
    "send_json_message",
    "emit_message_ready",
    "",
];

const SERVICES: &[&str] = &[
    "tasker-orchestration",
    "tasker-rust-worker",
    "tasker-ruby-worker",
    "tasker-python-worker",
    "tasker-typescript-worker",
    "tasker-core",
    "",
];

const KEYS: &[&str] = &[
    "step_name",
    "namespace",
    "queue",
    "callable",
    "correlation_id",
    "task_uuid",
    "step_uuid",
    "task_name",
    "handler.language",
    "success",
    "trace_id",
    "span_id",
    "msg_id",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z_.]{0,24}",
        2 => "worker_[a-z_]{0,12}_queue",
        1 => "\\PC{0,80}",
        1 => proptest::collection::vec(any::<char>(), 0..300).prop_map(|c| c.into_iter().collect()),
    ]
}

fn pick(options: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(options).prop_map(str::to_string),
        1 => text(),
    ]
}

fn value() -> impl Strategy<Value = AnyValue> {
    prop_oneof![
        4 => text().prop_map(any_value::Value::StringValue),
        1 => any::<i64>().prop_map(any_value::Value::IntValue),
        1 => any::<bool>().prop_map(any_value::Value::BoolValue),
        1 => any::<f64>().prop_map(any_value::Value::DoubleValue),
        1 => proptest::collection::vec(any::<u8>(), 0..20).prop_map(any_value::Value::BytesValue),
    ]
    .prop_map(|v| AnyValue { value: Some(v) })
}

fn attribute() -> impl Strategy<Value = KeyValue> {
    (pick(KEYS), proptest::option::weighted(0.9, value())).prop_map(|(key, value)| KeyValue {
        key,
        value,
        ..Default::default()
    })
}

fn id(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), len..=len),
        1 => Just(vec![0; len]),
        1 => proptest::collection::vec(any::<u8>(), 0..24),
    ]
}

fn time() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 1_700_000_000_000_000_000u64..1_700_000_100_000_000_000,
        1 => Just(0u64),
        1 => any::<u64>(),
    ]
}

fn span() -> impl Strategy<Value = Span> {
    (
        (id(16), id(8), pick(NAMES), 0i32..8),
        (time(), time()),
        proptest::collection::vec(attribute(), 0..8),
        proptest::option::of(0i32..4),
    )
        .prop_map(
            |((trace_id, span_id, name, kind), (start, end), attributes, status)| Span {
                trace_id,
                span_id,
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                status: status.map(|code| Status {
                    code,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
}

fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let resource = (
        proptest::option::weighted(0.9, pick(SERVICES)),
        proptest::collection::vec(attribute(), 0..3),
        proptest::collection::vec(proptest::collection::vec(span(), 0..6), 0..3),
    )
        .prop_map(|(service, mut attributes, scopes)| {
            if let Some(service) = service {
                attributes.push(KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service)),
                    }),
                    ..Default::default()
                });
            }
            ResourceSpans {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_spans: scopes
                    .into_iter()
                    .map(|spans| ScopeSpans {
                        spans,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        });
    proptest::collection::vec(resource, 0..4)
        .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![
        Just(Encoding::Identity),
        Just(Encoding::Gzip),
        Just(Encoding::Zstd)
    ]
}

/// Damage: (position, new byte) pairs applied to a valid encoding.
fn damage() -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)
}

fn damaged(mut bytes: Vec<u8>, damage: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    for &(at, b) in damage {
        let i = at % bytes.len();
        bytes[i] = b;
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

/// What ingest must say about a decodable request: every span accepted or rejected once.
fn check_ingest(bytes: &[u8], protocol: Protocol) -> Result<(), TestCaseError> {
    // The pipeline's own decode: it skips span attributes the profile never reads.
    let expected = default_pipeline().decode(bytes).map(|b| {
        let invalid = b.spans.iter().filter(|s| s.problem().is_some()).count();
        (b.spans.len(), invalid)
    });
    match (default_pipeline().ingest(protocol, bytes), expected) {
        (Ok(outcome), Ok((spans, invalid))) => {
            prop_assert_eq!(outcome.accepted + outcome.rejected, spans);
            prop_assert_eq!(outcome.rejected, invalid);
            prop_assert!(spans == 0 || outcome.accepted > 0);
        }
        (Err(Refusal::AllSpansInvalid(message)), Ok((spans, invalid))) => {
            prop_assert!(
                spans > 0 && invalid == spans,
                "all invalid? {spans} {invalid}"
            );
            prop_assert!(!message.is_empty());
        }
        (Err(Refusal::Malformed(message)), Err(_)) => prop_assert!(!message.is_empty()),
        (got, expected) => {
            prop_assert!(false, "ingest said {got:?}, the decoder {expected:?}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn json_to_protobuf_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = spanlens::otlp::json::to_protobuf(&bytes);
    }

    #[test]
    fn json_to_protobuf_takes_damaged_requests(
        request in request(),
        damage in damage(),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let json = serde_json::to_vec(&request).unwrap();
        let converted = spanlens::otlp::json::to_protobuf(&json);
        // The undamaged request converts unless an id has the wrong length for OTLP/JSON.
        if let Ok(protobuf) = &converted {
            prop_assert!(Batch::decode(protobuf).is_ok());
        }
        let damaged = damaged(json, &damage, cut);
        if let Ok(protobuf) = spanlens::otlp::json::to_protobuf(&damaged) {
            // Whatever converts is a protobuf request the rest of the path can take.
            check_ingest(&protobuf, Protocol::HttpJson)?;
        }
    }

    #[test]
    fn body_decode_respects_the_limit(
        encoding in encoding(),
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        limit in 0usize..5000,
    ) {
        match spanlens::otlp::body::decode(encoding, &bytes, limit) {
            Ok(out) => prop_assert!(out.len() <= limit),
            Err(BodyError::TooLarge { limit: said }) => prop_assert_eq!(said, limit),
            Err(BodyError::Corrupt { .. }) => prop_assert!(encoding != Encoding::Identity),
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    #[test]
    fn body_decode_inflates_to_the_byte(
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        limit in 0usize..5000,
        damage in proptest::option::of(damage()),
    ) {
        for (encoding, packed) in [
            (Encoding::Identity, data.clone()),
            (Encoding::Gzip, gzip(&data)),
            (Encoding::Zstd, zstd::encode_all(&data[..], 1).unwrap()),
        ] {
            let got = spanlens::otlp::body::decode(encoding, &packed, limit);
            if data.len() <= limit {
                prop_assert_eq!(got, Ok(bytes::Bytes::from(data.clone())));
            } else {
                prop_assert_eq!(got, Err(BodyError::TooLarge { limit }));
            }
            if let Some(damage) = &damage {
                // Damaged streams: an error or a bounded output, never a panic.
                let damaged = damaged(packed, damage, None);
                if let Ok(out) = spanlens::otlp::body::decode(encoding, &damaged, limit) {
                    prop_assert!(out.len() <= limit);
                }
            }
        }
    }

    #[test]
    fn batch_decode_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(batch) = Batch::decode(&bytes) {
            for span in &batch.spans {
                prop_assert!(span.resource < batch.resources.len());
                let _ = batch.span_attributes(span);
                let _ = span.problem();
                let _ = span.duration_nanos();
            }
        }
    }

    #[test]
    fn batch_decode_agrees_with_prost_on_valid_requests(request in request()) {
        let bytes = request.encode_to_vec();
        let batch = Batch::decode(&bytes);
        prop_assert!(batch.is_ok(), "{:?}", batch.err());
        prop_assert_eq!(batch.unwrap().spans.len() as u64, span_count(&request));
    }

    #[test]
    fn batch_decode_takes_damaged_requests(
        request in request(),
        damage in damage(),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let bytes = damaged(request.encode_to_vec(), &damage, cut);
        let _ = Batch::decode(&bytes);
    }

    #[test]
    fn ingest_accepts_or_rejects_every_span_once(request in request()) {
        let bytes = request.encode_to_vec();
        check_ingest(&bytes, Protocol::HttpProtobuf)?;
    }

    #[test]
    fn ingest_takes_damaged_and_arbitrary_bytes(
        request in request(),
        damage in damage(),
        cut in proptest::option::of(any::<usize>()),
        noise in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let bytes = damaged(request.encode_to_vec(), &damage, cut);
        check_ingest(&bytes, Protocol::Grpc)?;
        check_ingest(&noise, Protocol::HttpProtobuf)?;
    }
}
