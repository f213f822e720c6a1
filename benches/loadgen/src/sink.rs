//! A failing OTLP/gRPC downstream for the soak: `TraceService/Export` over HTTP/2 cleartext,
//! identity or gzip, that answers a seeded random share of calls with UNAVAILABLE (which
//! spanlens's forwarding retries) and counts the spans of the calls it answered with success.
//! A span that spanlens forwarded and retried is counted once per successful call, so after
//! a drain the count equals spanlens's `spanlens_forward_sent_spans_total`.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::WithTrailers};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Ready;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;

/// What the sink has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// Spans of the calls answered OK.
    pub delivered_spans: u64,
    pub delivered_calls: u64,
    /// Calls answered UNAVAILABLE.
    pub failed_calls: u64,
    /// Calls that were not an OTLP request (answered INVALID_ARGUMENT).
    pub undecodable_calls: u64,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    delivered_spans: AtomicU64,
    delivered_calls: AtomicU64,
    failed_calls: AtomicU64,
    undecodable_calls: AtomicU64,
}

/// The sink, serving until the runtime it was started on stops.
pub struct Sink {
    addr: SocketAddr,
    counters: Arc<Counters>,
}

type Answer = Response<WithTrailers<Full<Bytes>, Ready<Option<Result<HeaderMap, Infallible>>>>>;

impl Sink {
    /// Listens on `listen` and fails each call with probability `fail_share` (0 to 1),
    /// drawn from `seed` and the call's arrival number.
    pub async fn start(listen: SocketAddr, fail_share: f64, seed: u64) -> std::io::Result<Sink> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let counters = shared.clone();
                let service = hyper::service::service_fn(move |request| {
                    let counters = counters.clone();
                    async move {
                        Ok::<_, Infallible>(answer(&counters, fail_share, seed, request).await)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Ok(Sink { addr, counters })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counts(&self) -> SinkCounts {
        let c = &self.counters;
        SinkCounts {
            delivered_spans: c.delivered_spans.load(Ordering::Relaxed),
            delivered_calls: c.delivered_calls.load(Ordering::Relaxed),
            failed_calls: c.failed_calls.load(Ordering::Relaxed),
            undecodable_calls: c.undecodable_calls.load(Ordering::Relaxed),
        }
    }
}

/// splitmix64: a uniform draw in [0, 1) from `seed` and `n`.
fn draw(seed: u64, n: u64) -> f64 {
    let mut z = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}

async fn answer(
    counters: &Counters,
    fail_share: f64,
    seed: u64,
    request: Request<Incoming>,
) -> Answer {
    let n = counters.calls.fetch_add(1, Ordering::Relaxed);
    let gzip = request
        .headers()
        .get("grpc-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return status(14, "the request body was cut"),
    };
    if draw(seed, n) < fail_share {
        counters.failed_calls.fetch_add(1, Ordering::Relaxed);
        return status(14, "soak sink: failing this call");
    }
    match spans(&body, gzip) {
        Ok(spans) => {
            counters.delivered_calls.fetch_add(1, Ordering::Relaxed);
            counters.delivered_spans.fetch_add(spans, Ordering::Relaxed);
            // An empty ExportTraceServiceResponse in an uncompressed frame.
            respond(Bytes::from_static(&[0, 0, 0, 0, 0]), 0, "")
        }
        Err(why) => {
            counters.undecodable_calls.fetch_add(1, Ordering::Relaxed);
            status(3, &why)
        }
    }
}

/// Spans in one gRPC-framed ExportTraceServiceRequest.
fn spans(body: &[u8], gzip: bool) -> Result<u64, String> {
    if body.len() < 5 {
        return Err("no gRPC frame".to_string());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let message = body.get(5..5 + len).ok_or("a cut gRPC frame")?;
    let inflated;
    let message = match (body[0], gzip) {
        (0, _) => message,
        (1, true) => {
            let mut out = Vec::with_capacity(message.len() * 8);
            flate2::read::GzDecoder::new(message)
                .read_to_end(&mut out)
                .map_err(|e| format!("gzip: {e}"))?;
            inflated = out;
            &inflated[..]
        }
        _ => return Err("a compressed frame without grpc-encoding: gzip".to_string()),
    };
    let batch = spanlens::otlp::decode::Batch::decode(message).map_err(|e| e.to_string())?;
    Ok(batch.spans.len() as u64)
}

fn status(code: u32, message: &str) -> Answer {
    respond(Bytes::new(), code, message)
}

fn respond(body: Bytes, code: u32, message: &str) -> Answer {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(message)
        && !message.is_empty()
    {
        trailers.insert("grpc-message", message);
    }
    let body = Full::new(body).with_trailers(std::future::ready(Some(Ok(trailers))));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(body)
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Answer as Sent, Proto, Target, body, connect};
    use crate::fixtures::{Fixtures, Renewable};
    use prost::Message;

    #[test]
    fn draws_fail_about_the_share_asked() {
        let failed = (0..10_000).filter(|&n| draw(7, n) < 0.3).count();
        assert!((2_800..3_200).contains(&failed), "{failed}");
    }

    #[tokio::test]
    async fn counts_the_spans_of_successful_calls_only() {
        let sink = Sink::start(([127, 0, 0, 1], 0).into(), 0.3, 1)
            .await
            .unwrap();
        let target = Target::new(Proto::Grpc, false, &sink.addr().to_string()).unwrap();
        let gzipped = Target::new(Proto::Grpc, true, &sink.addr().to_string()).unwrap();
        let sender = connect(&sink.addr().to_string(), true).await.unwrap();
        let template = Renewable::protobuf(Fixtures::new(1).request(40).encode_to_vec());
        let (mut ok, mut failed) = (0, 0);
        for n in 0..60u32 {
            let (target, gzip) = if n % 2 == 0 {
                (&target, false)
            } else {
                (&gzipped, true)
            };
            match target.send(&sender, body(&template, n, true, gzip)).await {
                Sent::Ok { rejected } => {
                    assert_eq!(rejected, 0);
                    ok += 1;
                }
                Sent::Failed(why) => {
                    assert!(why.starts_with("grpc-status 14"), "{why}");
                    failed += 1;
                }
            }
        }
        assert!(ok > 0 && failed > 0, "{ok} ok, {failed} failed");
        let counts = sink.counts();
        assert_eq!(
            counts,
            SinkCounts {
                delivered_spans: 40 * ok,
                delivered_calls: ok,
                failed_calls: failed,
                undecodable_calls: 0,
            }
        );
    }
}
