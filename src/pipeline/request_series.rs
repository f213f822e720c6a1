//! The series a request's spans share, found once per request: spans after the first of a
//! series write it by slot ([`crate::metrics::store::Series`]), without admitting its label
//! values, hashing them in the store or looking it up in the shard's index. A request holds
//! a few dozen such series (one per stage, service and handler language; one per span name,
//! kind and status) for hundreds of spans.
//!
//! A series is known here by two numbers (a resource and a stage, say) and a text as the
//! spans carry it (a span name, a handler language), not by its label values. The table
//! hashes them itself, inline, which the `decode_classify_aggregate` bench measured faster
//! than hashbrown's `HashMap` with its general hasher.

use crate::metrics::store::Series;
use hashbrown::HashTable;
use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

/// The series `V` of the metrics written with the same labels (a stage's histogram, calls
/// and errors: `[Series; 3]`), by what names them in one request.
pub(crate) struct RequestSeries<'a, V> {
    table: HashTable<Entry<'a, V>>,
    /// This process's [`seed`].
    seed: u64,
}

/// What names a series in a request: two numbers and a text, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key<'a> {
    pub(crate) numbers: [u64; 2],
    pub(crate) text: Option<&'a str>,
}

struct Entry<'a, V> {
    hash: u64,
    key: Key<'a>,
    series: V,
}

impl<'a, V: Copy> RequestSeries<'a, V> {
    /// Room for `capacity` series without growing.
    pub(crate) fn with_capacity(capacity: usize) -> RequestSeries<'a, V> {
        RequestSeries {
            table: HashTable::with_capacity(capacity),
            seed: seed(),
        }
    }

    /// The series known by `key`.
    pub(crate) fn get(&self, key: &Key<'a>) -> Option<V> {
        let hash = hash(key, self.seed);
        self.table
            .find(hash, |e| e.hash == hash && e.key == *key)
            .map(|e| e.series)
    }

    /// Remembers `series` by `key`, which [`RequestSeries::get`] did not know.
    fn insert(&mut self, key: Key<'a>, series: V) {
        let hash = hash(&key, self.seed);
        let entry = Entry { hash, key, series };
        self.table.insert_unique(hash, entry, |e| e.hash);
    }
}

/// A random number drawn once per process, which every hash starts from: texts that collide
/// (many span names in one request looked up along one probe sequence) cannot be made
/// without knowing it.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| RandomState::new().hash_one(0u64))
}

impl<'a, const N: usize> RequestSeries<'a, [Series; N]> {
    /// Remembers `series` by `key` if the labels were admitted as given (`kept`) and every
    /// series is theirs. A value past its dimension's cap, or a series past the series cap,
    /// is then admitted and counted again for every span, as without this table.
    pub(crate) fn remember(&mut self, key: Key<'a>, series: [Series; N], kept: bool) {
        if kept && series.iter().all(|s| s.is_own()) {
            self.insert(key, series);
        }
    }
}

/// A hash of the numbers and the text, eight bytes at a time, from `seed`.
fn hash(key: &Key, seed: u64) -> u64 {
    let [a, b] = key.numbers;
    let text = match key.text {
        None => u64::MAX,
        Some(text) => text_hash(text.as_bytes(), seed),
    };
    mix(mix(a ^ seed, b), text)
}

/// Each eight bytes mixed into the seed and the length, then the last up to eight bytes
/// (read again when the length is a multiple of eight, one by one when shorter than eight).
fn text_hash(bytes: &[u8], seed: u64) -> u64 {
    let word = |chunk: &[u8]| u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    let chunks = bytes.chunks_exact(8);
    let last = match bytes.len() {
        n if n >= 8 => word(&bytes[n - 8..]),
        _ => bytes.iter().fold(0, |h, &b| h << 8 | u64::from(b)),
    };
    let whole = chunks.fold(seed ^ bytes.len() as u64, |h, chunk| mix(h, word(chunk)));
    mix(whole, last)
}

/// Multiplies two words (each moved by a constant) to 128 bits and folds the halves.
fn mix(x: u64, y: u64) -> u64 {
    let product = u128::from(x ^ 0x243f_6a88_85a3_08d3) * u128::from(y ^ 0x1319_8a2e_0370_7344);
    (product as u64) ^ (product >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_told_apart_by_every_number_and_byte() {
        let key = |n, text| Key {
            numbers: [n, 7],
            text,
        };
        let (a, b) = ("step_cla_1_im.v1.x", "step_cla_2_im.v1.x");
        let cases = [
            key(1, Some(a)),
            key(1, Some(b)),
            key(2, Some(a)),
            key(1, None),
            key(1, Some("")),
            key(1, Some("ruby")),
            key(1, Some("rubx")),
            key(1, Some("ruby\0")),
        ];
        let mut known = RequestSeries::with_capacity(4);
        for (i, key) in cases.iter().enumerate() {
            assert_eq!(known.get(key), None, "{key:?}");
            known.insert(*key, i);
        }
        for (i, key) in cases.iter().enumerate() {
            assert_eq!(known.get(key), Some(i), "{key:?}");
        }
    }

    #[test]
    fn short_and_long_texts_spread() {
        for text in [|i| format!("{i}"), |i| format!("tasker.worker.{i:05}.step")] {
            let mut hashes = std::collections::HashSet::new();
            for i in 0..10_000u64 {
                let text = text(i);
                let key = Key {
                    numbers: [0, 0],
                    text: Some(&text),
                };
                hashes.insert(hash(&key, seed()) >> 52);
                // Another seed, another hash.
                assert_ne!(hash(&key, 1), hash(&key, 2), "{text}");
            }
            // 10,000 keys over the top 12 bits (4,096 values): a random spread takes
            // 4,096 × (1 - e^(-10,000/4,096)) = 3,740 of them.
            assert!(hashes.len() > 3_650, "{}", hashes.len());
        }
    }
}
