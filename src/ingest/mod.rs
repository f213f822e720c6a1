//! Receivers move bytes: limits, content types, decompression. What a span means is the
//! pipeline's business. Both receivers hand the pipeline an OTLP protobuf request.

pub(crate) mod access;
pub(crate) mod gate;
pub(crate) mod grpc;
pub(crate) mod http;

use crate::otlp::Protocol;
use crate::otlp::body::{Arrived, BodyError, Encoding};
use crate::otlp::deadline::Deadline;
use crate::otlp::refusal::Refusal;
use crate::pipeline::{Outcome, Pipeline};
use axum::body::Body;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use std::sync::Arc;
use std::time::Instant;

/// Bodies up to this size are decoded and processed on the async worker that read them: a
/// typical 512-span request takes less CPU than the hop to the blocking pool and back costs
/// in wake-ups and cold caches (measured in spans per CPU-second, BENCHMARKS.md). Larger,
/// compressed and JSON bodies still go to the pool.
const SMALL: usize = 256 * 1024;

/// Whether a request may be processed on the blocking pool (see [`Ingest::run`]): when it
/// may be larger than [`SMALL`], or forwarding writes to disk. Then any of the pool's
/// threads may write to the series store, otherwise only the async workers do.
pub(crate) fn processed_off_the_workers(max_request_bytes: usize, writes_to_disk: bool) -> bool {
    max_request_bytes > SMALL || writes_to_disk
}

/// Runs `work` on the blocking pool when it may take long (`heavy`), inline otherwise, so
/// that large, compressed or JSON bodies never stall the async workers (and with them other
/// connections, scrapes and HTTP/2 keepalives).
pub(crate) async fn off_the_workers<T: Send + 'static>(
    heavy: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    if !heavy {
        return work();
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Decompresses a body on the blocking pool; an uncompressed body is only checked against
/// the limit, inline (a hop to the pool and back would cost more than the check).
async fn decompress(
    encoding: Encoding,
    raw: bytes::Bytes,
    limit: usize,
) -> Result<bytes::Bytes, BodyError> {
    let heavy = encoding != Encoding::Identity;
    off_the_workers(heavy, move || {
        crate::otlp::body::decode_owned(encoding, raw, limit)
    })
    .await
}

/// Where an accepted request goes on to before it is answered: forwarding, when it is on.
/// The server sets it up, so that receivers know nothing of forwarding.
pub(crate) struct Onward {
    /// Takes a request spanlens accepted (the request, what arrived, the indexes of the spans
    /// it rejected, how many it accepted, its caller's deadline), or refuses it as a whole
    /// before anything of it is observed.
    pub(crate) admit: Box<Admit>,
    /// Admitting writes to a file: then it never runs on an async worker.
    pub(crate) writes_to_disk: bool,
}

pub(crate) type Admit =
    dyn Fn(&[u8], &Arrived, &[usize], u64, Deadline) -> Result<(), Refusal> + Send + Sync;

/// What every receiver shares.
#[derive(Clone)]
pub(crate) struct Ingest {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) max_request_bytes: usize,
    /// Where accepted requests go on to, when forwarding is on.
    pub(crate) onward: Option<Arc<Onward>>,
    /// Token, pending-request bound and memory limit, checked before a body is read.
    pub(crate) gate: Arc<gate::Gate>,
    pub(crate) body_read_timeout: std::time::Duration,
}

impl Ingest {
    /// Runs the pipeline (and queues the request for forwarding) off the async workers'
    /// critical path for large requests. `request` is the decoded protobuf request;
    /// `started`, when its headers were handed to the receiver (the time to here and the
    /// run, for a request whose spans were processed, is spanlens_request_duration_seconds).
    /// A request still waiting (for a worker, for the forwarding queue) when its `deadline`
    /// passes is refused before anything of it is observed or forwarded.
    pub(crate) async fn run(
        &self,
        protocol: Protocol,
        request: bytes::Bytes,
        arrived: Arrived,
        started: Instant,
        deadline: Deadline,
    ) -> Result<Outcome, Refusal> {
        let pipeline = self.pipeline.clone();
        let onward = self.onward.clone();
        let heavy = processed_off_the_workers(
            request.len(),
            onward.as_ref().is_some_and(|o| o.writes_to_disk),
        );
        let this = self.clone();
        let work = move || {
            if let Err(refusal) = deadline.check() {
                this.count_refused(protocol, &refusal);
                return Err(refusal);
            }
            match &onward {
                None => pipeline.ingest(protocol, &request),
                Some(onward) => {
                    pipeline.ingest_admitting(protocol, &request, |rejected, accepted| {
                        (onward.admit)(&request, &arrived, rejected, accepted as u64, deadline)
                    })
                }
            }
        };
        let outcome = off_the_workers(heavy, work).await;
        if outcome.is_ok() {
            self.pipeline.observe_request(protocol, started.elapsed());
        }
        outcome
    }
}

/// The OTLP response for an accepted request.
pub(crate) fn export_response(outcome: &Outcome) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (outcome.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: outcome.rejected as i64,
            error_message: outcome.message.clone(),
        }),
    }
}

impl Ingest {
    /// Reads and drops, in the background, the body of a request refused before its body was
    /// read: the answer goes out at once, and an HTTP/1 client still sending the body
    /// receives it instead of a reset connection. Gives up (and the connection closes) past
    /// max_request_bytes or body_read_timeout.
    pub(crate) fn discard(&self, body: Body) {
        use http_body_util::BodyExt;
        let (mut body, mut left, timeout) =
            (body, self.max_request_bytes as u64, self.body_read_timeout);
        tokio::spawn(async move {
            let drain = async {
                while let Some(Ok(frame)) = body.frame().await {
                    let size = frame.data_ref().map_or(0, |d| d.len() as u64);
                    match left.checked_sub(size) {
                        Some(rest) => left = rest,
                        None => return,
                    }
                }
            };
            let _ = tokio::time::timeout(timeout, drain).await;
        });
    }

    /// Reads a whole body of at most max_request_bytes, plus `framing` bytes of envelope,
    /// within body_read_timeout. `size` may tell the whole size from the first bytes (a gRPC
    /// message's length prefix).
    pub(crate) async fn read_body(
        &self,
        body: Body,
        framing: usize,
        size: fn(&[u8]) -> Option<usize>,
    ) -> Result<bytes::Bytes, Refusal> {
        let limit = self.max_request_bytes;
        match tokio::time::timeout(self.body_read_timeout, gather(body, limit + framing, size))
            .await
        {
            Err(_) => Err(Refusal::BodyTimeout),
            Ok(Err(Gather::TooLarge)) => Err(BodyError::TooLarge { limit }.into()),
            Ok(Err(Gather::Failed(e))) => Err(Refusal::ReadFailed(e)),
            Ok(Ok(body)) => Ok(body),
        }
    }

    /// Counts a request a receiver refused before the pipeline saw it (the pipeline counts
    /// its own refusals).
    pub(crate) fn count_refused(&self, protocol: Protocol, refusal: &Refusal) {
        self.pipeline
            .count_refused_request(protocol, refusal.reason());
    }
}

/// Why a body could not be gathered.
enum Gather {
    TooLarge,
    Failed(String),
}

/// The frames of a body as one buffer of at most `limit` bytes. A body that arrives in one
/// frame is kept as it came; the frames of a longer one are copied, as they arrive, into a
/// buffer sized from the size hint (Content-Length) or `size`, and dropped at once: the body
/// is held once, not as its frames and then their copy.
async fn gather(
    mut body: Body,
    limit: usize,
    size: fn(&[u8]) -> Option<usize>,
) -> Result<bytes::Bytes, Gather> {
    use axum::body::HttpBody;
    use http_body_util::BodyExt;
    let mut first: Option<bytes::Bytes> = None;
    let mut gathered = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Gather::Failed(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let held = first.as_ref().map_or(0, |f| f.len()) + gathered.len();
        if held + data.len() > limit {
            return Err(Gather::TooLarge);
        }
        match first.take() {
            None if gathered.is_empty() => first = Some(data),
            earlier => {
                if let Some(earlier) = earlier {
                    let so_far = earlier.len() + data.len();
                    let rest = usize::try_from(body.size_hint().lower()).unwrap_or(limit);
                    let expected = size(&earlier).unwrap_or(so_far.saturating_add(rest));
                    gathered.reserve(expected.clamp(so_far, limit));
                    gathered.extend_from_slice(&earlier);
                }
                gathered.extend_from_slice(&data);
            }
        }
    }
    Ok(match first {
        Some(only) => only,
        None => gathered.freeze(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn ingest() -> Ingest {
        let config = Config::default_profile();
        Ingest {
            pipeline: Arc::new(Pipeline::new(&config).expect("the default profile builds")),
            max_request_bytes: 1 << 20,
            onward: None,
            gate: Arc::new(gate::Gate::new(
                None,
                1,
                0,
                std::time::Duration::from_secs(1),
                1 << 20,
            )),
            body_read_timeout: std::time::Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn a_request_whose_deadline_passed_while_it_waited_is_not_observed() {
        let ingest = ingest();
        let request: bytes::Bytes = spanlens_loadgen::fixtures::Fixtures::new(7)
            .encoded_requests(1, 20)
            .remove(0)
            .into();
        let raw = request.clone();
        let arrived = || Arrived {
            raw: raw.clone(),
            encoding: Encoding::Identity,
            json: false,
        };
        let passed = Deadline::from_grpc_timeout(Some(b"1n"), Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(1));
        let refused = ingest
            .run(
                Protocol::Grpc,
                request.clone(),
                arrived(),
                Instant::now(),
                passed,
            )
            .await;
        assert_eq!(refused.map(|o| o.accepted), Err(Refusal::DeadlineExceeded));
        assert_eq!(ingest.pipeline.accepted_total(), 0);
        let ahead = Deadline::from_grpc_timeout(Some(b"1H"), Instant::now());
        let outcome = ingest
            .run(Protocol::Grpc, request, arrived(), Instant::now(), ahead)
            .await
            .expect("processed within its deadline");
        assert_eq!(outcome.accepted, 20);
        assert_eq!(ingest.pipeline.accepted_total(), 20);
    }
}
