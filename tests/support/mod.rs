//! Shared by the end-to-end tests: start spanlens in-process on ephemeral loopback ports,
//! scrape it, and read values out of the Prometheus text exposition.
#![allow(dead_code)]

pub mod downstream;
pub mod pki;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use spanlens::config::Config;
use spanlens::server::Server;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

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
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spanlens"))
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

/// Collects a spawned child's stderr line by line on a thread: the vector holds the lines
/// read so far (stderr must have been piped).
pub fn collect_stderr(
    child: &mut std::process::Child,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr is piped");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}
