//! Shared by every test binary (each declares it with `#[path = "../support/mod.rs"] mod
//! support;`): start spanlens in-process on ephemeral loopback ports, scrape it, read values
//! out of the Prometheus text exposition, and wait for things with a deadline. The modules
//! hold the rest, each written once: the binary as a child process and scratch directories
//! (`process`), OTLP on the wire (`otlp`), the OpenTelemetry SDK side (`sdk`, `tasker`),
//! histogram assertions (`histogram`), promtool, amtool and Python (`tools`), a fake OTLP
//! backend (`downstream`), TLS material (`pki`), several instances behind one Prometheus
//! (`fleet`), a key-affine gateway in front of replicas (`gateway`) and the shipped deploy/
//! files as data (`deploy`), and headless Chromium over WebDriver (`browser`).
//!
//! Not every binary uses every helper, so dead-code warnings are off for this module tree
//! (and only for it).
#![allow(dead_code)]

pub mod browser;
pub mod chain;
pub mod deploy;
pub mod downstream;
pub mod fleet;
pub mod gateway;
pub mod histogram;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod sdk;
pub mod tasker;
pub mod tools;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use spanlens::config::Config;
use spanlens::server::Server;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The default profile with every listener on 127.0.0.1:0; `edit` may change it further.
pub fn test_config(edit: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default_profile();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    config.receivers.grpc.endpoint = any;
    config.receivers.http.endpoint = any;
    config.metrics.endpoint = any;
    edit(&mut config);
    config
}

/// Parses YAML config text (no environment) and puts every listener on 127.0.0.1:0.
pub fn config_from_yaml(text: &str) -> Config {
    let mut config =
        Config::parse(text, "test.yaml", &HashMap::new()).unwrap_or_else(|e| panic!("{e}"));
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    config.receivers.grpc.endpoint = any;
    config.receivers.http.endpoint = any;
    config.metrics.endpoint = any;
    config
}

pub async fn start(config: Config) -> Server {
    Server::start(config).await.expect("spanlens starts")
}

/// GET /metrics with an optional Accept header; returns (content type, body).
pub async fn scrape_as(server: &Server, accept: Option<&str>) -> (String, String) {
    let mut request =
        reqwest::Client::new().get(format!("http://{}/metrics", server.metrics_addr()));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (content_type, response.text().await.unwrap())
}

/// Scrapes the Prometheus text format and parses it.
pub async fn scrape(server: &Server) -> Exposition {
    Exposition::parse(&scrape_as(server, None).await.1)
}

/// One sample line of the text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed text exposition (format 0.0.4; OpenMetrics exemplars are ignored).
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let line = line.split(" # ").next().unwrap();
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (
                    name,
                    parse_labels(rest.strip_suffix('}').expect("closing brace")),
                ),
                None => (series, BTreeMap::new()),
            };
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Exposition {
            samples,
            text: text.to_string(),
        }
    }

    /// The samples named `name` whose labels include all of `labels`.
    pub fn matching<'e>(
        &'e self,
        name: &'e str,
        labels: &'e [(&str, &str)],
    ) -> impl Iterator<Item = &'e Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one sample named `name` whose labels include all of `labels`.
    /// None when there is no such sample; panics when several match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} matches {} samples: {found:?}",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// The sum of every sample named `name` whose labels include `labels` (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Cumulative bucket counts of one histogram series, by `le`, in exposition order.
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(String, f64)> {
        let bucket = format!("{name}_bucket");
        self.matching(&bucket, labels)
            .map(|s| (s.labels["le"].clone(), s.value))
            .collect()
    }

    /// Every sample named `name`.
    pub fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label has a value");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_string(), value);
        rest = after[end..].trim_start_matches(',');
    }
    labels
}

/// The bound of a `le` label as a number (`+Inf` is infinity).
pub fn parse_le(le: &str) -> f64 {
    match le {
        "+Inf" => f64::INFINITY,
        other => other
            .parse()
            .unwrap_or_else(|_| panic!("le={other:?} is not a number")),
    }
}

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// An encoded OTLP request: one resource (`service.name` = `service`), one scope.
pub fn request(service: &str, spans: Vec<Span>) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Runs the spanlens binary; panics with its stderr unless it succeeds. (stdout, stderr)
pub fn run_spanlens(args: &[&str]) -> (String, String) {
    let out = process::spanlens_command()
        .args(args)
        .output()
        .expect("the spanlens binary runs");
    assert!(
        out.status.success(),
        "spanlens {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    )
}

/// POST /v1/traces (application/x-protobuf), which must answer 200; spanlens has ingested the
/// request when this returns.
pub async fn post_protobuf(server: &Server, body: Vec<u8>) {
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/traces",
            server.http_addr().expect("HTTP on")
        ))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .expect("POST /v1/traces");
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
}

/// A minute ago, in nanoseconds since the epoch: a start time spanlens takes as recent.
pub fn minute_ago_ns() -> u64 {
    (SystemTime::now() - Duration::from_secs(60))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Every single network call of a test is bounded by this ([`bounded`]).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// `call`, which must finish within [`CALL_TIMEOUT`]: a server that hangs fails the test
/// instead of stalling it.
pub async fn bounded<T>(what: &str, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {CALL_TIMEOUT:?}"))
}

/// Polls `check` every `every` until it returns Some or `timeout` passes.
pub async fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `probe` every 100 ms until it returns Ok; panics after `timeout` with `what` and
/// the last probe's description.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let mut last = String::new();
    let found = poll(timeout, Duration::from_millis(100), async || {
        match probe().await {
            Ok(value) => Some(value),
            Err(seen) => {
                last = seen;
                None
            }
        }
    })
    .await;
    found.unwrap_or_else(|| panic!("{what}: not within {timeout:?}; last seen: {last}"))
}

/// A small deterministic generator (splitmix64): ids, durations and bytes without a
/// dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
