//! OTLP/gRPC's unary call on the wire: the method path, and the one length-prefixed message
//! of a request or response body (a compressed flag byte, a 4-byte big-endian length).

use bytes::{BufMut, Bytes, BytesMut};

/// The path of `TraceService/Export`.
pub(crate) const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A message framed as a unary call's body.
pub(crate) fn frame(compressed: bool, message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(u8::from(compressed));
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    frame.freeze()
}

/// The length a message's prefix declares (after the compressed flag), once five bytes are in.
pub(crate) fn declared_len(start: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = start.get(1..5)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// Splits the one length-prefixed message of a unary call: (compressed, message).
pub(crate) fn unframe(raw: &[u8]) -> Result<(bool, &[u8]), String> {
    if raw.len() < 5 {
        return Err(format!(
            "request body of {} bytes has no complete gRPC message prefix",
            raw.len()
        ));
    }
    let compressed = match raw[0] {
        0 => false,
        1 => true,
        flag => return Err(format!("invalid gRPC compressed flag {flag}")),
    };
    let len = declared_len(raw).expect("five bytes checked above");
    let message = &raw[5..];
    if message.len() != len {
        return Err(format!(
            "gRPC message prefix says {len} bytes, body has {}; a unary call carries exactly one message",
            message.len()
        ));
    }
    Ok((compressed, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unframe_checks_prefix_and_length() {
        assert_eq!(unframe(b"\x00\x00\x00\x00\x02hi"), Ok((false, &b"hi"[..])));
        assert!(unframe(b"\x00\x00\x00\x00\x03hi").is_err());
        assert!(unframe(b"\x02\x00\x00\x00\x02hi").is_err());
        assert!(unframe(b"\x00\x00").is_err());
    }

    #[test]
    fn a_framed_message_unframes_to_itself() {
        let framed = frame(true, b"hello");
        assert_eq!(&framed[..5], b"\x01\x00\x00\x00\x05");
        assert_eq!(unframe(&framed), Ok((true, &b"hello"[..])));
        assert_eq!(declared_len(&framed), Some(5));
    }
}
