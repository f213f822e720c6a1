//! `spanlens replay`: the same analysis offline. Reads OTLP/JSON files (one export request
//! per line, as the OpenTelemetry Collector's file exporter writes them, or one request per
//! file) and Jaeger query API responses (`/api/traces`), runs them through the pipeline, and
//! reports exact per-stage and derived percentiles.

use crate::otlp::Protocol;
use crate::otlp::json;
use crate::pipeline::Pipeline;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message;
use serde_json::Value;
use std::fmt::Write;

/// What one file contributed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub requests: usize,
    pub spans_accepted: usize,
    pub spans_rejected: usize,
    /// Requests refused whole, with the reason (line numbers are 1-based).
    pub problems: Vec<String>,
}

/// Feeds one file's content to the pipeline.
pub fn ingest_text(pipeline: &Pipeline, text: &str) -> FileReport {
    let mut report = FileReport::default();
    let trimmed = text.trim_start();
    // A whole-file JSON document: a Jaeger response or a single OTLP request.
    if let Ok(document) = serde_json::from_str::<Value>(trimmed) {
        ingest_document(pipeline, &document, trimmed, "file", &mut report);
        return report;
    }
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(document) => ingest_document(
                pipeline,
                &document,
                line,
                &format!("line {}", number + 1),
                &mut report,
            ),
            Err(e) => report
                .problems
                .push(format!("line {}: not JSON: {e}", number + 1)),
        }
    }
    report
}

fn ingest_document(
    pipeline: &Pipeline,
    document: &Value,
    text: &str,
    place: &str,
    report: &mut FileReport,
) {
    let request = if document.get("data").is_some_and(Value::is_array) {
        jaeger_to_otlp(document).map(|r| r.encode_to_vec())
    } else {
        json::to_protobuf(text.as_bytes())
    };
    let request = match request {
        Ok(request) => request,
        Err(e) => {
            report.problems.push(format!("{place}: {e}"));
            return;
        }
    };
    report.requests += 1;
    match pipeline.ingest(Protocol::Replay, &request) {
        Ok(outcome) => {
            report.spans_accepted += outcome.accepted;
            report.spans_rejected += outcome.rejected;
            if outcome.rejected > 0 {
                report
                    .problems
                    .push(format!("{place}: {}", outcome.message));
            }
        }
        Err(refusal) => report.problems.push(format!("{place}: {refusal}")),
    }
}

fn hex_id(value: Option<&Value>, bytes: usize) -> Result<Vec<u8>, String> {
    let text = value.and_then(Value::as_str).ok_or("missing id")?;
    let padded = format!("{text:0>width$}", width = bytes * 2);
    if padded.len() != bytes * 2 || !padded.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{text}` is not a {}-digit hex id", bytes * 2));
    }
    (0..bytes)
        .map(|i| u8::from_str_radix(&padded[2 * i..2 * i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn jaeger_tag(tag: &Value) -> Option<KeyValue> {
    let key = tag.get("key")?.as_str()?.to_string();
    let value = match tag.get("value")? {
        Value::String(s) => any_value::Value::StringValue(s.clone()),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) if n.is_i64() => any_value::Value::IntValue(n.as_i64()?),
        Value::Number(n) => any_value::Value::DoubleValue(n.as_f64()?),
        _ => return None,
    };
    Some(KeyValue {
        key,
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    })
}

fn tags(value: Option<&Value>) -> Vec<KeyValue> {
    value
        .and_then(Value::as_array)
        .map(|tags| tags.iter().filter_map(jaeger_tag).collect())
        .unwrap_or_default()
}

fn span_kind(tags: &[KeyValue]) -> i32 {
    let kind = tags.iter().find_map(|t| match &t.value.as_ref()?.value {
        Some(any_value::Value::StringValue(v)) if t.key == "span.kind" => Some(v.as_str()),
        _ => None,
    });
    match kind {
        Some("internal") => span::SpanKind::Internal as i32,
        Some("server") => span::SpanKind::Server as i32,
        Some("client") => span::SpanKind::Client as i32,
        Some("producer") => span::SpanKind::Producer as i32,
        Some("consumer") => span::SpanKind::Consumer as i32,
        _ => span::SpanKind::Unspecified as i32,
    }
}

fn is_error(tags: &[KeyValue]) -> bool {
    tags.iter()
        .any(|t| match &t.value.as_ref().and_then(|v| v.value.clone()) {
            Some(any_value::Value::BoolValue(true)) => t.key == "error",
            Some(any_value::Value::StringValue(v)) => t.key == "otel.status_code" && v == "ERROR",
            _ => false,
        })
}

/// A Jaeger query API response (`{"data": [trace, ...]}`) as one OTLP request: a resource
/// per Jaeger process, times from microseconds.
pub(crate) fn jaeger_to_otlp(document: &Value) -> Result<ExportTraceServiceRequest, String> {
    let mut resource_spans = Vec::new();
    for (t, trace) in document["data"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let processes = trace.get("processes").and_then(Value::as_object);
        let mut by_process: std::collections::BTreeMap<String, Vec<Span>> = Default::default();
        for (s, item) in trace
            .get("spans")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let place = |e: String| format!("data[{t}].spans[{s}]: {e}");
            let start = item
                .get("startTime")
                .and_then(Value::as_u64)
                .ok_or_else(|| place("missing startTime".into()))?;
            let duration = item
                .get("duration")
                .and_then(Value::as_u64)
                .ok_or_else(|| place("missing duration".into()))?;
            let attributes = tags(item.get("tags"));
            let parent = item
                .get("references")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|r| r.get("refType").and_then(Value::as_str) == Some("CHILD_OF"))
                .map(|r| hex_id(r.get("spanID"), 8))
                .transpose()
                .map_err(place)?
                .unwrap_or_default();
            let span = Span {
                trace_id: hex_id(item.get("traceID"), 16).map_err(place)?,
                span_id: hex_id(item.get("spanID"), 8).map_err(place)?,
                parent_span_id: parent,
                name: item
                    .get("operationName")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                kind: span_kind(&attributes),
                start_time_unix_nano: start.saturating_mul(1_000),
                end_time_unix_nano: start.saturating_add(duration).saturating_mul(1_000),
                status: is_error(&attributes).then(|| Status {
                    code: 2,
                    message: String::new(),
                }),
                attributes,
                ..Default::default()
            };
            let process = item
                .get("processID")
                .and_then(Value::as_str)
                .unwrap_or_default();
            by_process
                .entry(process.to_string())
                .or_default()
                .push(span);
        }
        for (process, spans) in by_process {
            let process = processes.and_then(|p| p.get(&process));
            let mut attributes = tags(process.and_then(|p| p.get("tags")));
            let service = process
                .and_then(|p| p.get("serviceName"))
                .and_then(Value::as_str)
                .unwrap_or("unknown_service");
            attributes.insert(
                0,
                KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service.into())),
                    }),
                    ..Default::default()
                },
            );
            resource_spans.push(ResourceSpans {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
    }
    Ok(ExportTraceServiceRequest { resource_spans })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The per-stage and derived percentiles as a table (milliseconds, exact, nearest rank).
pub fn render_percentiles(pipeline: &Pipeline) -> String {
    let mut rows: Vec<(String, String, Vec<f64>)> = pipeline
        .raw_values()
        .into_iter()
        .map(|(metric, labels, mut values)| {
            values.sort_by(f64::total_cmp);
            let labels = labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            (metric, labels, values)
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:<52} {:>6} {:>10} {:>10} {:>10}",
        "metric", "labels", "count", "p50_ms", "p95_ms", "p99_ms"
    );
    for (metric, labels, values) in rows {
        let p = |q| percentile(&values, q) * 1e3;
        let _ = writeln!(
            out,
            "{metric:<44} {labels:<52} {:>6} {:>10.3} {:>10.3} {:>10.3}",
            values.len(),
            p(0.5),
            p(0.95),
            p(0.99)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.95), 95.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn jaeger_ids_are_padded_and_checked() {
        assert_eq!(
            hex_id(Some(&Value::from("abcd")), 2).unwrap(),
            vec![0xab, 0xcd]
        );
        assert_eq!(hex_id(Some(&Value::from("1")), 2).unwrap(), vec![0, 1]);
        assert!(hex_id(Some(&Value::from("zz")), 2).is_err());
        assert!(hex_id(Some(&Value::from("123456")), 2).is_err());
    }
}
