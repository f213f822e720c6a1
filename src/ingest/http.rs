//! OTLP/HTTP: `POST /v1/traces` with application/x-protobuf or application/json bodies,
//! gzip or zstd encoded. Responses and errors use the request's content type.

use super::{Ingest, decompress, export_response, off_the_workers};
use crate::otlp::Protocol;
use crate::otlp::body::{Arrived, Encoding};
use crate::otlp::deadline::Deadline;
use crate::otlp::json;
use crate::otlp::refusal::Refusal;
use crate::otlp::status::RpcStatus;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use prost::Message;
use std::time::Instant;

pub(crate) fn router(ingest: Ingest) -> Router {
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

/// The answer to a refused request: a `google.rpc.Status` in the request's content type
/// (plain text for a content type spanlens does not read), with Retry-After when a retry
/// may get past it and WWW-Authenticate when a token is missing.
fn refuse(kind: Kind, refusal: &Refusal) -> Response {
    let http = refusal.http_status();
    let message = refusal.to_string();
    if let Refusal::UnsupportedMediaType(_) = refusal {
        return plain(http, &message);
    }
    let code = refusal.grpc_code();
    let body = match kind {
        Kind::Protobuf => RpcStatus::new(code, &message).encode_to_vec(),
        Kind::Json => {
            serde_json::to_vec(&serde_json::json!({ "code": code as i32, "message": message }))
                .unwrap_or_default()
        }
    };
    let mut response = (http, [(header::CONTENT_TYPE, kind.content_type())], body).into_response();
    let headers = response.headers_mut();
    if let Some(delay) = refusal.retry_after() {
        let seconds = delay.as_secs_f64().ceil().max(1.0) as u64;
        headers.insert(header::RETRY_AFTER, seconds.into());
    }
    if matches!(refusal, Refusal::Unauthenticated) {
        headers.insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
    }
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
    // A request refused before its content type is known is answered as protobuf.
    let answer_kind = kind.unwrap_or(Kind::Protobuf);
    let protocol = answer_kind.protocol();
    let (_pass, request, arrived) = match receive(&ingest, &headers, kind, body).await {
        Ok(received) => received,
        Err(refusal) => {
            ingest.count_refused(protocol, &refusal);
            return refuse(answer_kind, &refusal);
        }
    };
    // OTLP/HTTP has no deadline header.
    match ingest
        .run(protocol, request, arrived, started, Deadline::NONE)
        .await
    {
        Ok(outcome) => {
            let response = export_response(&outcome);
            let body = match answer_kind {
                Kind::Protobuf => response.encode_to_vec(),
                // An absent partial_success is written as `{}` rather than a null field.
                Kind::Json if response.partial_success.is_none() => b"{}".to_vec(),
                Kind::Json => serde_json::to_vec(&response).unwrap_or_default(),
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, answer_kind.content_type())],
                body,
            )
                .into_response()
        }
        Err(refusal) => refuse(answer_kind, &refusal),
    }
}

/// Everything before the pipeline: admission, content type, encoding, the body,
/// decompression, JSON to protobuf. A request refused before its body is read has the body
/// drained in the background. Returns the admission pass (held until the answer), the
/// protobuf request, and what arrived.
async fn receive(
    ingest: &Ingest,
    headers: &HeaderMap,
    kind: Option<Kind>,
    body: Body,
) -> Result<(super::gate::Pass, Bytes, Arrived), Refusal> {
    let before_reading = || {
        let pass = ingest.gate.enter(headers)?;
        let Some(kind) = kind else {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return Err(Refusal::UnsupportedMediaType(format!(
                "unsupported content type `{content_type}`: send application/x-protobuf or application/json"
            )));
        };
        let encoding = headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("invalid"));
        Ok((pass, kind, Encoding::parse(encoding)?))
    };
    let (pass, kind, encoding) = match before_reading() {
        Ok(admitted) => admitted,
        Err(refusal) => {
            ingest.discard(body);
            return Err(refusal);
        }
    };
    let raw = ingest.read_body(body, 0, |_| None).await?;
    let decoded = decompress(encoding, raw.clone(), ingest.max_request_bytes).await?;
    let request = match kind {
        Kind::Protobuf => decoded,
        Kind::Json => off_the_workers(true, move || json::to_protobuf(&decoded))
            .await
            .map_err(Refusal::Malformed)?
            .into(),
    };
    let arrived = Arrived {
        raw,
        encoding,
        json: kind == Kind::Json,
    };
    Ok((pass, request, arrived))
}
