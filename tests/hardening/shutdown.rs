//! Hardening item 7 — SIGTERM under load: eight clients send continuously over every protocol;
//! the binary stops with exit code 0 and its last words, `stopped spans_accepted=N`, count
//! exactly the spans of the requests that were answered 200 / OK (a request that failed on the
//! connection after the stop counts nothing).

use crate::otlp::*;
use crate::support::process::Setup;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

#[derive(Debug, Default)]
struct ClientReport {
    spans: u64,
    requests: u64,
    /// Answers other than 200 / OK after SIGTERM (they count nothing either).
    refused_after_stop: Vec<String>,
    failed_after_stop: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_accounts_for_every_answered_span() {
    let mut app = Setup::new().start();
    let stopping = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut clients = JoinSet::new();
    for c in 0..8usize {
        let client = Otlp::new(&app);
        let stopping = stopping.clone();
        let answered = answered.clone();
        clients.spawn(async move {
            let mut report = ClientReport::default();
            let started = Instant::now();
            for i in 0usize.. {
                if started.elapsed() > Duration::from_secs(40) {
                    panic!("client {c}: still sending 40 s after start");
                }
                let proto = Proto::ALL[(c + i) % 3];
                let request = request(SERVICE, claims(1 + (c + i) % 7));
                let encoding = [None, Some("gzip")][(i / 3) % 2];
                let mut body = proto.body(&request);
                if encoding.is_some() {
                    body = gzip(&body);
                }
                let after_stop = stopping.load(Ordering::SeqCst);
                match client.send(proto, encoding, body).await {
                    Ok(reply) if reply.accepted() => {
                        assert_eq!(reply.rejected, 0, "client {c}: {reply:?}");
                        report.spans += span_count(&request);
                        report.requests += 1;
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(reply) => {
                        assert!(
                            after_stop || stopping.load(Ordering::SeqCst),
                            "client {c}: {proto:?} refused before SIGTERM: {reply:?}"
                        );
                        report.refused_after_stop.push(reply.code());
                    }
                    Err(e) => {
                        assert!(
                            after_stop || stopping.load(Ordering::SeqCst),
                            "client {c}: {proto:?} failed before SIGTERM: {e}"
                        );
                        report.failed_after_stop += 1;
                        if report.failed_after_stop >= 3 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            report
        });
    }

    // Load for a while, then SIGTERM in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered.load(Ordering::Relaxed) < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stopping.store(true, Ordering::SeqCst);
    app.sigterm();
    let terminated = Instant::now();

    let mut spans = 0;
    let mut requests = 0;
    let mut refused = Vec::new();
    while let Some(report) = clients.join_next().await {
        let report = report.expect("a client");
        spans += report.spans;
        requests += report.requests;
        refused.extend(report.refused_after_stop);
    }
    let status = app.wait_exit(Duration::from_secs(30));
    let stopped_in = terminated.elapsed();
    let last = app.wait_for("spans_accepted=", Duration::from_secs(5));
    let logged: u64 = last
        .split("spans_accepted=")
        .nth(1)
        .and_then(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no number in `{last}`"));
    eprintln!(
        "shutdown: {requests} requests / {spans} spans answered OK, {} refused after SIGTERM; spanlens says {logged}; exited {status} {stopped_in:?} after SIGTERM",
        refused.len()
    );
    assert!(status.success(), "exit status {status}");
    assert!(last.contains("stopped"), "last words: {last}");
    let lines = app.stderr_lines();
    assert!(
        lines.last().is_some_and(|l| l.contains("spans_accepted=")),
        "`stopped spans_accepted=N` is the final line: {:?}",
        lines.iter().rev().take(3).collect::<Vec<_>>()
    );
    assert_eq!(
        logged, spans,
        "spans_accepted={logged} at the stop, but {spans} spans were answered 200 / OK"
    );
}
