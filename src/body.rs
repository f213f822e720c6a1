//! Request bodies: content encodings, decompressed into a buffer that is never allowed to
//! grow past the request limit, so a small compressed bomb costs at most the limit.

use std::io::Read;
use thiserror::Error;

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
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::UnsupportedEncoding(_) => "unsupported_encoding",
            BodyError::TooLarge { .. } => "too_large",
            BodyError::Corrupt { .. } => "bad_compression",
        }
    }
}

/// Decodes `body` into at most `limit` bytes.
pub fn decode(encoding: Encoding, body: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    if body.len() > limit && encoding == Encoding::Identity {
        return Err(BodyError::TooLarge { limit });
    }
    match encoding {
        Encoding::Identity => Ok(body.to_vec()),
        Encoding::Gzip => read_capped(flate2::read::GzDecoder::new(body), "gzip", limit),
        Encoding::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(body).map_err(|e| BodyError::Corrupt {
                    encoding: "zstd",
                    reason: e.to_string(),
                })?;
            read_capped(decoder, "zstd", limit)
        }
    }
}

fn read_capped(
    reader: impl Read,
    encoding: &'static str,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::with_capacity(limit.min(64 * 1024));
    // One byte past the limit tells "exactly at the limit" from "over it".
    let mut capped = reader.take(limit as u64 + 1);
    capped
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Corrupt {
            encoding,
            reason: e.to_string(),
        })?;
    if out.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(out)
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
    fn bombs_stop_at_the_limit() {
        let bomb = zstd::encode_all(&vec![0u8; 64 << 20][..], 19).unwrap();
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(
            decode(Encoding::Zstd, &bomb, 1 << 20),
            Err(BodyError::TooLarge { limit: 1 << 20 })
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
