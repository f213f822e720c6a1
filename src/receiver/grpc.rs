//! OTLP/gRPC `TraceService/Export`, served over HTTP/2 without tonic's server so that size
//! limits and decompression go through the same capped path as OTLP/HTTP and every failure
//! gets the status code the OTLP specification names (RESOURCE_EXHAUSTED for too large,
//! INVALID_ARGUMENT for what cannot be decoded).

use super::gate::Closed;
use super::{Ingest, ReadError, decompress, export_response};
use crate::body::{BodyError, Encoding};
use crate::forward::Arrived;
use crate::pipeline::Protocol;
use crate::pipeline::{Busy, Refusal};
use crate::status::{Code, RpcStatus};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use prost::Message;
use std::time::Instant;

pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const ACCEPT_ENCODING: &str = "identity,gzip,zstd";

pub fn router(ingest: Ingest) -> Router {
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
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(Code::Ok as i32));
    let body = Full::new(frame.freeze()).with_trailers(async move { Some(Ok(trailers)) });
    let mut response = Response::new(Body::new(body));
    grpc_headers(&mut response);
    response
}

/// The length a message's prefix declares (after the compressed flag), once five bytes are in.
fn declared_len(start: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = start.get(1..5)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// Splits the one length-prefixed message of a unary call.
fn unframe(raw: &Bytes) -> Result<(bool, &[u8]), String> {
    if raw.len() < 5 {
        return Err(format!(
            "request body of {} bytes has no complete gRPC message prefix",
            raw.len()
        ));
    }
    let compressed = match raw[0] {
        0 => false,
        1 => true,
        flag => return Err(format!("invalid gRPC compressed flag {flag}")),
    };
    let len = declared_len(raw).expect("five bytes checked above");
    let message = &raw[5..];
    if message.len() != len {
        return Err(format!(
            "gRPC message prefix says {len} bytes, body has {}; a unary call carries exactly one message",
            message.len()
        ));
    }
    Ok((compressed, message))
}

/// UNAVAILABLE with RetryInfo: refused for now (overload, memory, a full forwarding queue).
fn busy(busy: &Busy) -> Response {
    let mut response = status_only(Code::Unavailable, &busy.message);
    let details = RpcStatus::new(Code::Unavailable, &busy.message)
        .retry_after(busy.retry_after)
        .to_header();
    if let Ok(details) = HeaderValue::from_str(&details) {
        response
            .headers_mut()
            .insert("grpc-status-details-bin", details);
    }
    response
}

async fn export(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let protocol = Protocol::Grpc;
    let _pass = match ingest.gate.enter(&headers) {
        Ok(pass) => pass,
        Err(Closed::Unauthenticated) => {
            ingest
                .pipeline
                .count_refused_request(protocol, "unauthenticated");
            return status_only(
                Code::Unauthenticated,
                "a valid bearer token is required (authorization: Bearer <token>)",
            );
        }
        Err(Closed::Busy(b)) => {
            ingest.pipeline.count_refused_request(protocol, b.reason);
            return busy(&b);
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/grpc") {
        ingest
            .pipeline
            .count_refused_request(protocol, "unsupported_media_type");
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "gRPC requests need content-type application/grpc\n",
        )
            .into_response();
    }
    let refuse = |reason: &str, code: Code, message: &str| {
        ingest.pipeline.count_refused_request(protocol, reason);
        status_only(code, message)
    };
    let body_error = |error: BodyError| {
        let code = match error {
            BodyError::UnsupportedEncoding(_) => Code::Unimplemented,
            BodyError::TooLarge { .. } => Code::ResourceExhausted,
            BodyError::Corrupt { .. } => Code::InvalidArgument,
        };
        refuse(error.reason(), code, &error.to_string())
    };
    let encoding = match Encoding::parse(
        headers
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap_or("invalid")),
    ) {
        Ok(encoding) => encoding,
        Err(e) => return body_error(e),
    };
    let limit = ingest.max_request_bytes;
    let raw = match ingest
        .read_body(body, limit + 5, |start| {
            declared_len(start).map(|len| 5 + len)
        })
        .await
    {
        Ok(raw) => raw,
        Err(ReadError::TooLarge) => return body_error(BodyError::TooLarge { limit }),
        Err(ReadError::TimedOut) => {
            return refuse(
                "body_timeout",
                Code::DeadlineExceeded,
                "the request did not arrive within receivers.body_read_timeout",
            );
        }
        Err(ReadError::Failed(e)) => {
            return refuse(
                "read_error",
                Code::InvalidArgument,
                &format!("cannot read the request: {e}"),
            );
        }
    };
    let (compressed, message) = match unframe(&raw) {
        Ok((compressed, _)) => (compressed, raw.slice(5..)),
        Err(message) => return refuse("malformed", Code::InvalidArgument, &message),
    };
    let encoding = match (compressed, encoding) {
        (false, _) => Encoding::Identity,
        (true, Encoding::Identity) => {
            return refuse(
                "malformed",
                Code::InvalidArgument,
                "message is flagged compressed but no grpc-encoding was sent",
            );
        }
        (true, encoding) => encoding,
    };
    let request = match decompress(encoding, message.clone(), limit).await {
        Ok(request) => request,
        Err(e) => return body_error(e),
    };
    let arrived = Arrived {
        raw: message,
        encoding,
        json: false,
    };
    match ingest.run(protocol, request, arrived, started).await {
        Ok(outcome) => ok_response(&export_response(&outcome).encode_to_vec()),
        Err(Refusal::Busy(b)) => busy(&b),
        Err(refusal) => status_only(Code::InvalidArgument, &refusal.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("100% ok\né"), "100%25 ok%0A%C3%A9");
    }

    #[test]
    fn unframe_checks_prefix_and_length() {
        assert_eq!(
            unframe(&Bytes::from_static(b"\x00\x00\x00\x00\x02hi")),
            Ok((false, &b"hi"[..]))
        );
        assert!(unframe(&Bytes::from_static(b"\x00\x00\x00\x00\x03hi")).is_err());
        assert!(unframe(&Bytes::from_static(b"\x02\x00\x00\x00\x02hi")).is_err());
        assert!(unframe(&Bytes::from_static(b"\x00\x00")).is_err());
    }
}
