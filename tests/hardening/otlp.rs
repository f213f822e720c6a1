//! OTLP requests and the clients that send them: spans with fresh ids, requests padded to an
//! exact size, compression bombs, and one client for OTLP/gRPC (raw HTTP/2 frames, so any
//! bytes can be sent), OTLP/HTTP protobuf and OTLP/HTTP JSON whose replies carry everything the
//! hardening tests look at (status, grpc-status, Retry-After, RetryInfo, WWW-Authenticate,
//! partial success).
#![allow(dead_code)]

use crate::harness::Spanlens;
use base64::Engine;
use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const SERVICE: &str = "tasker-rust-worker";
pub const PROTOBUF: &str = "application/x-protobuf";
pub const JSON: &str = "application/json";
pub const TRACES: &str = "/v1/traces";
pub const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The stage every [`claims`] span lands in, and its series for [`SERVICE`].
pub const CLAIM_COUNT: &str = "tasker_step_claim_duration_seconds_count";
pub const CLAIM_LABELS: &[(&str, &str)] = &[("service", SERVICE), ("handler_language", "rust")];
pub const RECEIVED: &str = "spanlens_spans_received_total";
pub const ACCEPTED: &str = "spanlens_spans_accepted_total";

/// Every accepted span counted once: accepted over all protocols, and observed as a step
/// claim of the test service (all requests here are claims of SERVICE).
pub fn assert_accepted_and_observed(scraped: &crate::support::Exposition, accepted: u64) {
    assert_eq!(
        scraped.sum(ACCEPTED, &[]),
        accepted as f64,
        "spans accepted"
    );
    assert_eq!(
        scraped.sum(CLAIM_COUNT, CLAIM_LABELS),
        accepted as f64,
        "step_claim observations"
    );
}
pub const REQUESTS_REFUSED: &str = "spanlens_requests_refused_total";

// grpc-status codes.
pub const OK: u32 = 0;
pub const INVALID_ARGUMENT: u32 = 3;
pub const DEADLINE_EXCEEDED: u32 = 4;
pub const RESOURCE_EXHAUSTED: u32 = 8;
pub const UNAVAILABLE: u32 = 14;
pub const UNAUTHENTICATED: u32 = 16;

/// 2023-11-14T22:13:20Z; spans last 25 ms.
pub const START: u64 = 1_700_000_000_000_000_000;
pub const DURATION: u64 = 25_000_000;

/// Every network call of a test is bounded by this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Spans and requests
// ---------------------------------------------------------------------------------------------

static SEQ: AtomicU64 = AtomicU64::new(1);

/// A fresh (trace id, span id) pair: spanlens drops a span id it has seen before.
pub fn fresh_ids() -> (Vec<u8>, Vec<u8>) {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut trace = vec![0x7a; 8];
    trace.extend_from_slice(&seq.to_be_bytes());
    let span = (seq | 1 << 62).to_be_bytes().to_vec();
    (trace, span)
}

pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// A valid span named `name` with string attributes.
pub fn span(name: &str, attributes: &[(&str, &str)]) -> Span {
    let (trace_id, span_id) = fresh_ids();
    Span {
        trace_id,
        span_id,
        name: name.to_string(),
        kind: 1,
        start_time_unix_nano: START,
        end_time_unix_nano: START + DURATION,
        attributes: attributes.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Default::default()
    }
}

/// `n` valid `step_claim` spans: the step_claim stage of [`SERVICE`] when sent with it.
pub fn claims(n: usize) -> Vec<Span> {
    (0..n).map(|_| span("step_claim", &[])).collect()
}

/// One resource per (service, spans), one scope each.
pub fn request_of(resources: Vec<(String, Vec<Span>)>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: resources
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", &service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tasker-core".to_string(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

pub fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    request_of(vec![(service.to_string(), spans)])
}

/// A request of [`SERVICE`] whose resource carries `pad` bytes of padding attribute.
pub fn padded(spans: Vec<Span>, pad: usize) -> ExportTraceServiceRequest {
    let mut request = request(SERVICE, spans);
    if pad > 0 {
        let resource = request.resource_spans[0].resource.as_mut().unwrap();
        resource.attributes.push(kv("padding", &"p".repeat(pad)));
    }
    request
}

/// A valid protobuf request of `spans` fresh step_claim spans, exactly `size` bytes long.
pub fn proto_of_size(size: usize, spans: usize) -> Vec<u8> {
    let spans = claims(spans);
    let mut pad = size.saturating_sub(1024);
    for _ in 0..16 {
        let body = padded(spans.clone(), pad).encode_to_vec();
        if body.len() == size {
            return body;
        }
        pad = (pad as i64 + size as i64 - body.len() as i64).max(1) as usize;
    }
    panic!("cannot pad a request to exactly {size} bytes");
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

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// gzip of `size` zero bytes (a multiple of 8 MiB, at least 24 MiB), at deflate's best ratio
/// (~1030:1). Compressing a GiB takes half a minute in a debug build, so the stream is built
/// from its period: after a sync flush the compressor's state is the same after every 8 MiB
/// of zeros (a window of zeros), and so is its output for the next 8 MiB. The trailer's
/// CRC-32 is combined from the chunk's.
pub fn gzip_bomb(size: usize) -> Vec<u8> {
    use flate2::{Compress, Compression, Crc, FlushCompress, Status};
    const CHUNK: usize = 8 << 20;
    assert!(size % CHUNK == 0 && size >= 3 * CHUNK, "gzip_bomb({size})");
    let zeros = vec![0u8; CHUNK];
    let mut deflate = Compress::new(Compression::best(), false);
    let mut run = |input: &[u8], flush: FlushCompress| -> Vec<u8> {
        let start = deflate.total_in();
        let mut out = Vec::with_capacity(16 * 1024);
        loop {
            if out.capacity() - out.len() < 4096 {
                out.reserve(64 * 1024);
            }
            let consumed = (deflate.total_in() - start) as usize;
            let status = deflate
                .compress_vec(&input[consumed..], &mut out, flush)
                .expect("deflate");
            let consumed = (deflate.total_in() - start) as usize;
            let room = out.capacity() - out.len() > 0;
            if status == Status::StreamEnd || (consumed == input.len() && room) {
                return out;
            }
        }
    };
    let first = run(&zeros, FlushCompress::Sync);
    let period = run(&zeros, FlushCompress::Sync);
    let again = run(&zeros, FlushCompress::Sync);
    assert_eq!(
        period, again,
        "deflate output of zeros is periodic after a sync flush"
    );
    let end = run(&[], FlushCompress::Finish);
    let mut chunk_crc = Crc::new();
    chunk_crc.update(&zeros);
    let mut crc = Crc::new();
    let mut gzip = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 0xff];
    gzip.extend_from_slice(&first);
    crc.combine(&chunk_crc);
    for _ in 1..size / CHUNK {
        gzip.extend_from_slice(&period);
        crc.combine(&chunk_crc);
    }
    gzip.extend_from_slice(&end);
    gzip.extend_from_slice(&crc.sum().to_le_bytes());
    gzip.extend_from_slice(&(size as u32).to_le_bytes());
    gzip
}

/// zstd of `size` zero bytes, streamed, declaring a window of 2^`window_log` bytes (the
/// decoder's buffer for the frame; 27, 128 MiB, is the most a default decoder accepts).
pub fn zstd_bomb(size: usize, window_log: u32) -> Vec<u8> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    encoder.window_log(window_log).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        encoder.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    encoder.finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

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

/// google.rpc.Status and its details: the message types of `spanlens::status` (field numbers
/// are facts of the protocol; decoding them here stays independent of spanlens's helpers).
pub use spanlens::status::{RetryInfo, RpcStatus};

/// The RetryInfo delay in a grpc-status-details-bin value, if any.
pub fn retry_info(details_bin: &str) -> Option<Duration> {
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(details_bin.trim_end_matches('='))
        .ok()?;
    let status = RpcStatus::decode(&raw[..]).ok()?;
    let any = status
        .details
        .iter()
        .find(|d| d.type_url.ends_with("google.rpc.RetryInfo"))?;
    let info = RetryInfo::decode(&any.value[..]).ok()?;
    let delay = info.retry_delay?;
    Some(
        Duration::from_secs(delay.seconds.max(0) as u64)
            + Duration::from_nanos(delay.nanos.max(0) as u64),
    )
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

fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Reads an OTLP/HTTP answer.
pub async fn read_http(proto: Proto, response: http::Response<Incoming>) -> Result<Reply, String> {
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(CALL_TIMEOUT, body.collect())
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
        if let Some(status) = header(headers, "grpc-status") {
            reply.grpc = status.trim().parse().ok();
            reply.message = header(headers, "grpc-message").unwrap_or_default();
            reply.retry_info = header(headers, "grpc-status-details-bin")
                .as_deref()
                .and_then(retry_info);
        }
    };
    fill(&parts.headers, &mut reply);
    let collected = tokio::time::timeout(CALL_TIMEOUT, body.collect())
        .await
        .map_err(|_| "body not read within the call timeout".to_string())?
        .map_err(|e| format!("reading the body: {e}"))?;
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    if reply.grpc.is_none() {
        if let Some(trailers) = &trailers {
            fill(trailers, &mut reply);
        }
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

/// A gRPC request whose body is one length-prefixed message (`compressed` sets the flag).
pub fn grpc_request(
    uri: &str,
    encoding: Option<&str>,
    compressed: bool,
    payload: &[u8],
    token: Option<&str>,
) -> http::Request<Full<Bytes>> {
    let mut frame = Vec::with_capacity(payload.len() + 5);
    frame.push(u8::from(compressed));
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    grpc_request_raw(uri, encoding, frame, token)
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

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// OTLP over plain HTTP/1.1 (OTLP/HTTP) and h2c (OTLP/gRPC) to one spanlens.
#[derive(Clone)]
pub struct Otlp {
    http1: HyperClient<HttpConnector, Full<Bytes>>,
    h2: HyperClient<HttpConnector, Full<Bytes>>,
    http_uri: String,
    grpc_uri: String,
    pub token: Option<String>,
}

impl Otlp {
    pub fn new(app: &Spanlens) -> Otlp {
        Otlp::to(app.grpc, app.http)
    }

    pub fn to(grpc: Option<SocketAddr>, http: Option<SocketAddr>) -> Otlp {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Otlp {
            http1: HyperClient::builder(TokioExecutor::new()).build(connector.clone()),
            h2: HyperClient::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
            http_uri: http.map_or(String::new(), |a| format!("http://{a}{TRACES}")),
            grpc_uri: grpc.map_or(String::new(), |a| format!("http://{a}{EXPORT}")),
            token: None,
        }
    }

    pub fn with_token(mut self, token: Option<&str>) -> Otlp {
        self.token = token.map(str::to_string);
        self
    }

    /// Sends `body` (already encoded for `proto`, and compressed with `encoding` if given).
    /// Err is a transport failure (connection refused or reset, timeout).
    pub async fn send(
        &self,
        proto: Proto,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let started = Instant::now();
        let token = self.token.as_deref();
        let mut reply = match proto {
            Proto::Grpc => {
                let request =
                    grpc_request(&self.grpc_uri, encoding, encoding.is_some(), &body, token);
                let response = tokio::time::timeout(CALL_TIMEOUT, self.h2.request(request))
                    .await
                    .map_err(|_| "no gRPC answer within the call timeout".to_string())?
                    .map_err(|e| format!("gRPC request failed: {e:?}"))?;
                read_grpc(response).await?
            }
            _ => {
                let request = http_request(&self.http_uri, proto, encoding, body, token);
                let response = tokio::time::timeout(CALL_TIMEOUT, self.http1.request(request))
                    .await
                    .map_err(|_| "no HTTP answer within the call timeout".to_string())?
                    .map_err(|e| format!("HTTP request failed: {e:?}"))?;
                read_http(proto, response).await?
            }
        };
        reply.elapsed = started.elapsed();
        Ok(reply)
    }

    /// Sends a gRPC body exactly as given (framing included).
    pub async fn send_grpc_raw(
        &self,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let request = grpc_request_raw(&self.grpc_uri, encoding, body, self.token.as_deref());
        let response = tokio::time::timeout(CALL_TIMEOUT, self.h2.request(request))
            .await
            .map_err(|_| "no gRPC answer within the call timeout".to_string())?
            .map_err(|e| format!("gRPC request failed: {e:?}"))?;
        read_grpc(response).await
    }

    /// Sends `request` in `proto`, uncompressed; panics unless every span is accepted.
    /// Returns the number of spans.
    pub async fn accepted(&self, proto: Proto, request: &ExportTraceServiceRequest) -> u64 {
        let reply = self
            .send(proto, None, proto.body(request))
            .await
            .unwrap_or_else(|e| panic!("{proto:?}: {e}"));
        assert!(
            reply.accepted() && reply.rejected == 0,
            "{proto:?}: valid request not accepted: {reply:?}"
        );
        span_count(request)
    }

    /// Sends until accepted, honouring Retry-After / RetryInfo of 503 / UNAVAILABLE answers
    /// (and waiting `fallback` when a refusal names no wait, or the request failed on the
    /// connection, as an OTLP exporter retries both). Any other answer is returned as it is.
    /// Returns the last reply, the refusals and the transport errors seen before it.
    pub async fn send_retrying(
        &self,
        proto: Proto,
        encoding: Option<&str>,
        body: Vec<u8>,
        attempts: usize,
        fallback: Duration,
    ) -> Retried {
        let mut retried = Retried::default();
        for _ in 0..attempts {
            match self.send(proto, encoding, body.clone()).await {
                Ok(reply) if reply.unavailable() => {
                    let wait = reply.wait().unwrap_or(fallback);
                    retried.refusals.push(reply);
                    tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                }
                Ok(reply) => {
                    retried.last = Ok(reply);
                    return retried;
                }
                Err(e) => {
                    retried.errors.push(e);
                    tokio::time::sleep(fallback).await;
                }
            }
        }
        retried.last = Err(format!("not accepted after {attempts} attempts"));
        retried
    }
}

/// What [`Otlp::send_retrying`] went through.
#[derive(Debug)]
pub struct Retried {
    pub last: Result<Reply, String>,
    pub refusals: Vec<Reply>,
    pub errors: Vec<String>,
}

impl Default for Retried {
    fn default() -> Self {
        Retried {
            last: Err("not sent".into()),
            refusals: Vec::new(),
            errors: Vec::new(),
        }
    }
}
