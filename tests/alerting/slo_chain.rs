//! Latency SLO burn-rate alerts through the real chain: spanlens → Prometheus → Alertmanager
//! → webhook (`support::chain`).
//!
//! spanlens runs in-process with `stages.handler_execution.slo: { objective: 0.999,
//! threshold: 250ms }` (250 ms is a default bucket bound), so the error budget is 0.1%: the
//! fast burn fires above 1.44% slow over both 1h and 5m, the slow burn above 0.6% over both
//! 6h and 30m. The windows are the SRE workbook's; Prometheus has about a minute of data, and
//! rate() over [1h] uses what there is, so every window sees the same spans here.
//! Alertmanager routes `severity="critical"` (the fast burn) to the webhook.
//!
//! The real `opentelemetry-otlp` exporter (gRPC) sends `worker.step_execution` spans of two
//! services, 50 a second each: `tasker-ruby-worker` with 5% of them (1 in 20) at 400 ms, a 50×
//! burn, which must reach the webhook as `HandlerExecutionSLOFastBurn` (and fire the slow
//! burn in Prometheus); `tasker-python-worker` with 0.5% (1 in 200, from its 200th span on),
//! a 5× burn under both rates, which must never alert, in `ALERTS` or at the webhook, while
//! its recorded slow ratio shows the slow spans were counted.
//!
//! (The example, 5% slow against a 99% objective, is a 5× burn: under both 14.4× and
//! 6×, so it must not fire. Hence 0.999 here.)
//!
//! With classic histograms, Prometheus scrapes text/OpenMetrics and the rules read
//! `_bucket{le="0.25"}` and `_count`. The native variant starts Prometheus with
//! `--enable-feature=native-histograms` and generates `alerting.histograms: native` rules
//! (`histogram_fraction` of the native histogram), which Prometheus scrapes over the protobuf
//! exposition. Both variants also check what Prometheus stored: classic series only from
//! text scrapes, the native histogram only with the flag.

use crate::support;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracer;
use serde_json::Value;
use spanlens::config::{HistogramKind, PromDuration, SloConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::chain::{Chain, ChainSpec};
use support::process::TempDir;
use support::sdk::{batching_provider, ended_now};
use support::{scrape, start, test_config};

const STAGE: &str = "handler_execution";
const FAST_BURN: &str = "HandlerExecutionSLOFastBurn";
const SLOW_BURN: &str = "HandlerExecutionSLOSlowBurn";
const SPAN_NAME: &str = "worker.step_execution";
/// 5% slow: pages.
const BURNING: (&str, &str) = ("tasker-ruby-worker", "ruby");
/// 0.5% slow: silent.
const STEADY: (&str, &str) = ("tasker-python-worker", "python");

const OBJECTIVE: f64 = 0.999;
const THRESHOLD: &str = "250ms";
const THRESHOLD_SECONDS: f64 = 0.25;
/// One span in BURNING_EVERY of the burning service is slow; one in STEADY_EVERY of the
/// steady service's, from its STEADY_EVERY-th span on: rate() leaves out what the first
/// scrape of a series already counted (up to a second of spans), and a slow span among the
/// first hundred would put the ratio of the rest above 0.5%.
const BURNING_EVERY: usize = 20;
const STEADY_EVERY: usize = 200;

const SLOW_SPAN: Duration = Duration::from_millis(400);
const FAST_SPAN: Duration = Duration::from_millis(5);
/// Each service sends SPANS_PER_TICK spans every TICK: 50 spans/s.
const TICK: Duration = Duration::from_millis(200);
const SPANS_PER_TICK: usize = 10;

const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const FIRE_TIMEOUT: Duration = Duration::from_secs(60);
/// After the page, the steady service keeps sending this long (about 5 slow spans) before
/// it is judged.
const STEADY_WATCH: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_burn_pages_at_5_percent_slow_and_half_a_percent_stays_silent_classic() {
    burn_rate_chain(HistogramKind::Classic, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_burn_pages_at_5_percent_slow_and_half_a_percent_stays_silent_native() {
    burn_rate_chain(
        HistogramKind::Native,
        &["--enable-feature=native-histograms"],
    )
    .await;
}

async fn burn_rate_chain(histograms: HistogramKind, prometheus_flags: &[&str]) {
    let began = Instant::now();
    let scratch = TempDir::new("slo_chain");
    let config = test_config(|c| {
        c.alerting.histograms = histograms;
        c.stages
            .get_mut(STAGE)
            .expect("default profile has the stage")
            .slo = Some(SloConfig {
            objective: OBJECTIVE,
            threshold: PromDuration::parse(THRESHOLD).expect("a duration"),
        });
    });
    let server = start(config.clone()).await;
    let grpc = server.grpc_addr().expect("gRPC receiver enabled");

    let rules = spanlens::metrics::rules::render(&config);
    let histogram = config.stages[STAGE].histogram.clone();
    let ratio =
        |window: &str| format!("service_handler_language:{histogram}:slow_ratio_rate{window}");
    let expected_expr = match histograms {
        HistogramKind::Classic => {
            format!("rate({histogram}_bucket{{le=\"{THRESHOLD_SECONDS}\"}}[1h])")
        }
        HistogramKind::Native => {
            format!(
                "histogram_fraction(0, {THRESHOLD_SECONDS}, sum by (service, handler_language) (rate({histogram}[1h])))"
            )
        }
    };
    assert!(
        rules.contains(&expected_expr) && rules.contains(&format!("alert: {FAST_BURN}")),
        "the generated rules lack `{expected_expr}` or {FAST_BURN}:\n{rules}"
    );
    let diagnostics = format!("{{__name__=~\"{}.*\"}}", ratio(""));
    let chain = Chain::start(
        &scratch,
        ChainSpec {
            rules,
            job: &config.alerting.job,
            targets: vec![server.metrics_addr().to_string()],
            prometheus_flags,
            paged: "critical",
            alerts: &[FAST_BURN, SLOW_BURN],
            diagnostics: &[&diagnostics, "ALERTS"],
        },
    )
    .await;

    let setup_deadline = Instant::now() + SETUP_TIMEOUT;
    let setup_left = || setup_deadline.saturating_duration_since(Instant::now());
    chain.wait_up(setup_left()).await;
    let rule = chain.wait_for_rule(FAST_BURN, setup_left()).await;
    assert_eq!(rule["labels"]["severity"], "critical", "{rule}");
    let ready = began.elapsed();

    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || send_spans(grpc, &stop))
    };
    let _stop_on_drop = StopOnDrop(stop.clone());
    let sending = Instant::now();

    let (fired_at, firing) = chain
        .until(
            "the webhook to receive the fast burn of the burning service",
            FIRE_TIMEOUT,
            async || chain.webhook.find(FAST_BURN, BURNING.0, "firing"),
        )
        .await;
    let to_fire = fired_at - sending;
    tokio::time::sleep(STEADY_WATCH).await;
    stop.store(true, Ordering::SeqCst);
    let sent = sender.await.expect("sender thread");
    let lookback = format!("{}s", began.elapsed().as_secs() + 60);

    // The page as Alertmanager delivered it.
    let expected_labels = serde_json::json!({
        "alertname": FAST_BURN,
        "severity": "critical",
        "stage": STAGE,
        "service": BURNING.0,
        "handler_language": BURNING.1,
    });
    chain
        .check(
            firing["labels"] == expected_labels,
            "firing labels",
            &firing,
        )
        .await;
    let (summary, description) = chain
        .check_annotations(&firing, &config.alerting.runbook_url, FAST_BURN)
        .await;
    chain
        .check(
            summary.contains(BURNING.0)
                && description.contains(BURNING.1)
                && description.contains(THRESHOLD),
            "summary and description name the service, language and threshold",
            &firing,
        )
        .await;

    // The burning service's ratio is about 5%, and its slow burn fired too (a warning: not
    // routed to the webhook).
    let burning = format!("service=\"{}\"", BURNING.0);
    let burning_ratio = chain.scalar(&format!("{}{{{burning}}}", ratio("1h"))).await;
    chain
        .check(
            burning_ratio.is_some_and(|r| (0.04..0.06).contains(&r)),
            &format!(
                "the burning service's recorded 1h slow ratio is about 5% ({burning_ratio:?})"
            ),
            &Value::Null,
        )
        .await;
    let slow_burn = chain
        .query(&format!(
            "max_over_time(ALERTS{{alertname=\"{SLOW_BURN}\", alertstate=\"firing\", {burning}}}[{lookback}])"
        ))
        .await
        .expect("Prometheus answers");
    chain
        .check(
            slow_burn.len() == 1,
            "the burning service's slow burn fired in Prometheus",
            &Value::Array(slow_burn),
        )
        .await;

    // The steady service: its slow spans were counted (a ratio near 0.5%, five times the
    // budget), and nothing ever alerted for it.
    let steady = format!("service=\"{}\"", STEADY.0);
    let steady_ratio = chain.scalar(&format!("{}{{{steady}}}", ratio("5m"))).await;
    let steady_max = chain
        .scalar(&format!(
            "max_over_time({}{{{steady}}}[{lookback}])",
            ratio("1h")
        ))
        .await;
    chain
        .check(
            sent.steady_slow >= 3
                && steady_ratio.is_some_and(|r| (0.003..0.006).contains(&r))
                && steady_max.is_some_and(|m| m < 0.006),
            &format!(
                "the steady service's recorded slow ratio is near 0.5% and never reached the \
                 slow-burn rate 0.6% ({} slow spans sent; 5m ratio now {steady_ratio:?}; 1h \
                 ratio at most {steady_max:?})",
                sent.steady_slow
            ),
            &Value::Null,
        )
        .await;
    let steady_alerts = chain
        .query(&format!("max_over_time(ALERTS{{{steady}}}[{lookback}])"))
        .await
        .expect("Prometheus answers");
    chain
        .check(
            steady_alerts.is_empty(),
            "no alert was ever pending or firing for the steady service",
            &Value::Array(steady_alerts),
        )
        .await;
    let others: Vec<Value> = chain
        .webhook
        .alerts()
        .into_iter()
        .map(|(_, a)| a)
        .filter(|a| a["labels"]["alertname"] != FAST_BURN || a["labels"]["service"] != BURNING.0)
        .collect();
    chain
        .check(
            others.is_empty(),
            "the webhook received nothing but the burning service's fast burn",
            &Value::Array(others),
        )
        .await;
    chain.check_rules_healthy().await;

    // What Prometheus stored of the histogram: from text/OpenMetrics scrapes only the classic
    // series; with the native-histograms flag (protobuf scrapes) only the native histogram,
    // though spanlens serves both in the same message. That is why classic rules need text
    // scrapes (or scrape_classic_histograms, Prometheus 2.45+) and native rules the flag.
    let series = async |name: String| {
        chain
            .query(&format!("count({{__name__=\"{name}\"}})"))
            .await
            .expect("Prometheus answers")
            .len()
    };
    let stored = (
        series(format!("{histogram}_bucket")).await,
        series(histogram.clone()).await,
    );
    chain
        .check(
            stored
                == match histograms {
                    HistogramKind::Classic => (1, 0),
                    HistogramKind::Native => (0, 1),
                },
            &format!(
                "Prometheus stored only the {histograms:?} form of {histogram} (series named \
                 {histogram}_bucket, {histogram}: {stored:?})"
            ),
            &Value::Null,
        )
        .await;

    // spanlens counted every span the exporter flushed.
    let exposition = scrape(&server).await;
    let calls = &config.stages[STAGE].calls;
    let counted = |service: &str| {
        exposition
            .value(calls, &[("service", service)])
            .unwrap_or(0.0) as usize
    };
    chain
        .check(
            sent.flush_errors == 0
                && counted(BURNING.0) == sent.burning
                && counted(STEADY.0) == sent.steady,
            &format!(
                "spanlens counted every span sent ({sent:?}; counted {} burning, {} steady)",
                counted(BURNING.0),
                counted(STEADY.0)
            ),
            &Value::Null,
        )
        .await;

    println!(
        "slo chain ({histograms:?}): chain up {:.1}s after start; spans → fast burn at the \
         webhook {:.1}s; whole test {:.1}s; burning 1h ratio {burning_ratio:?}, steady 5m \
         ratio {steady_ratio:?} (max 1h {steady_max:?}); {sent:?}",
        ready.as_secs_f64(),
        to_fire.as_secs_f64(),
        began.elapsed().as_secs_f64(),
    );
    drop(chain);
    server.shutdown().await;
}

/// Stops the sender thread however the test ends (the runtime waits for blocking threads).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct Sent {
    burning: usize,
    steady: usize,
    steady_slow: usize,
    flush_errors: usize,
    last_error: Option<String>,
}

/// One handler span that ended now and lasted `duration`.
fn emit(tracer: &SdkTracer, duration: Duration) {
    let attributes = vec![KeyValue::new("namespace", "slo_chain")];
    ended_now(tracer, SPAN_NAME, duration, attributes);
}

/// Runs on a blocking thread of the runtime (tonic needs its context) until `stop`.
fn send_spans(grpc: SocketAddr, stop: &AtomicBool) -> Sent {
    let mut sent = Sent::default();
    let burning = batching_provider(grpc, BURNING.0);
    let steady = batching_provider(grpc, STEADY.0);
    let (burning_tracer, steady_tracer) = (
        burning.tracer("tasker-worker"),
        steady.tracer("tasker-worker"),
    );
    while !stop.load(Ordering::SeqCst) {
        for _ in 0..SPANS_PER_TICK {
            let slow = sent.burning % BURNING_EVERY == BURNING_EVERY - 1;
            emit(&burning_tracer, if slow { SLOW_SPAN } else { FAST_SPAN });
            sent.burning += 1;
            let slow =
                sent.steady >= STEADY_EVERY && sent.steady % STEADY_EVERY == STEADY_EVERY - 1;
            emit(&steady_tracer, if slow { SLOW_SPAN } else { FAST_SPAN });
            sent.steady += 1;
            sent.steady_slow += usize::from(slow);
        }
        for p in [&burning, &steady] {
            if let Err(e) = p.force_flush() {
                sent.flush_errors += 1;
                sent.last_error = Some(e.to_string());
            }
        }
        std::thread::sleep(TICK);
    }
    for p in [burning, steady] {
        if let Err(e) = p.shutdown() {
            sent.last_error = Some(format!("shutdown: {e}"));
        }
    }
    sent
}
