//! OTLP trace requests decoded into borrowed views over the request bytes.
//!
//! This is the projection documented in `proto/spanlens_projection.proto`: only the fields
//! spanlens reads, with OTLP's field numbers. A request becomes three flat vectors (resources,
//! spans, attributes) of slices into the buffer: no per-span allocation. Fields the projection
//! does not read (scope, events, links, flags) are skipped over, not decoded.
//! [`Batch::decode_keeping`] goes one step further, as the pipeline does: span attributes
//! whose keys no rule, label, join or breakdown reads are skipped like unknown fields (their
//! value is neither parsed nor checked as UTF-8); only the message framing around them is.

use crate::collections::text::same;
use crate::otlp::wire::{
    Fields, WireError, leading_bytes, leading_fixed64, leading_small_varint, occurrences, string,
};
use std::fmt;
use std::ops::Range;
use thiserror::Error;

/// A request that is not a valid `ExportTraceServiceRequest`, with where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path}: {error}")]
pub struct DecodeError {
    pub(crate) path: String,
    pub(crate) error: WireError,
}

/// An attribute value, borrowed. Arrays and key-value lists stay encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AnyValue<'a> {
    Empty,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    Array(&'a [u8]),
    KvList(&'a [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attribute<'a> {
    pub key: &'a str,
    pub value: AnyValue<'a>,
}

/// OTLP `SpanKind` values.
pub(crate) mod span_kind {
    pub(crate) const NAMES: [&str; 6] = [
        "SPAN_KIND_UNSPECIFIED",
        "SPAN_KIND_INTERNAL",
        "SPAN_KIND_SERVER",
        "SPAN_KIND_CLIENT",
        "SPAN_KIND_PRODUCER",
        "SPAN_KIND_CONSUMER",
    ];
}

/// OTLP `Status.StatusCode` values.
pub(crate) mod status_code {
    pub(crate) const ERROR: i32 = 2;
    pub(crate) const NAMES: [&str; 3] =
        ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];
}

/// The name of an OTLP enum value; an unknown value reads as the first (unspecified) name.
fn enum_name(names: &[&'static str], value: i32) -> &'static str {
    usize::try_from(value)
        .ok()
        .and_then(|i| names.get(i))
        .unwrap_or(&names[0])
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResourceView<'a> {
    /// `service.name`, or None when the resource does not carry it as a string.
    pub service_name: Option<&'a str>,
    attributes: Range<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpanView<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    /// The W3C tracestate, as sent: read for its sampling threshold (see
    /// [`crate::otlp::sampling`]), never checked as UTF-8.
    pub trace_state: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub name: &'a str,
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub status_code: i32,
    /// Index of the resource in [`Batch::resources`].
    pub resource: usize,
    /// Where the span sits in the request: (resource_spans, scope_spans, spans) indexes.
    pub position: (usize, usize, usize),
    attributes: Range<usize>,
}

impl SpanView<'_> {
    pub fn duration_nanos(&self) -> u64 {
        self.end_time_unix_nano
            .saturating_sub(self.start_time_unix_nano)
    }

    pub fn kind_name(&self) -> &'static str {
        enum_name(&span_kind::NAMES, self.kind)
    }

    pub fn status_name(&self) -> &'static str {
        enum_name(&status_code::NAMES, self.status_code)
    }

    pub fn is_error(&self) -> bool {
        self.status_code == status_code::ERROR
    }
}

/// Why a well-formed span cannot be used. The rest of its request is still accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanProblem {
    TraceIdLength(usize),
    TraceIdZero,
    SpanIdLength(usize),
    SpanIdZero,
    ParentSpanIdLength(usize),
    MissingStartTime,
    MissingEndTime,
    EndBeforeStart,
}

impl SpanProblem {
    /// Short, stable name used as the `reason` label of refused-span counters.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            SpanProblem::TraceIdLength(_) | SpanProblem::TraceIdZero => "invalid_trace_id",
            SpanProblem::SpanIdLength(_) | SpanProblem::SpanIdZero => "invalid_span_id",
            SpanProblem::ParentSpanIdLength(_) => "invalid_parent_span_id",
            SpanProblem::MissingStartTime | SpanProblem::MissingEndTime => "missing_timestamp",
            SpanProblem::EndBeforeStart => "end_before_start",
        }
    }
}

impl fmt::Display for SpanProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpanProblem::TraceIdLength(n) => write!(f, "trace_id is {n} bytes, must be 16"),
            SpanProblem::TraceIdZero => f.write_str("trace_id is all zeros"),
            SpanProblem::SpanIdLength(n) => write!(f, "span_id is {n} bytes, must be 8"),
            SpanProblem::SpanIdZero => f.write_str("span_id is all zeros"),
            SpanProblem::ParentSpanIdLength(n) => {
                write!(f, "parent_span_id is {n} bytes, must be 0 or 8")
            }
            SpanProblem::MissingStartTime => f.write_str("start_time_unix_nano is missing"),
            SpanProblem::MissingEndTime => f.write_str("end_time_unix_nano is missing"),
            SpanProblem::EndBeforeStart => {
                f.write_str("end_time_unix_nano is before start_time_unix_nano")
            }
        }
    }
}

impl SpanView<'_> {
    /// Checks what every metric needs: valid ids and both timestamps, in order.
    pub fn problem(&self) -> Option<SpanProblem> {
        let zero = |b: &[u8]| b.iter().all(|&x| x == 0);
        if self.trace_id.len() != 16 {
            Some(SpanProblem::TraceIdLength(self.trace_id.len()))
        } else if zero(self.trace_id) {
            Some(SpanProblem::TraceIdZero)
        } else if self.span_id.len() != 8 {
            Some(SpanProblem::SpanIdLength(self.span_id.len()))
        } else if zero(self.span_id) {
            Some(SpanProblem::SpanIdZero)
        } else if !(self.parent_span_id.is_empty() || self.parent_span_id.len() == 8) {
            Some(SpanProblem::ParentSpanIdLength(self.parent_span_id.len()))
        } else if self.start_time_unix_nano == 0 {
            Some(SpanProblem::MissingStartTime)
        } else if self.end_time_unix_nano == 0 {
            Some(SpanProblem::MissingEndTime)
        } else if self.end_time_unix_nano < self.start_time_unix_nano {
            Some(SpanProblem::EndBeforeStart)
        } else {
            None
        }
    }
}

/// The span attribute keys a [`Batch::decode_keeping`] keeps.
#[derive(Debug, Clone)]
pub struct AttributeKeys {
    keys: Vec<Box<str>>,
    /// By [`mark`]: [`NO_KEY`] when no kept key has it, which is what most keys a span
    /// carries (and no rule reads) find; the kept key's index plus one when one has it; or
    /// [`SEVERAL_KEYS`]. A key is found with one comparison, not one per kept key.
    by_mark: [u8; 256],
}

const NO_KEY: u8 = 0;
const SEVERAL_KEYS: u8 = u8::MAX;

impl Default for AttributeKeys {
    fn default() -> AttributeKeys {
        AttributeKeys::new([])
    }
}

impl AttributeKeys {
    pub fn new<'k>(keys: impl IntoIterator<Item = &'k str>) -> AttributeKeys {
        let mut keys: Vec<Box<str>> = keys.into_iter().map(Box::from).collect();
        keys.sort();
        keys.dedup();
        let mut by_mark = [NO_KEY; 256];
        for (i, key) in keys.iter().enumerate() {
            let entry = &mut by_mark[mark(key.as_bytes())];
            *entry = match u8::try_from(i + 1) {
                Ok(index) if *entry == NO_KEY && index != SEVERAL_KEYS => index,
                _ => SEVERAL_KEYS,
            };
        }
        AttributeKeys { keys, by_mark }
    }

    #[cfg(test)]
    pub(crate) fn keeps(&self, key: &str) -> bool {
        self.find(key.as_bytes()).is_some()
    }

    /// The kept key equal to `key`, if any: a key read from a request is used as this one,
    /// without checking it as UTF-8 again.
    #[inline(always)]
    fn find(&self, key: &[u8]) -> Option<&str> {
        let matches = |k: &&str| same(k.as_bytes(), key);
        match self.by_mark[mark(key)] {
            NO_KEY => None,
            // Most marks name one key: compared inline, not by a search of a slice of one
            // (an out-of-line call on the hottest path of decode).
            SEVERAL_KEYS => self.keys.iter().map(|k| &**k).find(matches),
            one => Some(&*self.keys[usize::from(one - 1)]).filter(matches),
        }
    }
}

/// A key's length, first and last byte, mixed into 0..256.
#[inline(always)]
fn mark(key: &[u8]) -> usize {
    let (first, last) = (key.first(), key.last());
    let mixed = key.len().wrapping_mul(0x9e)
        ^ usize::from(first.copied().unwrap_or(0)) << 2
        ^ usize::from(last.copied().unwrap_or(0));
    mixed & 255
}

/// One decoded request.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    pub resources: Vec<ResourceView<'a>>,
    pub spans: Vec<SpanView<'a>>,
    attributes: Vec<Attribute<'a>>,
}

impl<'a> Batch<'a> {
    pub fn span_attributes(&self, span: &SpanView<'a>) -> &[Attribute<'a>] {
        &self.attributes[span.attributes.clone()]
    }

    pub fn resource_attributes(&self, resource: &ResourceView<'a>) -> &[Attribute<'a>] {
        &self.attributes[resource.attributes.clone()]
    }

    /// The most the views of a request of `len` bytes take: every resource, span and
    /// attribute is a message of at least two bytes (its tag and length) on the wire, each
    /// list grows by pushing from the capacity `decode` gives it.
    pub(crate) fn bytes_bound(len: usize) -> usize {
        use crate::collections::sizes::{exact, grown};
        use std::mem::size_of;
        let view = (size_of::<SpanView>())
            .max(size_of::<ResourceView>())
            .max(size_of::<Attribute>());
        grown(len / 2, view)
            + exact(len / 256, size_of::<SpanView>())
            + exact(len / 32, size_of::<Attribute>())
    }

    /// Decodes an `ExportTraceServiceRequest`, every attribute included.
    pub fn decode(buf: &'a [u8]) -> Result<Batch<'a>, DecodeError> {
        Self::decode_with(buf, None)
    }

    /// Decodes an `ExportTraceServiceRequest`, keeping only the span attributes with these
    /// keys (resource attributes are all kept).
    pub fn decode_keeping(
        buf: &'a [u8],
        keys: &'a AttributeKeys,
    ) -> Result<Batch<'a>, DecodeError> {
        Self::decode_with(buf, Some(keys))
    }

    fn decode_with(
        buf: &'a [u8],
        keep: Option<&'a AttributeKeys>,
    ) -> Result<Batch<'a>, DecodeError> {
        let mut batch = Batch {
            spans: Vec::with_capacity(buf.len() / 256),
            attributes: Vec::with_capacity(buf.len() / 32),
            ..Batch::default()
        };
        let mut path = Path::default();
        batch
            .request(buf, &mut path, keep)
            .map_err(|error| DecodeError {
                path: path.to_string(),
                error,
            })?;
        Ok(batch)
    }

    fn request(
        &mut self,
        buf: &'a [u8],
        path: &mut Path,
        keep: Option<&'a AttributeKeys>,
    ) -> Result<(), WireError> {
        for occurrence in occurrences(buf, 1) {
            let (rs_index, resource_spans) = occurrence?;
            path.set(Level::ResourceSpans, rs_index);
            self.resource_spans(resource_spans, rs_index, path, keep)?;
        }
        Ok(())
    }

    fn resource_spans(
        &mut self,
        buf: &'a [u8],
        rs_index: usize,
        path: &mut Path,
        keep: Option<&'a AttributeKeys>,
    ) -> Result<(), WireError> {
        // The resource may follow its scope_spans on the wire; find it first.
        let resource_index = self.resources.len();
        let mut resource = ResourceView {
            service_name: None,
            attributes: self.attributes.len()..self.attributes.len(),
        };
        for occurrence in occurrences(buf, 1) {
            path.set(Level::Resource, 0);
            self.resource(occurrence?.1, &mut resource, path)?;
        }
        self.resources.push(resource);
        for occurrence in occurrences(buf, 2) {
            let (ss_index, scope_spans) = occurrence?;
            path.set(Level::ScopeSpans, ss_index);
            let position = (resource_index, rs_index, ss_index);
            self.scope_spans(scope_spans, position, path, keep)?;
        }
        Ok(())
    }

    fn resource(
        &mut self,
        buf: &'a [u8],
        resource: &mut ResourceView<'a>,
        path: &mut Path,
    ) -> Result<(), WireError> {
        // A repeated `resource` field merges; attributes accumulate.
        let start = self.attributes.len();
        for occurrence in occurrences(buf, 1) {
            let (attr_index, key_value_bytes) = occurrence?;
            path.set(Level::Attribute, attr_index);
            let attribute = key_value(key_value_bytes)?;
            if attribute.key == "service.name"
                && let AnyValue::Str(name) = attribute.value
            {
                resource.service_name = Some(name);
            }
            self.attributes.push(attribute);
        }
        if resource.attributes.is_empty() {
            resource.attributes = start..self.attributes.len();
        } else {
            resource.attributes.end = self.attributes.len();
        }
        path.pop_to(Level::Resource);
        Ok(())
    }

    fn scope_spans(
        &mut self,
        buf: &'a [u8],
        (resource, rs_index, ss_index): (usize, usize, usize),
        path: &mut Path,
        keep: Option<&'a AttributeKeys>,
    ) -> Result<(), WireError> {
        let mut span_index = 0;
        for field in Fields::new(buf) {
            let (number, value) = field?;
            if number == 2 {
                let position = (rs_index, ss_index, span_index);
                let span = value
                    .bytes(2)
                    .and_then(|buf| self.span(buf, resource, position, path, keep))
                    // Spans and their attributes enter the path only when wrong.
                    .inspect_err(|_| path.at(Level::Span, span_index))?;
                self.spans.push(span);
                span_index += 1;
            }
        }
        Ok(())
    }

    fn span(
        &mut self,
        buf: &'a [u8],
        resource: usize,
        position: (usize, usize, usize),
        path: &mut Path,
        keep: Option<&'a AttributeKeys>,
    ) -> Result<SpanView<'a>, WireError> {
        let start = self.attributes.len();
        let mut span = SpanView {
            trace_id: &[],
            span_id: &[],
            trace_state: &[],
            parent_span_id: &[],
            name: "",
            kind: 0,
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
            status_code: 0,
            resource,
            position,
            attributes: start..start,
        };
        let mut attr_index = 0;
        let rest = self.span_in_field_order(buf, &mut span, path, keep, &mut attr_index)?;
        for field in Fields::new(rest) {
            let (number, value) = field?;
            match number {
                1 => span.trace_id = value.bytes(1)?,
                2 => span.span_id = value.bytes(2)?,
                3 => span.trace_state = value.bytes(3)?,
                4 => span.parent_span_id = value.bytes(4)?,
                5 => span.name = value.string(5)?,
                6 => span.kind = value.varint(6)? as i32,
                7 => span.start_time_unix_nano = value.fixed64(7)?,
                8 => span.end_time_unix_nano = value.fixed64(8)?,
                9 => self.span_attribute(value.bytes(9), path, keep, &mut attr_index)?,
                // Repeated messages merge, as in prost: a later status without a
                // code keeps the earlier code.
                15 => span.status_code = status(value.bytes(15)?, span.status_code)?,
                _ => {}
            }
        }
        span.attributes = start..self.attributes.len();
        Ok(span)
    }

    /// Reads the leading fields of a span that come as exporters write them, in field order
    /// (ids, tracestate, name, kind, times, then attributes), each compared with its expected key
    /// instead of going through the general field loop and its jump on the field number;
    /// returns the bytes from the first field that is not the next expected one (status,
    /// say), which the loop reads. Any field it does not read as expected, malformed ones
    /// included, is left to the loop: fields are read in order either way, so the span is
    /// the same.
    #[inline(always)]
    fn span_in_field_order(
        &mut self,
        mut buf: &'a [u8],
        span: &mut SpanView<'a>,
        path: &mut Path,
        keep: Option<&'a AttributeKeys>,
        attr_index: &mut usize,
    ) -> Result<&'a [u8], WireError> {
        for (number, id) in [
            (1, &mut span.trace_id),
            (2, &mut span.span_id),
            (3, &mut span.trace_state),
            (4, &mut span.parent_span_id),
        ] {
            if let Some((value, rest)) = leading_bytes(buf, number) {
                *id = value;
                buf = rest;
            }
        }
        if let Some((name, rest)) = leading_bytes(buf, 5)
            && let Ok(name) = string(name, 5)
        {
            span.name = name;
            buf = rest;
        }
        if let Some((kind, rest)) = leading_small_varint(buf, 6) {
            span.kind = i32::from(kind);
            buf = rest;
        }
        if let Some((start, rest)) = leading_fixed64(buf, 7) {
            span.start_time_unix_nano = start;
            buf = rest;
        }
        if let Some((end, rest)) = leading_fixed64(buf, 8) {
            span.end_time_unix_nano = end;
            buf = rest;
        }
        while let Some((attribute, rest)) = leading_bytes(buf, 9) {
            self.span_attribute(Ok(attribute), path, keep, attr_index)?;
            buf = rest;
        }
        Ok(buf)
    }

    /// Reads span attribute number `attr_index`, the payload of its field (kept if `keep`
    /// keeps its key), and counts it; an error names the attribute.
    #[inline(always)]
    fn span_attribute(
        &mut self,
        field: Result<&'a [u8], WireError>,
        path: &mut Path,
        keep: Option<&'a AttributeKeys>,
        attr_index: &mut usize,
    ) -> Result<(), WireError> {
        // A match, not a closure: the closure was a function of its own, called for each
        // attribute.
        let read = match (field, keep) {
            (Ok(buf), Some(keys)) => push_kept_attribute(buf, keys, &mut self.attributes),
            (Ok(buf), None) => key_value(buf).map(|a| self.attributes.push(a)),
            (Err(e), _) => Err(e),
        };
        read.inspect_err(|_| path.at(Level::Attribute, *attr_index))?;
        *attr_index += 1;
        Ok(())
    }
}

fn status(buf: &[u8], mut code: i32) -> Result<i32, WireError> {
    for field in Fields::new(buf) {
        let (number, value) = field?;
        match number {
            2 => {
                value.string(2)?;
            }
            3 => code = value.varint(3)? as i32,
            _ => {}
        }
    }
    Ok(code)
}

/// A KeyValue as it is nearly always encoded, its key then its value, each once: both
/// payloads, read without the general field loop. None for any other layout.
#[inline]
fn key_then_value(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (key, rest) = leading_bytes(buf, 1)?;
    match leading_bytes(rest, 2)? {
        (value, []) => Some((key, value)),
        _ => None,
    }
}

/// Pushes the attribute in `buf` if `keys` keeps its key, which is then `keys`' own. A
/// string value, as nearly every attribute has, is pushed where it is read: a value that
/// took the same path as the others went through memory, and reading it back stalled on
/// the stores that wrote it (visible in `perf annotate` of decode).
#[inline(always)]
fn push_kept_attribute<'a>(
    buf: &'a [u8],
    keys: &'a AttributeKeys,
    attributes: &mut Vec<Attribute<'a>>,
) -> Result<(), WireError> {
    let Some((key, value)) = key_then_value(buf) else {
        return push_kept_in_other_layout(buf, keys, attributes);
    };
    let Some(key) = keys.find(key) else {
        return Ok(());
    };
    let value = match lone_string(value) {
        Some(text) => AnyValue::Str(string(text, 1)?),
        None => return kept_other_value(key, value, attributes),
    };
    attributes.push(Attribute { key, value });
    Ok(())
}

/// [`push_kept_attribute`] of a KeyValue not laid out as its key then its value: read by
/// the general loop (the last key wins).
#[inline(never)]
fn push_kept_in_other_layout<'a>(
    buf: &'a [u8],
    keys: &'a AttributeKeys,
    attributes: &mut Vec<Attribute<'a>>,
) -> Result<(), WireError> {
    if keys.find(key_bytes(buf)?).is_some() {
        attributes.push(key_value(buf)?);
    }
    Ok(())
}

/// [`push_kept_attribute`] of a value that is not a string alone.
#[inline(never)]
fn kept_other_value<'a>(
    key: &'a str,
    value: &'a [u8],
    attributes: &mut Vec<Attribute<'a>>,
) -> Result<(), WireError> {
    let value = any_value(value, AnyValue::Empty)?;
    attributes.push(Attribute { key, value });
    Ok(())
}

/// The key of an encoded KeyValue, unchecked (the last occurrence wins, as in a full decode).
fn key_bytes(buf: &[u8]) -> Result<&[u8], WireError> {
    occurrences(buf, 1).try_fold(&[][..], |_, occurrence| occurrence.map(|(_, key)| key))
}

fn key_value(buf: &[u8]) -> Result<Attribute<'_>, WireError> {
    if let Some((key, value)) = key_then_value(buf) {
        return Ok(Attribute {
            key: string(key, 1)?,
            value: any_value(value, AnyValue::Empty)?,
        });
    }
    let mut attribute = Attribute {
        key: "",
        value: AnyValue::Empty,
    };
    for field in Fields::new(buf) {
        let (number, value) = field?;
        match number {
            1 => attribute.key = value.string(1)?,
            2 => attribute.value = any_value(value.bytes(2)?, attribute.value)?,
            _ => {}
        }
    }
    Ok(attribute)
}

/// The payload of an encoded AnyValue that holds a string and nothing else, as nearly every
/// attribute value does; None for any other layout.
#[inline(always)]
fn lone_string(buf: &[u8]) -> Option<&[u8]> {
    match leading_bytes(buf, 1) {
        Some((text, [])) => Some(text),
        _ => None,
    }
}

/// Reads an AnyValue; `result` is the value of an earlier occurrence it merges over.
fn any_value<'a>(buf: &'a [u8], mut result: AnyValue<'a>) -> Result<AnyValue<'a>, WireError> {
    if let Some(text) = lone_string(buf) {
        return Ok(AnyValue::Str(string(text, 1)?));
    }
    for field in Fields::new(buf) {
        let (number, value) = field?;
        result = match number {
            1 => AnyValue::Str(value.string(1)?),
            2 => AnyValue::Bool(value.varint(2)? != 0),
            3 => AnyValue::Int(value.varint(3)? as i64),
            4 => AnyValue::Double(f64::from_bits(value.fixed64(4)?)),
            5 => AnyValue::Array(value.bytes(5)?),
            6 => AnyValue::KvList(value.bytes(6)?),
            7 => AnyValue::Bytes(value.bytes(7)?),
            _ => result,
        };
    }
    Ok(result)
}

/// Where the decoder is, kept as indexes and printed only when something is wrong.
#[derive(Default)]
struct Path {
    indexes: [Option<usize>; 5],
}

#[derive(Clone, Copy)]
enum Level {
    ResourceSpans = 0,
    Resource = 1,
    ScopeSpans = 2,
    Span = 3,
    Attribute = 4,
}

impl Path {
    fn set(&mut self, level: Level, index: usize) {
        let level = level as usize;
        self.indexes[level] = Some(index);
        for deeper in &mut self.indexes[level + 1..] {
            *deeper = None;
        }
        if level == Level::Resource as usize {
            // resource and scope_spans are siblings under resource_spans.
            self.indexes[Level::ScopeSpans as usize] = None;
        }
    }

    /// Names the index at `level` of the message a decoding error is in, keeping the
    /// deeper levels the error set on its way out: the levels of spans and their
    /// attributes, thousands a request, are set only so.
    fn at(&mut self, level: Level, index: usize) {
        self.indexes[level as usize] = Some(index);
    }

    fn pop_to(&mut self, level: Level) {
        for deeper in &mut self.indexes[level as usize + 1..] {
            *deeper = None;
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [rs, res, ss, span, attr] = self.indexes;
        f.write_str("request")?;
        if let Some(i) = rs {
            write!(f, ".resource_spans[{i}]")?;
        }
        if res.is_some() && ss.is_none() {
            f.write_str(".resource")?;
        }
        if let Some(i) = ss {
            write!(f, ".scope_spans[{i}]")?;
        }
        if let Some(i) = span {
            write!(f, ".spans[{i}]")?;
        }
        if let Some(i) = attr {
            write!(f, ".attributes[{i}]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue as PbAny, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(PbAny { value: Some(value) }),
            ..Default::default()
        }
    }

    fn request() -> Vec<u8> {
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "read_messages".into(),
            kind: 1,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 16_000_000,
            attributes: vec![
                kv(
                    "queue",
                    any_value::Value::StringValue("worker_a_queue".into()),
                ),
                kv("limit", any_value::Value::IntValue(-3)),
            ],
            status: Some(Status {
                code: 2,
                message: "boom".into(),
            }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv(
                        "service.name",
                        any_value::Value::StringValue("tasker-ruby-worker".into()),
                    )],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span.clone(), span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn decode_keeping_skips_unlisted_span_attributes_unread() {
        let bytes = request();
        let keys = AttributeKeys::new(["queue", "absent"]);
        let batch = Batch::decode_keeping(&bytes, &keys).unwrap();
        for span in &batch.spans {
            assert_eq!(
                batch.span_attributes(span),
                &[Attribute {
                    key: "queue",
                    value: AnyValue::Str("worker_a_queue")
                }]
            );
        }
        // Resource attributes are all kept.
        assert_eq!(batch.resource_attributes(&batch.resources[0]).len(), 1);
        assert_eq!(batch.resources[0].service_name, Some("tasker-ruby-worker"));

        // A value that is not UTF-8: an error where the attribute is read, skipped elsewhere.
        let bad = |key: &str| {
            let mut request = ExportTraceServiceRequest::decode(&request()[..]).unwrap();
            let span = &mut request.resource_spans[0].scope_spans[0].spans[0];
            span.attributes = vec![kv(key, any_value::Value::StringValue("x".into()))];
            let mut bytes = request.encode_to_vec();
            let at = bytes.iter().rposition(|&b| b == b'x').unwrap();
            bytes[at] = 0xff;
            bytes
        };
        assert!(Batch::decode_keeping(&bad("limit"), &keys).is_ok());
        let error = Batch::decode_keeping(&bad("queue"), &keys).unwrap_err();
        assert_eq!(error.error, WireError::InvalidUtf8 { field: 1 });
        assert!(Batch::decode(&bad("limit")).is_err());
    }

    #[test]
    fn key_values_in_any_layout_read_as_prost_reads_them() {
        let str_value = |s: &str| Some(any_value::Value::StringValue(s.into()));
        let cases: [(&[u8], &str, AnyValue, Option<any_value::Value>); 5] = [
            // The usual layout, read without the field loop.
            (
                &[0x0a, 1, b'k', 0x12, 3, 0x0a, 1, b'v'],
                "k",
                AnyValue::Str("v"),
                str_value("v"),
            ),
            // Value first.
            (
                &[0x12, 3, 0x0a, 1, b'v', 0x0a, 1, b'k'],
                "k",
                AnyValue::Str("v"),
                str_value("v"),
            ),
            // A repeated key: the last wins.
            (
                &[0x0a, 1, b'a', 0x12, 3, 0x0a, 1, b'x', 0x0a, 1, b'b'],
                "b",
                AnyValue::Str("x"),
                str_value("x"),
            ),
            // A value whose string is followed by an int: the last wins.
            (
                &[0x0a, 1, b'k', 0x12, 5, 0x0a, 1, b'x', 0x18, 5],
                "k",
                AnyValue::Int(5),
                Some(any_value::Value::IntValue(5)),
            ),
            // A repeated value merges.
            (
                &[0x0a, 1, b'k', 0x12, 3, 0x0a, 1, b'x', 0x12, 2, 0x18, 7],
                "k",
                AnyValue::Int(7),
                Some(any_value::Value::IntValue(7)),
            ),
        ];
        for (bytes, key, value, full) in cases {
            let prost = KeyValue::decode(bytes).unwrap();
            assert_eq!(
                (prost.key.as_str(), prost.value.and_then(|v| v.value)),
                (key, full)
            );
            let ours = key_value(bytes).unwrap();
            assert_eq!((ours.key, ours.value), (key, value), "{bytes:?}");
            assert_eq!(key_bytes(bytes).unwrap(), key.as_bytes());
        }
        // Invalid UTF-8 in the usual layout is still refused, key or value.
        let error = WireError::InvalidUtf8 { field: 1 };
        assert_eq!(key_value(&[0x0a, 1, 0xff, 0x12, 0]), Err(error.clone()));
        assert_eq!(key_value(&[0x0a, 0, 0x12, 3, 0x0a, 1, 0xff]), Err(error));
    }

    #[test]
    fn attribute_keys_match_whole_keys_only() {
        let keys = AttributeKeys::new(["tasker.step_uuid", "tasker.task_uuid", "q", ""]);
        for key in ["tasker.step_uuid", "tasker.task_uuid", "q", ""] {
            assert_eq!(keys.find(key.as_bytes()), Some(key));
        }
        // Same first eight bytes, or same length, or a prefix: not kept.
        for key in [
            "tasker.step_uuiD",
            "tasker.correlation_id",
            "tasker.s",
            "qq",
            "Q",
            "q\0",
        ] {
            assert_eq!(keys.find(key.as_bytes()), None, "{key}");
        }
    }

    /// More kept keys than a mark's entry can number: every one is still found.
    #[test]
    fn attribute_keys_find_each_of_hundreds() {
        let names: Vec<String> = (0..600).map(|i| format!("key.{i}")).collect();
        let keys = AttributeKeys::new(names.iter().map(String::as_str));
        for name in &names {
            assert_eq!(keys.find(name.as_bytes()), Some(name.as_str()));
        }
        for absent in ["key.600", "key.-1", "key.", "key.0 "] {
            assert_eq!(keys.find(absent.as_bytes()), None, "{absent}");
        }
    }

    #[test]
    fn decodes_spans_resources_and_attributes() {
        let bytes = request();
        let batch = Batch::decode(&bytes).unwrap();
        assert_eq!(batch.spans.len(), 2);
        let span = &batch.spans[1];
        assert_eq!(span.name, "read_messages");
        assert_eq!(span.position, (0, 0, 1));
        assert_eq!(span.duration_nanos(), 15_999_000);
        assert_eq!(span.kind_name(), "SPAN_KIND_INTERNAL");
        assert!(span.is_error());
        assert_eq!(
            batch.span_attributes(span),
            &[
                Attribute {
                    key: "queue",
                    value: AnyValue::Str("worker_a_queue")
                },
                Attribute {
                    key: "limit",
                    value: AnyValue::Int(-3)
                }
            ]
        );
        let resource = &batch.resources[span.resource];
        assert_eq!(resource.service_name, Some("tasker-ruby-worker"));
        assert_eq!(batch.resource_attributes(resource).len(), 1);
        assert_eq!(span.problem(), None);
    }

    /// A length-delimited field, encoded.
    fn field(number: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2];
        prost::encoding::encode_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn span_fields_in_any_order_or_repeated_read_as_prost_reads_them() {
        let piece = |span: Span| span.encode_to_vec();
        let mut pieces = vec![
            piece(Span {
                trace_id: vec![1; 16],
                ..Default::default()
            }),
            piece(Span {
                span_id: vec![2; 8],
                ..Default::default()
            }),
            piece(Span {
                parent_span_id: vec![3; 8],
                ..Default::default()
            }),
            piece(Span {
                name: "submit_result".into(),
                ..Default::default()
            }),
            piece(Span {
                kind: 3,
                ..Default::default()
            }),
            piece(Span {
                start_time_unix_nano: 5,
                ..Default::default()
            }),
            piece(Span {
                end_time_unix_nano: 9,
                ..Default::default()
            }),
            piece(Span {
                attributes: vec![kv("queue", any_value::Value::StringValue("q".into()))],
                ..Default::default()
            }),
            piece(Span {
                attributes: vec![kv("limit", any_value::Value::IntValue(7))],
                ..Default::default()
            }),
            piece(Span {
                status: Some(Status {
                    code: 2,
                    message: String::new(),
                }),
                ..Default::default()
            }),
        ];
        // Repeated fields: the last name, kind and time win; a second kind of 300 is two
        // bytes long.
        pieces.push(piece(Span {
            name: "process_result".into(),
            kind: 300,
            end_time_unix_nano: 11,
            ..Default::default()
        }));
        let keys = AttributeKeys::new(["queue", "limit"]);
        for order in 0..2 * pieces.len() {
            let mut ordered = pieces.clone();
            ordered.rotate_left(order % pieces.len());
            if order >= pieces.len() {
                ordered.reverse();
            }
            let span = ordered.concat();
            let bytes = field(1, &field(2, &field(2, &span)));
            let theirs = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
            let theirs = &theirs.resource_spans[0].scope_spans[0].spans[0];
            for batch in [
                Batch::decode(&bytes).unwrap(),
                Batch::decode_keeping(&bytes, &keys).unwrap(),
            ] {
                let ours = &batch.spans[0];
                assert_eq!(ours.trace_id, theirs.trace_id, "{order}");
                assert_eq!(ours.span_id, theirs.span_id, "{order}");
                assert_eq!(ours.parent_span_id, theirs.parent_span_id, "{order}");
                assert_eq!(ours.name, theirs.name, "{order}");
                assert_eq!(ours.kind, theirs.kind, "{order}");
                assert_eq!(ours.start_time_unix_nano, theirs.start_time_unix_nano);
                assert_eq!(ours.end_time_unix_nano, theirs.end_time_unix_nano);
                assert_eq!(ours.status_code, 2, "{order}");
                let keys: Vec<&str> = batch.span_attributes(ours).iter().map(|a| a.key).collect();
                let expected: Vec<&str> = theirs.attributes.iter().map(|a| &*a.key).collect();
                assert_eq!(keys, expected, "{order}");
            }
        }
    }

    #[test]
    fn errors_name_the_place() {
        let mut bytes = request();
        bytes.truncate(bytes.len() - 3);
        let err = Batch::decode(&bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "request: field 1 ends past the end of its message"
        );
        let err = Batch::decode(b"\x0a\x03\x12\x01\xff").unwrap_err();
        assert_eq!(
            err.to_string(),
            "request.resource_spans[0].scope_spans[0]: truncated varint"
        );
        // A span's attribute, and a span's own field after its attributes.
        let field = |key: u8, payload: &[u8]| [&[key, payload.len() as u8], payload].concat();
        let request = |spans: &[&[u8]]| {
            let spans: Vec<u8> = spans.iter().flat_map(|s| field(0x12, s)).collect();
            field(0x0a, &field(0x12, &spans))
        };
        let (good, bad) = (field(0x4a, b"\x0a\x01a"), field(0x4a, b"\x0a\x01\xff"));
        let err = Batch::decode(&request(&[b"", &[good.clone(), bad].concat()])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "request.resource_spans[0].scope_spans[0].spans[1].attributes[1]: \
             field 1 is not valid UTF-8"
        );
        let truncated_status = field(0x7a, b"\x18");
        let err = Batch::decode(&request(&[&[good, truncated_status].concat()])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "request.resource_spans[0].scope_spans[0].spans[0]: truncated varint"
        );
    }

    #[test]
    fn span_problems() {
        let bytes = request();
        let batch = Batch::decode(&bytes).unwrap();
        let mut span = batch.spans[0].clone();
        span.trace_id = &[1; 5];
        assert_eq!(span.problem(), Some(SpanProblem::TraceIdLength(5)));
        span.trace_id = &[1; 16];
        span.span_id = &[0; 8];
        assert_eq!(span.problem(), Some(SpanProblem::SpanIdZero));
        span.span_id = &[3; 8];
        span.end_time_unix_nano = 0;
        assert_eq!(span.problem().unwrap().reason(), "missing_timestamp");
    }
}
