//! Equality of the short strings the hot path compares: label values, attribute keys,
//! interned texts. Slice `==` calls `memcmp` for any length known only at run time, and for
//! strings of a few to a few dozen bytes the call costs more than the comparison (profiles
//! of ingest showed `memcmp` among its hottest functions). Up to 32 bytes, [`same`] compares
//! with a few (overlapping) word loads inline; longer strings still take `==`.

use hashbrown::Equivalent;

/// Whether `a` and `b` hold the same bytes.
#[inline]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        // Bytes 0, n/2 and n-1 cover every byte of a string of 1 to 3.
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => differs32(a, b, 0) | differs32(a, b, n - 4) == 0,
        8..=16 => differs64(a, b, 0) | differs64(a, b, n - 8) == 0,
        17..=32 => {
            differs64(a, b, 0)
                | differs64(a, b, 8)
                | differs64(a, b, n - 16)
                | differs64(a, b, n - 8)
                == 0
        }
        _ => a == b,
    }
}

/// Whether `a` and `b` are the same text.
#[inline]
pub(crate) fn same_str(a: &str, b: &str) -> bool {
    same(a.as_bytes(), b.as_bytes())
}

/// Borrowed text that finds its entry in a hashbrown map keyed by owned text (`String` or
/// `Box<str>`, which hash as `str` does) and compares with [`same_str`].
#[derive(Hash)]
pub(crate) struct Text<'a>(pub(crate) &'a str);

impl Equivalent<Box<str>> for Text<'_> {
    #[inline]
    fn equivalent(&self, key: &Box<str>) -> bool {
        same_str(self.0, key)
    }
}

impl Equivalent<String> for Text<'_> {
    #[inline]
    fn equivalent(&self, key: &String) -> bool {
        same_str(self.0, key)
    }
}

/// The bits in which the 4 bytes at `at` differ between `a` and `b`.
#[inline(always)]
fn differs32(a: &[u8], b: &[u8], at: usize) -> u32 {
    let word = |s: &[u8]| u32::from_ne_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    word(a) ^ word(b)
}

/// The bits in which the 8 bytes at `at` differ between `a` and `b`.
#[inline(always)]
fn differs64(a: &[u8], b: &[u8], at: usize) -> u64 {
    let word = |s: &[u8]| u64::from_ne_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    word(a) ^ word(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length from 0 to 40, against `==`: equal strings, and strings that differ in
    /// exactly one byte, at every position.
    #[test]
    fn agrees_with_slice_equality_at_every_length_and_position() {
        for n in 0..=40usize {
            let a: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            assert!(same(&a, &a.clone()), "length {n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x20;
                assert!(!same(&a, &b), "length {n}, byte {at} differs");
                assert_eq!(same(&a, &b), a == b);
            }
            let mut longer = a.clone();
            longer.push(0);
            assert!(!same(&a, &longer), "lengths {n} and {}", n + 1);
        }
    }

    #[test]
    fn compares_text() {
        assert!(same_str("tasker-orchestration", "tasker-orchestration"));
        assert!(!same_str("tasker-orchestration", "tasker-orchestratioN"));
        assert!(!same_str("rust", "ruby"));
        assert!(same_str("", ""));
    }

    #[test]
    fn finds_owned_text_in_maps() {
        let boxed: hashbrown::HashMap<Box<str>, u8> =
            [("python".into(), 1), ("rust".into(), 2)].into();
        assert_eq!(boxed.get(&Text("rust")), Some(&2));
        assert_eq!(boxed.get(&Text("ruby")), None);
        let owned: hashbrown::HashMap<String, u8> = [("step_claim".to_string(), 3)].into();
        assert_eq!(owned.get(&Text("step_claim")), Some(&3));
        assert_eq!(owned.get(&Text("step_clai")), None);
    }
}
