//! Hardening item 4 — Cardinality: a million spans, every one with its own span name or step
//! name, namespace (or queue) and, ten thousand of them, their own service, in batches of
//! 10,000 spans over OTLP/HTTP protobuf. Series stay at the caps with the overflow series
//! present and counted, memory stops growing once the bounded structures are full, /metrics
//! stays small. With `metrics.series_idle_timeout`, churned series leave /metrics after traffic
//! stops, and new values are admitted again.

use crate::otlp::*;
use crate::support::Exposition;
use crate::support::poll;
use crate::support::process::{MIB, Setup, mib};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const TOTAL: usize = 1_000_000;
const CHECKPOINT: usize = 200_000;
const BATCH: usize = 10_000;
const SPANS_PER_SERVICE: usize = 100;

const OVERFLOW: &str = "__overflow__";
const SPAN_CALLS: &str = "traces_span_metrics_calls_total";
const HANDLER_COUNT: &str = "tasker_handler_execution_duration_seconds_count";
const CLAIM: &str = "tasker_step_claim_duration_seconds_count";

/// Protobuf by hand: the million spans are encoded in the (unoptimised) test process too, and
/// prost's owned structures cost it more CPU than the server spends decoding them.
mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
        varint(out, u64::from(field << 3 | 2));
        varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }

    pub fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
        varint(out, u64::from(field << 3 | 1));
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// A KeyValue with a string value.
    pub fn string_kv(out: &mut Vec<u8>, field: u32, key: &str, value: &str) {
        let mut any = Vec::with_capacity(value.len() + 2);
        bytes(&mut any, 1, value.as_bytes());
        let mut kv = Vec::with_capacity(key.len() + any.len() + 4);
        bytes(&mut kv, 1, key.as_bytes());
        bytes(&mut kv, 2, &any);
        bytes(out, field, &kv);
    }
}

/// Span `i` of the run: a third with a unique name, a third handler executions, a third
/// claims from a unique worker queue; each with its own step name and namespace.
fn churn_span(out: &mut Vec<u8>, i: usize) {
    let (trace_id, span_id) = fresh_ids();
    let step = format!("s{i}");
    let namespace = format!("n{i}");
    let mut span = Vec::with_capacity(160);
    pb::bytes(&mut span, 1, &trace_id);
    pb::bytes(&mut span, 2, &span_id);
    let name = match i % 3 {
        0 => format!("op{i}"),
        1 => "worker.step_execution".to_string(),
        _ => "read_messages".to_string(),
    };
    pb::bytes(&mut span, 5, name.as_bytes());
    span.extend_from_slice(&[6 << 3, 1]);
    pb::fixed64(&mut span, 7, START);
    pb::fixed64(&mut span, 8, START + DURATION);
    pb::string_kv(&mut span, 9, "step_name", &step);
    match i % 3 {
        2 => pb::string_kv(&mut span, 9, "queue", &format!("worker_{namespace}_queue")),
        _ => pb::string_kv(&mut span, 9, "namespace", &namespace),
    }
    pb::bytes(out, 2, &span);
}

/// Batch `b` (spans b*BATCH ..), one resource (service) per SPANS_PER_SERVICE spans.
fn churn_batch(b: usize) -> Vec<u8> {
    let first = b * BATCH;
    let mut request = Vec::with_capacity(BATCH * 170);
    for r in 0..BATCH / SPANS_PER_SERVICE {
        let base = first + r * SPANS_PER_SERVICE;
        let mut scope = Vec::with_capacity(SPANS_PER_SERVICE * 170);
        pb::bytes(
            &mut scope,
            1,
            &[
                0x0a, 11, b't', b'a', b's', b'k', b'e', b'r', b'-', b'c', b'o', b'r', b'e',
            ],
        );
        for i in base..base + SPANS_PER_SERVICE {
            churn_span(&mut scope, i);
        }
        let mut resource = Vec::new();
        pb::string_kv(
            &mut resource,
            1,
            "service.name",
            &format!("svc{}", base / SPANS_PER_SERVICE),
        );
        let mut resource_spans = Vec::with_capacity(scope.len() + 64);
        pb::bytes(&mut resource_spans, 1, &resource);
        pb::bytes(&mut resource_spans, 2, &scope);
        pb::bytes(&mut request, 1, &resource_spans);
    }
    request
}

#[test]
fn the_hand_encoded_batches_are_otlp() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let batch = ExportTraceServiceRequest::decode(&churn_batch(3)[..]).expect("valid protobuf");
    assert_eq!(span_count(&batch), BATCH as u64);
    assert_eq!(batch.resource_spans.len(), BATCH / SPANS_PER_SERVICE);
    let first = &batch.resource_spans[0];
    let service = &first.resource.as_ref().unwrap().attributes[0];
    assert_eq!(service.key, "service.name");
    assert_eq!(
        service.value.as_ref().unwrap().value,
        Some(Value::StringValue("svc300".into()))
    );
    let scope = &first.scope_spans[0];
    assert_eq!(scope.scope.as_ref().unwrap().name, "tasker-core");
    let spans = &scope.spans;
    assert_eq!(spans[0].name, "op30000");
    assert_eq!(spans[1].name, "worker.step_execution");
    assert_eq!(spans[2].name, "read_messages");
    assert_eq!(spans[2].attributes[1].key, "queue");
    assert_eq!(
        spans[2].attributes[1].value.as_ref().unwrap().value,
        Some(Value::StringValue("worker_n30002_queue".into()))
    );
    assert_eq!(
        (
            spans[0].kind,
            spans[0].end_time_unix_nano - spans[0].start_time_unix_nano
        ),
        (1, DURATION)
    );
    assert_eq!((spans[0].trace_id.len(), spans[0].span_id.len()), (16, 8));
}

/// Distinct series (label sets without `le`) per metric family; histograms by `_count`.
fn series_per_metric(exposition: &Exposition) -> BTreeMap<String, usize> {
    let mut series: BTreeMap<String, BTreeSet<Vec<(String, String)>>> = BTreeMap::new();
    for sample in &exposition.samples {
        if sample.name.ends_with("_bucket") || sample.name.ends_with("_sum") {
            continue;
        }
        let family = sample
            .name
            .strip_suffix("_count")
            .unwrap_or(&sample.name)
            .to_string();
        let labels = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        series.entry(family).or_default().insert(labels);
    }
    series.into_iter().map(|(k, v)| (k, v.len())).collect()
}

/// Distinct values of each label over every tasker_* and traces_* sample.
fn values_per_label(exposition: &Exposition) -> BTreeMap<String, BTreeSet<String>> {
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sample in &exposition.samples {
        if !(sample.name.starts_with("tasker_") || sample.name.starts_with("traces_")) {
            continue;
        }
        for (k, v) in &sample.labels {
            if k != "le" {
                values.entry(k.clone()).or_default().insert(v.clone());
            }
        }
    }
    values
}

/// Sends batches `from..to` over OTLP/HTTP protobuf, encoded on a blocking thread ahead of
/// two senders.
async fn send_batches(client: &Otlp, from: usize, to: usize) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        for b in from..to {
            if tx.blocking_send(churn_batch(b)).is_err() {
                break;
            }
        }
    });
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
    let mut senders = Vec::new();
    for _ in 0..2 {
        let rx = rx.clone();
        let client = client.clone();
        senders.push(tokio::spawn(async move {
            loop {
                let Some(body) = rx.lock().await.recv().await else {
                    break;
                };
                let reply = client
                    .send(Proto::HttpProtobuf, None, body)
                    .await
                    .unwrap_or_else(|e| panic!("a batch: {e}"));
                assert!(
                    reply.accepted() && reply.rejected == 0,
                    "a batch of {BATCH} valid spans: {reply:?}"
                );
            }
        }));
    }
    for sender in senders {
        sender.await.expect("a sender");
    }
    producer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_distinct_values_stay_at_the_caps() {
    let mut app = Setup::new()
        .set(
            "stages.handler_execution.extra_labels",
            "[namespace, step_name]",
        )
        .set("stages.step_claim.extra_labels", "[namespace]")
        .start();
    let client = Otlp::new(&app);
    let config = spanlens::config::Config::default_profile();
    let started = Instant::now();

    send_batches(&client, 0, CHECKPOINT / BATCH).await;
    let rss_checkpoint = app.vm_rss();
    let body_checkpoint = app.metrics_text().await.len();
    let at_checkpoint = started.elapsed();
    send_batches(&client, CHECKPOINT / BATCH, TOTAL / BATCH).await;
    let rss_total = app.vm_rss();
    let text = app.metrics_text().await;
    let scraped = Exposition::parse(&text);
    let series = series_per_metric(&scraped);
    let samples = scraped.samples.len();
    eprintln!(
        "cardinality: spanlens used {:?} of CPU; {CHECKPOINT} spans in {at_checkpoint:?}, {TOTAL} in {:?}; VmRSS {} at {CHECKPOINT}, {} at {TOTAL} (+{}); /metrics {} bytes at {CHECKPOINT}, {} bytes and {samples} samples at {TOTAL}; largest families: {:?}",
        app.cpu_time(),
        started.elapsed(),
        mib(rss_checkpoint),
        mib(rss_total),
        mib(rss_total.saturating_sub(rss_checkpoint)),
        body_checkpoint,
        text.len(),
        {
            let mut v: Vec<_> = series.iter().collect();
            v.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
            v.into_iter().take(6).collect::<Vec<_>>()
        }
    );

    // Everything was counted, overflow included.
    assert_eq!(scraped.sum(ACCEPTED, &[]), TOTAL as f64);
    assert_eq!(scraped.sum(SPAN_CALLS, &[]), TOTAL as f64, "{SPAN_CALLS}");
    let thirds = |r: usize| (0..TOTAL).filter(|i| i % 3 == r).count() as f64;
    assert_eq!(
        scraped.sum(HANDLER_COUNT, &[]),
        thirds(1),
        "{HANDLER_COUNT}"
    );
    assert_eq!(scraped.sum(CLAIM, &[]), thirds(2), "{CLAIM}");

    // Series per metric within max_series_per_metric (+ the overflow series).
    let max_series = config.metrics.max_series_per_metric;
    for (family, n) in &series {
        assert!(
            *n <= max_series + 1,
            "{family} has {n} series, cap {max_series}"
        );
    }
    // Values per label within its cap (+ the overflow value), and overflowing.
    // (label, cap, the `label` of spanlens_label_overflow_total: the dimension it shares).
    let caps = [
        ("service", config.labels.service.max_values, "service"),
        ("service_name", config.labels.service.max_values, "service"),
        ("span_name", config.span_metrics.max_span_names, "span_name"),
        (
            "namespace",
            config.labels.extra["namespace"].max_values,
            "namespace",
        ),
        (
            "step_name",
            config.labels.extra["step_name"].max_values,
            "step_name",
        ),
        ("step", config.labels.extra["step"].max_values, "step"),
    ];
    let values = values_per_label(&scraped);
    for (label, cap, dimension) in caps {
        let found = values.get(label).map_or(0, BTreeSet::len);
        assert!(found <= cap + 1, "label {label}: {found} values, cap {cap}");
        assert!(
            values.get(label).is_some_and(|v| v.contains(OVERFLOW)),
            "label {label}: no {OVERFLOW} value after {TOTAL} distinct values"
        );
        let overflowed = scraped.sum("spanlens_label_overflow_total", &[("label", dimension)]);
        assert!(
            overflowed > 0.0,
            "spanlens_label_overflow_total{{label={dimension}}} is {overflowed}"
        );
    }
    assert!(
        scraped
            .all(SPAN_CALLS)
            .iter()
            .any(|s| s.labels["span_name"] == OVERFLOW),
        "no overflow series in {SPAN_CALLS}"
    );
    assert!(
        scraped
            .all(HANDLER_COUNT)
            .iter()
            .any(|s| s.labels["namespace"] == OVERFLOW && s.labels["step_name"] == OVERFLOW),
        "no overflow series in {HANDLER_COUNT}"
    );

    // Memory: the join and breakdown windows (50,000 each) are full by the checkpoint, the
    // dedupe window (262,144 span ids, ~16 bytes each) a little after; from there on,
    // 800,000 more distinct values may cost allocator slack, not a structure that grows.
    assert!(
        rss_total < rss_checkpoint + 50 * MIB,
        "VmRSS grew from {} at {CHECKPOINT} distinct values to {} at {TOTAL}",
        mib(rss_checkpoint),
        mib(rss_total)
    );
    // /metrics stops growing once the caps are reached...
    assert!(
        text.len() as f64 <= body_checkpoint as f64 * 1.05 + 10_000.0,
        "/metrics grew from {body_checkpoint} bytes at {CHECKPOINT} to {} at {TOTAL}: not capped",
        text.len()
    );
    // ...and stays within what the caps admit for this traffic. Prometheus's defaults bound
    // neither (sample_limit and body_size_limit are 0, unlimited), so the bound comes from
    // the caps: span metrics admit 1,001 span names (each first seen with one of the 101
    // admitted services, plus their overflow series: ~1,300 series) × 18 lines (histogram
    // 15 buckets + sum + count, and the calls counter) ≈ 23,000 samples; handler_execution
    // with namespace (101) × step_name (501), each value arriving once: ~600 series × 19
    // lines (histogram, calls, errors) ≈ 11,000; the by-step comparison 501 × 17 ≈ 8,500;
    // step_claim by namespace ~200 × 19 ≈ 4,000: ≈ 47,000 samples. Every label value is cut
    // to max_label_value_length (128), and a sample line here is ≤ 160 bytes: ≤ 7.5 MB.
    // (One series per distinct value would have passed both bounds by 5,000 values.)
    assert!(
        samples < 60_000,
        "/metrics has {samples} samples after {TOTAL} distinct values"
    );
    assert!(
        text.len() < 8_000_000,
        "/metrics is {} bytes after {TOTAL} distinct values",
        text.len()
    );
    let longest = text.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest <= 6 * (config.metrics.max_label_value_length + 24) + 64,
        "a /metrics line of {longest} bytes"
    );
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}

/// Spans with the given names from one service each, one request.
async fn send_named(client: &Otlp, services: &[String], names: &[String]) {
    let resources = services
        .iter()
        .map(|service| {
            (
                service.clone(),
                names.iter().map(|n| span(n, &[])).collect::<Vec<_>>(),
            )
        })
        .collect();
    let request = request_of(resources);
    client.accepted(Proto::HttpProtobuf, &request).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_series_disappear_and_release_the_caps() {
    let mut app = Setup::new()
        .set("metrics.series_idle_timeout", "2s")
        .set("span_metrics.max_span_names", "50")
        .set("labels.service.max_values", "10")
        .start();
    let client = Otlp::new(&app);

    let old_services: Vec<String> = (0..30).map(|i| format!("old-svc{i}")).collect();
    let old_names: Vec<String> = (0..200).map(|i| format!("old-op{i}")).collect();
    for chunk in old_services.chunks(5) {
        send_named(&client, chunk, &old_names).await;
    }
    let scraped = app.scrape().await;
    let names: BTreeSet<&str> = scraped
        .all(SPAN_CALLS)
        .iter()
        .map(|s| s.labels["span_name"].as_str())
        .collect();
    assert!(names.contains(OVERFLOW), "caps reached: {names:?}");
    assert!(names.len() <= 51, "{} span names", names.len());
    let stopped = Instant::now();

    // Traffic stops: the churned series go within a few scrapes after the timeout.
    let gone = poll(
        Duration::from_secs(20),
        Duration::from_millis(500),
        || async {
            let scraped = app.scrape().await;
            let left = scraped
                .samples
                .iter()
                .filter(|s| s.labels.values().any(|v| v.starts_with("old-")))
                .count();
            (left == 0).then_some(())
        },
    )
    .await;
    let after = stopped.elapsed();
    assert!(
        gone.is_some(),
        "series of old values still in /metrics {after:?} after traffic stopped (idle timeout 2s):\n{}",
        app.metrics_text()
            .await
            .lines()
            .filter(|l| l.contains("old-"))
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("idle series gone {after:?} after traffic stopped");
    let overflow_before = app.scrape().await.sum("spanlens_label_overflow_total", &[]);

    // New values are admitted as themselves: the caps were released.
    let new_services: Vec<String> = (0..5).map(|i| format!("new-svc{i}")).collect();
    let new_names: Vec<String> = (0..20).map(|i| format!("new-op{i}")).collect();
    send_named(&client, &new_services, &new_names).await;
    let scraped = app.scrape().await;
    let calls = scraped.all(SPAN_CALLS);
    for name in &new_names {
        for service in &new_services {
            assert!(
                calls.iter().any(|s| &s.labels["span_name"] == name
                    && &s.labels["service_name"] == service
                    && s.value == 1.0),
                "{name} from {service} not admitted after the old series expired: {:?}",
                calls.iter().map(|s| &s.labels).collect::<Vec<_>>()
            );
        }
    }
    assert_eq!(
        scraped.sum("spanlens_label_overflow_total", &[]),
        overflow_before,
        "new values overflowed although the old ones had expired"
    );
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}
