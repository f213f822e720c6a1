//! A fake OTLP backend for the forwarding tests, run by the test itself on 127.0.0.1.
//!
//! One listener serves OTLP/gRPC `TraceService/Export` and OTLP/HTTP protobuf (POST on any
//! path; `/v1/traces` is what a url without a path becomes) over HTTP/1.1 and HTTP/2 (h2c),
//! with identity, gzip or zstd bodies. Every request is decoded with prost and recorded (span
//! ids, encodings, headers, path, time of arrival, the answer it got). What it answers is
//! scripted by a [`Policy`]: fail the first requests or a seeded random fraction of them with
//! UNAVAILABLE / 503 + Retry-After, RESOURCE_EXHAUSTED (with or without RetryInfo) / 429,
//! INVALID_ARGUMENT / 400, reject some spans through partial_success, wait before answering.
//!
//! The port is reserved from the start (a bound socket that does not listen, so connections are
//! refused) and kept across [`Downstream::stop`] / [`Downstream::start`]: a backend that is down
//! for a while and comes back on the same address. Stopping closes the listener and cuts every
//! open connection at once.

use super::Rng;
use super::otlp::{base64, grpc_frame};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use spanlens::otlp::status::{Any, ProtoDuration, RetryInfo, RpcStatus};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// What a failing request is answered with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure {
    /// gRPC UNAVAILABLE (14) / HTTP 503, with `Retry-After: <seconds>` when given.
    Unavailable { retry_after: Option<u64> },
    /// gRPC RESOURCE_EXHAUSTED (8), with google.rpc.RetryInfo in grpc-status-details-bin when
    /// a delay is given / HTTP 429, with `Retry-After` (whole seconds, rounded up) when given.
    ResourceExhausted { retry_delay: Option<Duration> },
    /// gRPC INVALID_ARGUMENT (3) / HTTP 400.
    InvalidArgument,
    /// Any gRPC status code / HTTP status, without retry hints.
    Status { grpc: i32, http: u16 },
}

/// What the backend answers. Request `n` (0-based, counted over the backend's life) fails
/// when `n < fail_first`, else with probability `fraction` (seeded RNG); every answer, success
/// or failure, waits `delay` first. `reject_spans` > 0 makes successful answers carry
/// partial_success.rejected_spans (the spans are still recorded as delivered).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub failure: Failure,
    pub fail_first: usize,
    pub fraction: f64,
    pub seed: u64,
    pub delay: Duration,
    pub reject_spans: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            failure: Failure::Unavailable { retry_after: None },
            fail_first: 0,
            fraction: 0.0,
            seed: 1,
            delay: Duration::ZERO,
            reject_spans: 0,
        }
    }
}

impl Policy {
    /// Answer every request with success.
    pub fn healthy() -> Policy {
        Policy::default()
    }

    /// Fail a seeded random `fraction` of the requests with `failure`.
    pub fn flaky(failure: Failure, fraction: f64, seed: u64) -> Policy {
        Policy {
            failure,
            fraction,
            seed,
            ..Policy::default()
        }
    }

    /// Fail every request with `failure`.
    pub fn always(failure: Failure) -> Policy {
        Policy::flaky(failure, 1.0, 1)
    }

    /// Fail the first `n` requests with `failure`, then succeed.
    pub fn first(n: usize, failure: Failure) -> Policy {
        Policy {
            failure,
            fail_first: n,
            ..Policy::default()
        }
    }

    /// Wait `delay` before every answer.
    pub fn slow(delay: Duration) -> Policy {
        Policy {
            delay,
            ..Policy::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Grpc,
    Http,
}

/// How a request was answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Ok,
    Failed(Failure),
    /// The request could not be decoded (answered INVALID_ARGUMENT / 400).
    Undecodable(String),
}

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// 0-based arrival order.
    pub seq: usize,
    /// When the request arrived (before any delay).
    pub arrived: Instant,
    pub wire: Wire,
    pub http_version: String,
    pub path: String,
    pub headers: HeaderMap,
    /// grpc-encoding (gRPC) or content-encoding (HTTP); "identity" when absent.
    pub encoding: String,
    pub content_type: String,
    /// gRPC: whether the message was flagged compressed.
    pub compressed_flag: bool,
    /// The payload as it came: the HTTP body, or the gRPC message without its 5-byte prefix.
    pub raw: Bytes,
    /// Span ids (8 bytes, big-endian) in request order.
    pub span_ids: Vec<u64>,
    pub answer: Answer,
}

impl Attempt {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn delivered(&self) -> bool {
        self.answer == Answer::Ok
    }
}

struct State {
    policy: Policy,
    rng: Rng,
    next_seq: usize,
    attempts: Vec<Attempt>,
}

struct Shared {
    state: Mutex<State>,
}

/// The fake backend. See the module documentation.
pub struct Downstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The bound, not listening socket that holds the port while the backend is down before
    /// its first start.
    reserved: Mutex<Option<TcpSocket>>,
    serving: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Downstream {
    /// A backend on a fresh loopback port that is not listening yet (connections refused).
    pub fn down(policy: Policy) -> Downstream {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind a loopback port");
        let addr = socket.local_addr().expect("local address");
        let rng = Rng::new(policy.seed);
        Downstream {
            addr,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    policy,
                    rng,
                    next_seq: 0,
                    attempts: Vec::new(),
                }),
            }),
            reserved: Mutex::new(Some(socket)),
            serving: tokio::sync::Mutex::new(None),
        }
    }

    /// A backend that is up.
    pub async fn up(policy: Policy) -> Downstream {
        let downstream = Downstream::down(policy);
        downstream.start().await;
        downstream
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts listening on the backend's port (no-op when already up).
    pub async fn start(&self) {
        let mut serving = self.serving.lock().await;
        if serving.is_some() {
            return;
        }
        let reserved = self.reserved.lock().unwrap().take();
        let listener = match reserved {
            Some(socket) => socket.listen(1024).expect("listen on the reserved port"),
            None => rebind(self.addr).await,
        };
        let shared = self.shared.clone();
        *serving = Some(tokio::spawn(accept_loop(listener, shared)));
    }

    /// Stops listening and cuts every open connection; the port then refuses connections.
    pub async fn stop(&self) {
        let mut serving = self.serving.lock().await;
        if let Some(task) = serving.take() {
            task.abort();
            // The listener and the connection set live in the task: awaiting it means both are
            // dropped (every connection task aborted) before this returns.
            let _ = task.await;
        }
    }

    pub async fn is_up(&self) -> bool {
        self.serving.lock().await.is_some()
    }

    /// Replaces the policy (and reseeds the RNG) for the requests still to come.
    pub fn set_policy(&self, policy: Policy) {
        let mut state = self.shared.state.lock().unwrap();
        state.rng = Rng::new(policy.seed);
        state.policy = policy;
    }

    /// Every request seen so far, in the order they were answered.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.shared.state.lock().unwrap().attempts.clone()
    }

    /// Requests answered with success.
    pub fn delivered_requests(&self) -> Vec<Attempt> {
        self.attempts()
            .into_iter()
            .filter(Attempt::delivered)
            .collect()
    }

    /// The distinct span ids of the requests answered with success.
    pub fn delivered_ids(&self) -> BTreeSet<u64> {
        let state = self.shared.state.lock().unwrap();
        state
            .attempts
            .iter()
            .filter(|a| a.delivered())
            .flat_map(|a| a.span_ids.iter().copied())
            .collect()
    }

    /// Spans of the requests answered with success, duplicates included.
    pub fn delivered_span_count(&self) -> usize {
        let state = self.shared.state.lock().unwrap();
        state
            .attempts
            .iter()
            .filter(|a| a.delivered())
            .map(|a| a.span_ids.len())
            .sum()
    }

    /// How many times each delivered span id arrived (only ids seen more than once).
    pub fn duplicates(&self) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for attempt in self.delivered_requests() {
            for id in attempt.span_ids {
                *counts.entry(id).or_insert(0usize) += 1;
            }
        }
        counts.retain(|_, n| *n > 1);
        counts
    }

    /// Requests that could not be decoded, with the reason.
    pub fn undecodable(&self) -> Vec<String> {
        self.attempts()
            .into_iter()
            .filter_map(|a| match a.answer {
                Answer::Undecodable(why) => Some(why),
                _ => None,
            })
            .collect()
    }

    /// Waits until `done` holds for the delivered span ids, polling every 50 ms; panics after
    /// `timeout` with `what` and a summary.
    pub async fn wait_for_ids(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&BTreeSet<u64>) -> bool,
    ) -> BTreeSet<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let ids = self.delivered_ids();
            if done(&ids) {
                return ids;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not reached within {timeout:?}; {} distinct spans delivered in {} requests ({} attempts)",
                    ids.len(),
                    self.delivered_requests().len(),
                    self.attempts().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        if let Ok(mut serving) = self.serving.try_lock()
            && let Some(task) = serving.take()
        {
            task.abort();
        }
    }
}

/// Binds the port again after a stop (retrying briefly: the old listener's close may lag).
async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        match socket.bind(addr).and_then(|()| socket.listen(1024)) {
            Ok(listener) => return listener,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot listen on {addr} again: {e}"),
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropped (aborting every connection) when this task is aborted.
    let mut connections = JoinSet::new();
    let router = router(shared);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                connections.spawn(async move {
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(
        move |method: Method, version: Version, uri: Uri, headers: HeaderMap, body: Body| {
            let shared = shared.clone();
            async move { handle(shared, method, version, uri, headers, body).await }
        },
    )
}

async fn handle(
    shared: Arc<Shared>,
    method: Method,
    version: Version,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let arrived = Instant::now();
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let content_type = header_str(&headers, header::CONTENT_TYPE.as_str()).to_string();
    let wire = if content_type.starts_with("application/grpc") {
        Wire::Grpc
    } else {
        Wire::Http
    };
    let raw = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let (encoding, compressed_flag, payload) = match wire {
        Wire::Grpc => {
            let encoding = header_str(&headers, "grpc-encoding");
            let encoding = if encoding.is_empty() {
                "identity"
            } else {
                encoding
            };
            match unframe(&raw) {
                Ok((flag, message)) => (encoding.to_string(), flag, message),
                Err(e) => (encoding.to_string(), false, Err(e)),
            }
        }
        Wire::Http => {
            let encoding = header_str(&headers, header::CONTENT_ENCODING.as_str());
            let encoding = if encoding.is_empty() {
                "identity"
            } else {
                encoding
            };
            (encoding.to_string(), false, Ok(raw.clone()))
        }
    };
    let decoded = payload.and_then(|payload| {
        let compressed = match wire {
            Wire::Grpc => compressed_flag,
            Wire::Http => encoding != "identity",
        };
        let plain = if compressed {
            decompress(&encoding, &payload)?
        } else {
            payload.to_vec()
        };
        if wire == Wire::Http && !content_type.starts_with("application/x-protobuf") {
            return Err(format!("content-type {content_type:?} is not protobuf"));
        }
        let request = ExportTraceServiceRequest::decode(&plain[..])
            .map_err(|e| format!("not an ExportTraceServiceRequest: {e}"))?;
        Ok((payload, span_ids(&request)))
    });
    let (raw, span_ids, answer, delay, reject) = {
        let mut state = shared.state.lock().unwrap();
        let seq = state.next_seq;
        state.next_seq += 1;
        let policy = state.policy.clone();
        let roll = state.rng.unit();
        let fails = seq < policy.fail_first || roll < policy.fraction;
        match decoded {
            Ok((payload, ids)) => {
                let answer = if fails {
                    Answer::Failed(policy.failure)
                } else {
                    Answer::Ok
                };
                (payload, ids, answer, policy.delay, policy.reject_spans)
            }
            Err(why) => (raw, Vec::new(), Answer::Undecodable(why), policy.delay, 0),
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let attempt = Attempt {
        seq: 0,
        arrived,
        wire,
        http_version: format!("{version:?}"),
        path: uri.path().to_string(),
        headers,
        encoding,
        content_type,
        compressed_flag,
        raw,
        span_ids,
        answer: answer.clone(),
    };
    {
        let mut state = shared.state.lock().unwrap();
        let mut attempt = attempt;
        attempt.seq = state.attempts.len();
        state.attempts.push(attempt);
    }
    match (wire, answer) {
        (Wire::Grpc, Answer::Ok) => grpc_ok(reject),
        (Wire::Grpc, Answer::Failed(failure)) => grpc_failure(failure),
        (Wire::Grpc, Answer::Undecodable(why)) => grpc_status(3, &why, None),
        (Wire::Http, Answer::Ok) => http_ok(reject),
        (Wire::Http, Answer::Failed(failure)) => http_failure(failure),
        (Wire::Http, Answer::Undecodable(why)) => (StatusCode::BAD_REQUEST, why).into_response(),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

type Payload = Result<Bytes, String>;

fn unframe(raw: &Bytes) -> Result<(bool, Payload), String> {
    if raw.len() < 5 {
        return Err(format!("gRPC body of {} bytes has no prefix", raw.len()));
    }
    let flag = match raw[0] {
        0 => false,
        1 => true,
        other => return Err(format!("invalid gRPC compressed flag {other}")),
    };
    let len = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
    if raw.len() - 5 != len {
        return Err(format!(
            "gRPC prefix says {len} bytes, body has {}",
            raw.len() - 5
        ));
    }
    Ok((flag, Ok(raw.slice(5..))))
}

fn decompress(encoding: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .map_err(|e| format!("bad gzip: {e}"))?,
        "zstd" => zstd::stream::read::Decoder::new(data)
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(|e| format!("bad zstd: {e}"))?,
        other => return Err(format!("unsupported encoding {other:?}")),
    };
    Ok(out)
}

fn span_ids(request: &ExportTraceServiceRequest) -> Vec<u64> {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|span| {
            let mut id = [0u8; 8];
            let n = span.span_id.len().min(8);
            id[8 - n..].copy_from_slice(&span.span_id[..n]);
            u64::from_be_bytes(id)
        })
        .collect()
}

fn export_response(reject: i64) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (reject > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: reject,
            error_message: format!("the fake backend rejected {reject} spans"),
        }),
    }
}

fn grpc_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        "grpc-accept-encoding",
        HeaderValue::from_static("identity,gzip,zstd"),
    );
}

fn grpc_ok(reject: i64) -> Response {
    let message = export_response(reject).encode_to_vec();
    let frame = Bytes::from(grpc_frame(false, &message));
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(0));
    let body = Full::new(frame).with_trailers(async move { Some(Ok(trailers)) });
    let mut response = Response::new(Body::new(body));
    grpc_headers(&mut response);
    response
}

/// A trailers-only gRPC error.
fn grpc_status(code: i32, message: &str, retry_delay: Option<Duration>) -> Response {
    let mut response = StatusCode::OK.into_response();
    grpc_headers(&mut response);
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from(code));
    let printable: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .filter(|c| *c != '%')
        .collect();
    if let Ok(value) = HeaderValue::from_str(&printable) {
        headers.insert("grpc-message", value);
    }
    if let Some(delay) = retry_delay {
        let details = RpcStatus {
            code,
            message: printable,
            details: vec![Any {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".to_string(),
                value: RetryInfo {
                    retry_delay: Some(ProtoDuration {
                        seconds: delay.as_secs() as i64,
                        nanos: delay.subsec_nanos() as i32,
                    }),
                }
                .encode_to_vec(),
            }],
        };
        let encoded = base64(&details.encode_to_vec());
        headers.insert(
            "grpc-status-details-bin",
            HeaderValue::from_str(&encoded).expect("base64 is a valid header value"),
        );
    }
    response
}

fn grpc_failure(failure: Failure) -> Response {
    match failure {
        Failure::Unavailable { .. } => grpc_status(14, "the fake backend is unavailable", None),
        Failure::ResourceExhausted { retry_delay } => {
            grpc_status(8, "the fake backend is exhausted", retry_delay)
        }
        Failure::InvalidArgument => grpc_status(3, "the fake backend refuses this request", None),
        Failure::Status { grpc, .. } => grpc_status(grpc, "the fake backend says so", None),
    }
}

fn http_ok(reject: i64) -> Response {
    let mut response = Response::new(Body::from(export_response(reject).encode_to_vec()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    response
}

fn http_failure(failure: Failure) -> Response {
    let (status, retry_after, code) = match failure {
        Failure::Unavailable { retry_after } => (StatusCode::SERVICE_UNAVAILABLE, retry_after, 14),
        Failure::ResourceExhausted { retry_delay } => (
            StatusCode::TOO_MANY_REQUESTS,
            retry_delay.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
            8,
        ),
        Failure::InvalidArgument => (StatusCode::BAD_REQUEST, None, 3),
        Failure::Status { grpc, http } => (
            StatusCode::from_u16(http).expect("an HTTP status"),
            None,
            grpc,
        ),
    };
    let body = RpcStatus {
        code,
        message: format!("the fake backend answers {status}"),
        details: Vec::new(),
    }
    .encode_to_vec();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
