//! Resent spans: a retrying exporter may send a request again after spanlens accepted it.
//! The last `capacity` span ids (trace id + span id, as a 64-bit hash) are remembered in a
//! fixed table of cache-line buckets: a span's hash picks one bucket of eight, which keeps
//! its eight most recent hashes, newest first. One lookup touches one cache line, nothing is
//! allocated after start, and memory is `capacity × 8` bytes whatever the traffic.

use std::hash::BuildHasher;
use std::sync::Mutex;

pub struct RecentSpans {
    shards: Box<[Mutex<Box<[Bucket]>>]>,
    hasher: hashbrown::DefaultHashBuilder,
    buckets_per_shard: usize,
}

/// Eight remembered hashes, newest first; 0 is an empty place.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Bucket([u64; WAYS]);

const WAYS: usize = 8;
const SHARDS: usize = 16;

impl RecentSpans {
    /// Remembers about `capacity` spans (the most recent ones, per bucket of eight); 0
    /// disables it.
    pub fn new(capacity: usize) -> RecentSpans {
        let buckets_per_shard = capacity.div_ceil(SHARDS * WAYS);
        RecentSpans {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(vec![Bucket::default(); buckets_per_shard].into()))
                .collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            buckets_per_shard,
        }
    }

    /// True the first time a (trace id, span id) is seen within the window.
    pub fn first_time(&self, trace_id: &[u8], span_id: &[u8]) -> bool {
        if self.buckets_per_shard == 0 {
            return true;
        }
        let hash = self.hasher.hash_one((trace_id, span_id)).max(1);
        let mut shard = self.shards[(hash >> 60) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let bucket = &mut shard[(hash % self.buckets_per_shard as u64) as usize].0;
        if bucket.contains(&hash) {
            return false;
        }
        bucket.copy_within(..WAYS - 1, 1);
        bucket[0] = hash;
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
                s.iter().flat_map(|b| b.0).filter(|&h| h != 0).count()
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
