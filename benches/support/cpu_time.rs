//! Benchmark timing by the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`). On a
//! shared, loaded machine the wall clock also counts the time the thread waited for a core;
//! CPU time does not, so "spans per second on one core" stays comparable between runs.
//!
//! The clock is read through `clock_gettime`, which brings the running thread's time up to
//! date, to the nanosecond. `/proc/thread-self/schedstat`, read before, moves only at the
//! scheduler's ticks (every 4 ms on this host): a short sample could read no time at all,
//! which criterion refuses ("took zero time per iteration").

use rustix::time::{ClockId, clock_gettime};
use std::time::Duration;

/// CPU time of this thread so far.
pub fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).expect("a thread's CPU time is not negative"),
        u32::try_from(t.tv_nsec).expect("below 10^9 nanoseconds"),
    )
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
        let start = thread_cpu();
        std::hint::black_box(routine(input));
        total += thread_cpu() - start;
    }
    total
}
