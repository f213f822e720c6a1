//! The protobuf exposition (`application/vnd.google.protobuf;
//! proto=io.prometheus.client.MetricFamily; encoding=delimited`), checked by implementations
//! that are not ours.
//!
//! spanlens runs in-process on loopback ports (default profile: native histograms at schema
//! 3) and receives spans of known durations over OTLP/HTTP. Then:
//! * the body served for Prometheus 2.42's Accept header decodes with Google's Python protobuf
//!   runtime and client_model's own `metrics.proto` (tests/tools/decode_protobuf.py), and says
//!   exactly what the text exposition says: every family, its help and type, every counter and
//!   gauge, every classic bucket, sum and count;
//! * every histogram series also carries its native histogram, whose buckets (rebuilt from
//!   spans and deltas by the decoder) count every observation, and for the span-metrics
//!   histogram hold exactly the durations sent, by the definition of the buckets at the
//!   schema the message states;
//! * each histogram series has one exemplar, the slowest span sent in it, on the bucket whose
//!   bound holds it;
//! * `Accept` is negotiated by weight: protobuf, text or OpenMetrics as preferred, text for
//!   wildcards and garbage.
//!
//! The real Prometheus 2.42 (`/usr/bin/prometheus --enable-feature=native-histograms,
//! exemplar-storage`) scrapes spanlens every second: the exemplars arrive in
//! `/api/v1/query_exemplars`, `histogram_count` over the native series counts the spans
//! sent, and the Accept header it sends is the one this file negotiates with.
//!
//! Debian's `golang-github-prometheus-client-model-dev` (metrics.proto), Python's
//! `grpcio-tools` and `protobuf` (target/pyenv) and Debian's `prometheus` are installed by
//! scripts/test.sh; when missing, these tests fail (they never skip).

use crate::support;

use serde_json::Value;
use spanlens::server::Server;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::chain::Chain;
use support::otlp::hex;
use support::process::TempDir;
use support::tools::{python, run_with_stdin};
use support::{Exposition, Rng, parse_le, post_protobuf, request, start, test_config};

/// What Prometheus 2.42 sends with `--enable-feature=native-histograms` (the test against
/// the real Prometheus checks it still does).
const PROMETHEUS_NATIVE_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";
const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// client_model's metrics.proto as Debian's golang-github-prometheus-client-model-dev
/// installs it.
const METRICS_PROTO: &str =
    "/usr/share/gocode/src/github.com/prometheus/client_model/io/prometheus/client/metrics.proto";
/// How long Prometheus may take to show what spanlens serves.
const WAIT: Duration = Duration::from_secs(30);

const SPAN_METRICS: &str = "traces_span_metrics_duration_seconds";
const SERVICES: &[&str] = &[
    "tasker-orchestration",
    "tasker-rust-worker",
    "tasker-ruby-worker",
];
const SPAN_NAMES: &[&str] = &[
    "execute_handler",
    "submit_result",
    "step_claim",
    "other_work",
];

/// One span sent.
#[derive(Debug, Clone)]
struct Sent {
    service: &'static str,
    name: &'static str,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    end_unix_nano: u64,
    nanos: u64,
}

impl Sent {
    fn seconds(&self) -> f64 {
        self.nanos as f64 / 1e9
    }
}

/// Spans of every service and name: durations spread over 1 µs to 3 s, plus a few at 0 (the
/// zero bucket) and above 10 s (the +Inf bucket).
fn spans(rng: &mut Rng, count: usize) -> Vec<Sent> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (0..count)
        .map(|i| {
            let nanos = match i % 50 {
                0 => 0,
                1 => 12_345_678_901,
                _ => (1e3 * (3e9f64 / 1e3).powf(rng.unit())) as u64,
            };
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&rng.next().to_be_bytes());
            trace_id[8..].copy_from_slice(&(rng.next() | 1).to_be_bytes());
            Sent {
                service: SERVICES[rng.below(SERVICES.len())],
                name: SPAN_NAMES[rng.below(SPAN_NAMES.len())],
                trace_id,
                span_id: (rng.next() | 1).to_be_bytes(),
                end_unix_nano: now - 60_000_000_000 + i as u64 * 1_000_000,
                nanos,
            }
        })
        .collect()
}

async fn send(server: &Server, spans: &[Sent]) {
    for service in SERVICES {
        let mine: Vec<_> = spans
            .iter()
            .filter(|s| s.service == *service)
            .map(|s| opentelemetry_proto::tonic::trace::v1::Span {
                trace_id: s.trace_id.to_vec(),
                span_id: s.span_id.to_vec(),
                name: s.name.to_string(),
                kind: 1,
                start_time_unix_nano: s.end_unix_nano - s.nanos,
                end_time_unix_nano: s.end_unix_nano,
                ..Default::default()
            })
            .collect();
        if !mine.is_empty() {
            post_protobuf(server, request(service, mine)).await;
        }
    }
}

/// The span-metrics series of a span: (service_name, span_name).
fn series_of(span: &Sent) -> (String, String) {
    (span.service.to_string(), span.name.to_string())
}

/// GET /metrics with `accept`: (content type, body).
async fn scrape_bytes(server: &Server, accept: Option<&str>) -> (String, Vec<u8>) {
    let mut get = reqwest::Client::new().get(format!("http://{}/metrics", server.metrics_addr()));
    if let Some(accept) = accept {
        get = get.header("accept", accept);
    }
    let response = get.send().await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    (content_type, response.bytes().await.unwrap().to_vec())
}

fn keep(name: &str, body: &[u8]) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, body).expect("write exposition copy");
    path
}

/// The body decoded by tests/tools/decode_protobuf.py.
async fn decode(body: Vec<u8>) -> Value {
    let kept = keep("protobuf_exposition.bin", &body);
    assert!(
        Path::new(METRICS_PROTO).is_file(),
        "{METRICS_PROTO} is missing: install Debian's golang-github-prometheus-client-model-dev \
         (scripts/test.sh does)"
    );
    let python = python();
    let decoder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/decode_protobuf.py");
    let output = tokio::task::spawn_blocking({
        let python = python.clone();
        move || run_with_stdin(&python, &[decoder.to_str().unwrap(), METRICS_PROTO], &body)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "the protobuf exposition does not decode ({}):\n{}--- body kept at {} ---",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        kept.display()
    );
    serde_json::from_slice(&output.stdout).expect("decode_protobuf.py prints JSON")
}

fn number(v: &Value) -> f64 {
    match v {
        Value::String(s) => parse_le(s),
        v => v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")),
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .expect("labels")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// (sample name, labels with `le` as a number's text) → value, of the text exposition.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

fn key(
    name: &str,
    labels: &BTreeMap<String, String>,
    le: Option<f64>,
) -> (String, Vec<(String, String)>) {
    let mut labels: Vec<(String, String)> =
        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(le) = le {
        labels.push(("le".to_string(), le.to_string()));
    }
    labels.sort();
    (name.to_string(), labels)
}

fn text_samples(text: &Exposition) -> Samples {
    text.samples
        .iter()
        .map(|s| {
            let mut labels = s.labels.clone();
            let le = labels.remove("le").map(|le| parse_le(&le));
            (key(&s.name, &labels, le), s.value)
        })
        .collect()
}

/// `# HELP` and `# TYPE` of every family in the text, help unescaped.
fn text_metadata(text: &str) -> BTreeMap<String, (String, String)> {
    let mut out: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let help = help.replace("\\n", "\n").replace("\\\\", "\\");
            out.entry(name.to_string()).or_default().0 = help;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            out.entry(name.to_string()).or_default().1 = kind.to_uppercase();
        }
    }
    out
}

/// A gauge that moves between two scrapes on its own: a client's connection closes when it
/// will. Its samples are left out where two scrapes are compared.
const MOVING_GAUGE: &str = "spanlens_connections_open";

/// Every family, help, type, counter, gauge and classic histogram sample of the protobuf
/// body is the text's, and the text has no other sample ([`MOVING_GAUGE`] aside).
fn check_against_text(decoded: &Value, text: &Exposition) {
    let mut samples = text_samples(text);
    samples.retain(|(name, _), _| name != MOVING_GAUGE);
    let metadata = text_metadata(&text.text);
    let families = decoded["families"].as_array().unwrap();
    assert_eq!(
        families
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>(),
        metadata.keys().cloned().collect::<BTreeSet<_>>(),
        "families"
    );
    let mut take = |name: &str, labels: &BTreeMap<String, String>, le: Option<f64>, want: f64| {
        let k = key(name, labels, le);
        let got = samples
            .remove(&k)
            .unwrap_or_else(|| panic!("protobuf has {k:?}, the text has not"));
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{k:?}: text {got}, protobuf {want}"
        );
    };
    for family in families {
        let name = family["name"].as_str().unwrap();
        if name == MOVING_GAUGE {
            continue;
        }
        let (help, kind) = &metadata[name];
        assert_eq!(family["help"].as_str().unwrap(), help, "{name} help");
        assert_eq!(family["type"].as_str().unwrap(), kind, "{name} type");
        for metric in family["metrics"].as_array().unwrap() {
            let labels = string_map(&metric["labels"]);
            match kind.as_str() {
                "COUNTER" => take(name, &labels, None, number(&metric["counter"])),
                "GAUGE" => take(name, &labels, None, number(&metric["gauge"])),
                "HISTOGRAM" => {
                    let h = &metric["histogram"];
                    let buckets = h["buckets"].as_array().unwrap();
                    for bucket in buckets {
                        let le = number(&bucket["upper_bound"]);
                        take(
                            &format!("{name}_bucket"),
                            &labels,
                            Some(le),
                            number(&bucket["cumulative_count"]),
                        );
                    }
                    assert_eq!(
                        buckets.last().map(|b| number(&b["upper_bound"])),
                        Some(f64::INFINITY),
                        "{name} {labels:?}: +Inf bucket last"
                    );
                    take(
                        &format!("{name}_sum"),
                        &labels,
                        None,
                        number(&h["sample_sum"]),
                    );
                    take(
                        &format!("{name}_count"),
                        &labels,
                        None,
                        number(&h["sample_count"]),
                    );
                }
                other => panic!("{name}: unexpected type {other}"),
            }
        }
    }
    assert!(
        samples.is_empty(),
        "text samples missing from protobuf: {samples:?}"
    );
}

/// Every native histogram counts its series' observations (the stage and span-metrics
/// histograms have one); the span-metrics series' hold exactly the durations sent. Returns
/// the number of native series.
fn check_native(decoded: &Value, sent: &[Sent]) -> usize {
    let mut by_series: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for span in sent {
        by_series
            .entry(series_of(span))
            .or_default()
            .push(span.seconds());
    }
    let mut native_series = 0;
    for family in decoded["families"].as_array().unwrap() {
        let name = family["name"].as_str().unwrap();
        for metric in family["metrics"].as_array().unwrap() {
            let Some(h) = metric.get("histogram") else {
                continue;
            };
            let labels = string_map(&metric["labels"]);
            // spanlens's own request histogram keeps classic buckets only.
            let Some(native) = h.get("native") else {
                assert!(
                    !name.starts_with("tasker_") && name != SPAN_METRICS,
                    "{name} {labels:?}: no native histogram"
                );
                continue;
            };
            native_series += 1;
            let schema = native["schema"].as_i64().unwrap();
            assert!(
                (-4..=8).contains(&schema),
                "{name} {labels:?}: schema {schema}"
            );
            let buckets = |side: &str| -> BTreeMap<i64, u64> {
                native[side]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| (b[0].as_i64().unwrap(), b[1].as_u64().unwrap()))
                    .collect()
            };
            let (positive, negative) = (buckets("positive"), buckets("negative"));
            let zero = native["zero_count"].as_u64().unwrap();
            let total = positive.values().sum::<u64>() + negative.values().sum::<u64>() + zero;
            assert_eq!(
                total,
                h["sample_count"].as_u64().unwrap(),
                "{name} {labels:?}: native count"
            );
            assert!(
                positive.values().all(|&c| c > 0),
                "{name} {labels:?}: only populated buckets"
            );
            if name != SPAN_METRICS {
                continue;
            }
            let values = &by_series[&(labels["service_name"].clone(), labels["span_name"].clone())];
            let threshold = native["zero_threshold"].as_f64().unwrap();
            let mut want: BTreeMap<i64, u64> = BTreeMap::new();
            for &v in values.iter().filter(|&&v| v > threshold) {
                // Bucket i holds (2^((i-1)/2^schema), 2^(i/2^schema)].
                let index = (v.log2() * 2f64.powi(schema as i32)).ceil() as i64;
                *want.entry(index).or_default() += 1;
            }
            assert_eq!(
                positive, want,
                "{name} {labels:?}: native buckets at schema {schema}"
            );
            assert_eq!(
                zero,
                values.iter().filter(|&&v| v <= threshold).count() as u64
            );
            assert!(negative.is_empty());
        }
    }
    native_series
}

/// Each span-metrics series' exemplar is its slowest span, on the bucket that holds it, and
/// it is the series' only one. Returns the number of exemplars.
fn check_exemplars(decoded: &Value, sent: &[Sent]) -> usize {
    let mut slowest: BTreeMap<(String, String), &Sent> = BTreeMap::new();
    for span in sent {
        let best = slowest.entry(series_of(span)).or_insert(span);
        if span.nanos > best.nanos {
            *best = span;
        }
    }
    let family = decoded["families"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == SPAN_METRICS)
        .expect("span metrics histogram");
    let mut found = 0;
    for metric in family["metrics"].as_array().unwrap() {
        let labels = string_map(&metric["labels"]);
        let span = slowest[&(labels["service_name"].clone(), labels["span_name"].clone())];
        let buckets = metric["histogram"]["buckets"].as_array().unwrap();
        let with: Vec<&Value> = buckets
            .iter()
            .filter(|b| b.get("exemplar").is_some())
            .collect();
        assert_eq!(with.len(), 1, "{labels:?}: one exemplar");
        let bound = number(&with[0]["upper_bound"]);
        let below = buckets
            .iter()
            .map(|b| number(&b["upper_bound"]))
            .filter(|&b| b < bound)
            .fold(f64::NEG_INFINITY, f64::max);
        let e = &with[0]["exemplar"];
        let value = number(&e["value"]);
        assert!(
            (value - span.seconds()).abs() < 1e-12,
            "{labels:?}: exemplar value {value}"
        );
        assert!(
            below < value && value <= bound,
            "{labels:?}: {value} on bucket le={bound}"
        );
        let ids = string_map(&e["labels"]);
        assert_eq!(
            ids.get("trace_id"),
            Some(&hex(&span.trace_id)),
            "{labels:?}"
        );
        assert_eq!(ids.get("span_id"), Some(&hex(&span.span_id)), "{labels:?}");
        assert_eq!(ids.len(), 2, "{labels:?}");
        let timestamp = number(&e["timestamp"]);
        assert!(
            (timestamp - span.end_unix_nano as f64 / 1e9).abs() < 1e-6,
            "{labels:?}: timestamp"
        );
        found += 1;
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_exposition_decodes_upstream_and_matches_the_text() {
    let server = start(test_config(|_| {})).await;
    let sent = spans(&mut Rng::new(22), 600);
    send(&server, &sent).await;

    let (content_type, text) = scrape_bytes(&server, None).await;
    assert_eq!(content_type, TEXT_CONTENT_TYPE);
    let text = Exposition::parse(std::str::from_utf8(&text).unwrap());
    let (content_type, body) = scrape_bytes(&server, Some(PROMETHEUS_NATIVE_ACCEPT)).await;
    assert_eq!(content_type, PROTOBUF_CONTENT_TYPE);
    let decoded = decode(body).await;

    check_against_text(&decoded, &text);
    let series = by_series_count(&sent);
    let native = check_native(&decoded, &sent);
    assert!(
        native >= series,
        "{native} native series, {series} span-metrics series sent"
    );
    assert_eq!(check_exemplars(&decoded, &sent), series);
}

/// A text exposition's lines but [`MOVING_GAUGE`]'s samples.
fn without_moving_gauge(body: &[u8]) -> Vec<String> {
    let prefix = format!("{MOVING_GAUGE}{{");
    String::from_utf8_lossy(body)
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

fn by_series_count(sent: &[Sent]) -> usize {
    sent.iter().map(series_of).collect::<BTreeSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_is_negotiated_by_weight() {
    let server = start(test_config(|_| {})).await;
    send(&server, &spans(&mut Rng::new(7), 20)).await;
    let protobuf = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
    let cases = [
        (PROMETHEUS_NATIVE_ACCEPT.to_string(), PROTOBUF_CONTENT_TYPE),
        (format!("{protobuf};q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"), PROTOBUF_CONTENT_TYPE),
        (format!("{protobuf};q=0.3,text/plain;version=0.0.4;q=0.7"), TEXT_CONTENT_TYPE),
        (format!("application/openmetrics-text;version=1.0.0;q=0.9,{protobuf};q=0.5"), OPENMETRICS_CONTENT_TYPE),
        ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1".to_string(), OPENMETRICS_CONTENT_TYPE),
        ("*/*".to_string(), TEXT_CONTENT_TYPE),
        ("garbage;;q=x".to_string(), TEXT_CONTENT_TYPE),
        ("application/vnd.google.protobuf".to_string(), TEXT_CONTENT_TYPE),
    ];
    let (_, plain) = scrape_bytes(&server, None).await;
    for (accept, want) in cases {
        let (content_type, body) = scrape_bytes(&server, Some(&accept)).await;
        assert_eq!(content_type, want, "Accept: {accept}");
        if want == TEXT_CONTENT_TYPE {
            assert_eq!(
                without_moving_gauge(&body),
                without_moving_gauge(&plain),
                "Accept: {accept}: the text exposition"
            );
        }
        if want == PROTOBUF_CONTENT_TYPE {
            decode(body).await;
        }
    }
}

// ------------------------------------------------------------------------------------------
// The real Prometheus 2.42

/// A scrape target that records the Accept header of every request and answers a text
/// exposition with one gauge.
async fn accept_recorder() -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).to_string();
            if let Some(accept) = head.lines().find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("accept"))
            }) {
                record.lock().unwrap().push(accept.1.trim().to_string());
            }
            let body = "recorder_up 1\n";
            let _ = stream
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_2_42_ingests_native_histograms_and_exemplars() {
    let server = start(test_config(|_| {})).await;
    let (recorder, accepts) = accept_recorder().await;
    let scratch = TempDir::new("protobuf_prometheus");
    let targets = vec![server.metrics_addr().to_string(), recorder];
    let flags = ["--enable-feature=native-histograms,exemplar-storage"];
    let chain = Chain::scraping(&scratch, "spanlens", targets, &flags).await;
    let sent: Vec<Sent> = spans(&mut Rng::new(42), 37)
        .into_iter()
        .map(|s| Sent {
            service: "tasker-ruby-worker",
            name: "execute_handler",
            ..s
        })
        .collect();
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    send(&server, &sent).await;
    let slowest = sent.iter().max_by_key(|s| s.nanos).unwrap();
    let selector = format!(
        "{SPAN_METRICS}{{service_name=\"tasker-ruby-worker\",span_name=\"execute_handler\"}}"
    );

    chain
        .until("histogram_count of the native series", WAIT, async || {
            let n = chain
                .scalar(&format!("histogram_count({selector})"))
                .await?;
            (n == sent.len() as f64).then_some(())
        })
        .await;

    let exemplars = reqwest::Url::parse_with_params(
        "http://prometheus/api/v1/query_exemplars",
        &[
            ("query", selector.clone()),
            ("start", format!("{}", started - 120.0)),
            ("end", format!("{}", started + 600.0)),
        ],
    )
    .unwrap();
    let exemplars = format!("{}?{}", exemplars.path(), exemplars.query().unwrap());
    let exemplar = chain
        .until("the slowest span in query_exemplars", WAIT, async || {
            let v = chain.api(&exemplars).await?;
            v["data"]
                .as_array()?
                .iter()
                .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
                .next()
        })
        .await;
    assert_eq!(exemplar["labels"]["trace_id"], hex(&slowest.trace_id));
    assert_eq!(exemplar["labels"]["span_id"], hex(&slowest.span_id));
    assert_eq!(
        exemplar["value"].as_str().unwrap().parse::<f64>().unwrap(),
        slowest.seconds()
    );

    // Prometheus 2.42 ingests a histogram that has both kinds as native only: no classic
    // series of it (a fact of that version, which rules over `_bucket` depend on).
    let classic = chain
        .query(&format!("{SPAN_METRICS}_bucket"))
        .await
        .expect("Prometheus answers");
    assert!(
        classic.is_empty(),
        "classic buckets ingested too: {classic:?}"
    );

    let seen = accepts.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the recorder was scraped");
    assert!(
        seen.iter().all(|a| a == PROMETHEUS_NATIVE_ACCEPT),
        "Accept headers: {seen:?}"
    );
}
