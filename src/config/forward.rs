//! The `forward` section: downstream OTLP endpoints that receive every accepted request, the
//! queue in front of them, retries, the optional persistent queue and the shutdown drain.

use super::validate::check_positive;
use super::{Problems, PromDuration};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Where accepted requests go; forwarding is off when this is empty.
    pub endpoints: Vec<EndpointConfig>,
    /// Between receiving and sending, per endpoint.
    pub queue: QueueConfig,
    pub retry: RetryConfig,
    /// A write-ahead log of queued requests that survives a crash or restart.
    pub persistent: Option<PersistentConfig>,
    /// On shutdown, how long queued requests are still sent (a Prometheus duration).
    pub drain_timeout: PromDuration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            endpoints: Vec::new(),
            queue: QueueConfig::default(),
            retry: RetryConfig::default(),
            persistent: None,
            drain_timeout: PromDuration::secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardProtocol {
    /// OTLP/gRPC TraceService/Export.
    Grpc,
    /// OTLP/HTTP protobuf, POST to `{url}/v1/traces` (or to the url when it has a path).
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// The `endpoint` label of the forwarding metrics; the url when unset.
    pub name: Option<String>,
    /// `http://host:port` or `https://host:port` (OTLP/HTTP may add a path).
    pub url: String,
    #[serde(default = "default_protocol")]
    pub protocol: ForwardProtocol,
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Sent with every request (such as an authorization header or a tenant id).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub tls: Option<TlsConfig>,
    /// Per attempt (a Prometheus duration).
    #[serde(default = "default_timeout")]
    pub timeout: PromDuration,
}

impl EndpointConfig {
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.url)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate authorities trusted for this endpoint.
    pub ca_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Answer 503 / UNAVAILABLE with Retry-After: the client's exporter retries, nothing is
    /// lost; the refused request is counted only as refused (never observed in any metric).
    Refuse,
    /// Drop the oldest queued request and count its spans.
    DropOldest,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub max_requests: usize,
    pub max_bytes: usize,
    /// Requests in flight at once, per endpoint.
    pub senders: usize,
    pub when_full: WhenFull,
    /// What refused clients are told to wait (Retry-After; a Prometheus duration).
    pub retry_after: PromDuration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_requests: 1_000,
            max_bytes: 64 * 1024 * 1024,
            senders: 4,
            when_full: WhenFull::Refuse,
            retry_after: PromDuration::secs(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// The first wait; each retry doubles it (with ±50% jitter) up to max_interval.
    pub initial_interval: PromDuration,
    pub max_interval: PromDuration,
    /// A request still failing after this long is given up and counted failed.
    pub max_elapsed: PromDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_interval: PromDuration::millis(500),
            max_interval: PromDuration::secs(30),
            max_elapsed: PromDuration::minutes(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistentConfig {
    /// One subdirectory per endpoint is kept here, and the lock file (`spanlens.lock`, with
    /// the holder's pid) that keeps a second process out.
    pub directory: PathBuf,
    /// Disk used per endpoint; when reached, new data is refused (503 / UNAVAILABLE).
    #[serde(default = "default_persistent_bytes")]
    pub max_bytes: u64,
}

impl ForwardConfig {
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }
}

fn default_protocol() -> ForwardProtocol {
    ForwardProtocol::Grpc
}
fn default_compression() -> Compression {
    Compression::Gzip
}
fn default_timeout() -> PromDuration {
    PromDuration::secs(5)
}
fn default_persistent_bytes() -> u64 {
    1024 * 1024 * 1024
}

/// Checks the section; `max_request_bytes` is the receivers' limit (a queued request is at
/// most that big).
pub(super) fn check(f: &ForwardConfig, max_request_bytes: Option<usize>, problems: &mut Problems) {
    let durations = [
        (&f.drain_timeout, "forward.drain_timeout"),
        (&f.queue.retry_after, "forward.queue.retry_after"),
        (&f.retry.initial_interval, "forward.retry.initial_interval"),
        (&f.retry.max_interval, "forward.retry.max_interval"),
        (&f.retry.max_elapsed, "forward.retry.max_elapsed"),
    ];
    for (value, path) in durations {
        check_positive(value, path, problems);
    }
    if f.retry.max_interval.get() < f.retry.initial_interval.get() {
        problems.add(
            "forward.retry.max_interval",
            "must be at least retry.initial_interval",
        );
    }
    let mut names = std::collections::HashSet::new();
    for (i, e) in f.endpoints.iter().enumerate() {
        let path = format!("forward.endpoints[{i}]");
        let scheme = e.url.split_once("://").map(|(s, _)| s);
        let uri = e.url.parse::<http::Uri>();
        let credentials = uri
            .as_ref()
            .is_ok_and(|u| u.authority().is_some_and(|a| a.as_str().contains('@')));
        match (scheme, uri) {
            // Never echo the url here: it holds a secret.
            _ if credentials => problems.add(
                format!("{path}.url"),
                "must not carry credentials (user:password@); send them with `headers`, such as authorization",
            ),
            (Some("http" | "https"), Ok(uri)) if uri.host().is_some() => {}
            _ => problems.add(
                format!("{path}.url"),
                format!(
                    "`{}` is not an http:// or https:// url with a host (such as http://127.0.0.1:4317)",
                    e.url
                ),
            ),
        }
        if e.tls.is_some() && scheme != Some("https") {
            problems.add(format!("{path}.tls"), "tls applies to https:// urls only");
        }
        check_positive(&e.timeout, &format!("{path}.timeout"), problems);
        for (name, value) in &e.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                problems.add(
                    format!("{path}.headers.{name}"),
                    "not a valid HTTP header name and value",
                );
            }
        }
        if !names.insert(directory_name(e.label())) {
            problems.add(
                format!("{path}.name"),
                format!(
                    "`{}` names two endpoints (or two whose persistent queue directories would be the same); give each a unique name",
                    e.label()
                ),
            );
        }
    }
    let q = &f.queue;
    if q.max_requests == 0 {
        problems.add("forward.queue.max_requests", "must be at least 1");
    }
    if q.senders == 0 || q.senders > 256 {
        problems.add("forward.queue.senders", "must be between 1 and 256");
    }
    if let Some(limit) = max_request_bytes
        && q.max_bytes < limit
    {
        problems.add(
            "forward.queue.max_bytes",
            format!(
                "must be at least receivers.max_request_bytes ({limit}) so that any accepted request fits"
            ),
        );
    }
    if let Some(p) = &f.persistent {
        if p.directory.as_os_str().is_empty() {
            problems.add("forward.persistent.directory", "must name a directory");
        }
        if let Some(limit) = max_request_bytes
            && p.max_bytes < 2 * limit as u64
        {
            problems.add(
                "forward.persistent.max_bytes",
                format!("must be at least twice receivers.max_request_bytes ({limit})"),
            );
        }
    }
}

/// The directory of an endpoint's persistent queue: its label with anything but letters,
/// digits, `-` and `_` replaced by `_`.
pub fn directory_name(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
