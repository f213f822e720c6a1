//! Resent spans: a retrying exporter may send a request again after spanlens accepted it.
//! The last `capacity` span ids (trace id + span id, as a 64-bit hash) are remembered in
//! [`RecentHashes`] tables, one per shard: one lookup touches one cache line, nothing is
//! allocated after start, and memory is `capacity × 8` bytes whatever the traffic.

use crate::collections::recent::RecentHashes;
use crate::collections::shards::for_each_shard;
use std::hash::BuildHasher;
use std::sync::Mutex;

pub(crate) struct RecentSpans {
    shards: Box<[Mutex<RecentHashes>]>,
    hasher: hashbrown::DefaultHashBuilder,
    enabled: bool,
}

const SHARDS: usize = 16;

impl RecentSpans {
    /// Remembers about `capacity` spans (the most recent ones, per bucket of eight); 0
    /// disables it.
    pub(crate) fn new(capacity: usize) -> RecentSpans {
        let per_shard = capacity.div_ceil(SHARDS);
        RecentSpans {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(RecentHashes::new(per_shard)))
                .collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            enabled: capacity > 0,
        }
    }

    /// The bytes of the tables (allocated at start, never grown).
    pub(crate) fn memory_bound(&self) -> usize {
        (self.shards.iter())
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).bytes())
            .sum()
    }

    /// For each (trace id, span id) in order, true the first time it is seen within the
    /// window (a span repeated within the same call too: its first occurrence is the first
    /// time). The lookups run shard by shard, one lock each, so that the cache misses of a
    /// request's spans overlap instead of waiting one after the other behind a lock.
    pub(crate) fn first_times(&self, ids: &[(&[u8], &[u8])]) -> Vec<bool> {
        let mut fresh = vec![true; ids.len()];
        if !self.enabled {
            return fresh;
        }
        let hashes: Vec<u64> = ids
            .iter()
            .map(|&(trace_id, span_id)| self.hasher.hash_one((trace_id, span_id)))
            .collect();
        let shard_of: Vec<usize> = hashes.iter().map(|h| (h >> 60) as usize % SHARDS).collect();
        for_each_shard(&shard_of, |s, items| {
            let mut shard = self.shards[s].lock().unwrap_or_else(|p| p.into_inner());
            // See RecentHashes::touch.
            for &i in items {
                shard.touch(hashes[i]);
            }
            for &i in items {
                fresh[i] = shard.insert(hashes[i]);
            }
        });
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_time(recent: &RecentSpans, trace_id: &[u8], span_id: &[u8]) -> bool {
        recent.first_times(&[(trace_id, span_id)])[0]
    }

    #[test]
    fn duplicates_are_seen_once_and_memory_is_bounded() {
        let recent = RecentSpans::new(3200);
        let span = |i: u64| (i.to_be_bytes().repeat(2), i.to_le_bytes());
        for i in 0..1000 {
            let (t, s) = span(i);
            assert!(first_time(&recent, &t, &s));
        }
        // The most recent spans are still remembered.
        for i in 900..1000 {
            let (t, s) = span(i);
            assert!(!first_time(&recent, &t, &s), "{i}");
        }
        for i in 1000..100_000 {
            let (t, s) = span(i);
            first_time(&recent, &t, &s);
        }
        let held: usize = recent.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= 3200, "{held}");
    }

    #[test]
    fn a_span_repeated_within_one_call_is_fresh_once() {
        let recent = RecentSpans::new(3200);
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let ids = [(&a[..], &a[..8]), (&b[..], &b[..8]), (&a[..], &a[..8])];
        assert_eq!(recent.first_times(&ids), [true, true, false]);
        assert_eq!(recent.first_times(&ids[1..]), [false, false]);
    }

    #[test]
    fn zero_capacity_disables_it() {
        let recent = RecentSpans::new(0);
        assert!(first_time(&recent, &[1; 16], &[1; 8]));
        assert!(first_time(&recent, &[1; 16], &[1; 8]));
    }
}
