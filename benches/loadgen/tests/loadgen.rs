//! spanlens-loadgen against a spanlens started in this process: what it reports agrees with
//! what the server counted (spans accepted, requests it timed), over gRPC and over OTLP/HTTP
//! with gzip, and it polls /metrics when asked to.

use serde_json::Value;
use spanlens::config::Config;
use spanlens::server::Server;
use std::net::SocketAddr;

/// The default profile with every listener on 127.0.0.1:0.
fn test_config() -> Config {
    let mut config = Config::default_profile();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    config.receivers.grpc.endpoint = any;
    config.receivers.http.endpoint = any;
    config.metrics.endpoint = any;
    config
}

/// GET /metrics in the text format.
async fn scrape(server: &Server) -> Exposition {
    let response = reqwest::get(format!("http://{}/metrics", server.metrics_addr()))
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    Exposition(response.text().await.expect("exposition"))
}

/// A text exposition (format 0.0.4).
struct Exposition(String);

impl Exposition {
    /// The value of the one sample named `name` whose labels include all of `labels`; None
    /// when there is no such sample, a panic when several match.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let line = line.split(" # ").next()?;
                let (series, value) = line.rsplit_once(' ')?;
                let (sample, labelled) = series.split_once('{').unwrap_or((series, ""));
                let labelled = format!(",{labelled}");
                (sample == name
                    && labels
                        .iter()
                        .all(|(k, v)| labelled.contains(&format!(",{k}=\"{v}\""))))
                .then(|| value.parse().expect("a sample value"))
            })
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
        found.first().copied()
    }
}

/// Runs the load generator with `args` plus `--json`; returns its report.
fn loadgen(args: &[String]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spanlens-loadgen"))
        .args(args)
        .arg("--json")
        .output()
        .expect("spanlens-loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "spanlens-loadgen {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("report is not JSON ({e}): {stdout}"))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_what_the_server_counted() {
    let server = Server::start(test_config()).await.expect("spanlens starts");
    let grpc = format!("http://{}", server.grpc_addr().expect("gRPC on"));
    let http = format!("http://{}", server.http_addr().expect("HTTP on"));
    let metrics = format!("http://{}/metrics", server.metrics_addr());
    let pid = std::process::id().to_string();

    let run = |protocol: &str, target: &str, extra: &[&str]| {
        let mut list = args(&[
            "--protocol",
            protocol,
            "--target",
            target,
            "--requests",
            "12",
            "--spans-per-request",
            "100",
            "--distinct-requests",
            "4",
            "--gzip-variants",
            "3",
            "-c",
            "2",
            "--warmup",
            "0s",
            "--server-pid",
            &pid,
            "--server-metrics-url",
            &metrics,
        ]);
        list.extend(args(extra));
        async move {
            tokio::task::spawn_blocking(move || loadgen(&list))
                .await
                .unwrap()
        }
    };

    let grpc_report = run("grpc", &grpc, &[]).await;
    let http_report = run(
        "http-protobuf",
        &http,
        &[
            "--gzip",
            "--scrape-url",
            &metrics,
            "--scrape-interval",
            "10ms",
        ],
    )
    .await;

    let exposition = scrape(&server).await;
    for (label, report) in [("grpc", &grpc_report), ("http_protobuf", &http_report)] {
        assert_eq!(report["requests"], 12, "{label}: {report}");
        assert_eq!(report["failed_requests"], 0, "{label}: {report}");
        assert_eq!(report["spans_accepted"], 1200, "{label}: {report}");
        let timed = &report["server_latency_ms"];
        assert_eq!(timed["requests"], 12, "{label}: {report}");
        assert!(timed["p99_at_most"].as_f64().is_some(), "{label}: {report}");
        // Server CPU comes from /proc in clock ticks: too coarse to be above zero here.
        assert!(
            report["server"]["cpu_seconds"].as_f64().is_some()
                && report["server"]["peak_rss_mib_since_start"]
                    .as_f64()
                    .is_some_and(|v| v > 0.0),
            "{label}: {report}"
        );
        let protocol = [("protocol", label)];
        assert_eq!(
            exposition.value("spanlens_spans_accepted_total", &protocol),
            Some(1200.0),
            "{label}"
        );
        assert_eq!(
            exposition.value("spanlens_request_duration_seconds_count", &protocol),
            Some(12.0),
            "{label}"
        );
    }
    assert_eq!(http_report["gzip"], true);
    assert!(
        http_report["scrapes"]["count"]
            .as_u64()
            .is_some_and(|n| n >= 1)
            && http_report["scrapes"]["failed"] == 0,
        "{http_report}"
    );
    server.shutdown().await;
}
