//! Resent spans: a retrying exporter may send a request again after spanlens accepted it.
//! The last `capacity` span ids (trace id + span id) are remembered, in two generations so
//! that memory stays bounded without a clock: when the current generation is full it becomes
//! the previous one and the oldest generation is dropped.

use hashbrown::HashSet;
use std::hash::BuildHasher;
use std::sync::Mutex;

pub struct RecentSpans {
    shards: Box<[Mutex<Generations>]>,
    hasher: hashbrown::DefaultHashBuilder,
    per_generation: usize,
}

#[derive(Default)]
struct Generations {
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

const SHARDS: usize = 16;

impl RecentSpans {
    /// Remembers about `capacity` spans (between capacity/2 and capacity); 0 disables it.
    pub fn new(capacity: usize) -> RecentSpans {
        RecentSpans {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            per_generation: capacity / SHARDS / 2,
        }
    }

    /// True the first time a (trace id, span id) is seen within the window.
    pub fn first_time(&self, trace_id: &[u8], span_id: &[u8]) -> bool {
        if self.per_generation == 0 {
            return true;
        }
        let hash = self.hasher.hash_one((trace_id, span_id));
        let mut shard = self.shards[(hash >> 60) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.previous.contains(&hash) || !shard.current.insert(hash) {
            return false;
        }
        if shard.current.len() >= self.per_generation {
            shard.previous = std::mem::take(&mut shard.current);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_seen_once_and_memory_is_bounded() {
        let recent = RecentSpans::new(3200);
        let span = |i: u64| (i.to_be_bytes().repeat(2), i.to_le_bytes());
        for i in 0..1000 {
            let (t, s) = span(i);
            assert!(recent.first_time(&t, &s));
        }
        // The most recent spans are still remembered.
        for i in 900..1000 {
            let (t, s) = span(i);
            assert!(!recent.first_time(&t, &s), "{i}");
        }
        for i in 1000..100_000 {
            let (t, s) = span(i);
            recent.first_time(&t, &s);
        }
        let held: usize = recent
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.current.len() + s.previous.len()
            })
            .sum();
        assert!(held <= 3200, "{held}");
    }

    #[test]
    fn zero_capacity_disables_it() {
        let recent = RecentSpans::new(0);
        assert!(recent.first_time(&[1; 16], &[1; 8]));
        assert!(recent.first_time(&[1; 16], &[1; 8]));
    }
}
