//! The real alerting chain, end to end: spanlens → Prometheus → Alertmanager → webhook.
//!
//! spanlens runs in-process on loopback with a `handler_execution` p95 alert at a test
//! threshold (250 ms, for 5 s, severity page) and a 15 s rate window. `spanlens::metrics::rules::render`
//! writes the rule file; `support::chain` runs Debian's Prometheus, which scrapes spanlens
//! every second, evaluates those rules every second and sends to Debian's Alertmanager, which
//! routes `severity=page` to a webhook served by this test. Nothing else is mocked.
//!
//! The real `opentelemetry-otlp` exporter (gRPC) sends `worker.step_execution` spans of
//! `tasker-ruby-worker` with explicit start and end times: 400 ms spans until the webhook
//! receives `HandlerExecutionLatencyP95High` firing with the right labels and annotations,
//! then 5 ms spans until it receives the same alert resolved. Meanwhile
//! `tasker-python-worker` sends two slow spans in all: its p95 goes above the threshold for
//! longer than `for`, but its traffic stays under `min_calls_per_second`, so it must never
//! alert (checked in Prometheus's `ALERTS` history and in the webhook payloads).
//!
//! Child processes are killed when the test ends, however it ends; on failure their logs, the
//! webhook payloads and Prometheus's view of the alerts are printed. Elapsed times are printed
//! on success (`cargo test --test alerting alert_chain -- --nocapture`).

use crate::support;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use serde_json::Value;
use spanlens::config::{PromDuration, StageAlert};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::chain::{Chain, ChainSpec};
use support::process::TempDir;
use support::sdk::{batching_provider, ended_now};
use support::{scrape, start, test_config};

const STAGE: &str = "handler_execution";
const ALERT: &str = "HandlerExecutionLatencyP95High";
const SPAN_NAME: &str = "worker.step_execution";
/// The service that pages, and its handler_language (from the service.name regex).
const LOUD: (&str, &str) = ("tasker-ruby-worker", "ruby");
/// The service with too little traffic to page.
const QUIET: (&str, &str) = ("tasker-python-worker", "python");

/// Test thresholds: the alert fires on p95 > 250 ms (a bucket bound) held for 5 s, over a
/// 15 s rate window, for series with at least 0.2 spans/s.
const THRESHOLD_SECONDS: f64 = 0.25;
const FOR: &str = "5s";
const FOR_SECONDS: u64 = 5;
const RATE_WINDOW: &str = "15s";
const MIN_CALLS_PER_SECOND: f64 = 0.2;

const SLOW_SPAN: Duration = Duration::from_millis(400);
const FAST_SPAN: Duration = Duration::from_millis(5);
/// The loud service sends SPANS_PER_TICK spans every TICK: 25 spans/s.
const TICK: Duration = Duration::from_millis(200);
const SPANS_PER_TICK: usize = 5;
/// The quiet service's two slow spans go out once Prometheus holds this many samples of its
/// series (made by one earlier fast span). With fewer, `rate()` extrapolates the two spans over
/// a short sampled interval (seen across 2 samples 1 s apart they count as 0.2 to 0.33/s over
/// 15 s), at or above min_calls_per_second; after 6 samples it is at most about 0.17/s.
const QUIET_SAMPLES_BEFORE: usize = 6;
const QUIET_SLOW_SPANS: usize = 2;

/// Bounds of the waits; together (with the quiet service's settling) well under three minutes.
/// All the waits for the chain to come up (daemons ready, target scraped, rules loaded).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const FIRE_TIMEOUT: Duration = Duration::from_secs(60);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p95_alert_fires_and_resolves_through_prometheus_and_alertmanager() {
    let began = Instant::now();
    let scratch = TempDir::new("alert_chain");

    // spanlens, with the test alert.
    let config = test_config(|c| {
        let stage = c
            .stages
            .get_mut(STAGE)
            .expect("default profile has the stage");
        stage.alert = Some(StageAlert {
            quantile: 0.95,
            above_seconds: THRESHOLD_SECONDS,
            for_duration: PromDuration::parse(FOR).expect("a duration"),
            severity: "page".to_string(),
        });
        c.alerting.rate_window = PromDuration::parse(RATE_WINDOW).expect("a duration");
        c.alerting.min_calls_per_second = MIN_CALLS_PER_SECOND;
    });
    let buckets = config.stages[STAGE]
        .buckets
        .clone()
        .unwrap_or_else(|| config.metrics.default_buckets.clone());
    assert!(
        buckets.contains(&THRESHOLD_SECONDS),
        "the test threshold must be a bucket bound of {STAGE}: {buckets:?}"
    );
    let server = start(config.clone()).await;
    let grpc = server.grpc_addr().expect("gRPC receiver enabled");

    // The rule file, as `spanlens rules` writes it for this config, evaluated by Prometheus.
    let rules_text = spanlens::metrics::rules::render(&config);
    assert!(
        rules_text.contains(&format!("alert: {ALERT}")),
        "the generated rules have no {ALERT}:\n{rules_text}"
    );
    let chain = Chain::start(
        &scratch,
        ChainSpec {
            rules: rules_text,
            job: &config.alerting.job,
            targets: vec![server.metrics_addr().to_string()],
            prometheus_flags: &[],
            paged: "page",
            alerts: &[ALERT],
            diagnostics: &["{__name__=~\"service_handler_language:tasker_handler_execution.*\"}"],
        },
    )
    .await;

    // The senders start now: the quiet service's first (fast) span creates its series, so that
    // Prometheus has earlier samples when its slow spans come.
    let control = Arc::new(Control::default());
    let stop = StopOnDrop(control.clone());
    let sender = {
        let control = control.clone();
        tokio::task::spawn_blocking(move || send_spans(grpc, &control))
    };

    // Wait until the chain is up: both ready, the target scraped, the Alertmanager known,
    // the test's rule loaded.
    let setup_deadline = Instant::now() + SETUP_TIMEOUT;
    let setup_left = || setup_deadline.saturating_duration_since(Instant::now());
    chain.wait_up(setup_left()).await;
    let rule = chain.wait_for_rule(ALERT, setup_left()).await;
    assert_eq!(rule["duration"], FOR_SECONDS as f64, "{rule}");
    assert!(
        rule["query"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("> {THRESHOLD_SECONDS}")),
        "{rule}"
    );
    let quiet = format!("service=\"{}\"", QUIET.0);
    let calls_total = &config.stages[STAGE].calls;
    chain
        .until(
            "Prometheus to hold samples of the quiet service's series",
            setup_left(),
            async || {
                let q = format!("count_over_time({calls_total}{{{quiet}}}[1m])");
                let n: f64 = chain.query(&q).await?.first()?["value"][1]
                    .as_str()?
                    .parse()
                    .ok()?;
                (n >= QUIET_SAMPLES_BEFORE as f64).then_some(())
            },
        )
        .await;
    control.quiet_go.store(true, Ordering::SeqCst);
    let ready = began.elapsed();

    // Slow spans until the webhook has the alert firing.
    let slow_from = Instant::now();
    control.mode.store(SLOW, Ordering::SeqCst);
    let (fired_at, firing) = chain
        .until(
            "the webhook to receive the alert firing",
            FIRE_TIMEOUT,
            async || chain.webhook.find(ALERT, LOUD.0, "firing"),
        )
        .await;
    let to_fire = fired_at - slow_from;

    // Fast spans until the webhook has it resolved.
    let fast_from = Instant::now();
    control.mode.store(FAST, Ordering::SeqCst);
    let (resolved_at, resolved) = chain
        .until(
            "the webhook to receive the alert resolved",
            RESOLVE_TIMEOUT,
            async || chain.webhook.find(ALERT, LOUD.0, "resolved"),
        )
        .await;
    let to_resolve = resolved_at - fast_from;
    let chain_done = began.elapsed();
    control.mode.store(STOP, Ordering::SeqCst);
    let sent = sender.await.expect("sender thread");

    // The alert as Alertmanager delivered it.
    let expected_labels = serde_json::json!({
        "alertname": ALERT,
        "severity": "page",
        "stage": STAGE,
        "service": LOUD.0,
        "handler_language": LOUD.1,
    });
    chain
        .check(
            firing["labels"] == expected_labels,
            "firing labels",
            &firing,
        )
        .await;
    chain
        .check(
            resolved["labels"] == expected_labels,
            "resolved labels",
            &resolved,
        )
        .await;
    let (summary, description) = chain
        .check_annotations(&firing, &config.alerting.runbook_url, ALERT)
        .await;
    chain
        .check(
            summary.contains(LOUD.0) && summary.contains(LOUD.1),
            "summary names the service and handler language",
            &firing,
        )
        .await;
    chain
        .check(
            description.contains(LOUD.0) && description.contains(LOUD.1),
            "description names the service and handler language",
            &firing,
        )
        .await;

    // The quiet service: its p95 went over the threshold for longer than `for`, but its rate
    // stayed under the guard, so it never alerted (not even pending). Its slow spans must
    // have left the rate window (plus `for`) before this is judged.
    let quiet_sent = control
        .quiet_sent
        .lock()
        .unwrap()
        .expect("the quiet service sent its slow spans");
    let settle = Duration::from_secs(15 + FOR_SECONDS + 3);
    if quiet_sent.elapsed() < settle {
        tokio::time::sleep(settle - quiet_sent.elapsed()).await;
    }
    let lookback = format!("{}s", began.elapsed().as_secs() + 60);
    let histogram = &config.stages[STAGE].histogram;
    let p95 = format!("service_handler_language:{histogram}:p95_rate{RATE_WINDOW}");
    let calls = config.stages[STAGE].calls.trim_end_matches("_total");
    let calls = format!("service_handler_language:{calls}:rate{RATE_WINDOW}");
    let seconds_above = chain
        .scalar(&format!(
            "count_over_time(({p95}{{{quiet}}} > {THRESHOLD_SECONDS})[{lookback}:1s])"
        ))
        .await;
    chain
        .check(
            seconds_above.is_some_and(|s| s > (FOR_SECONDS + 1) as f64),
            &format!(
                "the quiet service's recorded p95 stays above {THRESHOLD_SECONDS}s for longer \
             than `for` (seconds above: {seconds_above:?}), so only the traffic guard keeps it \
             silent"
            ),
            &Value::Null,
        )
        .await;
    let max_rate = chain
        .scalar(&format!("max_over_time({calls}{{{quiet}}}[{lookback}])"))
        .await;
    chain
        .check(
            max_rate.is_some_and(|r| r > 0.0 && r < MIN_CALLS_PER_SECOND),
            &format!(
                "the quiet service's recorded call rate stays under min_calls_per_second (max: \
             {max_rate:?})"
            ),
            &Value::Null,
        )
        .await;
    let quiet_alerts = chain
        .query(&format!("max_over_time(ALERTS{{{quiet}}}[{lookback}])"))
        .await
        .expect("Prometheus answers");
    chain
        .check(
            quiet_alerts.is_empty(),
            "no alert was ever pending or firing for the quiet service",
            &Value::Array(quiet_alerts.clone()),
        )
        .await;
    let quiet_notified: Vec<Value> = chain
        .webhook
        .alerts()
        .into_iter()
        .filter(|(_, a)| a["labels"]["service"] == QUIET.0)
        .map(|(_, a)| a)
        .collect();
    chain
        .check(
            quiet_notified.is_empty(),
            "the webhook received nothing for the quiet service",
            &Value::Array(quiet_notified),
        )
        .await;
    // Nothing but the loud service's alert reached the page route.
    let others: Vec<Value> = chain
        .webhook
        .alerts()
        .into_iter()
        .filter(|(_, a)| a["labels"]["alertname"] != ALERT || a["labels"]["service"] != LOUD.0)
        .map(|(_, a)| a)
        .collect();
    chain
        .check(
            others.is_empty(),
            "the webhook received no other alert",
            &Value::Array(others),
        )
        .await;

    // Every generated rule evaluated without error all along.
    chain.check_rules_healthy().await;

    // spanlens counted every span the exporter flushed.
    let exposition = scrape(&server).await;
    let counted = |service: &str| {
        exposition
            .value(calls_total, &[("service", service)])
            .unwrap_or(0.0) as usize
    };
    chain
        .check(
            sent.flush_errors == 0,
            &format!("every flush succeeded ({sent:?})"),
            &Value::Null,
        )
        .await;
    chain
        .check(
            counted(LOUD.0) == sent.loud && counted(QUIET.0) == sent.quiet,
            &format!(
                "spanlens counted every span sent ({sent:?}; counted {} loud, {} quiet)",
                counted(LOUD.0),
                counted(QUIET.0)
            ),
            &Value::Null,
        )
        .await;

    println!("alert chain: firing alert as delivered: {firing:#}");
    println!(
        "alert chain timings: chain up {:.1}s after start; slow spans → firing at the webhook \
         {:.1}s; fast spans → resolved at the webhook {:.1}s; chain done {:.1}s; whole test \
         {:.1}s ({} loud spans, {} quiet spans, {} webhook payloads; quiet service: p95 above \
         the threshold for {:?} s at a max rate of {:?}/s, never alerted)",
        ready.as_secs_f64(),
        to_fire.as_secs_f64(),
        to_resolve.as_secs_f64(),
        chain_done.as_secs_f64(),
        began.elapsed().as_secs_f64(),
        sent.loud,
        sent.quiet,
        chain.webhook.payloads.lock().unwrap().len(),
        seconds_above,
        max_rate,
    );
    drop(stop);
    drop(chain);
    server.shutdown().await;
}

// ----------------------------------------------------------------------------------------------
// Spans, with the real OTLP exporter
// ----------------------------------------------------------------------------------------------

const IDLE: u8 = 0;
const SLOW: u8 = 1;
const FAST: u8 = 2;
const STOP: u8 = 3;

/// What the test tells the sender thread, and when the quiet service's slow spans went out.
#[derive(Default)]
struct Control {
    /// IDLE, SLOW, FAST or STOP: the loud service's spans.
    mode: AtomicU8,
    /// Send the quiet service's slow spans (once).
    quiet_go: AtomicBool,
    quiet_sent: Mutex<Option<Instant>>,
}

/// Stops the sender thread however the test ends (the runtime waits for blocking threads).
struct StopOnDrop(Arc<Control>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.mode.store(STOP, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct Sent {
    loud: usize,
    quiet: usize,
    flush_errors: usize,
    last_error: Option<String>,
}

/// One handler span that ended now and lasted `duration`.
fn emit(tracer: &SdkTracer, duration: Duration, n: usize) {
    let attributes = vec![
        KeyValue::new("namespace", "alert_chain"),
        KeyValue::new("step_name", format!("step_{}", n % 7)),
    ];
    ended_now(tracer, SPAN_NAME, duration, attributes);
}

fn flush(provider: &SdkTracerProvider, sent: &mut Sent) {
    if let Err(e) = provider.force_flush() {
        sent.flush_errors += 1;
        sent.last_error = Some(e.to_string());
    }
}

/// Runs on a blocking thread of the runtime (tonic needs its context) until the mode is STOP.
fn send_spans(grpc: SocketAddr, control: &Control) -> Sent {
    let mut sent = Sent::default();
    let loud = batching_provider(grpc, LOUD.0);
    let quiet = batching_provider(grpc, QUIET.0);
    let (loud_tracer, quiet_tracer) = (loud.tracer("tasker-worker"), quiet.tracer("tasker-worker"));
    emit(&quiet_tracer, FAST_SPAN, 0);
    flush(&quiet, &mut sent);
    sent.quiet += 1;
    loop {
        if control.quiet_go.swap(false, Ordering::SeqCst) {
            for n in 0..QUIET_SLOW_SPANS {
                emit(&quiet_tracer, SLOW_SPAN, n);
            }
            flush(&quiet, &mut sent);
            sent.quiet += QUIET_SLOW_SPANS;
            *control.quiet_sent.lock().unwrap() = Some(Instant::now());
        }
        let duration = match control.mode.load(Ordering::SeqCst) {
            IDLE => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            SLOW => SLOW_SPAN,
            FAST => FAST_SPAN,
            _ => break,
        };
        for _ in 0..SPANS_PER_TICK {
            emit(&loud_tracer, duration, sent.loud);
            sent.loud += 1;
        }
        flush(&loud, &mut sent);
        std::thread::sleep(TICK);
    }
    for p in [loud, quiet] {
        if let Err(e) = p.shutdown() {
            sent.last_error = Some(format!("shutdown: {e}"));
        }
    }
    sent
}
