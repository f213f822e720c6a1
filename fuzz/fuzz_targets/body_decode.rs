//! Any bytes as an identity, gzip or zstd body under a limit chosen by the input: decoding
//! never panics and never returns more than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spanlens::otlp::body::{Encoding, decode};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let encoding = match selector % 3 {
        0 => Encoding::Identity,
        1 => Encoding::Gzip,
        _ => Encoding::Zstd,
    };
    // Limits from 0 to 64 KiB, so that small inputs can still inflate past them.
    let limit = (usize::from(selector) * 257) % (64 * 1024 + 1);
    if let Ok(out) = decode(encoding, body, limit) {
        assert!(out.len() <= limit);
    }
});
