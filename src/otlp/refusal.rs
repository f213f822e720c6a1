//! Why a request is refused as a whole, and how OTLP says so: the HTTP status, the gRPC
//! code, Retry-After for refusals that a retry may get past, and the `reason` label of
//! `spanlens_requests_refused_total`. Both receivers answer from this one type.

use super::body::BodyError;
use super::status::Code;
use http::StatusCode;
use std::time::Duration;
use thiserror::Error;

/// A request refused as a whole: nothing of it was observed or forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("a valid bearer token is required (Authorization: Bearer <token>)")]
    Unauthenticated,
    /// Not now (overload, memory, a full forwarding queue); the client should retry later.
    #[error("{}", .0.message)]
    Busy(Busy),
    /// A content type spanlens does not read; the message names what it does read.
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("the request body did not arrive within receivers.body_read_timeout")]
    BodyTimeout,
    /// The caller's deadline (gRPC's grpc-timeout) passed before the request was processed.
    #[error(
        "the deadline the caller set (grpc-timeout) passed before spanlens processed the request; it was not processed"
    )]
    DeadlineExceeded,
    #[error("cannot read the request body: {0}")]
    ReadFailed(String),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("no usable span in the request: {0}")]
    AllSpansInvalid(String),
}

/// A request refused for now; answered 503 / UNAVAILABLE with Retry-After.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    /// The `reason` label of spanlens_requests_refused_total.
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) retry_after: Duration,
}

impl Refusal {
    /// The `reason` label of spanlens_requests_refused_total.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Busy(busy) => busy.reason,
            Refusal::UnsupportedMediaType(_) => "unsupported_media_type",
            Refusal::Body(error) => error.reason(),
            Refusal::BodyTimeout => "body_timeout",
            Refusal::DeadlineExceeded => "deadline_exceeded",
            Refusal::ReadFailed(_) => "read_error",
            Refusal::Malformed(_) => "malformed",
            Refusal::AllSpansInvalid(_) => "invalid_spans",
        }
    }

    /// The OTLP/HTTP status.
    pub(crate) fn http_status(&self) -> StatusCode {
        self.statuses().0
    }

    /// The OTLP/gRPC status code. (A gRPC request with the wrong content type is answered
    /// with HTTP 415 instead, as gRPC over HTTP/2 says.)
    pub(crate) fn grpc_code(&self) -> Code {
        self.statuses().1
    }

    /// The HTTP status and gRPC code that say the same, as the OTLP specification pairs them.
    fn statuses(&self) -> (StatusCode, Code) {
        match self {
            Refusal::Unauthenticated => (StatusCode::UNAUTHORIZED, Code::Unauthenticated),
            Refusal::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable),
            Refusal::UnsupportedMediaType(_) | Refusal::Body(BodyError::UnsupportedEncoding(_)) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::Unimplemented)
            }
            Refusal::Body(BodyError::TooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, Code::ResourceExhausted)
            }
            Refusal::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, Code::DeadlineExceeded),
            // google.rpc.Code's HTTP mapping; only gRPC requests carry a deadline.
            Refusal::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, Code::DeadlineExceeded),
            Refusal::Body(BodyError::Corrupt { .. })
            | Refusal::ReadFailed(_)
            | Refusal::Malformed(_)
            | Refusal::AllSpansInvalid(_) => (StatusCode::BAD_REQUEST, Code::InvalidArgument),
        }
    }

    /// How long the client should wait before it retries, for refusals a retry may get past.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::Busy(busy) => Some(busy.retry_after),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_the_status_the_otlp_specification_names() {
        let busy = Refusal::Busy(Busy {
            reason: "overloaded",
            message: "retry later".into(),
            retry_after: Duration::from_secs(2),
        });
        let cases = [
            (
                Refusal::Unauthenticated,
                401,
                Code::Unauthenticated,
                "unauthenticated",
            ),
            (busy.clone(), 503, Code::Unavailable, "overloaded"),
            (
                Refusal::UnsupportedMediaType("text/plain".into()),
                415,
                Code::Unimplemented,
                "unsupported_media_type",
            ),
            (
                BodyError::UnsupportedEncoding("br".into()).into(),
                415,
                Code::Unimplemented,
                "unsupported_encoding",
            ),
            (
                BodyError::TooLarge { limit: 10 }.into(),
                413,
                Code::ResourceExhausted,
                "too_large",
            ),
            (
                Refusal::BodyTimeout,
                408,
                Code::DeadlineExceeded,
                "body_timeout",
            ),
            (
                Refusal::DeadlineExceeded,
                504,
                Code::DeadlineExceeded,
                "deadline_exceeded",
            ),
            (
                Refusal::Malformed("x".into()),
                400,
                Code::InvalidArgument,
                "malformed",
            ),
            (
                Refusal::AllSpansInvalid("x".into()),
                400,
                Code::InvalidArgument,
                "invalid_spans",
            ),
        ];
        for (refusal, http, grpc, reason) in cases {
            assert_eq!(refusal.http_status().as_u16(), http, "{refusal:?}");
            assert_eq!(refusal.grpc_code(), grpc, "{refusal:?}");
            assert_eq!(refusal.reason(), reason, "{refusal:?}");
        }
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(Refusal::BodyTimeout.retry_after(), None);
    }
}
