//! Upper bounds of what the allocator and the standard containers hold for a given content,
//! for the worst-case memory estimate (`spanlens check-config --memory`). Each follows a
//! documented allocation pattern, so that a structure's bound is its element sizes
//! (`std::mem::size_of` of the real types) put through these.

/// Bytes jemalloc reserves for a request of `bytes`: its size class. Classes are 8, then
/// multiples of 16 up to 128, then four per power of two (a request in (2^k, 2^(k+1)] is
/// rounded up to a multiple of 2^(k-2)); from 16 KiB on those are whole pages, and so are the
/// large allocations mapped on their own.
pub(crate) const fn allocation(bytes: usize) -> usize {
    if bytes == 0 {
        return 0;
    }
    if bytes <= 8 {
        return 8;
    }
    let spacing = if bytes <= 128 {
        16
    } else {
        let k = usize::BITS - 1 - (bytes - 1).leading_zeros();
        1 << (k - 2)
    };
    bytes.div_ceil(spacing) * spacing
}

/// A `Vec` (or `VecDeque`, `BytesMut`) grown one push or `resize` at a time to `len`
/// elements: its capacity at most doubles past what it needs, to at most `2 × len` (and 4).
pub(crate) const fn grown(len: usize, element: usize) -> usize {
    if len == 0 || element == 0 {
        return 0;
    }
    let capacity = if 2 * len > 4 { 2 * len } else { 4 };
    allocation(capacity * element)
}

/// A `Vec` or boxed slice allocated for exactly `len` elements.
pub(crate) const fn exact(len: usize, element: usize) -> usize {
    allocation(len * element)
}

/// A hashbrown table (`HashMap`, `HashSet`, `HashTable`) holding `entries` of `entry` bytes:
/// a power of two of buckets (at least 4) with room for an eighth more than it holds, one
/// control byte per bucket plus a group's worth (16), in one allocation.
pub(crate) const fn hash_table(entries: usize, entry: usize) -> usize {
    if entries == 0 {
        return 0;
    }
    let buckets = (entries * 8 / 7 + 1).next_power_of_two();
    let buckets = if buckets < 4 { 4 } else { buckets };
    allocation(buckets * entry + buckets + 16)
}

/// A text of at most `len` bytes in an allocation of its own (`Box<str>`, `String` sized to
/// fit).
pub(crate) const fn text(len: usize) -> usize {
    allocation(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, VecDeque};

    #[test]
    fn containers_hold_no_more_than_their_bound() {
        for len in [1usize, 3, 7, 8, 100, 1000, 4097, 100_000] {
            let mut v = Vec::new();
            let mut q = VecDeque::new();
            let mut m = HashMap::new();
            for i in 0..len {
                v.push(i as u64);
                q.push_back(i as u64);
                m.insert(i as u64, i as u64);
            }
            assert!(v.capacity() * 8 <= grown(len, 8), "vec {len}");
            assert!(q.capacity() * 8 <= grown(len, 8), "deque {len}");
            // hashbrown's capacity: buckets - 1 below 8 buckets, 7/8 of them from 8 on.
            let buckets = match m.capacity() {
                c if c < 7 => c + 1,
                c => c * 8 / 7,
            };
            assert!(
                buckets * 17 <= hash_table(len, 16),
                "map {len}: {buckets} buckets"
            );
        }
    }

    #[test]
    fn allocations_are_jemalloc_size_classes() {
        // Size classes: 8, 16, 32, 48, ... 128, 160, 192, 224, 256, 320 ...
        for (request, class) in [
            (1, 8),
            (9, 16),
            (17, 32),
            (128, 128),
            (129, 160),
            (257, 320),
            (1025, 1280),
            (20_000, 20_480),
            (3 << 20, 3 << 20),
        ] {
            assert_eq!(allocation(request), class, "{request}");
        }
    }
}
