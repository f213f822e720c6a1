//! `spanlens check-config --memory`: the most resident memory a config allows, part by part,
//! each an upper bound computed from the sizes of the structures that hold it (see
//! [`crate::collections::sizes`]) with every cap of the config reached at once.
//!
//! What it assumes: the machine that serves has as many CPUs as the one that checks (the
//! series store has two shards per CPU, and a series a copy in the shard of each thread that
//! writes it), one scrape at a time (a second renders into a
//! buffer of its own), and one breakdown lookup at a time.

use crate::config::Config;
use crate::forward::endpoint_bytes_bound;
use crate::ingest::gate::largest_request_bytes;
use crate::ingest::processed_off_the_workers;
use crate::otlp::decode::Batch;
use crate::pipeline::{BuildError, Pipeline};
use crate::server::listener::{READ_BUFFER_BYTES, connection_bytes_bound};
use std::fmt::Write;

/// The runtime's own anonymous memory, idle: 5.2 MiB (release) and 6.3 MiB (debug) measured
/// with the default profile (RssAnon, 2026-12-07), which includes the touched parts of the
/// tables allocated at start; rounded up.
const RUNTIME_BYTES: usize = 8 << 20;

/// A thread's touched stack and its allocator cache.
const THREAD_BYTES: usize = 256 << 10;

/// Threads that do work at once besides the async workers: the blocking pool runs the
/// decompression and decoding of each admitted request, scrapes and breakdown lookups.
const SCRAPES_AND_LOOKUPS: usize = 2;

/// One part of the estimate.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    component: String,
    bytes: u64,
    /// How the bound was computed, from the config's caps.
    how: String,
}

/// The estimate of one config: its lines and their total.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    lines: Vec<Line>,
}

impl Estimate {
    fn total(&self) -> u64 {
        self.lines.iter().map(|l| l.bytes).sum()
    }

    /// The table: component, bound, how; then the total, human-readable and in bytes.
    pub fn render(&self) -> String {
        let width = self
            .lines
            .iter()
            .map(|l| l.component.len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "{:width$}  {:>11}  how", "component", "bound");
        for line in &self.lines {
            let _ = writeln!(
                out,
                "{:width$}  {:>11}  {}",
                line.component,
                human(line.bytes),
                line.how
            );
        }
        let total = self.total();
        let _ = writeln!(
            out,
            "{:width$}  {:>11}  {total} bytes",
            "total",
            human(total)
        );
        out
    }
}

/// Bytes in binary units, to three significant figures.
fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", units[unit]),
    }
}

/// The estimate for `config` (validated), served by this binary on this machine.
pub fn estimate(config: &Config) -> Result<Estimate, BuildError> {
    let pipeline = Pipeline::new(config)?;
    let r = &config.receivers;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pooled =
        processed_off_the_workers(r.max_request_bytes, config.forward.persistent.is_some());
    // The async workers (one per CPU) write series, a scrape's thread its join evictions,
    // and the blocking pool's threads every series when requests may be processed there.
    let (writers, who) = match pooled {
        true => (
            usize::MAX,
            "every shard: requests may be processed on the blocking pool (max_request_bytes over 256 KiB, or a persistent queue)",
        ),
        false => (
            cpus + 1,
            "the async workers' and a scrape's: max_request_bytes up to 256 KiB and no persistent queue keep requests on the workers",
        ),
    };
    let bound = pipeline.memory_bound(writers);
    let store = &bound.store;
    let max_label = config.metrics.max_label_value_length;
    let mut lines = Vec::new();
    let mut line = |component: &str, bytes: usize, how: String| {
        lines.push(Line {
            component: component.to_string(),
            bytes: bytes as u64,
            how,
        })
    };

    let mapped = mapped_file_bytes();
    let threads = cpus + r.max_pending_requests + SCRAPES_AND_LOOKUPS;
    line(
        "base",
        mapped + RUNTIME_BYTES + threads * THREAD_BYTES,
        format!(
            "binary and libraries {} (every file-backed mapping resident) + runtime idle {} + {threads} threads ({cpus} workers, max_pending_requests {}, {SCRAPES_AND_LOOKUPS} scrape/lookup) × {}",
            human(mapped as u64),
            human(RUNTIME_BYTES as u64),
            r.max_pending_requests,
            human(THREAD_BYTES as u64)
        ),
    );
    line(
        "series store",
        store.series_bytes,
        format!(
            "{} series (each metric's max_series_per_metric {} + its overflow series) × {} copies (a copy in the shard of each thread that writes it, 2 shards per CPU; {who}), each copy {} on average (slot, index, buckets, native buckets over the whole range of durations, label texts of {max_label} bytes), + the series caps' sets",
            store.series,
            config.metrics.max_series_per_metric,
            store.copies,
            human((store.series_bytes / (store.series * store.copies).max(1)) as u64)
        ),
    );
    line(
        "label values",
        store.label_bytes,
        format!(
            "each capped label's max_values + overflow, texts of {max_label} bytes, once admitted and once cached per written shard ({} copies)",
            1 + store.copies
        ),
    );
    line(
        "join window",
        bound.join,
        format!(
            "join.max_pending {} keys in 16 shards: queue and index allocated up front, completed keys' table, sampled parts, label values of {max_label} bytes",
            config.join.max_pending
        ),
    );
    line(
        "dedupe table",
        bound.dedupe,
        format!(
            "join.dedupe_spans {} span ids, 8 bytes each (allocated at start)",
            config.join.dedupe_spans
        ),
    );
    line(
        "breakdown log",
        bound.breakdown,
        format!(
            "breakdown.max_spans {} records + up to 7 distinct texts of {max_label} bytes each, + a lookup finding every record (its texts copied)",
            config.breakdown.max_spans
        ),
    );
    let decoded = Batch::bytes_bound(r.max_request_bytes);
    let request = largest_request_bytes(r.max_request_bytes) as usize + decoded;
    line(
        "request buffers",
        r.max_pending_requests * request,
        format!(
            "max_pending_requests {} × (body as received and gathered, 2 × max_request_bytes {}, + decoded copy as JSON, 6 ×, + span views {})",
            r.max_pending_requests,
            r.max_request_bytes,
            human(decoded as u64)
        ),
    );
    let (per_connection, listeners) = connection_bound(config);
    line(
        "connections",
        r.max_connections * per_connection
            + connection_bytes_bound(1, config.metrics.tls.is_some()),
        format!(
            "max_connections {} over {listeners} × {} (state, HTTP/2 window, a frame, header lists of max_concurrent_streams, TLS buffers where on), + one scraper's",
            r.max_connections,
            human(per_connection as u64)
        ),
    );
    let f = &config.forward;
    let forward: usize = (f.endpoints.iter())
        .map(|e| endpoint_bytes_bound(e, &f.queue, READ_BUFFER_BYTES))
        .sum();
    if forward > 0 {
        line(
            "forwarding queues",
            forward,
            format!(
                "{} endpoints × (2 × queue.max_bytes {} (buffers up to twice what they hold), + as much again framed for gRPC, + queue.senders {} answers of up to 1 MiB, + queue.max_requests {} × a read buffer a body may keep, {})",
                f.endpoints.len(),
                f.queue.max_bytes,
                f.queue.senders,
                f.queue.max_requests,
                human(READ_BUFFER_BYTES as u64)
            ),
        );
    }
    // The ring's samples, the one being taken (from a snapshot of its own, beside a
    // scrape's) and a view's two windows (each at most a sample).
    let page = crate::server::page::memory_bound(config, store);
    line(
        "operator page",
        (page.samples + 2) * page.sample_bytes + store.snapshot_bytes,
        format!(
            "{} samples (page.sample_interval {}: those of the last minute and one older, one a minute for five and one older) + a view's 2 windows, × a sample {} (a row per histogram and counter series of every stage, derived metric and comparison, the slowest {} tasks and steps), + the snapshot a sample is taken from {}",
            page.samples,
            config.page.sample_interval,
            human(page.sample_bytes as u64),
            config.page.slowest,
            human(store.snapshot_bytes as u64),
        ),
    );
    line(
        "scrape",
        store.snapshot_bytes + 3 * store.rendering_bytes,
        format!(
            "snapshot of every shard's copies {} + rendering {} (the longest of text, OpenMetrics and protobuf, every series at its longest) × 3 (the kept buffer, and growing: old and new)",
            human(store.snapshot_bytes as u64),
            human(store.rendering_bytes as u64)
        ),
    );
    Ok(Estimate { lines })
}

/// The largest connection of an enabled receiver, and which receivers are enabled.
fn connection_bound(config: &Config) -> (usize, &'static str) {
    let r = &config.receivers;
    let enabled: Vec<_> = [(&r.grpc, "gRPC"), (&r.http, "HTTP")]
        .into_iter()
        .filter(|(l, _)| l.enabled)
        .collect();
    let bytes = (enabled.iter())
        .map(|(l, _)| connection_bytes_bound(l.max_concurrent_streams, l.tls.is_some()))
        .max()
        .unwrap_or(0);
    let names = match enabled.as_slice() {
        [(_, one)] => *one,
        [] => "no receiver",
        _ => "gRPC and HTTP",
    };
    (bytes, names)
}

/// The bytes of every file-backed mapping of this process (the binary's code and data,
/// shared libraries): what the server maps too, and at most what of it can be resident.
fn mapped_file_bytes() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let inode = fields.nth(3)?;
            let path = fields.next()?;
            if inode == "0" || !path.starts_with('/') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            Some(end - start)
        })
        .sum()
}
