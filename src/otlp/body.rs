//! Request bodies: content encodings, decompressed into a buffer that is never allowed to
//! grow past the request limit, so a small compressed bomb costs at most the limit.

use bytes::Bytes;
use memmap2::MmapMut;
use std::io::Read;
use std::sync::Mutex;
use thiserror::Error;

/// A request body as it came in, for forwarding to pass on unchanged when it can.
pub(crate) struct Arrived {
    /// The body as received (after gRPC framing), possibly compressed.
    pub(crate) raw: Bytes,
    pub(crate) encoding: Encoding,
    /// OTLP/JSON: `raw` is JSON, so the protobuf conversion is what is forwarded.
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// Parses a Content-Encoding / grpc-encoding value.
    pub fn parse(value: Option<&str>) -> Result<Encoding, BodyError> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Ok(Encoding::Identity),
            Some("gzip") | Some("x-gzip") => Ok(Encoding::Gzip),
            Some("zstd") => Ok(Encoding::Zstd),
            Some(other) => Err(BodyError::UnsupportedEncoding(other.to_string())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BodyError {
    #[error("unsupported content encoding `{0}`; use gzip, zstd or none")]
    UnsupportedEncoding(String),
    #[error("request is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("cannot decompress the {encoding} body: {reason}")]
    Corrupt {
        encoding: &'static str,
        reason: String,
    },
}

impl BodyError {
    /// The `reason` label of spanlens_requests_refused_total.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            BodyError::UnsupportedEncoding(_) => "unsupported_encoding",
            BodyError::TooLarge { .. } => "too_large",
            BodyError::Corrupt { .. } => "bad_compression",
        }
    }
}

/// Decodes `body` into at most `limit` bytes.
pub fn decode(encoding: Encoding, body: &[u8], limit: usize) -> Result<Bytes, BodyError> {
    if body.len() > limit && encoding == Encoding::Identity {
        return Err(BodyError::TooLarge { limit });
    }
    match encoding {
        Encoding::Identity => Ok(Bytes::copy_from_slice(body)),
        Encoding::Gzip => gunzip(body, limit),
        Encoding::Zstd => unzstd(body, limit),
    }
}

/// [`decode`] of a body already in a buffer: an uncompressed body is passed on as it is.
pub(crate) fn decode_owned(
    encoding: Encoding,
    body: Bytes,
    limit: usize,
) -> Result<Bytes, BodyError> {
    match encoding {
        Encoding::Identity if body.len() <= limit => Ok(body),
        _ => decode(encoding, &body, limit),
    }
}

/// Decompressed bodies up to this size go into a buffer kept from an earlier request (a
/// typical 512-span request fits): a fresh mapping per request costs its page faults, their
/// zeroing and the unmapping with its TLB shootdown, which showed in gzip spans per
/// CPU-second (BENCHMARKS.md). A larger output goes on in a mapping of the limit.
const SPARE_BYTES: usize = 512 * 1024;

/// Spare buffers kept at most (one per decompression running at once); with the pages a
/// body once touched, at most 2 MiB stay resident.
const SPARE_BUFFERS: usize = 4;

static SPARES: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// A decompressed body in a spare buffer, which goes back to the spares when the body is
/// dropped.
struct Spare {
    buffer: Box<[u8]>,
    len: usize,
}

impl Spare {
    fn take() -> Spare {
        let kept = SPARES.lock().unwrap_or_else(|p| p.into_inner()).pop();
        Spare {
            buffer: kept.unwrap_or_else(|| vec![0; SPARE_BYTES].into_boxed_slice()),
            len: 0,
        }
    }

    /// Its first `len` bytes as a body.
    fn holding(mut self, len: usize) -> Bytes {
        self.len = len;
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Spare {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        let mut spares = SPARES.lock().unwrap_or_else(|p| p.into_inner());
        if spares.len() < SPARE_BUFFERS {
            spares.push(std::mem::take(&mut self.buffer));
        }
    }
}

/// The output of a decompression past a spare buffer: an anonymous mapping of one byte past
/// the limit (which tells "exactly at the limit" from "over it"). Its pages become resident
/// only as the output fills them, it never grows or copies, and it is unmapped when the
/// request is done: a bomb's memory goes back to the system at once instead of staying in
/// an allocator's per-thread arena, one limit's worth per thread.
fn output(encoding: &'static str, limit: usize) -> Result<MmapMut, BodyError> {
    MmapMut::map_anon(limit + 1).map_err(|e| BodyError::Corrupt {
        encoding,
        reason: format!("cannot reserve {limit} bytes to decompress into: {e}"),
    })
}

fn corrupt(encoding: &'static str) -> impl Fn(std::io::Error) -> BodyError {
    move |e| BodyError::Corrupt {
        encoding,
        reason: e.to_string(),
    }
}

/// The first `len` bytes of the output, as a buffer that unmaps it when dropped.
fn filled(out: MmapMut, len: usize, limit: usize) -> Result<Bytes, BodyError> {
    if len > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(Bytes::from_owner(out).slice(..len))
}

/// Reads until the end or until `into` is full; how much it read.
fn fill(reader: &mut impl Read, into: &mut [u8]) -> std::io::Result<usize> {
    let mut len = 0;
    while len < into.len() {
        match reader.read(&mut into[len..])? {
            0 => break,
            n => len += n,
        }
    }
    Ok(len)
}

/// Places in a spare buffer for a body of at most `limit` bytes (and one more, to tell
/// "over the limit").
fn spare_room(limit: usize) -> usize {
    SPARE_BYTES.min(limit.saturating_add(1))
}

fn gunzip(body: &[u8], limit: usize) -> Result<Bytes, BodyError> {
    // Every member of a multi-member stream: what is forwarded as it arrived is what was read.
    let mut reader = flate2::read::MultiGzDecoder::new(body);
    let mut spare = Spare::take();
    let room = spare_room(limit);
    let len = fill(&mut reader, &mut spare.buffer[..room]).map_err(corrupt("gzip"))?;
    if len < room {
        return Ok(spare.holding(len));
    }
    if len > limit {
        return Err(BodyError::TooLarge { limit });
    }
    let mut out = output("gzip", limit)?;
    out[..len].copy_from_slice(&spare.buffer[..len]);
    drop(spare);
    let more = fill(&mut reader, &mut out[len..]).map_err(corrupt("gzip"))?;
    filled(out, len + more, limit)
}

/// zstd in one pass straight into the output: no window buffer besides it, whatever window
/// the frames declare. A body too large for a spare buffer is decompressed again into a
/// mapping of the limit.
fn unzstd(body: &[u8], limit: usize) -> Result<Bytes, BodyError> {
    let mut decompressor = zstd::bulk::Decompressor::new().map_err(corrupt("zstd"))?;
    let too_small = |e: &std::io::Error| e.to_string().contains("Destination buffer is too small");
    let mut spare = Spare::take();
    let room = spare_room(limit);
    match decompressor.decompress_to_buffer(body, &mut spare.buffer[..room]) {
        Ok(len) if len > limit => return Err(BodyError::TooLarge { limit }),
        Ok(len) => return Ok(spare.holding(len)),
        Err(e) if too_small(&e) && room > limit => return Err(BodyError::TooLarge { limit }),
        Err(e) if too_small(&e) => drop(spare),
        Err(e) => return Err(corrupt("zstd")(e)),
    }
    let mut out = output("zstd", limit)?;
    match decompressor.decompress_to_buffer(body, &mut out[..]) {
        Ok(len) => filled(out, len, limit),
        Err(e) if too_small(&e) => Err(BodyError::TooLarge { limit }),
        Err(e) => Err(corrupt("zstd")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn limit_applies_after_decompression_to_the_byte() {
        let data = vec![0u8; 4096];
        for (encoding, packed) in [
            (Encoding::Gzip, gzip(&data)),
            (Encoding::Zstd, zstd::encode_all(&data[..], 3).unwrap()),
            (Encoding::Identity, data.clone()),
        ] {
            assert_eq!(decode(encoding, &packed, 4096).unwrap(), data);
            assert_eq!(
                decode(encoding, &packed, 4095),
                Err(BodyError::TooLarge { limit: 4095 })
            );
        }
    }

    #[test]
    fn bodies_past_a_spare_buffer_go_on_in_a_mapping_to_the_byte() {
        // Bytes that differ along the body, so that a copy at a wrong offset shows.
        let data: Vec<u8> = (0..3 * SPARE_BYTES).map(|i| (i % 251) as u8).collect();
        for encoding in [Encoding::Gzip, Encoding::Zstd] {
            for len in [SPARE_BYTES - 1, SPARE_BYTES, SPARE_BYTES + 1, data.len()] {
                let packed = match encoding {
                    Encoding::Gzip => gzip(&data[..len]),
                    _ => zstd::encode_all(&data[..len], 3).unwrap(),
                };
                assert_eq!(decode(encoding, &packed, len).unwrap(), &data[..len]);
                assert_eq!(
                    decode(encoding, &packed, len - 1),
                    Err(BodyError::TooLarge { limit: len - 1 }),
                    "{encoding:?} {len}"
                );
            }
        }
    }

    #[test]
    fn spare_buffers_are_reused_few_and_hold_only_their_body() {
        let long = decode(Encoding::Gzip, &gzip(&[9; 5000]), 10_000).unwrap();
        drop(long);
        let bodies: Vec<Bytes> = (0..10u8)
            .map(|i| decode(Encoding::Gzip, &gzip(&[i; 100]), 1000).unwrap())
            .collect();
        for (i, body) in bodies.iter().enumerate() {
            assert_eq!(body, &[i as u8; 100][..]);
        }
        drop(bodies);
        assert!(SPARES.lock().unwrap().len() <= SPARE_BUFFERS);
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let bomb = zstd::encode_all(&vec![0u8; 64 << 20][..], 19).unwrap();
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(
            decode(Encoding::Zstd, &bomb, 1 << 20),
            Err(BodyError::TooLarge { limit: 1 << 20 })
        );
    }

    #[test]
    fn zstd_frames_concatenated_or_with_huge_windows_are_read_within_the_limit() {
        let mut two = zstd::encode_all(&b"hello "[..], 3).unwrap();
        two.extend(zstd::encode_all(&b"world"[..], 3).unwrap());
        assert_eq!(
            decode(Encoding::Zstd, &two, 100).unwrap(),
            &b"hello world"[..]
        );
        // A frame declaring a 128 MiB window but holding 2 MiB decodes (single pass: no
        // window buffer), and one byte less of limit refuses it.
        let data = vec![7u8; 2 << 20];
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(27).unwrap();
        encoder.include_contentsize(false).unwrap();
        encoder.write_all(&data).unwrap();
        let packed = encoder.finish().unwrap();
        assert_eq!(decode(Encoding::Zstd, &packed, 2 << 20).unwrap(), data);
        assert_eq!(
            decode(Encoding::Zstd, &packed, (2 << 20) - 1),
            Err(BodyError::TooLarge {
                limit: (2 << 20) - 1
            })
        );
    }

    #[test]
    fn corrupt_and_unknown_encodings() {
        assert!(matches!(
            decode(Encoding::Gzip, b"not gzip", 100),
            Err(BodyError::Corrupt { .. })
        ));
        assert!(matches!(
            decode(Encoding::Zstd, b"not zstd", 100),
            Err(BodyError::Corrupt { .. })
        ));
        assert_eq!(
            Encoding::parse(Some("br")),
            Err(BodyError::UnsupportedEncoding("br".into()))
        );
        assert_eq!(Encoding::parse(Some("GZIP")), Ok(Encoding::Gzip));
    }
}
