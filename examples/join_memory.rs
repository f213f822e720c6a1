//! Resident memory of a full join window, for BENCHMARKS.md and the `join.max_pending`
//! comment of the default config: fills a `JoinWindow` (four derived metrics of two parts
//! and two labels, as the default profile's) with four times `max_pending` keys, one in
//! three completed by its second part and the others left waiting, as spans of the real
//! vocabulary leave them, and prints the growth of VmRSS and the time per offer.
//!
//! `cargo run --release --example join_memory [max_pending]` (default 50,000)

use spanlens::config::Operation;
use spanlens::join::{Arrival, JoinSpec, JoinWindow, PartSpan};
use std::time::{Duration, Instant};

/// The binary's allocator (src/main.rs), whose size classes the figure depends on.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn main() {
    let max_pending: usize = std::env::args()
        .nth(1)
        .map_or(50_000, |a| a.parse().expect("max_pending is a number"));
    let specs = vec![
        JoinSpec {
            operation: Operation::Sum,
            parts: 2,
            labels: 2,
        };
        4
    ];
    let labels = [Some("tasker-python-worker"), Some("python")];
    let keys: Vec<String> = (0..4 * max_pending)
        .map(|i| format!("0190a1b2-c3d4-7e5f-8a9b-{i:012x}"))
        .collect();
    let span = PartSpan {
        start_unix_nano: 1,
        end_unix_nano: 2,
        trace_id: [1; 16],
        span_id: [2; 8],
    };

    let before = rss_kib();
    let window = JoinWindow::new(specs, max_pending, Duration::from_secs(300));
    let (now, started) = (Instant::now(), Instant::now());
    let mut offers = 0;
    for (n, request) in keys.chunks(512).enumerate() {
        let first: Vec<Arrival> = request
            .iter()
            .enumerate()
            .map(|(i, key)| Arrival {
                derived: (n + i) % 4,
                key,
                part: usize::from(i % 3 == 0),
                span,
                count: 1.0,
                labels: &labels,
            })
            .collect();
        let second: Vec<Arrival> = first
            .iter()
            .filter(|a| a.part == 1)
            .map(|a| Arrival { part: 0, ..*a })
            .collect();
        window.offer_all(&first, now, &mut |_, _| {});
        window.offer_all(&second, now, &mut |_, _| {});
        offers += first.len() + second.len();
    }
    let took = started.elapsed();
    let grown = rss_kib().saturating_sub(before) as f64 * 1024.0;
    let waiting: usize = window.pending().iter().sum();
    println!(
        "max_pending {max_pending}: {waiting} keys waiting, VmRSS +{:.1} MiB ({:.0} bytes a \
         waiting key), {:.0} ns per offer",
        grown / (1 << 20) as f64,
        grown / waiting as f64,
        took.as_nanos() as f64 / offers as f64
    );
}
