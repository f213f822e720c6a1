//! OTLP on the wire, shared by the tests that build requests and read answers themselves:
//! requests and their resource/scope wrapping, exact-size padding, gzip and zstd bodies, gRPC
//! framing, hand-built OTLP/HTTP and OTLP/gRPC requests (any bytes, any headers) with the
//! hyper clients that send them, and the answers read back whole (status, grpc-status,
//! Retry-After, RetryInfo, WWW-Authenticate, partial success).

use base64::Engine;
use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::Channel;

pub const PROTOBUF: &str = "application/x-protobuf";
pub const JSON: &str = "application/json";
pub const TRACES: &str = "/v1/traces";
/// The gRPC method of OTLP trace export.
pub const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

// grpc-status codes.
pub const OK: u32 = 0;
pub const INVALID_ARGUMENT: u32 = 3;
pub const DEADLINE_EXCEEDED: u32 = 4;
pub const RESOURCE_EXHAUSTED: u32 = 8;
pub const UNIMPLEMENTED: u32 = 12;
pub const UNAVAILABLE: u32 = 14;
pub const UNAUTHENTICATED: u32 = 16;

/// How long reading an answer's body may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Requests and bodies
// ---------------------------------------------------------------------------------------------

/// One resource with `attributes` holding one scope named `scope` with `spans`.
pub fn resource_spans(attributes: Vec<KeyValue>, scope: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes,
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: scope.to_string(),
                ..Default::default()
            }),
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `request` with `pad` bytes of `padding` attribute added to its first resource (none when
/// `pad` is 0), so that a test can size the request exactly.
pub fn with_padding(
    mut request: ExportTraceServiceRequest,
    pad: usize,
) -> ExportTraceServiceRequest {
    if pad > 0 {
        let resource = request.resource_spans[0]
            .resource
            .get_or_insert_with(Default::default);
        resource
            .attributes
            .push(super::kv("padding", &"p".repeat(pad)));
    }
    request
}

/// Adjusts `pad` until `build(pad)` is exactly `size` bytes long.
pub fn exactly(size: usize, build: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let mut pad = 1;
    for _ in 0..16 {
        let body = build(pad);
        if body.len() == size {
            return body;
        }
        pad = (pad as i64 + size as i64 - body.len() as i64).max(1) as usize;
    }
    panic!("could not pad a request to exactly {size} bytes");
}

/// The OTLP/JSON form of a request (hex ids, lowerCamelCase).
pub fn to_json(request: &ExportTraceServiceRequest) -> Vec<u8> {
    serde_json::to_vec(request).expect("a request serializes as OTLP/JSON")
}

pub fn span_count(request: &ExportTraceServiceRequest) -> u64 {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum()
}

/// Lowercase hex, as OTLP/JSON writes ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// How a request is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl Proto {
    pub const ALL: [Proto; 3] = [Proto::Grpc, Proto::HttpProtobuf, Proto::HttpJson];

    /// The `protocol` label of spanlens's own counters.
    pub fn label(self) -> &'static str {
        match self {
            Proto::Grpc => "grpc",
            Proto::HttpProtobuf => "http_protobuf",
            Proto::HttpJson => "http_json",
        }
    }

    /// The body of `request` in this protocol's content type (gRPC and HTTP protobuf share
    /// the protobuf encoding; the gRPC framing is added when sending).
    pub fn body(self, request: &ExportTraceServiceRequest) -> Vec<u8> {
        match self {
            Proto::HttpJson => to_json(request),
            _ => request.encode_to_vec(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests on the wire
// ---------------------------------------------------------------------------------------------

/// One length-prefixed gRPC message (`compressed` sets the flag byte).
pub fn grpc_frame(compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 5);
    frame.push(u8::from(compressed));
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A gRPC request whose body is one length-prefixed message (`compressed` sets the flag).
pub fn grpc_request(
    uri: &str,
    encoding: Option<&str>,
    compressed: bool,
    payload: &[u8],
    token: Option<&str>,
) -> http::Request<Full<Bytes>> {
    grpc_request_raw(uri, encoding, grpc_frame(compressed, payload), token)
}

/// A gRPC request with a body sent as given (no framing added).
pub fn grpc_request_raw(
    uri: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
    token: Option<&str>,
) -> http::Request<Full<Bytes>> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(encoding) = encoding {
        request = request.header("grpc-encoding", encoding);
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(Full::new(Bytes::from(body))).unwrap()
}

/// An OTLP/HTTP POST.
pub fn http_request(
    uri: &str,
    proto: Proto,
    encoding: Option<&str>,
    body: Vec<u8>,
    token: Option<&str>,
) -> http::Request<Full<Bytes>> {
    let content_type = match proto {
        Proto::HttpJson => JSON,
        _ => PROTOBUF,
    };
    let mut request = http::Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", content_type);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(Full::new(Bytes::from(body))).unwrap()
}

/// A plain HTTP/2 (h2c) client, for gRPC requests whose bytes a real gRPC client would not send.
pub fn h2c_client() -> HyperClient<HttpConnector, Full<Bytes>> {
    HyperClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build(nodelay())
}

/// A plain HTTP/1.1 client.
pub fn http1_client() -> HyperClient<HttpConnector, Full<Bytes>> {
    HyperClient::builder(TokioExecutor::new()).build(nodelay())
}

/// The real tonic client of OTLP/gRPC, connected to `addr` (within [`super::CALL_TIMEOUT`]).
pub async fn grpc_client(addr: SocketAddr) -> TraceServiceClient<Channel> {
    super::bounded(
        "gRPC connect",
        TraceServiceClient::connect(format!("http://{addr}")),
    )
    .await
    .expect("gRPC connects")
}

fn nodelay() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// google.rpc.Status and its details: the message types of `spanlens::otlp::status` (field numbers
/// are facts of the protocol).
pub use spanlens::otlp::status::{RetryInfo, RpcStatus};

/// The retry delay of a `grpc-status-details-bin` value (base64 of a google.rpc.Status), if
/// it carries a google.rpc.RetryInfo.
pub fn retry_info_delay(details_bin: &[u8]) -> Option<Duration> {
    status_retry_delay(&unbase64(details_bin)?)
}

/// The retry delay of an encoded google.rpc.Status (what tonic's `Status::details` holds), if
/// it carries a google.rpc.RetryInfo.
pub fn status_retry_delay(status: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(status).ok()?;
    status
        .details
        .iter()
        .filter(|d| d.type_url.ends_with("google.rpc.RetryInfo"))
        .find_map(|d| RetryInfo::decode(&d.value[..]).ok()?.retry_delay)
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

/// Standard base64 without padding (gRPC's `-bin` header encoding).
pub fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(data)
}

/// Standard base64, padded or not.
pub fn unbase64(text: &[u8]) -> Option<Vec<u8>> {
    let trimmed: Vec<u8> = text.iter().copied().filter(|&c| c != b'=').collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .ok()
}

/// One answer, whatever the protocol.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// The HTTP status (200 for every gRPC answer that is a gRPC answer).
    pub http: u16,
    /// grpc-status, for gRPC.
    pub grpc: Option<u32>,
    pub message: String,
    pub retry_after: Option<String>,
    pub retry_info: Option<Duration>,
    pub www_authenticate: Option<String>,
    /// partial_success.rejected_spans of an accepted request.
    pub rejected: i64,
    pub body: Bytes,
    pub elapsed: Duration,
}

impl Reply {
    /// 200 with grpc-status 0 (for gRPC).
    pub fn accepted(&self) -> bool {
        self.http == 200 && self.grpc.unwrap_or(OK) == OK
    }

    /// 503 / UNAVAILABLE.
    pub fn unavailable(&self) -> bool {
        match self.grpc {
            Some(code) => code == UNAVAILABLE,
            None => self.http == 503,
        }
    }

    /// The wait a refused request asks for: Retry-After seconds or RetryInfo.
    pub fn wait(&self) -> Option<Duration> {
        if let Some(delay) = self.retry_info {
            return Some(delay);
        }
        self.retry_after
            .as_deref()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }

    /// "HTTP 200" / "grpc-status 3".
    pub fn code(&self) -> String {
        match self.grpc {
            Some(code) => format!("grpc-status {code}"),
            None => format!("HTTP {}", self.http),
        }
    }
}

/// The grpc-status in `headers` (the response's, or its trailers), when numeric.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    header(headers, "grpc-status")?.trim().parse().ok()
}

fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Reads an OTLP/HTTP answer.
pub async fn read_http(proto: Proto, response: http::Response<Incoming>) -> Result<Reply, String> {
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(REPLY_TIMEOUT, body.collect())
        .await
        .map_err(|_| "body not read within the call timeout".to_string())?
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    let mut reply = Reply {
        http: parts.status.as_u16(),
        retry_after: header(&parts.headers, "retry-after"),
        www_authenticate: header(&parts.headers, "www-authenticate"),
        body: body.clone(),
        ..Default::default()
    };
    let json = header(&parts.headers, "content-type").is_some_and(|t| t.starts_with(JSON));
    if reply.http == 200 {
        reply.rejected = match proto {
            Proto::HttpJson => {
                let value: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("a 200 JSON answer that is not JSON: {e}"))?;
                match &value["partialSuccess"]["rejectedSpans"] {
                    serde_json::Value::Number(n) => n.as_i64().unwrap_or(0),
                    serde_json::Value::String(s) => s.parse().unwrap_or(0),
                    _ => 0,
                }
            }
            _ => ExportTraceServiceResponse::decode(&body[..])
                .map_err(|e| {
                    format!("a 200 answer that is not an ExportTraceServiceResponse: {e}")
                })?
                .partial_success
                .map_or(0, |p| p.rejected_spans),
        };
    } else if json {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) {
            reply.message = value["message"].as_str().unwrap_or_default().to_string();
        }
    } else if let Ok(status) = RpcStatus::decode(&body[..]) {
        reply.message = status.message;
    }
    if reply.message.is_empty() && reply.http != 200 {
        reply.message = String::from_utf8_lossy(&body).chars().take(300).collect();
    }
    Ok(reply)
}

/// Reads a gRPC answer: status from the headers (trailers-only) or the trailers.
pub async fn read_grpc(response: http::Response<Incoming>) -> Result<Reply, String> {
    let (parts, body) = response.into_parts();
    let mut reply = Reply {
        http: parts.status.as_u16(),
        www_authenticate: header(&parts.headers, "www-authenticate"),
        ..Default::default()
    };
    let fill = |headers: &http::HeaderMap, reply: &mut Reply| {
        if headers.contains_key("grpc-status") {
            reply.grpc = grpc_status(headers);
            reply.message = header(headers, "grpc-message").unwrap_or_default();
            reply.retry_info = header(headers, "grpc-status-details-bin")
                .as_deref()
                .and_then(|v| retry_info_delay(v.as_bytes()));
        }
    };
    fill(&parts.headers, &mut reply);
    let collected = tokio::time::timeout(REPLY_TIMEOUT, body.collect())
        .await
        .map_err(|_| "body not read within the call timeout".to_string())?
        .map_err(|e| format!("reading the body: {e}"))?;
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    if reply.grpc.is_none()
        && let Some(trailers) = &trailers
    {
        fill(trailers, &mut reply);
    }
    if reply.http == 200 && reply.grpc.is_none() {
        return Err(format!("a gRPC answer without grpc-status: {parts:?}"));
    }
    if reply.grpc == Some(OK) && data.len() >= 5 {
        let mut frame = data.clone();
        frame.advance(5);
        let response = ExportTraceServiceResponse::decode(frame)
            .map_err(|e| format!("an OK answer that is not an ExportTraceServiceResponse: {e}"))?;
        reply.rejected = response.partial_success.map_or(0, |p| p.rejected_spans);
    }
    reply.body = data;
    Ok(reply)
}
