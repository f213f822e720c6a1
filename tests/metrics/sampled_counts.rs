//! Sampled spans counted as the operations they stand for, through the real exporter.
//!
//! The OpenTelemetry SDK has no sampler that writes the W3C tracestate's `ot=th` threshold,
//! so this test has one: [`ThresholdSampler`] keeps a trace when the 56 random bits of its
//! trace id reach the threshold, as consistent probability sampling does, and records the
//! threshold. One worker service sends half its spans through it at 10% (`th:e666`), the
//! other half unsampled, with the same durations in each half; a second service sends spans
//! whose sampling values are malformed.
//!
//! Checked: calls and histogram counts equal the sum of the adjusted counts (to the float
//! rounding of summing them: a span counted wrong moves the total a thousand times more),
//! every bucket grows by the same factor so that every quantile is unchanged, malformed
//! values count 1 and are counted by reason, and the real Prometheus 2.42 reads the
//! fractional counts from the text and the native protobuf expositions alike.

use crate::exposition_formats::{check_with_promtool, check_with_python};
use crate::support;

use opentelemetry::trace::{
    Link, Span as _, SpanKind, TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};
use support::chain::Chain;
use support::process::TempDir;
use support::sdk::{Transport, exporter, resource};
use support::{Exposition, parse_le, scrape, scrape_as, start, test_config};

const SAMPLED_SERVICE: &str = "tasker-rust-worker";
const MALFORMED_SERVICE: &str = "tasker-python-worker";
/// 10% to four hex digits: T = 0xe666 × 2⁴⁰, kept with probability 0x199a / 2¹⁶.
const THRESHOLD_DIGITS: &str = "e666";
const ADJUSTED: f64 = 65536.0 / 6554.0;
/// Durations in milliseconds; each half sends each one this many times.
const DURATIONS_MS: [u64; 12] = [3, 7, 12, 18, 30, 45, 80, 120, 200, 330, 600, 1100];
const EACH: usize = 10;
const MALFORMED: [(&str, &str); 3] = [
    ("th:0123456789abcde", "th_too_long"),
    ("th:zz", "th_not_hex"),
    ("p:64", "p_out_of_range"),
];
const STAGE: &str = "tasker_step_claim";

/// Keeps a trace when the low 56 bits of its id (its randomness) are at or above the
/// threshold, and records the threshold (or, with `malformed`, that text) in tracestate.
#[derive(Debug, Clone)]
struct ThresholdSampler {
    ot: String,
    threshold: u64,
}

impl ThresholdSampler {
    fn at(digits: &str) -> ThresholdSampler {
        let value = u64::from_str_radix(digits, 16).expect("hex");
        ThresholdSampler {
            ot: format!("th:{digits}"),
            threshold: value << (4 * (14 - digits.len())),
        }
    }

    /// Keeps every trace and writes `ot` as it is.
    fn writing(ot: &str) -> ThresholdSampler {
        ThresholdSampler {
            ot: ot.to_string(),
            threshold: 0,
        }
    }
}

impl ShouldSample for ThresholdSampler {
    fn should_sample(
        &self,
        _parent: Option<&Context>,
        trace_id: TraceId,
        _name: &str,
        _kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let randomness = (u128::from_be_bytes(trace_id.to_bytes()) as u64) & ((1 << 56) - 1);
        let keep = randomness >= self.threshold;
        SamplingResult {
            decision: match keep {
                true => SamplingDecision::RecordAndSample,
                false => SamplingDecision::Drop,
            },
            attributes: Vec::new(),
            trace_state: TraceState::from_key_value([("ot", self.ot.as_str())])
                .expect("a valid tracestate member"),
        }
    }
}

fn provider(
    grpc: SocketAddr,
    service: &'static str,
    sampler: Option<ThresholdSampler>,
) -> SdkTracerProvider {
    let exporter = exporter(
        Transport::Grpc(None),
        Some(grpc),
        None,
        Duration::from_secs(10),
    );
    let builder = SdkTracerProvider::builder()
        .with_resource(resource(service))
        .with_batch_exporter(exporter);
    match sampler {
        Some(sampler) => builder.with_sampler(sampler),
        None => builder,
    }
    .build()
}

/// Sends `count` kept `step_claim` spans of `duration`: spans the sampler drops are started
/// again (new traces) until one is kept. Returns how many traces that took.
fn send_kept(provider: &SdkTracerProvider, duration: Duration, count: usize) -> usize {
    let tracer = provider.tracer("tasker-worker");
    let (mut kept, mut tried) = (0, 0);
    while kept < count {
        tried += 1;
        let end = SystemTime::now();
        let mut span = tracer
            .span_builder("step_claim")
            .with_kind(SpanKind::Internal)
            .with_start_time(end - duration)
            .start(&tracer);
        if span.is_recording() {
            span.end_with_timestamp(end);
            kept += 1;
        }
    }
    tried
}

fn send_all(grpc: SocketAddr) -> usize {
    let sampled = provider(
        grpc,
        SAMPLED_SERVICE,
        Some(ThresholdSampler::at(THRESHOLD_DIGITS)),
    );
    let unsampled = provider(grpc, SAMPLED_SERVICE, None);
    let mut traces = 0;
    for ms in DURATIONS_MS {
        traces += send_kept(&sampled, Duration::from_millis(ms), EACH);
        send_kept(&unsampled, Duration::from_millis(ms), EACH);
    }
    let malformed: Vec<SdkTracerProvider> = MALFORMED
        .iter()
        .map(|(ot, _)| provider(grpc, MALFORMED_SERVICE, Some(ThresholdSampler::writing(ot))))
        .collect();
    for p in &malformed {
        send_kept(p, Duration::from_millis(5), 1);
    }
    for p in malformed.iter().chain([&sampled, &unsampled]) {
        p.force_flush().expect("flush to spanlens");
        p.shutdown().expect("shut the provider down");
    }
    traces
}

/// Relative difference, for totals summed in another order than the expectation's.
fn assert_same(got: Option<f64>, want: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: absent"));
    assert!(
        (got - want).abs() <= want.abs() * 1e-12,
        "{what}: {got}, expected {want}"
    );
}

/// histogram_quantile's estimate over cumulative (bound, count) buckets.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().expect("+Inf").1;
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            return lower.0 + (bound - lower.0) * (rank - lower.1) / (count - lower.1);
        }
        lower = (bound, count);
    }
    unreachable!("the +Inf bucket holds every observation")
}

/// Cumulative counts per bound of the test's durations, each sent `EACH` times per half.
fn unweighted_buckets(bounds: &[f64]) -> Vec<(f64, f64)> {
    bounds
        .iter()
        .map(|&bound| {
            let at_or_below = DURATIONS_MS
                .iter()
                .filter(|&&ms| ms as f64 / 1000.0 <= bound)
                .count();
            (bound, (at_or_below * EACH) as f64)
        })
        .collect()
}

fn check_scrape(text: &Exposition) {
    let worker = [("service", SAMPLED_SERVICE), ("handler_language", "rust")];
    let spans_per_half = (DURATIONS_MS.len() * EACH) as f64;
    let expected = spans_per_half * ADJUSTED + spans_per_half;
    let calls = format!("{STAGE}_calls_total");
    assert_same(text.value(&calls, &worker), expected, "calls");
    let histogram = format!("{STAGE}_duration_seconds");
    let count = format!("{histogram}_count");
    assert_same(text.value(&count, &worker), expected, "histogram count");
    let buckets: Vec<(f64, f64)> = (text.buckets(&histogram, &worker).iter())
        .map(|(le, n)| (parse_le(le), *n))
        .collect();
    let bounds: Vec<f64> = buckets.iter().map(|(b, _)| *b).collect();
    let unweighted = unweighted_buckets(&bounds);
    for ((bound, got), (_, plain)) in buckets.iter().zip(&unweighted) {
        assert_same(
            Some(*got),
            plain * (ADJUSTED + 1.0),
            &format!("bucket le={bound}"),
        );
    }
    for q in [0.5, 0.95, 0.99] {
        let (weighted, plain) = (quantile(&buckets, q), quantile(&unweighted, q));
        assert!(
            (weighted - plain).abs() <= plain * 1e-12,
            "p{q}: {weighted} weighted, {plain} counting each span once"
        );
    }
    let python = [
        ("service", MALFORMED_SERVICE),
        ("handler_language", "python"),
    ];
    assert_eq!(text.value(&calls, &python), Some(MALFORMED.len() as f64));
    for (_, reason) in MALFORMED {
        let labels = [("protocol", "grpc"), ("reason", reason)];
        assert_eq!(
            text.value("spanlens_sampling_ignored_total", &labels),
            Some(1.0),
            "{reason}"
        );
    }
    let grpc = [("protocol", "grpc")];
    let accepted = 2.0 * spans_per_half + MALFORMED.len() as f64;
    assert_eq!(
        text.value("spanlens_spans_accepted_total", &grpc),
        Some(accepted)
    );
    assert_same(
        text.value("spanlens_spans_adjusted_total", &grpc),
        expected + MALFORMED.len() as f64,
        "adjusted total",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_spans_count_as_the_operations_they_stand_for() {
    let server = start(test_config(|_| {})).await;
    let grpc = server.grpc_addr().expect("gRPC receiver enabled");
    let traces = tokio::task::spawn_blocking(move || send_all(grpc))
        .await
        .expect("sender");
    // About 10 traces per kept one: the sampler samples.
    let kept = DURATIONS_MS.len() * EACH;
    assert!(
        traces > 5 * kept && traces < 20 * kept,
        "{traces} traces for {kept} kept"
    );

    let text = support::eventually("every span counted", Duration::from_secs(10), async || {
        let text = scrape(&server).await;
        let accepted = text.value("spanlens_spans_accepted_total", &[("protocol", "grpc")]);
        match accepted == Some((2 * kept + MALFORMED.len()) as f64) {
            true => Ok(text),
            false => Err(format!("{accepted:?} spans accepted")),
        }
    })
    .await;
    check_scrape(&text);

    let (_, om) = scrape_as(&server, Some("application/openmetrics-text; version=1.0.0")).await;
    check_with_python(om).await;
    let (_, plain) = scrape_as(&server, Some("text/plain; version=0.0.4")).await;
    check_with_promtool(plain).await;

    // Prometheus 2.42 asks for OpenMetrics without the native flag, where histogram counts
    // must be integers (rounded: see the exposition), and for protobuf with it, which carries
    // the fraction.
    let expected = kept as f64 * (ADJUSTED + 1.0);
    let selector = format!("{STAGE}_duration_seconds{{service=\"{SAMPLED_SERVICE}\"}}");
    for (flags, query, want) in [
        (
            &[][..],
            format!("{STAGE}_duration_seconds_count{{service=\"{SAMPLED_SERVICE}\"}}"),
            expected.round(),
        ),
        (
            &["--enable-feature=native-histograms"][..],
            format!("histogram_count({selector})"),
            expected,
        ),
    ] {
        let scratch = TempDir::new("sampled_counts_prometheus");
        let target = vec![server.metrics_addr().to_string()];
        let chain = Chain::scraping(&scratch, "spanlens", target, flags).await;
        let got = chain
            .until(&query, Duration::from_secs(30), async || {
                chain.scalar(&query).await
            })
            .await;
        assert!(
            (got - want).abs() <= want * 1e-12,
            "Prometheus {flags:?}: {query} = {got}, expected {want}"
        );
        let calls = format!("{STAGE}_calls_total{{service=\"{SAMPLED_SERVICE}\"}}");
        let got = chain.scalar(&calls).await.expect("calls scraped");
        assert!(
            (got - expected).abs() <= expected * 1e-12,
            "Prometheus {flags:?}: {calls} = {got}, expected {expected}"
        );
    }
}
