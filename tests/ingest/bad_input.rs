//! Bad input over OTLP/HTTP (protobuf and JSON) and OTLP/gRPC: every kind of broken request
//! gets its exact status code, and none of it takes valid spans down with it. Valid spans are
//! sent alongside the bad traffic (much of it concurrently), and the stage metrics and
//! spanlens's own counters must equal exactly the valid spans sent: a refused request counts
//! nothing, a partially accepted one only its good spans.

use crate::support;
use crate::support::otlp::{
    EXPORT, INVALID_ARGUMENT, JSON, OK, PROTOBUF, RESOURCE_EXHAUSTED, TRACES, UNIMPLEMENTED,
    exactly, grpc_client, grpc_request, gzip, h2c_client, hex, read_grpc, resource_spans,
    with_padding, zstd,
};
use crate::support::{bounded, kv};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use spanlens::server::Server;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::task::JoinSet;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

const SERVICE: &str = "tasker-rust-worker";
const STAGE_LABELS: &[(&str, &str)] = &[("service", SERVICE), ("handler_language", "rust")];
const STAGE_COUNT: &str = "tasker_step_claim_duration_seconds_count";
const STAGE_CALLS: &str = "tasker_step_claim_calls_total";
const SPAN_CALLS: &str = "traces_span_metrics_calls_total";
const RECEIVED: &str = "spanlens_spans_received_total";
const ACCEPTED: &str = "spanlens_spans_accepted_total";
const SPANS_REFUSED: &str = "spanlens_spans_refused_total";
const REQUESTS_REFUSED: &str = "spanlens_requests_refused_total";

/// 2023-11-14T22:13:20Z; every valid span lasts 25 ms.
const START: u64 = 1_700_000_000_000_000_000;
const DURATION: u64 = 25_000_000;

/// The size limit of the tests that exercise it.
const LIMIT: usize = 64 * 1024;
/// What a decompression bomb inflates to: far past [`LIMIT`].
const BOMB: usize = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Spans and requests
// ---------------------------------------------------------------------------------------------

/// What is wrong with a span, if anything.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    TraceIdShort,
    TraceIdEmpty,
    TraceIdZero,
    SpanIdShort,
    SpanIdZero,
    NoStart,
    NoEnd,
    EndBeforeStart,
}

/// Every span-level problem the OTLP/protobuf tests can express.
const PROTO_FAULTS: [Fault; 8] = [
    Fault::TraceIdShort,
    Fault::TraceIdEmpty,
    Fault::TraceIdZero,
    Fault::SpanIdShort,
    Fault::SpanIdZero,
    Fault::NoStart,
    Fault::NoEnd,
    Fault::EndBeforeStart,
];

/// The span-level problems OTLP/JSON can express without the request itself being malformed
/// (a trace id that is not 32 hex characters is a malformed request).
const JSON_FAULTS: [Fault; 5] = [
    Fault::TraceIdZero,
    Fault::SpanIdZero,
    Fault::NoStart,
    Fault::NoEnd,
    Fault::EndBeforeStart,
];

const REASONS: [&str; 4] = [
    "invalid_trace_id",
    "invalid_span_id",
    "missing_timestamp",
    "end_before_start",
];

impl Fault {
    /// The `reason` label the span is refused under.
    fn reason(self) -> &'static str {
        match self {
            Fault::None => unreachable!("a good span is not refused"),
            Fault::TraceIdShort | Fault::TraceIdEmpty | Fault::TraceIdZero => "invalid_trace_id",
            Fault::SpanIdShort | Fault::SpanIdZero => "invalid_span_id",
            Fault::NoStart | Fault::NoEnd => "missing_timestamp",
            Fault::EndBeforeStart => "end_before_start",
        }
    }

    /// What an error message about this span must mention, compared lowercased with `_`
    /// removed (so both `trace_id` and JSON's `traceId` name the trace id).
    fn named_by(self) -> &'static str {
        match self {
            Fault::None => unreachable!("a good span has no problem"),
            Fault::TraceIdShort | Fault::TraceIdEmpty | Fault::TraceIdZero => "traceid",
            Fault::SpanIdShort | Fault::SpanIdZero => "spanid",
            Fault::NoStart | Fault::NoEnd => "time",
            Fault::EndBeforeStart => "end",
        }
    }

    fn trace_id(self, seq: u32) -> Vec<u8> {
        match self {
            Fault::TraceIdShort => trace_id(seq)[..15].to_vec(),
            Fault::TraceIdEmpty => Vec::new(),
            Fault::TraceIdZero => vec![0; 16],
            _ => trace_id(seq),
        }
    }

    fn span_id(self, seq: u32) -> Vec<u8> {
        match self {
            Fault::SpanIdShort => span_id(seq)[..7].to_vec(),
            Fault::SpanIdZero => vec![0; 8],
            _ => span_id(seq),
        }
    }

    fn times(self) -> (u64, u64) {
        match self {
            Fault::NoStart => (0, START + DURATION),
            Fault::NoEnd => (START, 0),
            Fault::EndBeforeStart => (START + DURATION, START),
            _ => (START, START + DURATION),
        }
    }
}

fn mentions(message: &str, fault: Fault) -> bool {
    message
        .to_lowercase()
        .replace('_', "")
        .contains(fault.named_by())
}

/// A source of distinct, non-zero ids. Every accepted request must carry fresh span ids:
/// spanlens drops a span it has seen before (a retrying exporter's resend) from its metrics.
static SEQ: AtomicU32 = AtomicU32::new(1);

fn next_seq() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn trace_id(seq: u32) -> Vec<u8> {
    let mut id = vec![0x5b; 12];
    id.extend_from_slice(&seq.to_be_bytes());
    id
}

fn span_id(seq: u32) -> Vec<u8> {
    let mut id = vec![0x11; 4];
    id.extend_from_slice(&seq.to_be_bytes());
    id
}

/// A `step_claim` span from [`SERVICE`]: it lands in the step_claim stage when it is good.
fn span(fault: Fault) -> Span {
    let seq = next_seq();
    let (start, end) = fault.times();
    Span {
        trace_id: fault.trace_id(seq),
        span_id: fault.span_id(seq),
        name: "step_claim".to_string(),
        kind: 1,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        ..Default::default()
    }
}

fn spans(faults: &[Fault]) -> Vec<Span> {
    faults.iter().map(|&f| span(f)).collect()
}

fn good(n: usize) -> Vec<Fault> {
    vec![Fault::None; n]
}

/// One resource ([`SERVICE`]) with one scope holding `spans`; `pad` extra bytes of resource
/// attribute let a test size the request exactly.
fn request_padded(spans: Vec<Span>, pad: usize) -> ExportTraceServiceRequest {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans(
            vec![kv("service.name", SERVICE)],
            "bad_input",
            spans,
        )],
    };
    with_padding(request, pad)
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    request_padded(spans, 0)
}

fn proto_body(faults: &[Fault]) -> Vec<u8> {
    request(spans(faults)).encode_to_vec()
}

/// A valid protobuf request with one good span, exactly `size` bytes long.
fn proto_of_size(size: usize) -> Vec<u8> {
    let body = exactly(size, |pad| {
        request_padded(spans(&[Fault::None]), pad).encode_to_vec()
    });
    ExportTraceServiceRequest::decode(&body[..]).expect("the padded request is valid");
    body
}

/// An OTLP/JSON span: hex ids, lowerCamelCase names, timestamps as decimal strings.
fn json_span(fault: Fault) -> Value {
    let seq = next_seq();
    let (start, end) = fault.times();
    let mut span = json!({
        "traceId": hex(&fault.trace_id(seq)),
        "spanId": hex(&fault.span_id(seq)),
        "name": "step_claim",
        "kind": 1,
    });
    if start != 0 {
        span["startTimeUnixNano"] = json!(start.to_string());
    }
    if end != 0 {
        span["endTimeUnixNano"] = json!(end.to_string());
    }
    span
}

fn json_request_padded(spans: Vec<Value>, pad: usize) -> Value {
    let mut attributes = vec![json!({"key": "service.name", "value": {"stringValue": SERVICE}})];
    if pad > 0 {
        attributes.push(json!({"key": "padding", "value": {"stringValue": "p".repeat(pad)}}));
    }
    json!({
        "resourceSpans": [{
            "resource": {"attributes": attributes},
            "scopeSpans": [{"scope": {"name": "bad_input"}, "spans": spans}],
        }]
    })
}

fn json_body(faults: &[Fault]) -> Vec<u8> {
    let spans = faults.iter().map(|&f| json_span(f)).collect();
    serde_json::to_vec(&json_request_padded(spans, 0)).unwrap()
}

/// A valid OTLP/JSON request with one good span, exactly `size` bytes long.
fn json_of_size(size: usize) -> Vec<u8> {
    exactly(size, |pad| {
        serde_json::to_vec(&json_request_padded(vec![json_span(Fault::None)], pad)).unwrap()
    })
}

/// Bytes that start like a gzip stream and then stop making sense.
fn corrupt_gzip() -> Vec<u8> {
    let mut body = vec![0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff];
    body.extend_from_slice(b"\xff\xfe this is not deflate data \x00\x01\x02\x03\xfa\xfb");
    body
}

/// Bytes that start like a zstd frame and then stop making sense.
fn corrupt_zstd() -> Vec<u8> {
    let mut body = vec![0x28, 0xb5, 0x2f, 0xfd];
    body.extend_from_slice(b"\xff\xff\xff\xff this is not a zstd frame \x00\x01\x02\x03");
    body
}

/// The first half of a real compressed stream.
fn truncated(compressed: Vec<u8>) -> Vec<u8> {
    compressed[..compressed.len() / 2].to_vec()
}

/// Bodies that are not an `ExportTraceServiceRequest`.
fn malformed_protobuf() -> Vec<(&'static str, Vec<u8>)> {
    let valid = proto_body(&good(2));
    vec![
        // field 1 (resource_spans), length 100, then 2 bytes
        ("length past the end", vec![0x0a, 0x64, 0x0a, 0x00]),
        // field 1 with wire type 7, which does not exist
        ("invalid wire type", vec![0x0f, 0x01, 0x02]),
        // a varint that never ends
        ("unterminated varint", vec![0x08, 0xff, 0xff, 0xff, 0xff]),
        ("valid request cut short", valid[..valid.len() - 7].to_vec()),
        (
            "text",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
        ),
    ]
}

/// Bodies that are not an OTLP/JSON `ExportTraceServiceRequest`.
fn malformed_json() -> Vec<(&'static str, Vec<u8>)> {
    // A good span, then one whose trace id is not 32 hex characters: the request is malformed
    // as a whole, not a partial success.
    let with_trace_id = |id: &str| {
        let mut span = json_span(Fault::None);
        span["traceId"] = json!(id);
        serde_json::to_vec(&json_request_padded(vec![json_span(Fault::None), span], 0)).unwrap()
    };
    let valid = json_body(&good(1));
    vec![
        ("not json", b"this is not json".to_vec()),
        ("cut short", valid[..valid.len() / 2].to_vec()),
        (
            "resourceSpans is a string",
            br#"{"resourceSpans": "nope"}"#.to_vec(),
        ),
        (
            "trace id not hex",
            with_trace_id("zz5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b"),
        ),
        ("trace id of 30 hex chars", with_trace_id(&"ab".repeat(15))),
        ("trace id of 34 hex chars", with_trace_id(&"ab".repeat(17))),
    ]
}

// ---------------------------------------------------------------------------------------------
// OTLP/HTTP
// ---------------------------------------------------------------------------------------------

/// An HTTP reply, read whole.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    allow: String,
    body: Bytes,
}

/// `google.rpc.Status`: the body of an OTLP/HTTP protobuf error.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn new(server: &Server) -> Http {
        Http::to(server.http_addr().expect("the HTTP receiver is enabled"))
    }

    fn to(addr: SocketAddr) -> Http {
        Http {
            client: reqwest::Client::new(),
            base: format!("http://{addr}"),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let what = format!("{method} {path} ({content_type:?}, {encoding:?})");
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        let response = bounded(&what, request.send())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let status = response.status().as_u16();
        let content_type = header("content-type");
        let allow = header("allow");
        let body = bounded(&what, response.bytes())
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
        Reply {
            status,
            content_type,
            allow,
            body,
        }
    }

    async fn post(
        &self,
        content_type: Option<&str>,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        self.send(reqwest::Method::POST, TRACES, content_type, encoding, body)
            .await
    }

    /// POSTs a body that must be refused with `status`; `what` names the case.
    async fn refused(
        &self,
        what: &str,
        status: u16,
        content_type: Option<&str>,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let reply = self.post(content_type, encoding, body).await;
        assert_eq!(
            reply.status, status,
            "{what} (content-type {content_type:?}, content-encoding {encoding:?}): {reply:?}"
        );
        reply
    }

    /// POSTs spans that must all be accepted (200, no partial success).
    async fn accepted(
        &self,
        what: &str,
        content_type: &str,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) {
        let reply = self.post(Some(content_type), encoding, body).await;
        assert_eq!(reply.status, 200, "{what}: {reply:?}");
        let (rejected, message) = partial_success(content_type, &reply, what);
        assert_eq!(rejected, 0, "{what}: rejected spans in {reply:?}");
        assert!(
            message.is_empty(),
            "{what}: error_message {message:?} when all were accepted"
        );
    }
}

fn is_json(content_type: &str) -> bool {
    content_type.starts_with(JSON)
}

/// (rejected_spans, error_message) of an `ExportTraceServiceResponse` in `content_type`, after
/// checking the reply is in the request's content type.
fn partial_success(content_type: &str, reply: &Reply, what: &str) -> (i64, String) {
    if is_json(content_type) {
        assert!(
            reply.content_type.starts_with(JSON),
            "{what}: a JSON request gets a JSON response: {reply:?}"
        );
        let body: Value = serde_json::from_slice(&reply.body)
            .unwrap_or_else(|e| panic!("{what}: response is not JSON ({e}): {reply:?}"));
        assert!(
            body.is_object(),
            "{what}: response is not an object: {body}"
        );
        let Some(partial) = body.get("partialSuccess") else {
            return (0, String::new());
        };
        let rejected = match &partial["rejectedSpans"] {
            Value::Null => 0,
            Value::Number(n) => n.as_i64().expect("rejectedSpans is an integer"),
            Value::String(s) => s.parse().expect("rejectedSpans is a decimal string"),
            other => panic!("{what}: rejectedSpans is {other}"),
        };
        let message = partial["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (rejected, message)
    } else {
        assert!(
            reply.content_type.starts_with(PROTOBUF),
            "{what}: a protobuf request gets a protobuf response: {reply:?}"
        );
        let response = ExportTraceServiceResponse::decode(&reply.body[..]).unwrap_or_else(|e| {
            panic!("{what}: not an ExportTraceServiceResponse ({e}): {reply:?}")
        });
        response
            .partial_success
            .map(|p| (p.rejected_spans, p.error_message))
            .unwrap_or_default()
    }
}

/// The readable message of an error reply: a `google.rpc.Status` for protobuf requests, a JSON
/// object with `message` for JSON requests. It must not be empty.
fn error_message(content_type: &str, reply: &Reply, what: &str) -> String {
    let message = if is_json(content_type) {
        assert!(
            reply.content_type.starts_with(JSON),
            "{what}: a JSON request gets a JSON error: {reply:?}"
        );
        let body: Value = serde_json::from_slice(&reply.body)
            .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {reply:?}"));
        body["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: error body has no message: {body}"))
            .to_string()
    } else {
        assert!(
            reply.content_type.starts_with(PROTOBUF),
            "{what}: a protobuf request gets a protobuf error: {reply:?}"
        );
        RpcStatus::decode(&reply.body[..])
            .unwrap_or_else(|e| {
                panic!("{what}: error body is not a google.rpc.Status ({e}): {reply:?}")
            })
            .message
    };
    assert!(
        !message.trim().is_empty(),
        "{what}: empty error message: {reply:?}"
    );
    message
}

// ---------------------------------------------------------------------------------------------
// OTLP/gRPC
// ---------------------------------------------------------------------------------------------

/// A plain HTTP/2 client for gRPC requests whose bytes a real gRPC client would not send.
struct RawGrpc {
    client: HyperClient<HttpConnector, Full<Bytes>>,
    uri: String,
}

impl RawGrpc {
    fn new(server: &Server) -> RawGrpc {
        RawGrpc::to(server.grpc_addr().expect("the gRPC receiver is enabled"))
    }

    fn to(addr: SocketAddr) -> RawGrpc {
        RawGrpc {
            client: h2c_client(),
            uri: format!("http://{addr}{EXPORT}"),
        }
    }

    /// Sends one length-prefixed message (`compressed` sets the flag byte) and returns
    /// (grpc-status, grpc-message).
    async fn export(
        &self,
        encoding: Option<&str>,
        compressed: bool,
        payload: &[u8],
    ) -> (u32, String) {
        let request = grpc_request(&self.uri, encoding, compressed, payload, None);
        let what = format!("gRPC Export ({encoding:?}, {} bytes)", payload.len());
        let response = bounded(&what, self.client.request(request))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let reply = read_grpc(response)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(reply.http, 200, "{what}: gRPC answers HTTP 200: {reply:?}");
        let status = reply
            .grpc
            .unwrap_or_else(|| panic!("{what}: no grpc-status in headers or trailers"));
        (status, reply.message)
    }

    async fn expect(
        &self,
        what: &str,
        status: u32,
        encoding: Option<&str>,
        compressed: bool,
        payload: &[u8],
    ) {
        let (got, message) = self.export(encoding, compressed, payload).await;
        assert_eq!(
            got, status,
            "{what}: grpc-status {got} (message {message:?}), expected {status}"
        );
    }
}

async fn tonic_client(server: &Server) -> TraceServiceClient<Channel> {
    grpc_client(server.grpc_addr().expect("the gRPC receiver is enabled")).await
}

/// Exports spans with the real tonic client; all must be accepted.
async fn grpc_accepted(
    client: &mut TraceServiceClient<Channel>,
    what: &str,
    faults: &[Fault],
) -> u64 {
    let response = bounded(what, client.export(request(spans(faults))))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
        .into_inner();
    let (rejected, message) = response
        .partial_success
        .map(|p| (p.rejected_spans, p.error_message))
        .unwrap_or_default();
    assert_eq!(rejected, 0, "{what}: rejected spans");
    assert!(
        message.is_empty(),
        "{what}: error_message {message:?} when all were accepted"
    );
    faults.len() as u64
}

// ---------------------------------------------------------------------------------------------
// Valid traffic and the counters
// ---------------------------------------------------------------------------------------------

/// Valid spans sent, by protocol.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    http_protobuf: u64,
    http_json: u64,
    grpc: u64,
}

impl Sent {
    fn total(&self) -> u64 {
        self.http_protobuf + self.http_json + self.grpc
    }

    fn add(&mut self, other: Sent) {
        self.http_protobuf += other.http_protobuf;
        self.http_json += other.http_json;
        self.grpc += other.grpc;
    }
}

/// Known valid spans over every protocol and encoding: all must be accepted.
async fn send_valid_mix(server: &Server) -> Sent {
    let http = Http::new(server);
    let mut sent = Sent::default();
    http.accepted("valid protobuf", PROTOBUF, None, proto_body(&good(3)))
        .await;
    http.accepted(
        "valid protobuf, identity",
        PROTOBUF,
        Some("identity"),
        proto_body(&good(2)),
    )
    .await;
    http.accepted(
        "valid protobuf, gzip",
        PROTOBUF,
        Some("gzip"),
        gzip(&proto_body(&good(2))),
    )
    .await;
    http.accepted(
        "valid protobuf, zstd",
        PROTOBUF,
        Some("zstd"),
        zstd(&proto_body(&good(2))),
    )
    .await;
    sent.http_protobuf += 9;
    http.accepted("valid json", JSON, None, json_body(&good(2)))
        .await;
    http.accepted(
        "valid json with charset",
        "application/json; charset=utf-8",
        None,
        json_body(&good(1)),
    )
    .await;
    http.accepted(
        "valid json, gzip",
        JSON,
        Some("gzip"),
        gzip(&json_body(&good(2))),
    )
    .await;
    http.accepted(
        "valid json, zstd",
        JSON,
        Some("zstd"),
        zstd(&json_body(&good(1))),
    )
    .await;
    sent.http_json += 6;
    let mut client = tonic_client(server).await;
    sent.grpc += grpc_accepted(&mut client, "valid gRPC", &good(3)).await;
    let mut gzipped = client.clone().send_compressed(CompressionEncoding::Gzip);
    sent.grpc += grpc_accepted(&mut gzipped, "valid gRPC, gzip", &good(2)).await;
    let mut zstded = client.clone().send_compressed(CompressionEncoding::Zstd);
    sent.grpc += grpc_accepted(&mut zstded, "valid gRPC, zstd", &good(1)).await;
    sent
}

/// Runs `rounds` of [`send_valid_mix`] concurrently with whatever the caller does meanwhile.
fn spawn_valid(server: &Server, rounds: usize, tasks: &mut JoinSet<Sent>) {
    let http = server.http_addr().unwrap();
    let grpc = server.grpc_addr().unwrap();
    for _ in 0..rounds {
        tasks.spawn(async move { send_valid_mix_at(http, grpc).await });
    }
}

/// [`send_valid_mix`] for a spawned task, which cannot borrow the server.
async fn send_valid_mix_at(http_addr: SocketAddr, grpc_addr: SocketAddr) -> Sent {
    let http = Http::to(http_addr);
    let mut sent = Sent::default();
    http.accepted("valid protobuf", PROTOBUF, None, proto_body(&good(3)))
        .await;
    http.accepted(
        "valid protobuf, gzip",
        PROTOBUF,
        Some("gzip"),
        gzip(&proto_body(&good(2))),
    )
    .await;
    sent.http_protobuf += 5;
    http.accepted("valid json", JSON, None, json_body(&good(2)))
        .await;
    http.accepted(
        "valid json, zstd",
        JSON,
        Some("zstd"),
        zstd(&json_body(&good(1))),
    )
    .await;
    sent.http_json += 3;
    let mut client = grpc_client(grpc_addr).await;
    sent.grpc += grpc_accepted(&mut client, "valid gRPC", &good(2)).await;
    let mut zstded = client.send_compressed(CompressionEncoding::Zstd);
    sent.grpc += grpc_accepted(&mut zstded, "valid gRPC, zstd", &good(2)).await;
    sent
}

async fn join_valid(mut tasks: JoinSet<Sent>) -> Sent {
    let mut sent = Sent::default();
    while let Some(done) = tasks.join_next().await {
        sent.add(done.expect("valid traffic task"));
    }
    sent
}

/// One expected sample: (metric, labels, value).
type Check = (String, Vec<(&'static str, String)>, f64);

/// The counters a test expects, exactly.
#[derive(Debug, Default)]
struct Expected {
    /// Valid spans, by protocol: accepted, and in the stage and span metrics.
    accepted: Sent,
    /// Spans refused by span-level checks: (protocol, reason, count).
    refused: Vec<(&'static str, &'static str, u64)>,
}

impl Expected {
    fn refuse(&mut self, protocol: &'static str, faults: &[Fault]) {
        for fault in faults.iter().filter(|f| **f != Fault::None) {
            match self
                .refused
                .iter_mut()
                .find(|(p, r, _)| *p == protocol && *r == fault.reason())
            {
                Some(entry) => entry.2 += 1,
                None => self.refused.push((protocol, fault.reason(), 1)),
            }
        }
    }

    fn refused(&self, protocol: &str, reason: &str) -> u64 {
        self.refused
            .iter()
            .filter(|(p, r, _)| *p == protocol && *r == reason)
            .map(|e| e.2)
            .sum()
    }

    /// (metric, labels, value) for every counter this test pins down.
    fn checks(&self) -> Vec<Check> {
        let stage = |name: &str| {
            (
                name.to_string(),
                STAGE_LABELS
                    .iter()
                    .map(|(k, v)| (*k, v.to_string()))
                    .collect(),
                self.accepted.total() as f64,
            )
        };
        let mut checks = vec![
            stage(STAGE_COUNT),
            stage(STAGE_CALLS),
            (
                SPAN_CALLS.to_string(),
                vec![
                    ("service_name", SERVICE.to_string()),
                    ("span_name", "step_claim".to_string()),
                ],
                self.accepted.total() as f64,
            ),
        ];
        for (protocol, accepted) in [
            ("http_protobuf", self.accepted.http_protobuf),
            ("http_json", self.accepted.http_json),
            ("grpc", self.accepted.grpc),
        ] {
            let labels = vec![("protocol", protocol.to_string())];
            let refused: u64 = REASONS.iter().map(|r| self.refused(protocol, r)).sum();
            checks.push((ACCEPTED.to_string(), labels.clone(), accepted as f64));
            checks.push((RECEIVED.to_string(), labels, (accepted + refused) as f64));
            for reason in REASONS {
                checks.push((
                    SPANS_REFUSED.to_string(),
                    vec![
                        ("protocol", protocol.to_string()),
                        ("reason", reason.to_string()),
                    ],
                    self.refused(protocol, reason) as f64,
                ));
            }
        }
        checks
    }
}

/// Reads every expected counter (an absent series counts as 0), waiting up to a few seconds
/// for ingest to catch up with the responses, then asserts each is exactly as expected.
async fn assert_counters(server: &Server, expected: &Expected) -> support::Exposition {
    let checks = expected.checks();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let scraped = bounded("scrape", support::scrape(server)).await;
        let got = |(name, labels, _): &Check| {
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            scraped.value(name, &labels).unwrap_or(0.0)
        };
        let wrong: Vec<String> = checks
            .iter()
            .filter(|check| got(check) != check.2)
            .map(|check| {
                format!(
                    "{}{:?}: expected {}, got {}",
                    check.0,
                    check.1,
                    check.2,
                    got(check)
                )
            })
            .collect();
        if wrong.is_empty() {
            return scraped;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "counters differ from the valid spans sent:\n  {}\n--- scrape ---\n{}",
                wrong.join("\n  "),
                scraped
                    .text
                    .lines()
                    .filter(|l| l.starts_with("spanlens_") || l.starts_with("tasker_step_claim_"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sum of `spanlens_requests_refused_total` over its reasons, for one protocol.
fn requests_refused(scraped: &support::Exposition, protocol: &str) -> f64 {
    scraped
        .all(REQUESTS_REFUSED)
        .iter()
        .filter(|s| s.labels.get("protocol").map(String::as_str) == Some(protocol))
        .map(|s| s.value)
        .sum()
}

/// Every request refused as a whole is counted once, under its protocol.
fn assert_requests_refused(scraped: &support::Exposition, expected: &[(&str, u64)]) {
    for &(protocol, count) in expected {
        assert_eq!(
            requests_refused(scraped, protocol),
            count as f64,
            "{REQUESTS_REFUSED}{{protocol=\"{protocol}\"}} summed over reasons: {:?}",
            scraped.all(REQUESTS_REFUSED)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Wrong or missing content type, unknown content encoding, corrupt gzip / zstd, wrong method
/// and unknown path: each gets its exact status, while valid spans flow in concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refuses_bad_framing_with_exact_status_codes() {
    let server = support::start(support::test_config(|_| {})).await;
    let mut valid = JoinSet::new();
    spawn_valid(&server, 3, &mut valid);
    let http = Http::new(&server);
    let body = proto_body(&good(2));

    for content_type in [
        None,
        Some("text/plain"),
        Some("application/octet-stream"),
        Some("application/xml"),
        Some("application/grpc"),
        Some("multipart/form-data; boundary=x"),
        // Not OTLP's media type: the specification names application/x-protobuf.
        Some("application/protobuf"),
    ] {
        http.refused("wrong content type", 415, content_type, None, body.clone())
            .await;
    }
    http.refused(
        "JSON body, wrong content type",
        415,
        Some("text/plain"),
        None,
        json_body(&good(1)),
    )
    .await;

    for encoding in ["br", "deflate", "compress", "x-snappy"] {
        http.refused(
            "unknown encoding",
            415,
            Some(PROTOBUF),
            Some(encoding),
            body.clone(),
        )
        .await;
        http.refused(
            "unknown encoding",
            415,
            Some(JSON),
            Some(encoding),
            json_body(&good(1)),
        )
        .await;
    }

    for content_type in [PROTOBUF, JSON] {
        let valid_body = if is_json(content_type) {
            json_body(&good(2))
        } else {
            proto_body(&good(2))
        };
        let cases = [
            ("corrupt gzip", "gzip", corrupt_gzip()),
            ("truncated gzip", "gzip", truncated(gzip(&valid_body))),
            ("gzip header, plain body", "gzip", valid_body.clone()),
            ("corrupt zstd", "zstd", corrupt_zstd()),
            ("truncated zstd", "zstd", truncated(zstd(&valid_body))),
            ("zstd header, plain body", "zstd", valid_body.clone()),
        ];
        for (what, encoding, bad) in cases {
            http.refused(what, 400, Some(content_type), Some(encoding), bad)
                .await;
        }
    }

    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let reply = http
            .send(method.clone(), TRACES, Some(PROTOBUF), None, body.clone())
            .await;
        assert_eq!(reply.status, 405, "{method} {TRACES}: {reply:?}");
        assert!(
            reply.allow.split(',').any(|m| m.trim() == "POST"),
            "{method} {TRACES}: 405 without `Allow: POST`: {reply:?}"
        );
    }

    for path in [
        "/",
        "/v1/trace",
        "/v1/traces/extra",
        "/v2/traces",
        "/v1/logs",
        "/nope",
    ] {
        let reply = http
            .send(
                reqwest::Method::POST,
                path,
                Some(PROTOBUF),
                None,
                body.clone(),
            )
            .await;
        assert_eq!(reply.status, 404, "POST {path}: {reply:?}");
    }
    let reply = http
        .send(reqwest::Method::GET, "/unknown", None, None, Vec::new())
        .await;
    assert_eq!(reply.status, 404, "GET /unknown: {reply:?}");

    let mut expected = Expected {
        accepted: join_valid(valid).await,
        ..Default::default()
    };
    expected.accepted.add(send_valid_mix(&server).await);
    let scraped = assert_counters(&server, &expected).await;
    // Per protocol at least its 4 unknown encodings and 6 corrupt bodies; the 8 bodies of no
    // known content type are counted under some protocol (404 and 405 are not trace requests).
    let all: f64 = scraped.all(REQUESTS_REFUSED).iter().map(|s| s.value).sum();
    assert!(
        requests_refused(&scraped, "http_protobuf") >= 10.0
            && requests_refused(&scraped, "http_json") >= 10.0
            && all >= 28.0,
        "refused requests are counted: {:?}",
        scraped.all(REQUESTS_REFUSED)
    );
    server.shutdown().await;
}

/// The size limit is measured after decompression: a request exactly at the limit is
/// accepted, one byte over is refused (plain, gzip, zstd, JSON), and small compressed bodies
/// that inflate far past the limit get 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_size_limit_applies_after_decompression() {
    let server = support::start(support::test_config(|c| {
        c.receivers.max_request_bytes = LIMIT;
    }))
    .await;
    let mut valid = JoinSet::new();
    spawn_valid(&server, 2, &mut valid);
    let http = Http::new(&server);
    let mut expected = Expected::default();

    let at_limit = proto_of_size(LIMIT);
    let over_limit = proto_of_size(LIMIT + 1);
    http.accepted(
        "protobuf exactly at the limit",
        PROTOBUF,
        None,
        at_limit.clone(),
    )
    .await;
    http.accepted(
        "gzip inflating exactly to the limit",
        PROTOBUF,
        Some("gzip"),
        gzip(&proto_of_size(LIMIT)),
    )
    .await;
    http.accepted(
        "zstd inflating exactly to the limit",
        PROTOBUF,
        Some("zstd"),
        zstd(&proto_of_size(LIMIT)),
    )
    .await;
    expected.accepted.http_protobuf += 3;
    http.refused(
        "protobuf one byte over the limit",
        413,
        Some(PROTOBUF),
        None,
        over_limit.clone(),
    )
    .await;
    http.refused(
        "gzip inflating one byte over",
        413,
        Some(PROTOBUF),
        Some("gzip"),
        gzip(&over_limit),
    )
    .await;
    http.refused(
        "zstd inflating one byte over",
        413,
        Some(PROTOBUF),
        Some("zstd"),
        zstd(&over_limit),
    )
    .await;
    http.refused(
        "protobuf 4× the limit",
        413,
        Some(PROTOBUF),
        None,
        proto_of_size(4 * LIMIT),
    )
    .await;

    let json_at_limit = json_of_size(LIMIT);
    let json_over_limit = json_of_size(LIMIT + 1);
    http.accepted(
        "json exactly at the limit",
        JSON,
        None,
        json_at_limit.clone(),
    )
    .await;
    http.accepted(
        "json gzip inflating exactly to the limit",
        JSON,
        Some("gzip"),
        gzip(&json_of_size(LIMIT)),
    )
    .await;
    expected.accepted.http_json += 2;
    http.refused(
        "json one byte over the limit",
        413,
        Some(JSON),
        None,
        json_over_limit.clone(),
    )
    .await;
    http.refused(
        "json zstd inflating one byte over",
        413,
        Some(JSON),
        Some("zstd"),
        zstd(&json_over_limit),
    )
    .await;

    // Bombs: a few KiB that inflate to 4 MiB, both as zeros and as a valid request.
    let zeros = vec![0u8; BOMB];
    let valid_bomb = proto_of_size(BOMB);
    let json_bomb = json_of_size(BOMB);
    let bombs = [
        ("gzip of zeros", PROTOBUF, "gzip", gzip(&zeros)),
        ("zstd of zeros", PROTOBUF, "zstd", zstd(&zeros)),
        (
            "gzip of a valid 4 MiB request",
            PROTOBUF,
            "gzip",
            gzip(&valid_bomb),
        ),
        (
            "zstd of a valid 4 MiB request",
            PROTOBUF,
            "zstd",
            zstd(&valid_bomb),
        ),
        (
            "gzip of a valid 4 MiB JSON request",
            JSON,
            "gzip",
            gzip(&json_bomb),
        ),
        (
            "zstd of a valid 4 MiB JSON request",
            JSON,
            "zstd",
            zstd(&json_bomb),
        ),
    ];
    for (what, content_type, encoding, body) in bombs {
        assert!(
            body.len() < LIMIT / 4,
            "{what} is small on the wire ({} bytes)",
            body.len()
        );
        http.refused(what, 413, Some(content_type), Some(encoding), body)
            .await;
    }

    expected.accepted.add(join_valid(valid).await);
    let scraped = assert_counters(&server, &expected).await;
    assert_requests_refused(&scraped, &[("http_protobuf", 8), ("http_json", 4)]);
    server.shutdown().await;
}

/// Malformed protobuf and malformed JSON get 400 with a readable message in the request's
/// content type; nothing in them is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_malformed_bodies_get_400_with_a_readable_message() {
    let server = support::start(support::test_config(|_| {})).await;
    let mut valid = JoinSet::new();
    spawn_valid(&server, 3, &mut valid);
    let http = Http::new(&server);

    for (what, body) in malformed_protobuf() {
        for encoding in [None, Some("gzip")] {
            let sent = match encoding {
                Some(_) => gzip(&body),
                None => body.clone(),
            };
            let what = format!("malformed protobuf: {what} ({encoding:?})");
            let reply = http
                .refused(&what, 400, Some(PROTOBUF), encoding, sent)
                .await;
            error_message(PROTOBUF, &reply, &what);
        }
    }
    for (what, body) in malformed_json() {
        for content_type in [JSON, "application/json; charset=utf-8"] {
            let what = format!("malformed JSON: {what} ({content_type})");
            let reply = http
                .refused(&what, 400, Some(content_type), None, body.clone())
                .await;
            error_message(content_type, &reply, &what);
        }
    }

    let expected = Expected {
        accepted: join_valid(valid).await,
        ..Default::default()
    };
    let scraped = assert_counters(&server, &expected).await;
    assert_requests_refused(&scraped, &[("http_protobuf", 10), ("http_json", 12)]);
    server.shutdown().await;
}

/// Span-level problems: some bad spans → 200 with the exact rejected_spans count and a message
/// naming the problem, the good spans counted; every span bad → 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_spans_are_partial_success_or_400_when_all_are_bad() {
    let server = support::start(support::test_config(|_| {})).await;
    let mut valid = JoinSet::new();
    spawn_valid(&server, 2, &mut valid);
    let http = Http::new(&server);
    let mut expected = Expected::default();

    for (protocol, content_type, faults) in [
        ("http_protobuf", PROTOBUF, &PROTO_FAULTS[..]),
        ("http_json", JSON, &JSON_FAULTS[..]),
    ] {
        let body = |faults: &[Fault]| {
            if is_json(content_type) {
                json_body(faults)
            } else {
                proto_body(faults)
            }
        };
        let mut good_sent = 0;

        // One problem at a time, between good spans.
        for &fault in faults {
            let what = format!("{content_type}: 2 good spans and one with {fault:?}");
            let sent = [Fault::None, fault, Fault::None];
            let reply = http.post(Some(content_type), None, body(&sent)).await;
            assert_eq!(reply.status, 200, "{what}: {reply:?}");
            let (rejected, message) = partial_success(content_type, &reply, &what);
            assert_eq!(rejected, 1, "{what}: rejected_spans (message {message:?})");
            assert!(
                mentions(&message, fault),
                "{what}: error_message {message:?} does not name the problem"
            );
            good_sent += 2;
            expected.refuse(protocol, &sent);
        }

        // Every problem in one request, interleaved with 5 good spans.
        let mut mixed = Vec::new();
        for (i, &fault) in faults.iter().enumerate() {
            if i < 5 {
                mixed.push(Fault::None);
            }
            mixed.push(fault);
        }
        let what = format!("{content_type}: 5 good spans and {} bad", faults.len());
        let reply = http
            .post(Some(content_type), Some("gzip"), gzip(&body(&mixed)))
            .await;
        assert_eq!(reply.status, 200, "{what}: {reply:?}");
        let (rejected, message) = partial_success(content_type, &reply, &what);
        assert_eq!(
            rejected,
            faults.len() as i64,
            "{what}: rejected_spans (message {message:?})"
        );
        assert!(!message.is_empty(), "{what}: empty error_message");
        good_sent += 5;
        expected.refuse(protocol, &mixed);

        // Every span bad: the whole request is refused.
        for all_bad in [
            vec![faults[0]],
            faults.to_vec(),
            vec![faults[faults.len() - 1]; 3],
        ] {
            let what = format!("{content_type}: every span bad {all_bad:?}");
            let reply = http
                .refused(&what, 400, Some(content_type), None, body(&all_bad))
                .await;
            error_message(content_type, &reply, &what);
            expected.refuse(protocol, &all_bad);
        }

        // All good: no partial success.
        http.accepted("all good", content_type, None, body(&good(4)))
            .await;
        good_sent += 4;

        match protocol {
            "http_json" => expected.accepted.http_json += good_sent,
            _ => expected.accepted.http_protobuf += good_sent,
        }
    }

    expected.accepted.add(join_valid(valid).await);
    let scraped = assert_counters(&server, &expected).await;
    // Only the requests whose every span is bad are refused as a whole.
    assert_requests_refused(&scraped, &[("http_protobuf", 3), ("http_json", 3)]);
    server.shutdown().await;
}

/// OTLP/gRPC: malformed bytes, oversized and inflating messages, corrupt compression, unknown
/// encodings, bad spans and all-bad requests get their exact gRPC status; valid exports
/// (plain, gzip, zstd) run concurrently and are counted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_input_gets_exact_status_codes() {
    let server = support::start(support::test_config(|c| {
        c.receivers.max_request_bytes = LIMIT;
    }))
    .await;
    let mut valid = JoinSet::new();
    spawn_valid(&server, 2, &mut valid);
    let raw = RawGrpc::new(&server);
    let mut expected = Expected::default();

    // The raw client itself works: a valid message, plain and gzip.
    raw.expect("valid raw message", OK, None, false, &proto_body(&good(2)))
        .await;
    raw.expect(
        "valid raw gzip message",
        OK,
        Some("gzip"),
        true,
        &gzip(&proto_body(&good(1))),
    )
    .await;
    expected.accepted.grpc += 3;

    for (what, payload) in malformed_protobuf() {
        raw.expect(
            &format!("malformed: {what}"),
            INVALID_ARGUMENT,
            None,
            false,
            &payload,
        )
        .await;
        raw.expect(
            &format!("malformed, gzip: {what}"),
            INVALID_ARGUMENT,
            Some("gzip"),
            true,
            &gzip(&payload),
        )
        .await;
    }

    // Size: the limit applies to the message after decompression.
    let at_limit = proto_of_size(LIMIT);
    let over_limit = proto_of_size(LIMIT + 1);
    raw.expect("message exactly at the limit", OK, None, false, &at_limit)
        .await;
    raw.expect(
        "gzip inflating exactly to the limit",
        OK,
        Some("gzip"),
        true,
        &gzip(&proto_of_size(LIMIT)),
    )
    .await;
    raw.expect(
        "zstd inflating exactly to the limit",
        OK,
        Some("zstd"),
        true,
        &zstd(&proto_of_size(LIMIT)),
    )
    .await;
    expected.accepted.grpc += 3;
    raw.expect(
        "one byte over the limit",
        RESOURCE_EXHAUSTED,
        None,
        false,
        &over_limit,
    )
    .await;
    raw.expect(
        "gzip one byte over",
        RESOURCE_EXHAUSTED,
        Some("gzip"),
        true,
        &gzip(&over_limit),
    )
    .await;
    raw.expect(
        "zstd one byte over",
        RESOURCE_EXHAUSTED,
        Some("zstd"),
        true,
        &zstd(&over_limit),
    )
    .await;
    raw.expect(
        "4× the limit",
        RESOURCE_EXHAUSTED,
        None,
        false,
        &proto_of_size(4 * LIMIT),
    )
    .await;
    let zeros = vec![0u8; BOMB];
    let valid_bomb = proto_of_size(BOMB);
    for (what, encoding, payload) in [
        ("gzip of zeros", "gzip", gzip(&zeros)),
        ("zstd of zeros", "zstd", zstd(&zeros)),
        ("gzip of a valid 4 MiB request", "gzip", gzip(&valid_bomb)),
        ("zstd of a valid 4 MiB request", "zstd", zstd(&valid_bomb)),
    ] {
        assert!(payload.len() < LIMIT / 4, "{what} is small on the wire");
        raw.expect(what, RESOURCE_EXHAUSTED, Some(encoding), true, &payload)
            .await;
    }

    // Compression that does not decompress, and encodings nobody agreed on.
    let body = proto_body(&good(2));
    for (what, encoding, payload) in [
        ("corrupt gzip", "gzip", corrupt_gzip()),
        ("truncated gzip", "gzip", truncated(gzip(&body))),
        ("corrupt zstd", "zstd", corrupt_zstd()),
        ("truncated zstd", "zstd", truncated(zstd(&body))),
    ] {
        raw.expect(what, INVALID_ARGUMENT, Some(encoding), true, &payload)
            .await;
    }
    for encoding in ["br", "snappy", "x-unknown"] {
        raw.expect(
            &format!("grpc-encoding {encoding}"),
            UNIMPLEMENTED,
            Some(encoding),
            true,
            &body,
        )
        .await;
    }

    // Span-level problems, with the real client.
    let mut client = tonic_client(&server).await;
    for &fault in &PROTO_FAULTS {
        let what = format!("gRPC: 2 good spans and one with {fault:?}");
        let sent = [Fault::None, fault, Fault::None];
        let response = bounded(&what, client.export(request(spans(&sent))))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"))
            .into_inner();
        let partial = response
            .partial_success
            .unwrap_or_else(|| panic!("{what}: no partial_success"));
        assert_eq!(partial.rejected_spans, 1, "{what}: {partial:?}");
        assert!(
            mentions(&partial.error_message, fault),
            "{what}: error_message does not name the problem: {partial:?}"
        );
        expected.accepted.grpc += 2;
        expected.refuse("grpc", &sent);
    }
    let mut mixed = good(5);
    mixed.extend(PROTO_FAULTS);
    mixed.rotate_left(3);
    let mut gzipped = client.clone().send_compressed(CompressionEncoding::Gzip);
    let what = "gRPC: 5 good spans and 8 bad";
    let response = bounded(what, gzipped.export(request(spans(&mixed))))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
        .into_inner();
    let partial = response
        .partial_success
        .unwrap_or_else(|| panic!("{what}: no partial_success"));
    assert_eq!(partial.rejected_spans, 8, "{what}: {partial:?}");
    assert!(!partial.error_message.is_empty(), "{what}: {partial:?}");
    expected.accepted.grpc += 5;
    expected.refuse("grpc", &mixed);

    for all_bad in [vec![Fault::TraceIdZero], PROTO_FAULTS.to_vec()] {
        let what = format!("gRPC: every span bad {all_bad:?}");
        let status = bounded(&what, client.export(request(spans(&all_bad))))
            .await
            .expect_err(&what);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
        assert!(!status.message().is_empty(), "{what}: {status:?}");
        expected.refuse("grpc", &all_bad);
    }
    // The same all-bad request as raw bytes.
    let all_bad = [Fault::SpanIdZero, Fault::EndBeforeStart];
    raw.expect(
        "raw: every span bad",
        INVALID_ARGUMENT,
        None,
        false,
        &proto_body(&all_bad),
    )
    .await;
    expected.refuse("grpc", &all_bad);

    expected.accepted.grpc += grpc_accepted(&mut client, "all good", &good(4)).await;
    expected.accepted.add(join_valid(valid).await);
    let scraped = assert_counters(&server, &expected).await;
    // 25 refused before decoding, 3 with every span bad.
    assert_requests_refused(&scraped, &[("grpc", 28)]);
    server.shutdown().await;
}

/// Everything at once: bad requests of every kind on every protocol, many in flight together
/// with valid and partially valid ones. Exactly the good spans are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bad_traffic_leaves_exactly_the_valid_spans() {
    let server = support::start(support::test_config(|c| {
        c.receivers.max_request_bytes = LIMIT;
    }))
    .await;
    let http_addr = server.http_addr().unwrap();
    let grpc_addr = server.grpc_addr().unwrap();
    let mut valid = JoinSet::new();
    spawn_valid(&server, 4, &mut valid);

    // Each task returns (protocol, faults) of every request it sent that decodes: partially
    // good ones and all-bad ones.
    let mut bad: JoinSet<Vec<(&'static str, Vec<Fault>)>> = JoinSet::new();
    for round in 0..4 {
        bad.spawn(async move {
            let http = Http {
                client: reqwest::Client::new(),
                base: format!("http://{http_addr}"),
            };
            let bomb = gzip(&vec![0u8; BOMB]);
            http.refused("bomb", 413, Some(PROTOBUF), Some("gzip"), bomb)
                .await;
            http.refused("no content type", 415, None, None, proto_body(&good(2)))
                .await;
            http.refused("br", 415, Some(JSON), Some("br"), json_body(&good(2)))
                .await;
            http.refused(
                "corrupt zstd",
                400,
                Some(PROTOBUF),
                Some("zstd"),
                corrupt_zstd(),
            )
            .await;
            let (what, malformed) = malformed_protobuf().swap_remove(round % 5);
            http.refused(what, 400, Some(PROTOBUF), None, malformed)
                .await;
            let (what, malformed) = malformed_json().swap_remove(round % 6);
            http.refused(what, 400, Some(JSON), None, malformed).await;
            http.refused(
                "all bad",
                400,
                Some(PROTOBUF),
                None,
                proto_body(&PROTO_FAULTS),
            )
            .await;
            let mut decoded = vec![("http_protobuf", PROTO_FAULTS.to_vec())];
            http.refused(
                "over the limit",
                413,
                Some(JSON),
                None,
                json_of_size(LIMIT + 1),
            )
            .await;
            let reply = http
                .send(reqwest::Method::GET, TRACES, None, None, Vec::new())
                .await;
            assert_eq!(reply.status, 405, "GET {TRACES}: {reply:?}");

            let faults = vec![Fault::None, PROTO_FAULTS[round], Fault::None, Fault::None];
            let reply = http.post(Some(PROTOBUF), None, proto_body(&faults)).await;
            assert_eq!(reply.status, 200, "partial protobuf: {reply:?}");
            assert_eq!(partial_success(PROTOBUF, &reply, "partial protobuf").0, 1);
            decoded.push(("http_protobuf", faults));
            let faults = vec![JSON_FAULTS[round], Fault::None];
            let reply = http.post(Some(JSON), None, json_body(&faults)).await;
            assert_eq!(reply.status, 200, "partial json: {reply:?}");
            assert_eq!(partial_success(JSON, &reply, "partial json").0, 1);
            decoded.push(("http_json", faults));
            decoded
        });
        bad.spawn(async move {
            let raw = RawGrpc::to(grpc_addr);
            let (what, malformed) = malformed_protobuf().swap_remove(round % 5);
            raw.expect(what, INVALID_ARGUMENT, None, false, &malformed)
                .await;
            raw.expect(
                "bomb",
                RESOURCE_EXHAUSTED,
                Some("zstd"),
                true,
                &zstd(&vec![0u8; BOMB]),
            )
            .await;
            raw.expect(
                "corrupt gzip",
                INVALID_ARGUMENT,
                Some("gzip"),
                true,
                &corrupt_gzip(),
            )
            .await;
            raw.expect("br", UNIMPLEMENTED, Some("br"), true, &proto_body(&good(1)))
                .await;
            let faults = vec![PROTO_FAULTS[7 - round], PROTO_FAULTS[round]];
            raw.expect(
                "all bad",
                INVALID_ARGUMENT,
                None,
                false,
                &proto_body(&faults),
            )
            .await;
            let mut decoded = vec![("grpc", faults)];
            let faults = vec![Fault::None, Fault::None, PROTO_FAULTS[round + 4]];
            raw.expect("partial", OK, None, false, &proto_body(&faults))
                .await;
            decoded.push(("grpc", faults));
            decoded
        });
    }

    let mut expected = Expected::default();
    while let Some(done) = bad.join_next().await {
        for (protocol, faults) in done.expect("bad traffic task") {
            let good = faults.iter().filter(|f| **f == Fault::None).count() as u64;
            match protocol {
                "http_protobuf" => expected.accepted.http_protobuf += good,
                "http_json" => expected.accepted.http_json += good,
                _ => expected.accepted.grpc += good,
            }
            expected.refuse(protocol, &faults);
        }
    }
    expected.accepted.add(join_valid(valid).await);
    assert_counters(&server, &expected).await;
    server.shutdown().await;
}
