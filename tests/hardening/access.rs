//! Hardening item 6 — Access: the default profile listens on loopback only; bearer tokens (from
//! a file or an environment variable) guard both receivers, /metrics and the operator page,
//! and an unauthenticated request counts nothing; the token never reaches a log line
//! (RUST_LOG=debug) or check-config's output; TLS on every listener, and mutual TLS with a
//! client CA.

use crate::otlp::*;
use crate::support::Exposition;
use crate::support::process::{self, Setup, Spanlens, TempDir, output_text};
use crate::tls::{Pki, grpcs_export, https_export, https_get};
use std::process::Command;

/// A token no log line or message would contain by chance.
fn token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("hardening-{}-{nanos:08x}-Zq7", std::process::id())
}

/// Every `endpoint` value anywhere in a YAML document.
fn endpoints(value: &yaml_serde::Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        yaml_serde::Value::Mapping(map) => {
            for (k, v) in map {
                let key = k.as_str().unwrap_or_default();
                let here = format!("{path}.{key}");
                if key == "endpoint" {
                    out.push((here.clone(), v.as_str().unwrap_or_default().to_string()));
                }
                endpoints(v, &here, out);
            }
        }
        yaml_serde::Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                endpoints(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_default_profile_listens_on_loopback_only() {
    let out = Command::new(env!("CARGO_BIN_EXE_spanlens"))
        .arg("default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: yaml_serde::Value = yaml_serde::from_slice(&out.stdout).expect("YAML");
    let mut found = Vec::new();
    endpoints(&doc, "", &mut found);
    let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    for listener in [
        ".receivers.grpc.endpoint",
        ".receivers.http.endpoint",
        ".metrics.endpoint",
    ] {
        assert!(paths.contains(&listener), "{listener} missing: {found:?}");
    }
    for (path, value) in &found {
        let addr: std::net::SocketAddr = value
            .parse()
            .unwrap_or_else(|e| panic!("{path}: `{value}` is not an address: {e}"));
        assert!(
            addr.ip().is_loopback() && addr.ip() == std::net::Ipv4Addr::LOCALHOST,
            "{path} binds {addr}, not 127.0.0.1"
        );
    }
}

/// GET over plain HTTP with an optional bearer token: (status, WWW-Authenticate, body).
async fn get(url: &str, token: Option<&str>) -> (u16, Option<String>, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let www = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    (status, www, response.text().await.unwrap_or_default())
}

/// Refused for lack of a good token: 401 + WWW-Authenticate: Bearer, or UNAUTHENTICATED.
fn assert_unauthenticated(what: &str, reply: &Reply) {
    match reply.grpc {
        Some(code) => assert_eq!(code, UNAUTHENTICATED, "{what}: {reply:?}"),
        None => {
            assert_eq!(reply.http, 401, "{what}: {reply:?}");
            let www = reply.www_authenticate.as_deref().unwrap_or_default();
            assert!(
                www.to_ascii_lowercase().starts_with("bearer"),
                "{what}: WWW-Authenticate `{www}`"
            );
        }
    }
}

/// Every protocol without a token, with wrong ones, then with the right one. Returns (spans
/// accepted, refusals per protocol).
async fn exercise_receivers(app: &Spanlens, token: &str) -> (u64, [u64; 3]) {
    let wrong = [
        None,
        Some("wrong".to_string()),
        Some(format!("{token}x")),
        Some(token[..token.len() - 1].to_string()),
        Some(token.to_uppercase()),
    ];
    let mut refusals = [0u64; 3];
    let mut accepted = 0;
    for (i, proto) in Proto::ALL.into_iter().enumerate() {
        for bad in &wrong {
            let client = Otlp::new(app).with_token(bad.as_deref());
            let request = request(SERVICE, claims(3));
            let reply = client
                .send(proto, None, proto.body(&request))
                .await
                .unwrap();
            assert_unauthenticated(&format!("{proto:?} with token {bad:?}"), &reply);
            refusals[i] += 1;
        }
        // Not a bearer token at all.
        let body = proto.body(&request(SERVICE, claims(1)));
        let reply = match proto {
            Proto::Grpc => {
                let mut raw = grpc_request(
                    &format!("http://{}{EXPORT}", app.grpc()),
                    None,
                    false,
                    &body,
                    None,
                );
                raw.headers_mut()
                    .insert("authorization", format!("Basic {token}").parse().unwrap());
                let h2 = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .http2_only(true)
                .build_http();
                read_grpc(h2.request(raw).await.unwrap()).await.unwrap()
            }
            _ => {
                let mut raw = http_request(
                    &format!("http://{}{TRACES}", app.http()),
                    proto,
                    None,
                    body,
                    None,
                );
                raw.headers_mut()
                    .insert("authorization", format!("Basic {token}").parse().unwrap());
                let h1 = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http();
                read_http(proto, h1.request(raw).await.unwrap())
                    .await
                    .unwrap()
            }
        };
        assert_unauthenticated(&format!("{proto:?} with Basic auth"), &reply);
        refusals[i] += 1;
        let good = Otlp::new(app).with_token(Some(token));
        accepted += good.accepted(proto, &request(SERVICE, claims(4))).await;
    }
    (accepted, refusals)
}

fn assert_counted(scraped: &Exposition, accepted: u64, refusals: [u64; 3]) {
    assert_eq!(
        scraped.sum(RECEIVED, &[]),
        accepted as f64,
        "unauthenticated requests count no span received"
    );
    assert_eq!(scraped.sum(ACCEPTED, &[]), accepted as f64);
    assert_eq!(scraped.sum(CLAIM_COUNT, CLAIM_LABELS), accepted as f64);
    for (i, proto) in Proto::ALL.into_iter().enumerate() {
        assert_eq!(
            scraped.sum(
                REQUESTS_REFUSED,
                &[("protocol", proto.label()), ("reason", "unauthenticated")]
            ),
            refusals[i] as f64,
            "{REQUESTS_REFUSED}{{protocol={},reason=unauthenticated}}",
            proto.label()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_from_a_file_guards_receivers_and_metrics_and_never_leaks() {
    let token = token();
    let dir = TempDir::new("auth");
    let token_file = dir.write("token", format!("{token}\n"));
    let token_file = token_file.to_str().unwrap().to_string();
    let mut app = Setup::new()
        .set_str("receivers.auth.bearer_token_file", &token_file)
        .set_str("metrics.auth.bearer_token_file", &token_file)
        .env("RUST_LOG", "debug")
        .start_in(dir);

    let (accepted, refusals) = exercise_receivers(&app, &token).await;

    // /metrics: 401 without the token or with a wrong one, 200 with it.
    let url = app.metrics_url();
    for bad in [None, Some("wrong"), Some(&token[1..])] {
        let (status, www, _) = get(&url, bad).await;
        assert_eq!(status, 401, "/metrics with token {bad:?}");
        assert!(
            www.unwrap_or_default()
                .to_ascii_lowercase()
                .starts_with("bearer"),
            "/metrics 401 names the Bearer scheme"
        );
    }
    let (status, _, body) = get(&url, Some(&token)).await;
    assert_eq!(status, 200, "/metrics with the token");
    // The operator page and its stylesheet and script take the same token.
    for page in [
        "/",
        "/compare",
        "/task/no-such-task",
        "/page.css",
        "/page.js",
    ] {
        let page_url = url.replace("/metrics", page);
        let (status, _, _) = get(&page_url, None).await;
        assert_eq!(status, 401, "{page} without a token");
        let (status, _, _) = get(&page_url, Some(&token)).await;
        let found = if page.starts_with("/task/") { 404 } else { 200 };
        assert_eq!(status, found, "{page} with the token");
    }
    // The probes stay open: the kubelet calls them without credentials.
    for probe in ["/healthz", "/readyz"] {
        let (status, _, _) = get(&url.replace("/metrics", probe), None).await;
        assert_eq!(status, 200, "{probe} without a token");
    }
    assert_counted(&Exposition::parse(&body), accepted, refusals);
    assert!(!body.contains(&token), "/metrics shows the token");

    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
    let log = app.stderr_text();
    assert!(
        log.lines().count() > 5,
        "RUST_LOG=debug logs something:\n{log}"
    );
    assert!(
        !log.contains(&token),
        "the token is in spanlens's stderr:\n{}",
        log.lines()
            .filter(|l| l.contains(&token))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_from_the_environment_guards_receivers() {
    let token = token();
    let mut app = Setup::new()
        .set(
            "receivers.auth.bearer_token_env",
            "SPANLENS_HARDENING_TOKEN",
        )
        .env("SPANLENS_HARDENING_TOKEN", &token)
        .env("RUST_LOG", "debug")
        .start();
    let (accepted, refusals) = exercise_receivers(&app, &token).await;
    // No metrics.auth: /metrics is open.
    assert_counted(&app.scrape().await, accepted, refusals);
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(
        !app.stderr_text().contains(&token),
        "the token from the environment is in spanlens's stderr"
    );
}

/// `spanlens check-config FILE` with `env`: (success, stdout + stderr).
fn check_config(file: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = process::check_config(file, env);
    (out.status.success(), output_text(&out))
}

#[test]
fn check_config_never_prints_the_token() {
    let token = token();
    let dir = TempDir::new("check-config");
    let token_file = dir.write("token", &token);
    let token_file = token_file.to_str().unwrap();
    let env = [("SPANLENS_HARDENING_TOKEN", token.as_str())];

    let good = Setup::new()
        .set_str("receivers.auth.bearer_token_file", token_file)
        .set("metrics.auth.bearer_token_env", "SPANLENS_HARDENING_TOKEN");
    let path = dir.write("good.yaml", good.yaml());
    let (ok, output) = check_config(&path, &env);
    assert!(ok, "a config with auth is valid: {output}");
    assert!(
        !output.contains(&token),
        "check-config printed the token:\n{output}"
    );

    let broken = [
        (
            "both a file and an environment variable",
            Setup::new()
                .set_str("receivers.auth.bearer_token_file", token_file)
                .set(
                    "receivers.auth.bearer_token_env",
                    "SPANLENS_HARDENING_TOKEN",
                ),
        ),
        (
            "the token inline",
            Setup::new().set_str("receivers.auth.bearer_token", &token),
        ),
        (
            "the token inline next to a file",
            Setup::new()
                .set_str("metrics.auth.bearer_token_file", token_file)
                .set_str("metrics.auth.token", &token),
        ),
    ];
    for (what, setup) in broken {
        let path = dir.write("broken.yaml", setup.yaml());
        let (ok, output) = check_config(&path, &env);
        assert!(!ok, "{what}: check-config accepted it:\n{output}");
        assert!(
            !output.contains(&token),
            "{what}: check-config printed the token:\n{output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_every_listener() {
    let pki = Pki::new();
    let dir = TempDir::new("tls");
    let (_, cert, key) = pki.write(&dir);
    let tls = format!(
        "{{cert_file: {}, key_file: {}}}",
        serde_json::to_string(cert.to_str().unwrap()).unwrap(),
        serde_json::to_string(key.to_str().unwrap()).unwrap()
    );
    let mut app = Setup::new()
        .set("receivers.grpc.tls", &tls)
        .set("receivers.http.tls", &tls)
        .set("metrics.tls", &tls)
        .start_in(dir);
    let h1 = pki.client_config(None, &[b"http/1.1"]);
    let h2 = pki.client_config(None, &[b"h2"]);
    let mut accepted = 0;

    for proto in [Proto::HttpProtobuf, Proto::HttpJson] {
        let request = request(SERVICE, claims(3));
        let reply = https_export(app.http(), h1.clone(), proto, proto.body(&request), None)
            .await
            .unwrap_or_else(|e| panic!("{proto:?} over TLS: {e}"));
        assert!(reply.accepted(), "{proto:?} over TLS: {reply:?}");
        accepted += 3;
    }
    let two = request(SERVICE, claims(2));
    let reply = grpcs_export(app.grpc(), h2.clone(), Proto::Grpc.body(&two), None)
        .await
        .unwrap_or_else(|e| panic!("gRPC over TLS: {e}"));
    assert!(reply.accepted(), "gRPC over TLS: {reply:?}");
    accepted += 2;

    // Plain text to the TLS ports gets nowhere.
    let plain = Otlp::new(&app);
    for proto in Proto::ALL {
        let request = request(SERVICE, claims(1));
        let reply = plain.send(proto, None, proto.body(&request)).await;
        assert!(
            !matches!(&reply, Ok(r) if r.accepted()),
            "plain-text {proto:?} to a TLS port was accepted: {reply:?}"
        );
    }
    let plain_metrics = reqwest::Client::new()
        .get(format!("http://{}/metrics", app.metrics))
        .send()
        .await;
    assert!(
        !matches!(&plain_metrics, Ok(r) if r.status() == 200),
        "plain-text GET /metrics on the TLS port answered 200"
    );

    // /metrics over TLS.
    let (status, _, body) = https_get(app.metrics, h1.clone(), "/metrics", None)
        .await
        .unwrap_or_else(|e| panic!("/metrics over TLS: {e}"));
    assert_eq!(status, 200);
    let scraped = Exposition::parse(&body);
    assert_eq!(scraped.sum(ACCEPTED, &[]), accepted as f64);
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = Pki::new();
    let dir = TempDir::new("mtls");
    let (ca, cert, key) = pki.write(&dir);
    let quoted = |p: &std::path::Path| serde_json::to_string(p.to_str().unwrap()).unwrap();
    let tls = format!(
        "{{cert_file: {}, key_file: {}, client_ca_file: {}}}",
        quoted(&cert),
        quoted(&key),
        quoted(&ca)
    );
    let mut app = Setup::new()
        .set("receivers.grpc.tls", &tls)
        .set("receivers.http.tls", &tls)
        .start_in(dir);
    let mut accepted = 0;

    for (who, id, admitted) in [
        ("no client certificate", None, false),
        ("a certificate signed by the CA", Some(&pki.client), true),
        ("a self-signed certificate", Some(&pki.rogue), false),
    ] {
        let h1 = pki.client_config(id, &[b"http/1.1"]);
        let h2 = pki.client_config(id, &[b"h2"]);
        let request = request(SERVICE, claims(2));
        let http = https_export(
            app.http(),
            h1,
            Proto::HttpProtobuf,
            Proto::HttpProtobuf.body(&request),
            None,
        )
        .await;
        let request = request_of(vec![(SERVICE.to_string(), claims(3))]);
        let grpc = grpcs_export(app.grpc(), h2, Proto::Grpc.body(&request), None).await;
        if admitted {
            let http = http.unwrap_or_else(|e| panic!("HTTP with {who}: {e}"));
            assert!(http.accepted(), "HTTP with {who}: {http:?}");
            let grpc = grpc.unwrap_or_else(|e| panic!("gRPC with {who}: {e}"));
            assert!(grpc.accepted(), "gRPC with {who}: {grpc:?}");
            accepted += 5;
        } else {
            assert!(
                http.is_err(),
                "HTTP with {who}: the handshake must fail, got {http:?}"
            );
            assert!(
                grpc.is_err(),
                "gRPC with {who}: the handshake must fail, got {grpc:?}"
            );
        }
    }
    // /metrics has no TLS here.
    let scraped = app.scrape().await;
    assert_eq!(scraped.sum(ACCEPTED, &[]), accepted as f64);
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_without_a_token_still_gets_its_401() {
    let token = token();
    let mut app = Setup::new()
        .set(
            "receivers.auth.bearer_token_env",
            "SPANLENS_HARDENING_TOKEN",
        )
        .env("SPANLENS_HARDENING_TOKEN", &token)
        .start();
    // The refusal is decided from the headers; the client is still sending its 4 MiB body.
    // An OTLP exporter must still read 401 / UNAUTHENTICATED (not a reset connection), or it
    // cannot tell a missing token from a network failure and retries forever.
    let client = Otlp::new(&app);
    let mut failures = Vec::new();
    for round in 0..5 {
        for proto in Proto::ALL {
            let body = proto.body(&padded(claims(1), 4 * 1024 * 1024));
            let started = std::time::Instant::now();
            let sent = client.send(proto, None, body).await;
            let took = started.elapsed();
            if took > std::time::Duration::from_secs(2) {
                failures.push(format!("{proto:?}: answered after {took:?}: {sent:?}"));
            }
            match sent {
                Ok(reply) => {
                    assert_unauthenticated(&format!("{proto:?} 4 MiB, round {round}"), &reply)
                }
                Err(e) => failures.push(format!("{proto:?}: {e}")),
            }
        }
    }
    let scraped = app.scrape().await;
    assert_eq!(scraped.sum(RECEIVED, &[]), 0.0);
    assert!(
        failures.is_empty(),
        "{} of 15 large unauthenticated requests got no answer in time, e.g. {:?}",
        failures.len(),
        failures.iter().take(3).collect::<Vec<_>>()
    );
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}
