//! Percentiles from native histograms against the exact ones, through the real Prometheus.
//!
//! Three worker services send 20,000 `worker.step_execution` spans each with the real
//! `opentelemetry-otlp` exporter, with durations drawn from three distributions: log-normal
//! (median 40 ms), bimodal (90% near 20 ms, 10% near 400 ms) and heavy-tailed (Pareto, 10 ms
//! and up, shape 1.5). spanlens keeps the default native histograms. Debian's Prometheus 2.42
//! with `--enable-feature=native-histograms` scrapes it every second over the protobuf
//! exposition; `histogram_quantile` over each service's native histogram must come within 2%
//! of the exact nearest-rank p50, p95 and p99 of the durations sent. A second Prometheus,
//! without the flag, scrapes the text exposition: its classic estimate is printed beside
//! (`cargo nextest run --test metrics native_quantiles --no-capture`), not checked.

use crate::support;

use opentelemetry::trace::TracerProvider as _;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;
use support::chain::Chain;
use support::process::TempDir;
use support::sdk::{batching_provider, ended_now};
use support::{Rng, start, test_config};

const SPANS: usize = 20_000;
const HISTOGRAM: &str = "tasker_handler_execution_duration_seconds";
const QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];
/// The largest relative error allowed between a native estimate and the exact quantile.
const TOLERANCE: f64 = 0.02;
const SETTLE: Duration = Duration::from_secs(60);

/// Draws one duration, in nanoseconds.
type Distribution = fn(&mut Rng) -> u64;

/// The services, each with its distribution.
const SERVICES: [(&str, Distribution); 3] = [
    ("tasker-rust-worker", log_normal),
    ("tasker-python-worker", bimodal),
    ("tasker-ruby-worker", pareto),
];

fn standard_normal(rng: &mut Rng) -> f64 {
    // Box-Muller; 1 - unit() is in (0, 1].
    let (u, v) = (1.0 - rng.unit(), rng.unit());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn nanos(seconds: f64) -> u64 {
    (seconds.max(1e-6) * 1e9).round() as u64
}

fn log_normal(rng: &mut Rng) -> u64 {
    nanos(0.040 * (0.6 * standard_normal(rng)).exp())
}

fn bimodal(rng: &mut Rng) -> u64 {
    match rng.chance(0.9) {
        true => nanos(0.020 + 0.003 * standard_normal(rng)),
        false => nanos(0.400 + 0.050 * standard_normal(rng)),
    }
}

fn pareto(rng: &mut Rng) -> u64 {
    nanos(0.010 / (1.0 - rng.unit()).powf(1.0 / 1.5))
}

/// The nearest-rank quantile: the smallest value with at least q of the values at or below it.
fn exact(sorted: &[u64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.max(1) - 1] as f64 / 1e9
}

/// Sends `durations` as spans of `service` that ended now, flushing every 500 spans so that
/// the batch processor's queue never drops one.
fn send(grpc: SocketAddr, service: &'static str, durations: &[u64]) {
    let provider = batching_provider(grpc, service);
    let tracer = provider.tracer("tasker-worker");
    for chunk in durations.chunks(500) {
        for &nanos in chunk {
            let duration = Duration::from_nanos(nanos);
            ended_now(&tracer, "worker.step_execution", duration, Vec::new());
        }
        provider.force_flush().expect("flush to spanlens");
    }
    provider.shutdown().expect("shut the provider down");
}

async fn prometheus(scratch: &TempDir, target: SocketAddr, flags: &[&str]) -> Chain {
    Chain::scraping(scratch, "spanlens", vec![target.to_string()], flags).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_quantiles_are_within_two_percent_of_the_exact_ones() {
    let server = start(test_config(|_| {})).await;
    let grpc = server.grpc_addr().expect("gRPC receiver enabled");
    let mut rng = Rng::new(22);
    let mut sent = Vec::new();
    for (service, draw) in SERVICES {
        let durations: Vec<u64> = (0..SPANS).map(|_| draw(&mut rng)).collect();
        let to_send = durations.clone();
        tokio::task::spawn_blocking(move || send(grpc, service, &to_send))
            .await
            .expect("sender");
        sent.push((service, durations));
    }

    let native = prometheus(
        &TempDir::new("native_quantiles_native"),
        server.metrics_addr(),
        &["--enable-feature=native-histograms"],
    )
    .await;
    let classic = prometheus(
        &TempDir::new("native_quantiles_classic"),
        server.metrics_addr(),
        &[],
    )
    .await;

    let mut table = String::from("service q exact native (error) classic (error)\n");
    let mut worst: f64 = 0.0;
    for (service, durations) in &mut sent {
        let selector = format!("{HISTOGRAM}{{service=\"{service}\"}}");
        native
            .until("the native histogram's count", SETTLE, async || {
                let n = native
                    .scalar(&format!("histogram_count({selector})"))
                    .await?;
                (n == SPANS as f64).then_some(())
            })
            .await;
        let buckets = format!("{HISTOGRAM}_bucket{{service=\"{service}\"}}");
        classic
            .until("the classic histogram's count", SETTLE, async || {
                let n = classic
                    .scalar(&format!("{HISTOGRAM}_count{{service=\"{service}\"}}"))
                    .await?;
                (n == SPANS as f64).then_some(())
            })
            .await;
        durations.sort_unstable();
        for q in QUANTILES {
            let want = exact(durations, q);
            let got = native
                .scalar(&format!("histogram_quantile({q}, {selector})"))
                .await
                .expect("a native quantile");
            let classic_estimate = classic
                .scalar(&format!("histogram_quantile({q}, {buckets})"))
                .await
                .expect("a classic quantile");
            let error = got / want - 1.0;
            worst = worst.max(error.abs());
            writeln!(
                table,
                "{service} p{} {want:.6} {got:.6} ({:+.2}%) {classic_estimate:.6} ({:+.1}%)",
                q * 100.0,
                error * 100.0,
                (classic_estimate / want - 1.0) * 100.0
            )
            .unwrap();
        }
    }
    println!("{table}worst native error {:.2}%", worst * 100.0);
    assert!(
        worst <= TOLERANCE,
        "a native quantile is more than {}% off:\n{table}",
        TOLERANCE * 100.0
    );
}
