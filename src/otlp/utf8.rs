//! UTF-8 validation of the short strings a request carries (span names, attribute keys and
//! values), with a fast path for ASCII. `std::str::from_utf8` is a general validator whose
//! set-up dominates for strings of a few dozen bytes; nearly every such string is ASCII,
//! which a few word loads confirm.
//!
//! The one `unsafe` block of the library is here (the crate denies unsafe code elsewhere).
#![allow(unsafe_code)]

use std::str::Utf8Error;

/// `bytes` as text, or why it is not valid UTF-8: the same answer as `std::str::from_utf8`.
#[inline]
pub(crate) fn text(bytes: &[u8]) -> Result<&str, Utf8Error> {
    if is_ascii(bytes) {
        // SAFETY: every byte is below 0x80, and a string of ASCII bytes is valid UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes)
    }
}

/// Whether every byte is below 0x80: the high bits of all 8-byte words, then of the tail.
#[inline(always)]
fn is_ascii(bytes: &[u8]) -> bool {
    let words = bytes.chunks_exact(8);
    let tail = words
        .remainder()
        .iter()
        .fold(0u8, |high, &byte| high | byte);
    let high = words.fold(0u64, |high, word| {
        high | u64::from_ne_bytes(word.try_into().expect("8 bytes"))
    });
    high & 0x8080_8080_8080_8080 == 0 && tail < 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length from 0 to 40 of ASCII, and of the same with one byte at or past 0x80 at
    /// every position (invalid alone, valid as part of a two-byte character): the same answer
    /// as `std::str::from_utf8`.
    #[test]
    fn agrees_with_std_at_every_length_and_position() {
        for n in 0..=40usize {
            let ascii: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            assert_eq!(text(&ascii), std::str::from_utf8(&ascii));
            assert!(text(&ascii).is_ok());
            for at in 0..n {
                let mut high = ascii.clone();
                high[at] = 0x80;
                assert_eq!(
                    text(&high),
                    std::str::from_utf8(&high),
                    "length {n}, byte {at}"
                );
                assert!(text(&high).is_err());
                let mut two = ascii.clone();
                two.splice(at..=at, "é".bytes());
                assert_eq!(text(&two), Ok(std::str::from_utf8(&two).unwrap()));
            }
        }
    }
}
