//! The OTLP trace protocol as spanlens speaks it, shared by the receivers and forwarding:
//! the protobuf wire format, borrowed span views, OTLP/JSON, content encodings, gRPC framing
//! and status, and the refusals both receivers answer with.

pub mod body;
pub(crate) mod deadline;
pub mod decode;
pub(crate) mod grpc;
pub mod json;
pub mod refusal;
pub(crate) mod sampling;
pub mod status;
pub(crate) mod utf8;
pub(crate) mod wire;

/// How a request arrived; the `protocol` label of spanlens's own counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
    /// Files read by `spanlens replay`.
    Replay,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http_protobuf",
            Protocol::HttpJson => "http_json",
            Protocol::Replay => "replay",
        }
    }
}
