//! A bounded set of recent 64-bit hashes in a fixed table of cache-line buckets: a hash
//! picks one bucket of eight, which keeps its eight most recent hashes, newest first. One
//! lookup touches one cache line, nothing is allocated after it is made, and its memory is
//! `capacity × 8` bytes whatever goes through it. "Recent" is per bucket: a hash is
//! forgotten once eight newer ones have landed in its bucket.

/// Eight remembered hashes, newest first; 0 is an empty place.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Bucket([u64; WAYS]);

const WAYS: usize = 8;

pub(crate) struct RecentHashes {
    buckets: Box<[Bucket]>,
}

impl RecentHashes {
    /// Room for about `capacity` hashes; 0 remembers none.
    pub(crate) fn new(capacity: usize) -> RecentHashes {
        RecentHashes {
            buckets: vec![Bucket::default(); capacity.div_ceil(WAYS)].into(),
        }
    }

    /// The bytes of the table (allocated when made, never grown).
    pub(crate) fn bytes(&self) -> usize {
        crate::collections::sizes::exact(self.buckets.len(), std::mem::size_of::<Bucket>())
    }

    /// Whether `hash` is remembered.
    pub(crate) fn contains(&self, hash: u64) -> bool {
        let hash = stored(hash);
        self.bucket(hash)
            .is_some_and(|i| self.buckets[i].0.contains(&hash))
    }

    /// Reads the bucket of `hash`, so that a lookup soon after finds it in cache. A
    /// request's lookups each wait on a cache miss, one after the other; touched first, in a
    /// loop that does nothing else, their buckets load at the same time.
    pub(crate) fn touch(&self, hash: u64) {
        if let Some(i) = self.bucket(stored(hash)) {
            std::hint::black_box(self.buckets[i].0[0]);
        }
    }

    /// Remembers `hash`; true if it was not remembered already.
    pub(crate) fn insert(&mut self, hash: u64) -> bool {
        let hash = stored(hash);
        let Some(i) = self.bucket(hash) else {
            return true;
        };
        let bucket = &mut self.buckets[i].0;
        if bucket.contains(&hash) {
            return false;
        }
        bucket.copy_within(..WAYS - 1, 1);
        bucket[0] = hash;
        true
    }

    /// Hashes remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets
            .iter()
            .map(|b| b.0.iter().filter(|&&h| h != 0).count())
            .sum()
    }

    fn bucket(&self, hash: u64) -> Option<usize> {
        let n = self.buckets.len() as u64;
        (n > 0).then(|| (hash % n) as usize)
    }
}

/// 0 marks an empty place: a hash of 0 is kept as 1.
fn stored(hash: u64) -> u64 {
    hash.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

    #[test]
    fn recent_hashes_are_remembered_and_memory_is_bounded() {
        // 100 buckets: the first 100 hashes land at most a few to a bucket.
        let mut recent = RecentHashes::new(800);
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        let hash = |i: u64| hasher.hash_one(i);
        for i in 0..100 {
            assert!(recent.insert(hash(i)), "{i}");
        }
        for i in 0..100 {
            assert!(recent.contains(hash(i)), "{i}");
            assert!(!recent.insert(hash(i)), "{i}");
        }
        assert_eq!(recent.len(), 100);
        for i in 100..100_000 {
            recent.insert(hash(i));
        }
        assert_eq!(recent.len(), 800);
        // The newest hash of every bucket is still there; the first ones are long gone.
        assert!(recent.contains(hash(99_999)));
        assert!((0..100).filter(|&i| recent.contains(hash(i))).count() < 5);
    }

    #[test]
    fn zero_is_a_hash_like_any_other() {
        let mut recent = RecentHashes::new(8);
        assert!(!recent.contains(0));
        assert!(recent.insert(0));
        assert!(recent.contains(0));
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut recent = RecentHashes::new(0);
        assert!(recent.insert(7));
        assert!(recent.insert(7));
        assert!(!recent.contains(7));
        assert_eq!(recent.len(), 0);
    }
}
