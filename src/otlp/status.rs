//! `google.rpc.Status` with `google.rpc.RetryInfo`: the error body of OTLP/HTTP, the
//! `grpc-status-details-bin` trailer of OTLP/gRPC, and how a server says when to retry.

use base64::Engine;
use prost::Message;
use std::time::Duration;

pub(crate) const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// gRPC status codes spanlens answers with or acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    Ok = 0,
    Cancelled = 1,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// `google.rpc.Status` (code = 1, message = 2, details = 3).
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}

/// `google.protobuf.Any` (type_url = 1, value = 2).
#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo` (retry_delay = 1).
#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration` (seconds = 1, nanos = 2).
#[derive(Clone, PartialEq, Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl RpcStatus {
    pub(crate) fn new(code: Code, message: &str) -> RpcStatus {
        RpcStatus {
            code: code as i32,
            message: message.to_string(),
            details: Vec::new(),
        }
    }

    /// Adds a RetryInfo detail asking the client to wait `delay`.
    pub(crate) fn retry_after(mut self, delay: Duration) -> RpcStatus {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: delay.as_secs() as i64,
                nanos: delay.subsec_nanos() as i32,
            }),
        };
        self.details.push(Any {
            type_url: RETRY_INFO_TYPE.to_string(),
            value: info.encode_to_vec(),
        });
        self
    }

    /// The delay of a RetryInfo detail, if there is one.
    pub(crate) fn retry_delay(&self) -> Option<Duration> {
        let detail = self
            .details
            .iter()
            .find(|d| d.type_url == RETRY_INFO_TYPE)?;
        let delay = RetryInfo::decode(&detail.value[..]).ok()?.retry_delay?;
        let seconds = u64::try_from(delay.seconds).ok()?;
        let nanos = u32::try_from(delay.nanos).ok()?;
        Some(Duration::new(seconds, nanos.min(999_999_999)))
    }

    /// The value of a `grpc-status-details-bin` header (base64, unpadded).
    pub(crate) fn to_header(&self) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.encode_to_vec())
    }

    /// Reads a `grpc-status-details-bin` value, padded or not.
    pub(crate) fn from_header(value: &[u8]) -> Option<RpcStatus> {
        let trimmed: Vec<u8> = value.iter().copied().filter(|&b| b != b'=').collect();
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed)
            .ok()?;
        RpcStatus::decode(&bytes[..]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_survives_the_header_round_trip() {
        let status = RpcStatus::new(Code::Unavailable, "queue full")
            .retry_after(Duration::from_millis(1500));
        let back = RpcStatus::from_header(status.to_header().as_bytes()).expect("decodes");
        assert_eq!(back, status);
        assert_eq!(back.retry_delay(), Some(Duration::from_millis(1500)));
        let padded = format!("{}==", status.to_header());
        assert_eq!(RpcStatus::from_header(padded.as_bytes()), Some(status));
    }

    #[test]
    fn a_status_without_retry_info_has_no_delay() {
        assert_eq!(RpcStatus::new(Code::Unavailable, "x").retry_delay(), None);
        assert_eq!(RpcStatus::from_header(b"!!not base64"), None);
    }
}
