//! Counters of one endpoint's forwarding, and how they appear on /metrics.

use crate::metrics::store::{MetricKind, MetricSpec, Snapshot};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) sent_spans: AtomicU64,
    pub(crate) sent_requests: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) failed_permanent: AtomicU64,
    pub(crate) failed_exhausted: AtomicU64,
    pub(crate) failed_rejected: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_shutdown: AtomicU64,
    pub(crate) wal_skipped_regions: AtomicU64,
    pub(crate) wal_recovered_requests: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Stats {
    pub(crate) fn failed(&self) -> u64 {
        get(&self.failed_permanent) + get(&self.failed_exhausted) + get(&self.failed_rejected)
    }

    pub(crate) fn dropped(&self) -> u64 {
        get(&self.dropped_queue_full) + get(&self.dropped_shutdown)
    }

    pub(crate) fn sent_spans(&self) -> u64 {
        get(&self.sent_spans)
    }
}

/// One endpoint's state for a scrape.
pub(crate) struct EndpointView<'a> {
    pub(crate) label: &'a str,
    pub(crate) stats: &'a Stats,
    pub(crate) queued_requests: usize,
    pub(crate) queued_bytes: usize,
    pub(crate) log_bytes: Option<u64>,
}

const E: &[&str] = &["endpoint"];
const ER: &[&str] = &["endpoint", "reason"];

/// The forwarding families: name, help, kind, labels.
const FAMILIES: [(&str, &str, MetricKind, &[&str]); 10] = [
    (
        "spanlens_forward_queue_requests",
        "Requests waiting or being sent, by endpoint.",
        MetricKind::Gauge,
        E,
    ),
    (
        "spanlens_forward_queue_bytes",
        "Bytes of requests waiting or being sent, by endpoint.",
        MetricKind::Gauge,
        E,
    ),
    (
        "spanlens_forward_persistent_bytes",
        "Disk used by the persistent queue, by endpoint.",
        MetricKind::Gauge,
        E,
    ),
    (
        "spanlens_forward_sent_spans_total",
        "Spans the endpoint acknowledged, by endpoint.",
        MetricKind::Counter,
        E,
    ),
    (
        "spanlens_forward_sent_requests_total",
        "Requests the endpoint acknowledged, by endpoint.",
        MetricKind::Counter,
        E,
    ),
    (
        "spanlens_forward_retries_total",
        "Failed attempts that were retried, by endpoint.",
        MetricKind::Counter,
        E,
    ),
    (
        "spanlens_forward_failed_spans_total",
        "Spans the endpoint did not take, by endpoint and reason (permanent: refused for good; retries_exhausted: still failing after retry.max_elapsed; rejected: partial success).",
        MetricKind::Counter,
        ER,
    ),
    (
        "spanlens_forward_dropped_spans_total",
        "Spans dropped before delivery, by endpoint and reason (queue_full: oldest dropped under when_full: drop_oldest; shutdown: still queued when the drain ended).",
        MetricKind::Counter,
        ER,
    ),
    (
        "spanlens_forward_wal_skipped_regions_total",
        "Damaged regions of the persistent queue skipped at start, by endpoint.",
        MetricKind::Counter,
        E,
    ),
    (
        "spanlens_forward_wal_recovered_requests_total",
        "Requests found unsent in the persistent queue at start, by endpoint.",
        MetricKind::Counter,
        E,
    ),
];

/// Adds the forwarding families to a snapshot.
pub(crate) fn contribute(snapshot: &mut Snapshot, endpoints: &[EndpointView]) {
    let [
        queue_requests,
        queue_bytes,
        log_bytes,
        sent_spans,
        sent_requests,
        retries,
        failed,
        dropped,
        skipped,
        recovered,
    ] = FAMILIES.map(|(name, help, kind, labels)| {
        snapshot.add_metric(MetricSpec::new(name, help, kind, labels))
    });
    for view in endpoints {
        let l = view.label;
        let s = view.stats;
        snapshot.set_gauge(queue_requests, &[l], view.queued_requests as f64);
        snapshot.set_gauge(queue_bytes, &[l], view.queued_bytes as f64);
        if let Some(bytes) = view.log_bytes {
            snapshot.set_gauge(log_bytes, &[l], bytes as f64);
            snapshot.set_counter(skipped, &[l], get(&s.wal_skipped_regions));
            snapshot.set_counter(recovered, &[l], get(&s.wal_recovered_requests));
        }
        snapshot.set_counter(sent_spans, &[l], get(&s.sent_spans));
        snapshot.set_counter(sent_requests, &[l], get(&s.sent_requests));
        snapshot.set_counter(retries, &[l], get(&s.retries));
        for (reason, counter) in [
            ("permanent", &s.failed_permanent),
            ("retries_exhausted", &s.failed_exhausted),
            ("rejected", &s.failed_rejected),
        ] {
            snapshot.set_counter(failed, &[l, reason], get(counter));
        }
        for (reason, counter) in [
            ("queue_full", &s.dropped_queue_full),
            ("shutdown", &s.dropped_shutdown),
        ] {
            snapshot.set_counter(dropped, &[l, reason], get(counter));
        }
    }
}
