//! OTLP/HTTP: `POST /v1/traces` with application/x-protobuf or application/json bodies,
//! gzip or zstd encoded. Responses and errors use the request's content type.

use super::gate::Closed;
use super::{Ingest, ReadError, decompress, export_response, off_the_workers};
use crate::body::{BodyError, Encoding};
use crate::forward::Arrived;
use crate::json;
use crate::pipeline::{Busy, Protocol, Refusal};
use crate::status::{Code, RpcStatus};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;
use std::time::Instant;

pub fn router(ingest: Ingest) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        .fallback(|| async {
            plain(
                StatusCode::NOT_FOUND,
                "not found: OTLP/HTTP traces are POSTed to /v1/traces",
            )
        })
        .with_state(ingest)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Protobuf,
    Json,
}

impl Kind {
    fn protocol(self) -> Protocol {
        match self {
            Kind::Protobuf => Protocol::HttpProtobuf,
            Kind::Json => Protocol::HttpJson,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Kind::Protobuf => "application/x-protobuf",
            Kind::Json => "application/json",
        }
    }
}

fn plain(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// A `google.rpc.Status` with the OTLP error, in the request's content type.
fn status(kind: Kind, http: StatusCode, grpc_code: Code, message: &str) -> Response {
    let body = match kind {
        Kind::Protobuf => RpcStatus::new(grpc_code, message).encode_to_vec(),
        Kind::Json => {
            serde_json::to_vec(&serde_json::json!({ "code": grpc_code as i32, "message": message }))
                .unwrap_or_default()
        }
    };
    (http, [(header::CONTENT_TYPE, kind.content_type())], body).into_response()
}

/// 503 with Retry-After: refused for now (overload, memory, a full forwarding queue).
fn busy(kind: Kind, busy: &Busy) -> Response {
    let mut response = status(
        kind,
        StatusCode::SERVICE_UNAVAILABLE,
        Code::Unavailable,
        &busy.message,
    );
    let seconds = busy.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, seconds.into());
    response
}

async fn export(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let kind = match content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "application/x-protobuf" => Some(Kind::Protobuf),
        "application/json" => Some(Kind::Json),
        _ => None,
    };
    let answer_kind = kind.unwrap_or(Kind::Protobuf);
    let _pass = match ingest.gate.enter(&headers) {
        Ok(pass) => pass,
        Err(closed) => {
            let (reason, response) = match closed {
                Closed::Unauthenticated => {
                    let mut response = status(
                        answer_kind,
                        StatusCode::UNAUTHORIZED,
                        Code::Unauthenticated,
                        "a valid bearer token is required (Authorization: Bearer <token>)",
                    );
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
                    ("unauthenticated", response)
                }
                Closed::Busy(b) => (b.reason, busy(answer_kind, &b)),
            };
            ingest
                .pipeline
                .count_refused_request(answer_kind.protocol(), reason);
            ingest.discard(body);
            return response;
        }
    };
    let Some(kind) = kind else {
        ingest
            .pipeline
            .count_refused_request(Protocol::HttpProtobuf, "unsupported_media_type");
        ingest.discard(body);
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!(
                "unsupported content type `{content_type}`: send application/x-protobuf or application/json"
            ),
        );
    };
    let protocol = kind.protocol();
    let refuse = |error: BodyError| {
        ingest
            .pipeline
            .count_refused_request(protocol, error.reason());
        let (http, grpc) = match error {
            BodyError::UnsupportedEncoding(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::Unimplemented)
            }
            BodyError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, Code::ResourceExhausted),
            BodyError::Corrupt { .. } => (StatusCode::BAD_REQUEST, Code::InvalidArgument),
        };
        status(kind, http, grpc, &error.to_string())
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("invalid"));
    let encoding = match Encoding::parse(encoding) {
        Ok(encoding) => encoding,
        Err(e) => {
            ingest.discard(body);
            return refuse(e);
        }
    };
    let limit = ingest.max_request_bytes;
    let raw = match ingest.read_body(body, limit, |_| None).await {
        Ok(raw) => raw,
        Err(ReadError::TooLarge) => return refuse(BodyError::TooLarge { limit }),
        Err(ReadError::TimedOut) => {
            ingest
                .pipeline
                .count_refused_request(protocol, "body_timeout");
            return status(
                kind,
                StatusCode::REQUEST_TIMEOUT,
                Code::DeadlineExceeded,
                "the request body did not arrive within receivers.body_read_timeout",
            );
        }
        Err(ReadError::Failed(e)) => {
            ingest
                .pipeline
                .count_refused_request(protocol, "read_error");
            return status(
                kind,
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                &format!("cannot read the request body: {e}"),
            );
        }
    };
    let decoded = match decompress(encoding, raw.clone(), limit).await {
        Ok(decoded) => decoded,
        Err(e) => return refuse(e),
    };
    let request = match kind {
        Kind::Protobuf => decoded,
        Kind::Json => match off_the_workers(true, move || json::to_protobuf(&decoded)).await {
            Ok(request) => request.into(),
            Err(message) => {
                ingest.pipeline.count_refused_request(protocol, "malformed");
                return status(
                    kind,
                    StatusCode::BAD_REQUEST,
                    Code::InvalidArgument,
                    &message,
                );
            }
        },
    };
    let arrived = Arrived {
        raw,
        encoding,
        json: kind == Kind::Json,
    };
    match ingest.run(protocol, request, arrived, started).await {
        Ok(outcome) => {
            let response = export_response(&outcome);
            let body = match kind {
                Kind::Protobuf => response.encode_to_vec(),
                // An absent partial_success is written as `{}` rather than a null field.
                Kind::Json if response.partial_success.is_none() => b"{}".to_vec(),
                Kind::Json => serde_json::to_vec(&response).unwrap_or_default(),
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, kind.content_type())],
                body,
            )
                .into_response()
        }
        Err(Refusal::Busy(b)) => busy(kind, &b),
        Err(refusal @ (Refusal::Malformed(_) | Refusal::AllSpansInvalid(_))) => status(
            kind,
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            &refusal.to_string(),
        ),
    }
}
