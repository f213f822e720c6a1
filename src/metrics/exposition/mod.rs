//! Renders a [`Snapshot`] for scrapers: Prometheus text 0.0.4, OpenMetrics 1.0 text, or
//! Prometheus's protobuf format (delimited `io.prometheus.client.MetricFamily` messages),
//! whichever the scraper's `Accept` header prefers ([`Encoding::negotiate`]). Histogram
//! series carry the slowest span of the scrape interval as exemplar (`trace_id`, `span_id`)
//! in OpenMetrics and protobuf.
//!
//! Every format reads what it says about a family from the same place: the family's
//! [`MetricSpec`] (name, help, label names, bucket bounds) and the snapshot's cells, listed
//! by [`families`].

mod accept;
mod protobuf;
mod text;

pub use text::render;

use crate::metrics::store::{Cell, MetricId, MetricSpec, Snapshot};

pub(crate) const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub(crate) const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub(crate) const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// The text formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

/// What a scrape is answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Text(Format),
    Protobuf,
}

impl Encoding {
    /// The encoding the Accept header prefers (see [`accept`]); text 0.0.4 without one.
    pub(crate) fn negotiate(accept: Option<&str>) -> Encoding {
        accept.map_or(Encoding::Text(Format::Text), accept::preferred)
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Encoding::Text(Format::Text) => TEXT_CONTENT_TYPE,
            Encoding::Text(Format::OpenMetrics) => OPENMETRICS_CONTENT_TYPE,
            Encoding::Protobuf => PROTOBUF_CONTENT_TYPE,
        }
    }
}

/// Renders `snapshot` into `out`, cleared first; its memory is reused.
pub fn render_into(out: &mut Vec<u8>, snapshot: &Snapshot, encoding: Encoding) {
    out.clear();
    match encoding {
        Encoding::Text(format) => {
            let mut text =
                String::from_utf8(std::mem::take(out)).expect("a cleared buffer is valid UTF-8");
            text::render_into(&mut text, snapshot, format);
            *out = text.into_bytes();
        }
        Encoding::Protobuf => protobuf::render_into(out, snapshot),
    }
}

/// The families that have series, in the snapshot's order, each with its id and its series
/// (label values in the order of the spec's label names, and cell) in label order.
fn families(
    snapshot: &Snapshot,
) -> impl Iterator<
    Item = (
        MetricId,
        &MetricSpec,
        impl Iterator<Item = (&[Box<str>], &Cell)>,
    ),
> {
    snapshot
        .metrics
        .iter()
        .enumerate()
        .filter_map(|(index, spec)| {
            let mut series = snapshot.cells(MetricId(index)).peekable();
            series.peek()?;
            Some((MetricId(index), spec, series))
        })
}

/// The label names of an exemplar's span ids, values in lowercase hex.
const TRACE_ID: &str = "trace_id";
const SPAN_ID: &str = "span_id";

/// Whether a count (an adjusted count may be a fraction) is a whole number that an integer
/// (`u64`) holds: written as one.
fn is_whole(count: f64) -> bool {
    count.fract() == 0.0 && count < u64::MAX as f64
}

/// `bytes` in lowercase hex, two digits a byte.
fn hex(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
}
