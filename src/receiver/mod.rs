//! Receivers move bytes: limits, content types, decompression. What a span means is the
//! pipeline's business. Both receivers hand the pipeline an OTLP protobuf request.

pub mod grpc;
pub mod http;

use crate::forward::{Arrived, Forwarder};
use crate::pipeline::{Outcome, Pipeline, Protocol, Refusal};
use axum::body::Body;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use std::sync::Arc;

/// What every receiver shares.
#[derive(Clone)]
pub struct Ingest {
    pub pipeline: Arc<Pipeline>,
    pub max_request_bytes: usize,
    /// Where accepted requests go on to, when forwarding is on.
    pub forward: Option<Arc<Forwarder>>,
}

impl Ingest {
    /// Runs the pipeline (and queues the request for forwarding) off the async workers'
    /// critical path for large requests. `request` is the decoded protobuf request.
    pub async fn run(
        &self,
        protocol: Protocol,
        request: Vec<u8>,
        arrived: Arrived,
    ) -> Result<Outcome, Refusal> {
        let pipeline = self.pipeline.clone();
        let forward = self.forward.clone();
        let large = request.len() > 64 * 1024;
        let work = move || match &forward {
            None => pipeline.ingest(protocol, &request),
            Some(forward) => pipeline.ingest_admitting(protocol, &request, |rejected, accepted| {
                forward.admit(&request, &arrived, rejected, accepted as u64)
            }),
        };
        if !large {
            return work();
        }
        tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
            Err(Refusal::Malformed(format!(
                "request processing failed: {e}"
            )))
        })
    }
}

/// The OTLP response for an accepted request.
pub fn export_response(outcome: &Outcome) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (outcome.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: outcome.rejected as i64,
            error_message: outcome.message.clone(),
        }),
    }
}

/// Reads a whole body, failing with `Err(None)` when it exceeds `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, Option<String>> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large { None } else { Some(e.to_string()) }
    })
}
