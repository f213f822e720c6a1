//! OTLP/gRPC `TraceService/Export`, served over HTTP/2 without tonic's server so that size
//! limits and decompression go through the same capped path as OTLP/HTTP and every failure
//! gets the status code the OTLP specification names (RESOURCE_EXHAUSTED for too large,
//! INVALID_ARGUMENT for what cannot be decoded).

use super::{Ingest, decompress, export_response};
use crate::otlp::Protocol;
use crate::otlp::body::{Arrived, Encoding};
use crate::otlp::deadline::Deadline;
use crate::otlp::grpc::{EXPORT_PATH, declared_len, frame, unframe};
use crate::otlp::refusal::Refusal;
use crate::otlp::status::{Code, RpcStatus};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;
use std::time::Instant;

const ACCEPT_ENCODING: &str = "identity,gzip,zstd";

pub(crate) fn router(ingest: Ingest) -> Router {
    Router::new()
        .route(EXPORT_PATH, post(export))
        .fallback(|| async {
            status_only(
                Code::Unimplemented,
                "unknown method: spanlens serves TraceService/Export",
            )
        })
        .with_state(ingest)
}

/// The headers every gRPC response carries.
fn grpc_headers(response: &mut Response) -> &mut HeaderMap {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        "grpc-accept-encoding",
        HeaderValue::from_static(ACCEPT_ENCODING),
    );
    headers
}

/// A trailers-only response carrying an error status.
fn status_only(code: Code, message: &str) -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = grpc_headers(&mut response);
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", message);
    }
    response
}

/// grpc-message is percent-encoded: everything outside printable ASCII, and `%`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn ok_response(message: &[u8]) -> Response {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(Code::Ok as i32));
    let body = Full::new(frame(false, message)).with_trailers(async move { Some(Ok(trailers)) });
    let mut response = Response::new(Body::new(body));
    grpc_headers(&mut response);
    response
}

/// The answer to a refused request: a trailers-only status, with RetryInfo when a retry may
/// get past it; a request that is not gRPC at all gets HTTP 415.
fn refuse(refusal: &Refusal) -> Response {
    if let Refusal::UnsupportedMediaType(message) = refusal {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("{message}\n")).into_response();
    }
    let code = refusal.grpc_code();
    let message = refusal.to_string();
    let mut response = status_only(code, &message);
    if let Some(delay) = refusal.retry_after() {
        let details = RpcStatus::new(code, &message)
            .retry_after(delay)
            .to_header();
        if let Ok(details) = HeaderValue::from_str(&details) {
            response
                .headers_mut()
                .insert("grpc-status-details-bin", details);
        }
    }
    response
}

async fn export(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let protocol = Protocol::Grpc;
    let deadline = Deadline::from_grpc_timeout(
        headers.get("grpc-timeout").map(HeaderValue::as_bytes),
        started,
    );
    let receiving = receive(&ingest, &headers, body);
    let received = match deadline.instant() {
        None => receiving.await,
        Some(at) => tokio::time::timeout_at(at.into(), receiving)
            .await
            .unwrap_or(Err(Refusal::DeadlineExceeded)),
    };
    let (_pass, request, arrived) = match received {
        Ok(received) => received,
        Err(refusal) => {
            ingest.count_refused(protocol, &refusal);
            return refuse(&refusal);
        }
    };
    match ingest
        .run(protocol, request, arrived, started, deadline)
        .await
    {
        Ok(outcome) => ok_response(&export_response(&outcome).encode_to_vec()),
        Err(refusal) => refuse(&refusal),
    }
}

/// Everything before the pipeline: admission, content type, encoding, the body, its one
/// message, decompression. Returns the admission pass (held until the answer), the
/// request, and what arrived.
async fn receive(
    ingest: &Ingest,
    headers: &HeaderMap,
    body: Body,
) -> Result<(super::gate::Pass, Bytes, Arrived), Refusal> {
    let pass = ingest.gate.enter(headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/grpc") {
        return Err(Refusal::UnsupportedMediaType(
            "gRPC requests need content-type application/grpc".to_string(),
        ));
    }
    let encoding = Encoding::parse(
        headers
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap_or("invalid")),
    )?;
    let raw = ingest
        .read_body(body, 5, |start| declared_len(start).map(|len| 5 + len))
        .await?;
    let compressed = unframe(&raw).map_err(Refusal::Malformed)?.0;
    let message = raw.slice(5..);
    let encoding = match (compressed, encoding) {
        (false, _) => Encoding::Identity,
        (true, Encoding::Identity) => {
            return Err(Refusal::Malformed(
                "message is flagged compressed but no grpc-encoding was sent".to_string(),
            ));
        }
        (true, encoding) => encoding,
    };
    let request = decompress(encoding, message.clone(), ingest.max_request_bytes).await?;
    let arrived = Arrived {
        raw: message,
        encoding,
        json: false,
    };
    Ok((pass, request, arrived))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("100% ok\né"), "100%25 ok%0A%C3%A9");
    }
}
