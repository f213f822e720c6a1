//! Forwarding: every accepted request goes on to the downstream OTLP endpoints through a
//! bounded queue per endpoint (optionally persistent), with several senders, retries with
//! backoff, and a drain at shutdown. What cannot be delivered is counted, never silently lost.

mod lock;
mod payload;
mod queue;
mod retry;
mod send;
mod stats;
pub(crate) mod wal;

use crate::config::forward::{ForwardConfig, WhenFull, directory_name};
use crate::metrics::store::Snapshot;
use crate::otlp::body::Arrived;
use crate::otlp::deadline::Deadline;
use crate::otlp::refusal::{Busy, Refusal};
use bytes::Bytes;
use payload::Bodies;
use queue::{Item, Queue};
use retry::{Backoff, Retrying};
use send::{Attempt, Sender};
use stats::{EndpointView, Stats, add};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

struct Endpoint {
    label: String,
    compression: crate::config::forward::Compression,
    queue: Queue,
    stats: Stats,
    sender: Sender,
    /// Spans left in the persistent queue by the drain.
    persisted_spans: AtomicU64,
}

/// One endpoint's accounting at the end of a drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    pub(crate) endpoint: String,
    pub(crate) sent_spans: u64,
    pub(crate) dropped_spans: u64,
    pub(crate) failed_spans: u64,
    pub(crate) persisted_spans: u64,
}

pub(crate) struct Forwarder {
    endpoints: Vec<Arc<Endpoint>>,
    persistent: bool,
    when_full: WhenFull,
    timings: Arc<Timings>,
    senders: Mutex<JoinSet<()>>,
    abandon: CancellationToken,
    /// Held while the forwarder lives: no other process uses the persistent queue.
    _lock: Option<lock::DirectoryLock>,
}

/// The section's durations, as the senders and the drain use them.
struct Timings {
    drain_timeout: Duration,
    retry_after: Duration,
    initial_interval: Duration,
    max_interval: Duration,
    max_elapsed: Duration,
}

impl Timings {
    fn of(config: &ForwardConfig) -> Timings {
        Timings {
            drain_timeout: config.drain_timeout.get(),
            retry_after: config.queue.retry_after.get(),
            initial_interval: config.retry.initial_interval.get(),
            max_interval: config.retry.max_interval.get(),
            max_elapsed: config.retry.max_elapsed.get(),
        }
    }
}

impl Forwarder {
    /// The forwarder of `config`, or None when no endpoint is configured. Opens the persistent
    /// queues (refilling the queues from them) and starts the senders; needs a tokio runtime.
    pub(crate) fn start(config: &ForwardConfig) -> Result<Option<Arc<Forwarder>>, String> {
        if !config.enabled() {
            return Ok(None);
        }
        let q = &config.queue;
        let lock = config
            .persistent
            .as_ref()
            .map(|p| lock::DirectoryLock::acquire(&p.directory))
            .transpose()
            .map_err(|e| e.to_string())?;
        let mut endpoints = Vec::new();
        for endpoint in &config.endpoints {
            let label = endpoint.label().to_string();
            let stats = Stats::default();
            let log = match &config.persistent {
                None => None,
                Some(p) => {
                    let dir = p.directory.join(directory_name(&label));
                    let (wal, recovered) =
                        wal::Wal::open(&dir, p.max_bytes, segment_bytes(p.max_bytes)).map_err(
                            |e| {
                                format!(
                                    "endpoint {label}: cannot open the persistent queue in {}: {e}",
                                    dir.display()
                                )
                            },
                        )?;
                    add(&stats.wal_skipped_regions, recovered.skipped_regions);
                    if recovered.skipped_regions > 0 {
                        tracing::warn!(endpoint = %label, regions = recovered.skipped_regions, bytes = recovered.skipped_bytes, "skipped damaged parts of the persistent queue");
                    }
                    Some((wal, recovered.records))
                }
            };
            let (queue, refilled) = Queue::new(q.max_requests, q.max_bytes, log);
            add(&stats.wal_recovered_requests, refilled);
            if refilled > 0 {
                tracing::info!(endpoint = %label, requests = refilled, "sending requests left in the persistent queue");
            }
            endpoints.push(Arc::new(Endpoint {
                sender: Sender::new(endpoint)?,
                compression: endpoint.compression,
                label,
                queue,
                stats,
                persisted_spans: AtomicU64::new(0),
            }));
        }
        let forwarder = Arc::new(Forwarder {
            endpoints,
            persistent: config.persistent.is_some(),
            when_full: q.when_full,
            timings: Arc::new(Timings::of(config)),
            senders: Mutex::new(JoinSet::new()),
            abandon: CancellationToken::new(),
            _lock: lock,
        });
        let mut senders = forwarder.senders.lock().unwrap_or_else(|e| e.into_inner());
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() as u64);
        for (e, endpoint) in forwarder.endpoints.iter().enumerate() {
            for s in 0..q.senders {
                let seed =
                    clock ^ ((e as u64) << 32 | s as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                senders.spawn(send_loop(
                    endpoint.clone(),
                    forwarder.timings.clone(),
                    forwarder.abandon.clone(),
                    seed,
                ));
            }
        }
        drop(senders);
        Ok(Some(forwarder))
    }

    /// Queues an accepted request for every endpoint, or for none: `request` is the decoded
    /// protobuf, `rejected` the indexes of spans spanlens rejected, `spans` those accepted;
    /// refused when the caller's `deadline` passed while the request waited for the queues.
    pub(crate) fn admit(
        &self,
        request: &[u8],
        arrived: &Arrived,
        rejected: &[usize],
        spans: u64,
        deadline: Deadline,
    ) -> Result<(), Refusal> {
        let busy = |reason: &'static str, message: String| {
            Refusal::Busy(Busy {
                reason,
                message,
                retry_after: self.timings.retry_after,
            })
        };
        let mut bodies = Bodies::new(request, arrived, rejected);
        let prepared: Vec<Bytes> = self
            .endpoints
            .iter()
            .map(|e| bodies.get(e.compression))
            .collect::<Result<_, _>>()
            .map_err(|e| {
                busy(
                    "forward_error",
                    format!("cannot compress the request for forwarding: {e}"),
                )
            })?;
        let mut states: Vec<std::sync::MutexGuard<queue::State>> =
            self.endpoints.iter().map(|e| e.queue.lock()).collect();
        deadline.check()?;
        if states.iter().any(|s| s.is_closed()) {
            return Err(busy(
                "shutting_down",
                "spanlens is shutting down; send to another instance or retry".to_string(),
            ));
        }
        // First make room everywhere (or refuse before anything is queued)...
        let mut fits = Vec::with_capacity(self.endpoints.len());
        for ((endpoint, body), state) in self.endpoints.iter().zip(&prepared).zip(&mut states) {
            let room = |state: &queue::State| endpoint.queue.has_room(state, body.len());
            if !room(state) && self.when_full == WhenFull::Refuse {
                return Err(busy(
                    "forward_queue_full",
                    format!(
                        "the forwarding queue of endpoint {} is full; retry later",
                        endpoint.label
                    ),
                ));
            }
            while !room(state) {
                let Some(dropped) = state.drop_oldest() else {
                    break;
                };
                add(&endpoint.stats.dropped_queue_full, dropped);
            }
            if !room(state) {
                // Every queued request is being sent: this one is the oldest waiting.
                add(&endpoint.stats.dropped_queue_full, spans);
            }
            fits.push(room(state));
        }
        // ...then queue it everywhere, or nowhere if a persistent queue cannot take it.
        let mut pushed: Vec<usize> = Vec::new();
        for (i, body) in prepared.into_iter().enumerate() {
            if !fits[i] {
                continue;
            }
            if let Err(e) = states[i].push(body, self.endpoints[i].compression, spans) {
                for &j in &pushed {
                    states[j].unpush();
                }
                let label = &self.endpoints[i].label;
                return Err(match e {
                    wal::AppendError::Full { .. } => busy(
                        "forward_queue_full",
                        format!("endpoint {label}: {e}; retry later"),
                    ),
                    wal::AppendError::Io(_) => {
                        busy("forward_disk_error", format!("endpoint {label}: {e}"))
                    }
                });
            }
            pushed.push(i);
        }
        drop(states);
        for i in pushed {
            self.endpoints[i].queue.pushed();
        }
        Ok(())
    }

    /// Some endpoint has a persistent queue (queueing writes to a file).
    pub(crate) fn persistent(&self) -> bool {
        self.persistent
    }

    /// Adds the forwarding metrics to a scrape.
    pub(crate) fn contribute(&self, snapshot: &mut Snapshot) {
        let views: Vec<_> = self
            .endpoints
            .iter()
            .map(|e| {
                let (queued_requests, queued_bytes, log_bytes) = e.queue.sizes();
                EndpointView {
                    label: &e.label,
                    stats: &e.stats,
                    queued_requests,
                    queued_bytes,
                    log_bytes,
                }
            })
            .collect();
        stats::contribute(snapshot, &views);
    }

    /// Sends what is queued for up to forward.drain_timeout (call after the receivers
    /// stopped); what is left stays in the persistent queue, or is counted dropped.
    pub(crate) async fn drain(&self) -> Vec<Drained> {
        for endpoint in &self.endpoints {
            endpoint.queue.close();
        }
        let mut senders =
            std::mem::take(&mut *self.senders.lock().unwrap_or_else(|e| e.into_inner()));
        let drained = tokio::time::timeout(self.timings.drain_timeout, async {
            while senders.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.abandon.cancel();
            while senders.join_next().await.is_some() {}
        }
        self.endpoints
            .iter()
            .map(|endpoint| {
                for item in endpoint.queue.take_waiting() {
                    abandon(endpoint, &item);
                }
                if let Err(e) = endpoint.queue.sync() {
                    tracing::warn!(endpoint = %endpoint.label, error = %e, "cannot sync the persistent queue");
                }
                Drained {
                    endpoint: endpoint.label.clone(),
                    sent_spans: endpoint.stats.sent_spans(),
                    dropped_spans: endpoint.stats.dropped(),
                    failed_spans: endpoint.stats.failed(),
                    persisted_spans: endpoint.persisted_spans.load(std::sync::atomic::Ordering::Relaxed),
                }
            })
            .collect()
    }
}

/// A request the drain could not deliver: kept for the next start, or counted dropped.
fn abandon(endpoint: &Endpoint, item: &Item) {
    if endpoint.queue.has_log() {
        add(&endpoint.persisted_spans, item.spans);
        endpoint.queue.finish(item, false);
    } else {
        add(&endpoint.stats.dropped_shutdown, item.spans);
        endpoint.queue.finish(item, true);
    }
}

/// A sender: sends one request at a time, taking the next as soon as an attempt ends; a
/// request to be retried goes back to the queue to wait out its backoff there.
async fn send_loop(
    endpoint: Arc<Endpoint>,
    timings: Arc<Timings>,
    abandon_all: CancellationToken,
    seed: u64,
) {
    let stats = &endpoint.stats;
    loop {
        let item = tokio::select! {
            item = endpoint.queue.pop() => item,
            _ = abandon_all.cancelled() => None,
        };
        let Some(mut item) = item else { return };
        let attempt = tokio::select! {
            attempt = endpoint.sender.attempt(&item.body, item.compression) => attempt,
            _ = abandon_all.cancelled() => {
                abandon(&endpoint, &item);
                return;
            }
        };
        match attempt {
            Attempt::Delivered { rejected } => {
                add(&stats.sent_requests, 1);
                add(&stats.sent_spans, item.spans.saturating_sub(rejected));
                add(&stats.failed_rejected, rejected.min(item.spans));
                endpoint.queue.finish(&item, true);
            }
            Attempt::Permanent(why) => {
                tracing::warn!(endpoint = %endpoint.label, spans = item.spans, %why, "the endpoint refused a forwarded request for good; its spans are counted failed");
                add(&stats.failed_permanent, item.spans);
                endpoint.queue.finish(&item, true);
            }
            Attempt::Retry { after, why } => {
                let retrying = item.retrying.get_or_insert_with(|| Retrying {
                    since: Instant::now(),
                    backoff: Backoff::new(
                        timings.initial_interval,
                        timings.max_interval,
                        seed ^ item.spans,
                    ),
                });
                // A wait of zero from the endpoint would retry in a tight loop: back off
                // instead.
                let wait = after
                    .filter(|d| !d.is_zero())
                    .unwrap_or_else(|| retrying.backoff.next_wait());
                if retrying.since.elapsed().saturating_add(wait) > timings.max_elapsed {
                    tracing::warn!(endpoint = %endpoint.label, spans = item.spans, %why, "giving up on a forwarded request after retry.max_elapsed; its spans are counted failed");
                    add(&stats.failed_exhausted, item.spans);
                    endpoint.queue.finish(&item, true);
                } else {
                    tracing::debug!(endpoint = %endpoint.label, %why, ?wait, "forwarding will retry");
                    add(&stats.retries, 1);
                    endpoint.queue.retry_later(item, wait);
                }
            }
        }
    }
}

/// Segments of a sixteenth of the cap (between 1 MiB and 64 MiB, and at most a quarter of
/// the cap): acknowledged space is reclaimed a segment at a time, so the segment being
/// written must never hold most of the cap.
/// The most one endpoint's queue and senders hold: bodies of at most `queue.max_bytes`, in
/// buffers grown up to twice what they hold, and for gRPC a framed copy of each being sent;
/// an answer per sender; and `per_request` more for each queued request (what its body may
/// keep alive of the buffer it arrived in).
pub(crate) fn endpoint_bytes_bound(
    endpoint: &crate::config::forward::EndpointConfig,
    queue: &crate::config::forward::QueueConfig,
    per_request: usize,
) -> usize {
    let framed = match endpoint.protocol {
        crate::config::forward::ForwardProtocol::Grpc => queue.max_bytes,
        crate::config::forward::ForwardProtocol::Http => 0,
    };
    2 * queue.max_bytes
        + framed
        + queue.senders * send::MAX_ANSWER_BYTES
        + queue.max_requests * per_request
}

fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 16).clamp(1 << 20, 64 << 20).min(max_bytes / 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::body::Encoding;

    #[tokio::test]
    async fn a_request_whose_deadline_passed_while_it_waited_for_the_queues_is_not_queued() {
        let config: ForwardConfig =
            yaml_serde::from_str("endpoints: [{ name: backend, url: 'http://127.0.0.1:9' }]")
                .expect("a forward section");
        let forwarder = Forwarder::start(&config)
            .expect("starts")
            .expect("forwarding is on");
        let request = b"\x0a\x00".to_vec();
        let arrived = Arrived {
            raw: request.clone().into(),
            encoding: Encoding::Identity,
            json: false,
        };
        let queued = || forwarder.endpoints[0].queue.sizes().0;
        let passed = Deadline::from_grpc_timeout(Some(b"0n"), Instant::now());
        assert_eq!(
            forwarder.admit(&request, &arrived, &[], 1, passed),
            Err(Refusal::DeadlineExceeded)
        );
        assert_eq!(queued(), 0);
        let ahead = Deadline::from_grpc_timeout(Some(b"1H"), Instant::now());
        assert_eq!(forwarder.admit(&request, &arrived, &[], 1, ahead), Ok(()));
        assert_eq!(queued(), 1);
    }
}
