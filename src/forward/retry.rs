//! Exponential backoff with jitter between attempts to deliver one request.

use std::time::{Duration, Instant};

/// A request's retries so far: when its first attempt began, and its backoff.
pub(crate) struct Retrying {
    pub(crate) since: Instant,
    pub(crate) backoff: Backoff,
}

pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            next: initial,
            max,
            // splitmix64 once, so that neighbouring seeds start far apart.
            seed: {
                let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) | 1
            },
        }
    }

    /// The wait before the next attempt: the current interval ±50%, then the interval doubles
    /// up to the maximum.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let interval = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift64: jitter only needs to spread senders apart, not to be unpredictable.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let factor = 0.5 + (self.seed % 1_000_001) as f64 / 1_000_000.0;
        interval.mul_f64(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_within_jitter_and_stop_at_the_maximum() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let mut backoff = Backoff::new(initial, max, 42);
        let mut interval = initial;
        for _ in 0..10 {
            let wait = backoff.next_wait();
            assert!(
                wait >= interval / 2 && wait <= (interval * 3 / 2).min(max),
                "{wait:?} for {interval:?}"
            );
            interval = (interval * 2).min(max);
        }
    }

    #[test]
    fn different_seeds_spread_the_waits() {
        let waits: std::collections::HashSet<_> = (1..20)
            .map(|seed| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(30), seed).next_wait()
            })
            .collect();
        assert!(waits.len() > 10, "{waits:?}");
    }
}
