//! Hardening item 3 — Overload: with `receivers.max_pending_requests: 2`, requests past the two
//! in progress are answered 503 + Retry-After / UNAVAILABLE + RetryInfo (never 400 or 500) and
//! count nothing; a client that honours the wait gets everything in, counted exactly. With
//! `receivers.memory_limit_bytes`, a burst of 8 MiB requests is partly refused (503, reason
//! memory_limit), the process stays under the limit, and afterwards requests are accepted
//! again.

use crate::otlp::*;
use crate::support::poll;
use crate::support::process::{MIB, Setup, Spanlens, mib};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// An OTLP/HTTP request whose head and first half of the body are sent, the rest held back.
struct Stalled {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl Stalled {
    /// The server answered already: it refused this request because another took the last
    /// place first (the server sees connections in its own order).
    fn answered(&self) -> bool {
        let mut byte = [0u8; 1];
        !matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    async fn open(app: &Spanlens, body: Vec<u8>) -> Stalled {
        let mut stream = TcpStream::connect(app.http()).await.expect("connect");
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nhost: {}\r\ncontent-type: {PROTOBUF}\r\ncontent-length: {}\r\n\r\n",
            app.http(),
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let half = body.len() / 2;
        stream.write_all(&body[..half]).await.unwrap();
        stream.flush().await.unwrap();
        Stalled {
            stream,
            rest: body[half..].to_vec(),
        }
    }

    /// Sends the rest and reads the status line.
    async fn finish(mut self) -> String {
        self.stream.write_all(&self.rest).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let read = async {
            loop {
                let n = self.stream.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, read)
            .await
            .expect("an answer to the completed request");
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// A refusal for overload: 503 / UNAVAILABLE with a wait of `retry_after`.
fn assert_overload_refusal(what: &str, reply: &Reply, retry_after: Duration) {
    match reply.grpc {
        Some(code) => {
            assert_eq!(code, UNAVAILABLE, "{what}: {reply:?}");
            assert_eq!(
                reply.retry_info,
                Some(retry_after),
                "{what}: RetryInfo in grpc-status-details-bin: {reply:?}"
            );
        }
        None => {
            assert_eq!(reply.http, 503, "{what}: {reply:?}");
            assert_eq!(
                reply.retry_after.as_deref(),
                Some(retry_after.as_secs().to_string().as_str()),
                "{what}: Retry-After: {reply:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_retry_after_and_retries_get_everything_in() {
    let retry_after = Duration::from_secs(1);
    let mut app = Setup::new()
        .set("receivers.max_pending_requests", "2")
        .set("receivers.retry_after", "1s")
        .start();
    let client = Otlp::new(&app);
    let mut accepted = 0u64;
    let mut refusals = 0u64;

    // Two requests held in the middle of their bodies take both places.
    let first = request(SERVICE, claims(3));
    let second = request(SERVICE, claims(4));
    let bodies = [
        Proto::HttpProtobuf.body(&first),
        Proto::HttpProtobuf.body(&second),
    ];
    let mut stalled = [
        Stalled::open(&app, bodies[0].clone()).await,
        Stalled::open(&app, bodies[1].clone()).await,
    ];
    // Until the server has both, a probe may still get in (and then counts).
    let mut refused_probe = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let request = request(SERVICE, claims(1));
        let reply = client
            .send(Proto::Grpc, None, Proto::Grpc.body(&request))
            .await
            .expect("probe");
        if !reply.accepted() {
            refused_probe = Some(reply);
            break;
        }
        accepted += 1;
        // A probe that got in may have taken a place before a stalled request reached the
        // server, which then refused that one (and counted it): open it again.
        for (held, body) in stalled.iter_mut().zip(&bodies) {
            if held.answered() {
                refusals += 1;
                *held = Stalled::open(&app, body.clone()).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = refused_probe.expect("with two requests in progress, a third is refused");
    assert_overload_refusal("gRPC probe while 2 are pending", &reply, retry_after);
    refusals += 1;
    for proto in [
        Proto::HttpProtobuf,
        Proto::HttpJson,
        Proto::Grpc,
        Proto::HttpProtobuf,
    ] {
        let request = request(SERVICE, claims(2));
        let reply = client
            .send(proto, None, proto.body(&request))
            .await
            .unwrap();
        assert_overload_refusal(
            &format!("{proto:?} while 2 are pending"),
            &reply,
            retry_after,
        );
        refusals += 1;
    }
    let [a, b] = stalled;
    let (a, b) = tokio::join!(a.finish(), b.finish());
    assert!(a.contains(" 200 "), "held request 1: {a}");
    assert!(b.contains(" 200 "), "held request 2: {b}");
    accepted += 7;
    let scraped = app.scrape().await;
    assert_eq!(
        scraped.sum(REQUESTS_REFUSED, &[("reason", "overloaded")]),
        refusals as f64
    );
    assert_eq!(
        scraped.sum(RECEIVED, &[]),
        accepted as f64,
        "refused requests count no span"
    );

    // Many large requests at once, each from a client that retries when told to (and, like
    // an OTLP exporter, when the connection fails).
    let mut tasks = JoinSet::new();
    for i in 0..32 {
        let client = client.clone();
        tasks.spawn(async move {
            let proto = Proto::ALL[i % 3];
            let request = padded(claims(20), 2 * 1024 * 1024);
            let body = proto.body(&request);
            let started = Instant::now();
            let retried = client
                .send_retrying(proto, None, body, 60, Duration::from_secs(1))
                .await;
            (proto, retried, started.elapsed())
        });
    }
    let mut phase_refusals = 0u64;
    let mut errors = Vec::new();
    let mut slowest = Duration::ZERO;
    while let Some(task) = tasks.join_next().await {
        let (proto, retried, elapsed) = task.expect("a client task");
        for r in &retried.refusals {
            assert_overload_refusal(&format!("{proto:?} under load"), r, retry_after);
        }
        let reply = retried
            .last
            .unwrap_or_else(|e| panic!("{proto:?} under load: {e}; errors {:?}", retried.errors));
        assert!(
            reply.accepted() && reply.rejected == 0,
            "{proto:?} under load: finally {reply:?} (never 400/500)"
        );
        phase_refusals += retried.refusals.len() as u64;
        errors.extend(
            retried
                .errors
                .into_iter()
                .map(|e| format!("{proto:?}: {e}")),
        );
        slowest = slowest.max(elapsed);
        accepted += 20;
    }
    refusals += phase_refusals;
    let scraped = app.scrape().await;
    let counted = scraped.sum(REQUESTS_REFUSED, &[("reason", "overloaded")]);
    eprintln!(
        "overload: 32 large requests: {phase_refusals} refusals seen, {} transport errors, {counted} refusals counted in all; slowest {slowest:?}",
        errors.len()
    );
    assert_accepted_and_observed(&scraped, accepted);
    assert!(
        counted >= refusals as f64 && counted <= (refusals + errors.len() as u64) as f64,
        "overload refusals counted {counted}: {refusals} seen, {} connection errors",
        errors.len()
    );
    assert!(
        phase_refusals + errors.len() as u64 > 0,
        "32 concurrent 2 MiB requests against max_pending_requests: 2 and none refused"
    );
    assert!(
        errors.is_empty(),
        "{} refusals never reached the client as 503 / UNAVAILABLE (the connection failed \
         instead), e.g. {:?}",
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}

/// Small valid traffic on every protocol.
async fn warm_up(client: &Otlp) -> u64 {
    let mut sent = 0;
    for _ in 0..20 {
        for proto in Proto::ALL {
            sent += client.accepted(proto, &request(SERVICE, claims(4))).await;
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_refuses_a_burst_and_recovers() {
    // The resident size of a warmed-up spanlens, without a limit.
    let mut probe = Setup::new().start();
    warm_up(&Otlp::new(&probe)).await;
    let base = probe.vm_rss();
    assert!(probe.terminate().success());

    let limit = base + 40 * MIB;
    let mut app = Setup::new()
        .set("receivers.memory_limit_bytes", &limit.to_string())
        .set("receivers.retry_after", "1s")
        .start();
    let client = Otlp::new(&app);
    let mut accepted = warm_up(&client).await;

    let mut tasks = JoinSet::new();
    for i in 0..12 {
        let client = client.clone();
        tasks.spawn(async move {
            let proto = [Proto::Grpc, Proto::HttpProtobuf][i % 2];
            let body = proto_of_size(8 * 1024 * 1024 - 64 * 1024, 5);
            (proto, client.send(proto, None, body).await)
        });
    }
    let (mut burst_accepted, mut refused) = (0u64, 0u64);
    let mut errors = Vec::new();
    while let Some(task) = tasks.join_next().await {
        let (proto, reply) = task.expect("a burst task");
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                errors.push(format!("{proto:?}: {e}"));
                continue;
            }
        };
        if reply.accepted() {
            burst_accepted += 1;
            accepted += 5;
        } else {
            assert!(
                reply.unavailable(),
                "{proto:?} 8 MiB request: neither accepted nor 503/UNAVAILABLE: {reply:?}"
            );
            assert!(
                reply.wait().is_some(),
                "{proto:?}: a memory refusal says when to retry: {reply:?}"
            );
            refused += 1;
        }
    }
    let peak = app.vm_hwm();
    let scraped = app.scrape().await;
    let counted = scraped.sum(REQUESTS_REFUSED, &[("reason", "memory_limit")]);
    eprintln!(
        "memory limit {} (base {}): burst of 12 × 8 MiB: {burst_accepted} accepted, {refused} refused, {} connection errors, {counted} memory_limit refusals counted; VmHWM {}",
        mib(limit),
        mib(base),
        errors.len(),
        mib(peak)
    );
    assert!(
        refused + errors.len() as u64 > 0,
        "12 concurrent 8 MiB requests fit in 40 MiB?"
    );
    assert!(
        peak < limit,
        "VmHWM {} passed memory_limit_bytes {}",
        mib(peak),
        mib(limit)
    );
    assert!(
        counted >= refused as f64 && counted <= (refused + errors.len() as u64) as f64,
        "memory_limit refusals counted {counted}: {refused} seen, {} connection errors",
        errors.len()
    );

    // After the burst, requests get in again.
    let back = poll(Duration::from_secs(15), Duration::from_millis(250), || {
        let client = client.clone();
        async move {
            let request = request(SERVICE, claims(2));
            let reply = client
                .send(
                    Proto::HttpProtobuf,
                    None,
                    Proto::HttpProtobuf.body(&request),
                )
                .await
                .ok()?;
            reply.accepted().then_some(())
        }
    })
    .await;
    assert!(back.is_some(), "still refused 15 s after the burst");
    accepted += 2;
    accepted += warm_up(&client).await;
    let scraped = app.scrape().await;
    assert_eq!(
        scraped.sum(ACCEPTED, &[]),
        accepted as f64,
        "spans accepted"
    );
    assert!(
        errors.is_empty(),
        "{} memory refusals never reached the client as 503 / UNAVAILABLE (the connection \
         failed instead), e.g. {:?}",
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}
