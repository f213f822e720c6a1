//! Protocol-buffers wire format, read in place: varints, fixed-width scalars and
//! length-delimited fields as slices of the request bytes. Nothing here allocates.

use crate::otlp::utf8;
use thiserror::Error;

/// Why a buffer is not valid protobuf.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum WireError {
    #[error("truncated varint")]
    TruncatedVarint,
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    #[error("field {field} ends past the end of its message")]
    Truncated { field: u32 },
    #[error("field number 0 is not allowed")]
    ZeroFieldNumber,
    #[error("unsupported wire type {wire_type} (field {field})")]
    BadWireType { field: u32, wire_type: u8 },
    #[error("group {field} is not closed")]
    UnclosedGroup { field: u32 },
    #[error("field {field} has wire type {found}, expected {expected}")]
    WrongWireType { field: u32, found: u8, expected: u8 },
    #[error("field {field} is not valid UTF-8")]
    InvalidUtf8 { field: u32 },
}

/// The value of one field, borrowed from the buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FieldValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    /// A (deprecated) group, skipped whole; no field spanlens reads is a group.
    Group,
}

impl<'a> FieldValue<'a> {
    fn wire_type(&self) -> u8 {
        match self {
            FieldValue::Varint(_) => 0,
            FieldValue::Fixed64(_) => 1,
            FieldValue::Bytes(_) => 2,
            FieldValue::Fixed32(_) => 5,
            FieldValue::Group => 3,
        }
    }

    fn mismatch(&self, field: u32, expected: u8) -> WireError {
        WireError::WrongWireType {
            field,
            found: self.wire_type(),
            expected,
        }
    }

    #[inline]
    pub(crate) fn varint(self, field: u32) -> Result<u64, WireError> {
        match self {
            FieldValue::Varint(v) => Ok(v),
            other => Err(other.mismatch(field, 0)),
        }
    }

    #[inline]
    pub(crate) fn fixed64(self, field: u32) -> Result<u64, WireError> {
        match self {
            FieldValue::Fixed64(v) => Ok(v),
            other => Err(other.mismatch(field, 1)),
        }
    }

    #[inline]
    pub(crate) fn bytes(self, field: u32) -> Result<&'a [u8], WireError> {
        match self {
            FieldValue::Bytes(v) => Ok(v),
            other => Err(other.mismatch(field, 2)),
        }
    }

    #[inline]
    pub(crate) fn string(self, field: u32) -> Result<&'a str, WireError> {
        string(self.bytes(field)?, field)
    }
}

/// The payload of string field `field` as text: not UTF-8 is an error naming the field.
#[inline]
pub(crate) fn string(payload: &[u8], field: u32) -> Result<&str, WireError> {
    utf8::text(payload).map_err(|_| WireError::InvalidUtf8 { field })
}

/// Iterates over the fields of one message.
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    /// Most varints on the wire (field keys, lengths below 128) are one byte.
    #[inline]
    fn varint(&mut self) -> Result<u64, WireError> {
        if let Some((&byte, rest)) = self.buf.split_first()
            && byte < 0x80
        {
            self.buf = rest;
            return Ok(u64::from(byte));
        }
        self.long_varint()
    }

    fn long_varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for (i, &byte) in self.buf.iter().enumerate().take(10) {
            if i == 9 && byte > 1 {
                return Err(WireError::VarintTooLong);
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        if self.buf.len() >= 10 {
            Err(WireError::VarintTooLong)
        } else {
            Err(WireError::TruncatedVarint)
        }
    }

    #[inline]
    fn take(&mut self, len: usize, field: u32) -> Result<&'a [u8], WireError> {
        if len > self.buf.len() {
            return Err(WireError::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    /// Field number and wire type. Keys of fields 1 to 15, all but a few on the wire, are
    /// one byte and read inline.
    #[inline(always)]
    fn key(&mut self) -> Result<(u32, u8), WireError> {
        if let Some((&byte, rest)) = self.buf.split_first()
            && (8..0x80).contains(&byte)
        {
            self.buf = rest;
            return Ok((u32::from(byte >> 3), byte & 7));
        }
        self.long_key()
    }

    fn long_key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| WireError::ZeroFieldNumber)?;
        if field == 0 {
            return Err(WireError::ZeroFieldNumber);
        }
        Ok((field, (key & 7) as u8))
    }

    /// Skips a group's fields up to its end marker, nested groups included.
    fn skip_group(&mut self, field: u32) -> Result<(), WireError> {
        let mut open = vec![field];
        while let Some(&innermost) = open.last() {
            if self.buf.is_empty() {
                return Err(WireError::UnclosedGroup { field: innermost });
            }
            match self.key()? {
                (f, 3) => open.push(f),
                (f, 4) if f == innermost => {
                    open.pop();
                }
                (f, 4) => {
                    return Err(WireError::BadWireType {
                        field: f,
                        wire_type: 4,
                    });
                }
                (f, wire_type) => {
                    self.value(f, wire_type)?;
                }
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn field(&mut self) -> Result<(u32, FieldValue<'a>), WireError> {
        let (field, wire_type) = self.key()?;
        Ok((field, self.value(field, wire_type)?))
    }

    /// Length-delimited fields, varints and 64-bit fields (timestamps), nearly every field
    /// spanlens reads, stay inline; the other wire types take the call.
    #[inline(always)]
    fn value(&mut self, field: u32, wire_type: u8) -> Result<FieldValue<'a>, WireError> {
        match wire_type {
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| WireError::Truncated { field })?;
                Ok(FieldValue::Bytes(self.take(len, field)?))
            }
            0 => Ok(FieldValue::Varint(self.varint()?)),
            1 => {
                let b = self.take(8, field)?;
                Ok(FieldValue::Fixed64(u64::from_le_bytes(
                    b.try_into().expect("8 bytes"),
                )))
            }
            wire_type => self.fixed32_or_group(field, wire_type),
        }
    }

    fn fixed32_or_group(&mut self, field: u32, wire_type: u8) -> Result<FieldValue<'a>, WireError> {
        let value = match wire_type {
            5 => {
                let b = self.take(4, field)?;
                FieldValue::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            3 => {
                self.skip_group(field)?;
                FieldValue::Group
            }
            wire_type => return Err(WireError::BadWireType { field, wire_type }),
        };
        Ok(value)
    }
}

/// When `buf` starts with length-delimited field `number` (1 to 15, whose key is one byte):
/// its payload and the bytes after it. None for anything else, which [`Fields`] reads.
#[inline]
pub(crate) fn leading_bytes(buf: &[u8], number: u8) -> Option<(&[u8], &[u8])> {
    debug_assert!((1..16).contains(&number));
    let (&key, rest) = buf.split_first()?;
    if key != number << 3 | 2 {
        return None;
    }
    // A length below 128 (one byte) is read here, in registers; a longer one takes the call.
    let (len, rest) = match rest {
        [len, rest @ ..] if *len < 0x80 => (usize::from(*len), rest),
        _ => long_length(rest)?,
    };
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// The length varint `buf` starts with, of two bytes or more, and the bytes after it.
#[inline(never)]
fn long_length(buf: &[u8]) -> Option<(usize, &[u8])> {
    let mut fields = Fields::new(buf);
    // The one-byte case was read by the caller.
    let len = usize::try_from(fields.long_varint().ok()?).ok()?;
    Some((len, fields.buf))
}

/// When `buf` starts with 64-bit field `number` (1 to 15): its value and the bytes after it.
#[inline]
pub(crate) fn leading_fixed64(buf: &[u8], number: u8) -> Option<(u64, &[u8])> {
    debug_assert!((1..16).contains(&number));
    match buf {
        [key, rest @ ..] if *key == number << 3 | 1 && rest.len() >= 8 => {
            let (value, rest) = rest.split_at(8);
            Some((u64::from_le_bytes(value.try_into().ok()?), rest))
        }
        _ => None,
    }
}

/// When `buf` starts with varint field `number` (1 to 15) of a value below 128 (one
/// byte): its value and the bytes after it.
#[inline]
pub(crate) fn leading_small_varint(buf: &[u8], number: u8) -> Option<(u8, &[u8])> {
    debug_assert!((1..16).contains(&number));
    match buf {
        [key, value, rest @ ..] if *key == number << 3 && *value < 0x80 => Some((*value, rest)),
        _ => None,
    }
}

/// Each occurrence of the length-delimited field `number` in a message, numbered from 0 in
/// wire order. The other fields are read past, so a malformed one is still an error.
pub(crate) fn occurrences(
    buf: &[u8],
    number: u32,
) -> impl Iterator<Item = Result<(usize, &[u8]), WireError>> {
    Fields::new(buf)
        .filter_map(move |field| match field {
            Ok((n, value)) if n == number => Some(value.bytes(number)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .enumerate()
        .map(|(index, bytes)| bytes.map(|bytes| (index, bytes)))
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, FieldValue<'a>), WireError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let item = self.field();
        if item.is_err() {
            self.buf = &[];
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_wire_type() {
        // field 1 varint 300, field 2 bytes "hi", field 3 fixed64 7, field 4 fixed32 9
        let buf = [
            0x08, 0xac, 0x02, 0x12, 0x02, b'h', b'i', 0x19, 7, 0, 0, 0, 0, 0, 0, 0, 0x25, 9, 0, 0,
            0,
        ];
        let fields: Vec<_> = Fields::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            fields,
            vec![
                (1, FieldValue::Varint(300)),
                (2, FieldValue::Bytes(b"hi")),
                (3, FieldValue::Fixed64(7)),
                (4, FieldValue::Fixed32(9)),
            ]
        );
    }

    #[test]
    fn reads_a_leading_length_delimited_field() {
        let buf = [0x0a, 0x02, b'h', b'i', 0x12, 0x00];
        assert_eq!(leading_bytes(&buf, 1), Some((&b"hi"[..], &buf[4..])));
        assert_eq!(leading_bytes(&buf[4..], 2), Some((&b""[..], &[][..])));
        // Another field, another wire type, a truncated payload or length: not read here.
        assert_eq!(leading_bytes(&buf, 2), None);
        assert_eq!(leading_bytes(&[0x08, 0x01], 1), None);
        assert_eq!(leading_bytes(&[0x0a, 0x03, b'h', b'i'], 1), None);
        assert_eq!(leading_bytes(&[0x0a, 0x80], 1), None);
        assert_eq!(leading_bytes(&[], 1), None);
        // A length of two bytes.
        let long = [[0x0a, 0x80, 0x01].as_slice(), &[b'x'; 128]].concat();
        assert_eq!(leading_bytes(&long, 1), Some((&long[3..], &[][..])));
    }

    #[test]
    fn skips_nested_groups() {
        // group 1 { varint 2; group 3 { } } then varint 4 = 5
        let buf = [0x0b, 0x10, 0x01, 0x1b, 0x1c, 0x0c, 0x20, 0x05];
        let fields: Vec<_> = Fields::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            fields,
            vec![(1, FieldValue::Group), (4, FieldValue::Varint(5))]
        );
    }

    #[test]
    fn rejects_truncation_and_bad_wire_types() {
        assert_eq!(
            Fields::new(&[0x12, 0x05, b'a']).next(),
            Some(Err(WireError::Truncated { field: 2 }))
        );
        assert_eq!(
            Fields::new(&[0x0c]).next(),
            Some(Err(WireError::BadWireType {
                field: 1,
                wire_type: 4
            }))
        );
        assert_eq!(
            Fields::new(&[0x0b, 0x08, 0x01]).next(),
            Some(Err(WireError::UnclosedGroup { field: 1 }))
        );
        assert_eq!(
            Fields::new(&[0x08, 0x80]).next(),
            Some(Err(WireError::TruncatedVarint))
        );
        assert_eq!(
            Fields::new(&[0x00, 0x01]).next(),
            Some(Err(WireError::ZeroFieldNumber))
        );
        assert_eq!(
            Fields::new(
                &[0x08; 1]
                    .iter()
                    .chain(&[0xff; 11])
                    .copied()
                    .collect::<Vec<_>>()
            )
            .next(),
            Some(Err(WireError::VarintTooLong))
        );
    }
}
