//! OTLP/JSON requests: parsed with opentelemetry-proto's serde mapping (hex ids,
//! lowerCamelCase, int64 as strings) and re-encoded as protobuf, so that one decoder serves
//! every protocol. JSON is the rare path; protobuf is the fast one.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// The protobuf encoding of an OTLP/JSON `ExportTraceServiceRequest`, or a readable error.
pub fn to_protobuf(json: &[u8]) -> Result<Vec<u8>, String> {
    let request: ExportTraceServiceRequest =
        serde_json::from_slice(json).map_err(|e| format!("invalid OTLP/JSON: {e}"))?;
    check_ids(&request)?;
    Ok(request.encode_to_vec())
}

/// In OTLP/JSON ids are hex strings of a fixed length (32 digits for a trace id, 16 for a
/// span id); the serde mapping accepts any even length, so a wrong length is caught here and
/// refused as malformed JSON, like any other value that does not fit its field.
fn check_ids(request: &ExportTraceServiceRequest) -> Result<(), String> {
    for (r, rs) in request.resource_spans.iter().enumerate() {
        for (s, ss) in rs.scope_spans.iter().enumerate() {
            for (i, span) in ss.spans.iter().enumerate() {
                let path = format!("resourceSpans[{r}].scopeSpans[{s}].spans[{i}]");
                for (field, id, digits, optional) in [
                    ("traceId", &span.trace_id, 32, false),
                    ("spanId", &span.span_id, 16, false),
                    ("parentSpanId", &span.parent_span_id, 16, true),
                ] {
                    if id.len() * 2 != digits && !(optional && id.is_empty()) {
                        return Err(format!(
                            "invalid OTLP/JSON: {path}.{field} must be {digits} hex digits, found {}",
                            id.len() * 2
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::decode::Batch;

    #[test]
    fn otlp_json_reads_hex_ids_camel_case_and_string_int64() {
        let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"tasker-rust-worker"}}]},
            "scopeSpans":[{"scope":{"name":"tasker-core"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
            "name":"step_claim","kind":1,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000015000000",
            "attributes":[{"key":"limit","value":{"intValue":"10"}}],"status":{"code":2}}]}]}]}"#;
        let bytes = to_protobuf(json).unwrap();
        let batch = Batch::decode(&bytes).unwrap();
        let span = &batch.spans[0];
        assert_eq!(span.trace_id[0], 0x5b);
        assert_eq!(span.duration_nanos(), 15_000_000);
        assert!(span.is_error());
        assert_eq!(batch.resources[0].service_name, Some("tasker-rust-worker"));
    }

    #[test]
    fn malformed_json_is_an_error_with_a_position() {
        let err =
            to_protobuf(br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#)
                .unwrap_err();
        assert!(err.starts_with("invalid OTLP/JSON"), "{err}");
        assert!(to_protobuf(b"{").unwrap_err().contains("line 1"));
        let short = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"abab","spanId":"eee19b7ec3c1b174"}]}]}]}"#;
        assert_eq!(
            to_protobuf(short).unwrap_err(),
            "invalid OTLP/JSON: resourceSpans[0].scopeSpans[0].spans[0].traceId must be 32 hex digits, found 4"
        );
    }
}
