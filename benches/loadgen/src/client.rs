//! The client side of the load generator and the soak: OTLP requests over gRPC or OTLP/HTTP
//! (HTTP/1.1, or HTTP/2 cleartext), their bodies with renewed ids, optionally gzip, and a
//! keep-alive client for spanlens's /metrics.

use crate::fixtures::Renewable;
use crate::server_latency::Buckets;
use bytes::Bytes;
use clap::ValueEnum;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use std::io::Write as _;
use std::sync::Arc;
use tokio::net::TcpStream;

pub const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Wire protocol: OTLP/gRPC (HTTP/2 cleartext), or OTLP/HTTP with a protobuf or JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl Proto {
    /// The `protocol` label spanlens puts on its own metrics for this protocol.
    pub fn label(self) -> &'static str {
        match self {
            Proto::Grpc => spanlens::otlp::Protocol::Grpc,
            Proto::HttpProtobuf => spanlens::otlp::Protocol::HttpProtobuf,
            Proto::HttpJson => spanlens::otlp::Protocol::HttpJson,
        }
        .as_str()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4), Default::default());
    encoder.write_all(data).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// Generation `generation` of `template`, gzip-compressed when asked, in a gRPC frame when
/// `grpc` (flagged compressed with gzip).
pub fn body(template: &Renewable, generation: u32, grpc: bool, gzip: bool) -> Bytes {
    let frame = |flag: u8, len: usize, out: &mut Vec<u8>| {
        if grpc {
            out.push(flag);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    };
    if gzip {
        let mut plain = Vec::with_capacity(template.bytes().len());
        template.renew_into(generation, &mut plain);
        let packed = self::gzip(&plain);
        let mut out = Vec::with_capacity(packed.len() + 5);
        frame(1, packed.len(), &mut out);
        out.extend_from_slice(&packed);
        return Bytes::from(out);
    }
    let mut out = Vec::with_capacity(template.bytes().len() + 5);
    frame(0, template.bytes().len(), &mut out);
    template.renew_into(generation, &mut out);
    Bytes::from(out)
}

/// One connection's request sender.
#[derive(Clone)]
pub enum Sender {
    H1(Arc<tokio::sync::Mutex<Http1>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

pub type Http1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn tcp(authority: &str) -> Result<TokioIo<TcpStream>, String> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}

pub async fn http1(authority: &str) -> Result<Http1, String> {
    let (send, conn) = hyper::client::conn::http1::handshake(tcp(authority).await?)
        .await
        .map_err(|e| format!("HTTP/1.1 handshake with {authority}: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

pub async fn connect(authority: &str, http2: bool) -> Result<Sender, String> {
    if !http2 {
        let send = http1(authority).await?;
        return Ok(Sender::H1(Arc::new(tokio::sync::Mutex::new(send))));
    }
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .handshake(tcp(authority).await?)
        .await
        .map_err(|e| format!("HTTP/2 handshake with {authority}: {e}"))?;
    tokio::spawn(conn);
    Ok(Sender::H2(send))
}

/// What one request turned into.
pub enum Answer {
    Ok { rejected: u64 },
    Failed(String),
}

/// Where and how requests are sent: one protocol, compressed or not, to one receiver.
pub struct Target {
    protocol: Proto,
    gzip: bool,
    uri: Uri,
    /// Request headers built once.
    content_type: &'static str,
}

impl Target {
    /// Requests of `protocol` to the receiver at `authority` (host:port).
    pub fn new(protocol: Proto, gzip: bool, authority: &str) -> Result<Target, String> {
        let path = match protocol {
            Proto::Grpc => GRPC_PATH,
            _ => "/v1/traces",
        };
        Ok(Target {
            protocol,
            gzip,
            uri: format!("http://{authority}{path}")
                .parse()
                .map_err(|e| format!("target URL: {e}"))?,
            content_type: match protocol {
                Proto::Grpc => "application/grpc",
                Proto::HttpProtobuf => "application/x-protobuf",
                Proto::HttpJson => "application/json",
            },
        })
    }

    fn request(&self, body: Bytes) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, self.content_type);
        match (self.protocol, self.gzip) {
            (Proto::Grpc, true) => builder = builder.header("grpc-encoding", "gzip"),
            (_, true) => builder = builder.header(header::CONTENT_ENCODING, "gzip"),
            _ => {}
        }
        if self.protocol == Proto::Grpc {
            builder = builder.header(header::TE, "trailers");
        }
        builder.body(Full::new(body)).expect("valid request")
    }

    /// Sends one request and reads its answer: the spans the receiver rejected, or why the
    /// request failed (transport, HTTP status, gRPC status).
    pub async fn send(&self, sender: &Sender, body: Bytes) -> Answer {
        let request = self.request(body);
        let response = match sender {
            Sender::H2(send) => {
                let mut send = send.clone();
                if let Err(e) = send.ready().await {
                    return Answer::Failed(format!("connection: {e}"));
                }
                send.send_request(request).await
            }
            Sender::H1(send) => {
                let mut send = send.lock().await;
                if let Err(e) = send.ready().await {
                    return Answer::Failed(format!("connection: {e}"));
                }
                send.send_request(request).await
            }
        };
        let response = match response {
            Ok(response) => response,
            Err(e) => return Answer::Failed(format!("transport: {e}")),
        };
        let (parts, body) = response.into_parts();
        let collected = match body.collect().await {
            Ok(collected) => collected,
            Err(e) => return Answer::Failed(format!("reading the response: {e}")),
        };
        let trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        if parts.status != StatusCode::OK {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            return Answer::Failed(format!("HTTP {}: {}", parts.status.as_u16(), text.trim()));
        }
        let rejected = |message: &[u8]| {
            ExportTraceServiceResponse::decode(message)
                .ok()
                .and_then(|r| r.partial_success)
                .map_or(0, |p| p.rejected_spans.max(0) as u64)
        };
        match self.protocol {
            Proto::Grpc => {
                // A trailer, else a header (a trailers-only answer).
                let field = |name: &str| {
                    (trailers.as_ref().and_then(|t| t.get(name)))
                        .or_else(|| parts.headers.get(name))
                        .and_then(|v| v.to_str().ok())
                };
                let status = field("grpc-status").unwrap_or("missing");
                if status != "0" {
                    let message = field("grpc-message").unwrap_or("");
                    return Answer::Failed(format!("grpc-status {status}: {message}"));
                }
                let message = bytes.get(5..).unwrap_or(&[]);
                Answer::Ok {
                    rejected: rejected(message),
                }
            }
            Proto::HttpProtobuf => Answer::Ok {
                rejected: rejected(&bytes),
            },
            Proto::HttpJson => Answer::Ok {
                rejected: serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| {
                        let n = v.pointer("/partialSuccess/rejectedSpans")?.clone();
                        n.as_u64().or_else(|| n.as_str()?.parse().ok())
                    })
                    .unwrap_or(0),
            },
        }
    }
}

/// An HTTP/1.1 connection to a /metrics endpoint, opened again when the server has closed it
/// (spanlens closes a keep-alive connection idle past its header read timeout).
pub struct MetricsClient {
    uri: Uri,
    authority: String,
    send: Option<Http1>,
}

impl MetricsClient {
    pub async fn connect(uri: Uri) -> Result<MetricsClient, String> {
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{uri}: no host"))?
            .to_string();
        let mut client = MetricsClient {
            uri,
            authority,
            send: None,
        };
        client.ready().await?;
        Ok(client)
    }

    /// The connection, ready for a request.
    async fn ready(&mut self) -> Result<&mut Http1, String> {
        let open = match &mut self.send {
            Some(send) => send.ready().await.is_ok(),
            None => false,
        };
        if !open {
            self.send = Some(http1(&self.authority).await?);
        }
        Ok(self.send.as_mut().expect("connected"))
    }

    /// One scrape, in the format `accept` asks for: the body of a 200 answer.
    pub async fn get(&mut self, accept: &str) -> Result<Bytes, String> {
        let uri = self.uri.clone();
        let path = uri.path_and_query().map_or("/metrics", |p| p.as_str());
        match self.fetch(path, accept).await? {
            (StatusCode::OK, body) => Ok(body),
            (other, _) => Err(format!("{uri}: HTTP {}", other.as_u16())),
        }
    }

    /// GET `path` on the same server: the status and body of the answer.
    /// A request sent as the server closes an idle connection is sent once more, on a new one.
    pub async fn fetch(&mut self, path: &str, accept: &str) -> Result<(StatusCode, Bytes), String> {
        let request = || {
            Request::builder()
                .uri(path)
                .header(header::HOST, &self.authority)
                .header(header::ACCEPT, accept)
                .body(Full::new(Bytes::new()))
                .expect("valid request")
        };
        let (first, again) = (request(), request());
        let response = match self.ready().await?.send_request(first).await {
            Ok(response) => response,
            Err(e) if e.is_canceled() || e.is_closed() || e.is_incomplete_message() => {
                self.send = None;
                self.ready()
                    .await?
                    .send_request(again)
                    .await
                    .map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
        };
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// The server's request-duration buckets for `protocol` now (None: every protocol).
    pub async fn request_durations(&mut self, protocol: Option<&str>) -> Result<Buckets, String> {
        let body = self.get("text/plain;version=0.0.4").await?;
        Ok(Buckets::parse(&String::from_utf8_lossy(&body), protocol))
    }
}
