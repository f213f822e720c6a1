//! The bytes each endpoint receives: what arrived, when it can go on unchanged; otherwise the
//! decoded protobuf request (without the spans spanlens rejected), compressed as the endpoint
//! wants it.

use crate::config::forward::Compression;
use crate::otlp::body::{Arrived, Encoding};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::io::Write;

/// Forwarding may send what arrived as it is to an endpoint wanting `compression`.
fn reusable_for(arrived: &Arrived, compression: Compression) -> bool {
    !arrived.json
        && matches!(
            (arrived.encoding, compression),
            (Encoding::Identity, Compression::None)
                | (Encoding::Gzip, Compression::Gzip)
                | (Encoding::Zstd, Compression::Zstd)
        )
}

/// Builds the per-compression bodies of one request, each at most once.
pub(crate) struct Bodies<'a> {
    request: &'a [u8],
    arrived: &'a Arrived,
    /// The request without rejected spans, when some were rejected.
    filtered: Option<Vec<u8>>,
    built: Vec<(Compression, Bytes)>,
}

impl<'a> Bodies<'a> {
    /// `request` is the decoded protobuf request; `rejected` the indexes (in wire order over
    /// resource, scope and span) of spans spanlens rejected, ascending.
    pub(crate) fn new(request: &'a [u8], arrived: &'a Arrived, rejected: &[usize]) -> Bodies<'a> {
        Bodies {
            request,
            arrived,
            filtered: (!rejected.is_empty())
                .then(|| without_spans(request, rejected))
                .flatten(),
            built: Vec::new(),
        }
    }

    pub(crate) fn get(&mut self, compression: Compression) -> std::io::Result<Bytes> {
        if let Some((_, body)) = self.built.iter().find(|(c, _)| *c == compression) {
            return Ok(body.clone());
        }
        let body = match &self.filtered {
            None if reusable_for(self.arrived, compression) => self.arrived.raw.clone(),
            filtered => compress(filtered.as_deref().unwrap_or(self.request), compression)?,
        };
        self.built.push((compression, body.clone()));
        Ok(body)
    }
}

/// The request without the spans at `rejected`; None if prost cannot decode it (spanlens's
/// decoder reads less than prost validates), in which case the request goes on whole.
fn without_spans(request: &[u8], rejected: &[usize]) -> Option<Vec<u8>> {
    let mut decoded = ExportTraceServiceRequest::decode(request).ok()?;
    let mut index = 0;
    let mut rejected = rejected.iter().peekable();
    for rs in &mut decoded.resource_spans {
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|_| {
                let keep = rejected.next_if_eq(&&index).is_none();
                index += 1;
                keep
            });
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    decoded
        .resource_spans
        .retain(|rs| !rs.scope_spans.is_empty());
    Some(decoded.encode_to_vec())
}

fn compress(bytes: &[u8], compression: Compression) -> std::io::Result<Bytes> {
    Ok(Bytes::from(match compression {
        Compression::None => bytes.to_vec(),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(bytes.len() / 4),
                flate2::Compression::fast(),
            );
            encoder.write_all(bytes)?;
            encoder.finish()?
        }
        Compression::Zstd => zstd::bulk::compress(bytes, 1)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::body;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    /// Twelve spans with distinct span ids (1 to 12), over two services' resources.
    fn request() -> Vec<u8> {
        let resource = |service: &str| Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(service.into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let spans = |ids: std::ops::RangeInclusive<u8>| {
            ids.map(|id| Span {
                trace_id: vec![7; 16],
                span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
                name: format!("span-{id}"),
                start_time_unix_nano: 1_750_000_000_000_000_000,
                end_time_unix_nano: 1_750_000_000_000_000_000 + u64::from(id) * 1_000_000,
                ..Default::default()
            })
            .collect()
        };
        let resource_spans = |service: &str, ids| ResourceSpans {
            resource: Some(resource(service)),
            scope_spans: vec![ScopeSpans {
                spans: spans(ids),
                ..Default::default()
            }],
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![
                resource_spans("tasker-orchestration", 1..=5),
                resource_spans("tasker-rust-worker", 6..=12),
            ],
        }
        .encode_to_vec()
    }

    fn arrived(raw: &[u8], encoding: Encoding) -> Arrived {
        Arrived {
            raw: Bytes::copy_from_slice(raw),
            encoding,
            json: false,
        }
    }

    fn span_names(request: &[u8]) -> Vec<String> {
        let decoded = ExportTraceServiceRequest::decode(request).expect("decodes");
        decoded
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| s.span_id.iter().map(|b| format!("{b:02x}")).collect())
            .collect()
    }

    #[test]
    fn arrived_bytes_go_on_unchanged_when_the_compression_matches() {
        let request = request();
        let gz = compress(&request, Compression::Gzip).expect("gzip");
        let came = arrived(&gz, Encoding::Gzip);
        let mut bodies = Bodies::new(&request, &came, &[]);
        assert_eq!(bodies.get(Compression::Gzip).expect("body"), came.raw);
        let zstd = bodies.get(Compression::Zstd).expect("body");
        assert_eq!(
            body::decode(Encoding::Zstd, &zstd, 1 << 24).expect("zstd"),
            request
        );
        let plain = bodies.get(Compression::None).expect("body");
        assert_eq!(plain, request);
    }

    #[test]
    fn rejected_spans_are_left_out_and_the_rest_kept_in_order() {
        let request = request();
        let all = span_names(&request);
        assert!(all.len() >= 4, "{all:?}");
        let came = arrived(&request, Encoding::Identity);
        let mut bodies = Bodies::new(&request, &came, &[0, 2]);
        let body = bodies.get(Compression::None).expect("body");
        let mut expected = all.clone();
        expected.remove(2);
        expected.remove(0);
        assert_eq!(span_names(&body), expected);
    }

    #[test]
    fn json_is_forwarded_as_protobuf() {
        let request = request();
        let came = Arrived {
            raw: Bytes::from_static(b"{\"resourceSpans\":[]}"),
            encoding: Encoding::Identity,
            json: true,
        };
        let mut bodies = Bodies::new(&request, &came, &[]);
        assert_eq!(bodies.get(Compression::None).expect("body"), request);
    }
}
