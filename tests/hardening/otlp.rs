//! The hardening tests' requests and client, on top of `support::otlp` (re-exported here):
//! spans with fresh ids, requests padded to an exact size, compression bombs, and one client
//! for OTLP/gRPC (raw HTTP/2 frames, so any bytes can be sent), OTLP/HTTP protobuf and
//! OTLP/HTTP JSON whose replies carry everything the hardening tests look at.

use crate::support::process::Spanlens;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use crate::support::kv;
pub use crate::support::otlp::*;

pub const SERVICE: &str = "tasker-rust-worker";

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
            .map(|(service, spans)| {
                resource_spans(vec![kv("service.name", &service)], "tasker-core", spans)
            })
            .collect(),
    }
}

pub fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    request_of(vec![(service.to_string(), spans)])
}

/// A request of [`SERVICE`] whose resource carries `pad` bytes of padding attribute.
pub fn padded(spans: Vec<Span>, pad: usize) -> ExportTraceServiceRequest {
    with_padding(request(SERVICE, spans), pad)
}

/// A valid protobuf request of `spans` fresh step_claim spans, exactly `size` bytes long.
pub fn proto_of_size(size: usize, spans: usize) -> Vec<u8> {
    let spans = claims(spans);
    exactly(size, |pad| padded(spans.clone(), pad).encode_to_vec())
}

/// gzip of `size` zero bytes (a multiple of 8 MiB, at least 24 MiB), at deflate's best ratio
/// (~1030:1). Compressing a GiB takes half a minute in a debug build, so the stream is built
/// from its period: after a sync flush the compressor's state is the same after every 8 MiB
/// of zeros (a window of zeros), and so is its output for the next 8 MiB. The trailer's
/// CRC-32 is combined from the chunk's.
pub fn gzip_bomb(size: usize) -> Vec<u8> {
    use flate2::{Compress, Compression, Crc, FlushCompress, Status};
    const CHUNK: usize = 8 << 20;
    assert!(
        size.is_multiple_of(CHUNK) && size >= 3 * CHUNK,
        "gzip_bomb({size})"
    );
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

/// One pipeline of the default profile, built once (it compiles the profile's regexes): the
/// oracle for what the binary, which runs that profile, must answer.
pub fn default_pipeline() -> &'static spanlens::pipeline::Pipeline {
    static PIPELINE: std::sync::OnceLock<spanlens::pipeline::Pipeline> = std::sync::OnceLock::new();
    PIPELINE.get_or_init(|| {
        let config = spanlens::config::Config::default_profile();
        spanlens::pipeline::Pipeline::new(&config).expect("the default profile builds")
    })
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
        Otlp {
            http1: http1_client(),
            h2: h2c_client(),
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

// ---------------------------------------------------------------------------------------------
// Raw HTTP/2 streams (h2): requests held part-way
// ---------------------------------------------------------------------------------------------

/// An HTTP/2 connection (prior knowledge) to `addr`, ready for a request.
pub async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.ready().await.expect("h2 ready")
}

/// A gRPC Export request head for the h2 client, with `headers` besides the usual.
pub fn h2_head(addr: SocketAddr, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut head = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{EXPORT}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        head = head.header(*name, *value);
    }
    head.body(()).unwrap()
}

/// One uncompressed gRPC message, for the h2 client.
pub fn framed(payload: &[u8]) -> Bytes {
    Bytes::from(grpc_frame(false, payload))
}

/// The grpc-status of an h2 response, from its headers or trailers.
pub async fn h2_status(response: h2::client::ResponseFuture) -> Result<u32, String> {
    let response = tokio::time::timeout(CALL_TIMEOUT, response)
        .await
        .map_err(|_| "no response headers".to_string())?
        .map_err(|e| format!("stream failed: {e}"))?;
    if let Some(code) = grpc_status(response.headers()) {
        return Ok(code);
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let data = data.map_err(|e| format!("body: {e}"))?;
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| format!("trailers: {e}"))?
        .ok_or("no trailers")?;
    grpc_status(&trailers).ok_or_else(|| "no grpc-status".to_string())
}
