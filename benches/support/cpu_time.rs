//! Benchmark timing by the benchmark thread's CPU time, read from
//! `/proc/thread-self/schedstat` (nanoseconds on a CPU). On a shared, loaded machine the
//! wall clock also counts the time the thread waited for a core; CPU time does not, so
//! "spans per second on one core" stays comparable between runs. Falls back to the wall
//! clock where the file cannot be read.

use std::time::{Duration, Instant};

fn thread_cpu_nanos() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs `routine` `iters` times (with `setup` before each, untimed) and returns the CPU
/// time the routines took, for `Bencher::iter_custom`.
pub fn cpu_time<S, R>(
    iters: u64,
    mut setup: impl FnMut() -> S,
    mut routine: impl FnMut(S) -> R,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let input = setup();
        let (cpu, wall) = (thread_cpu_nanos(), Instant::now());
        std::hint::black_box(routine(input));
        total += match (cpu, thread_cpu_nanos()) {
            (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
            _ => wall.elapsed(),
        };
    }
    total
}
