//! Hardening item 5 — Slow clients: connections dribbling their request head are closed after
//! `receivers.header_read_timeout` while other clients are served quickly; HTTP/2 streams are
//! held to `receivers.grpc.max_concurrent_streams` (the h2 client queues past it, a client that
//! ignores the setting gets REFUSED_STREAM) with the server responsive meanwhile; a body that
//! stalls past `receivers.body_read_timeout` is answered 408 / DEADLINE_EXCEEDED.

use crate::otlp::*;
use crate::support::process::Setup;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const DRIBBLERS: usize = 50;
const VALID_REQUESTS: usize = 200;

/// Dribbles a request head one byte every 200 ms until the server closes the connection;
/// returns how long the connection lived, or None when it was still open after `give_up`.
async fn dribble(addr: std::net::SocketAddr, give_up: Duration) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {PROTOBUF}\r\nx-slow: {}\r\n\r\n",
        "z".repeat(200)
    );
    let started = Instant::now();
    let mut bytes = head.bytes();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                // A 408 or similar before closing is fine; keep reading until the close.
                Ok(_) => {}
            },
            _ = tick.tick() => {
                if started.elapsed() > give_up {
                    return None;
                }
                let b = bytes.next()?;
                if stream.write_all(&[b]).await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_and_others_are_served() {
    let mut app = Setup::new()
        .set("receivers.header_read_timeout", "1s")
        .start();
    let addr = app.http();
    let client = Otlp::new(&app);
    let attack = Arc::new(AtomicBool::new(true));
    let mut dribblers = JoinSet::new();
    for _ in 0..DRIBBLERS {
        let attack = attack.clone();
        dribblers.spawn(async move {
            // Each dribbler reconnects when closed, for as long as the valid traffic runs.
            let mut lives = Vec::new();
            while attack.load(Ordering::Relaxed) || lives.is_empty() {
                lives.push(dribble(addr, Duration::from_secs(12)).await);
            }
            lives
        });
    }
    // Let every dribbler connect and start.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut latencies = Vec::new();
    let mut sent = 0;
    for i in 0..VALID_REQUESTS {
        let proto = [Proto::HttpProtobuf, Proto::HttpJson][i % 2];
        let request = request(SERVICE, claims(2));
        let reply = client
            .send(proto, None, proto.body(&request))
            .await
            .unwrap_or_else(|e| panic!("valid request {i} during the attack: {e}"));
        assert!(reply.accepted(), "valid request {i}: {reply:?}");
        latencies.push(reply.elapsed);
        sent += 2;
    }
    attack.store(false, Ordering::Relaxed);
    let mut lives = Vec::new();
    while let Some(task) = dribblers.join_next().await {
        lives.extend(task.expect("a dribbler"));
    }
    latencies.sort();
    let slowest = *latencies.last().unwrap();
    let p50 = latencies[latencies.len() / 2];
    let closed: Vec<Duration> = lives.iter().flatten().copied().collect();
    let longest = closed.iter().max().copied().unwrap_or_default();
    eprintln!(
        "slowloris: {} dribbling connections, {} closed by the server, longest lived {longest:?}; valid requests p50 {p50:?}, max {slowest:?}",
        lives.len(),
        closed.len()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a valid request took {slowest:?} during the attack"
    );
    assert_eq!(
        closed.len(),
        lives.len(),
        "{} dribbling connections were still open after 12 s (header_read_timeout 1s)",
        lives.len() - closed.len()
    );
    assert!(
        longest < Duration::from_secs(4),
        "a dribbling connection lived {longest:?} with header_read_timeout 1s"
    );
    assert_eq!(app.scrape().await.sum(ACCEPTED, &[]), sent as f64);
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_are_held_to_max_concurrent_streams() {
    let mut app = Setup::new()
        .set("receivers.grpc.max_concurrent_streams", "8")
        .start();
    let addr = app.grpc();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let client = client.ready().await.expect("h2 ready");
    // The server's SETTINGS arrive with the handshake.
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.current_max_send_streams() > 1000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        client.current_max_send_streams(),
        8,
        "SETTINGS_MAX_CONCURRENT_STREAMS the server advertises"
    );

    // 50 streams on one connection, each with its body held open. The h2 client opens a
    // stream on the wire only while the server's limit allows; a stream waiting in the
    // client's queue gets no send capacity, so the streams with capacity are the open ones.
    // Each stream from a fresh handle: a handle's `ready` waits for its previous stream to
    // open, which never happens while the first eight are held.
    let mut streams = Vec::new();
    for _ in 0..50 {
        let (response, mut body) = client
            .clone()
            .send_request(h2_head(addr, &[]), false)
            .expect("send_request");
        body.reserve_capacity(1);
        streams.push((response, body));
    }
    let open = |streams: &Vec<(h2::client::ResponseFuture, h2::SendStream<Bytes>)>| {
        streams
            .iter()
            .filter(|(_, body)| body.capacity() > 0)
            .count()
    };
    // Let the connection settle: the count must stop moving.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen.push(open(&streams));
        if seen.len() >= 5
            && seen[seen.len() - 5..]
                .iter()
                .all(|&n| n == seen[seen.len() - 1])
        {
            break;
        }
    }
    let open_at_once = *seen.iter().max().unwrap();
    // The server stays responsive to others meanwhile.
    let other = Otlp::new(&app);
    for proto in [Proto::Grpc, Proto::HttpProtobuf] {
        let request = request(SERVICE, claims(1));
        let reply = other.send(proto, None, proto.body(&request)).await.unwrap();
        assert!(
            reply.accepted(),
            "{proto:?} while streams are held: {reply:?}"
        );
        assert!(
            reply.elapsed < Duration::from_secs(1),
            "{proto:?} took {:?} while streams are held",
            reply.elapsed
        );
    }
    eprintln!("h2: streams open on the wire while held: {seen:?}");
    assert!(
        (1..=8).contains(&open_at_once),
        "{open_at_once} streams were open at once on one connection, max_concurrent_streams 8"
    );
    // Release them all: the queued ones open as the first finish, and every one is answered.
    let mut answers = JoinSet::new();
    for (response, mut body) in streams {
        let payload = prost::Message::encode_to_vec(&request(SERVICE, claims(1)));
        body.send_data(framed(&payload), true).expect("send_data");
        answers.spawn(async move {
            let _body = body;
            h2_status(response).await
        });
    }
    let mut codes = Vec::new();
    let all = async {
        while let Some(done) = answers.join_next().await {
            codes.push(done.expect("a stream task"));
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("all 50 streams answered within 30 s");
    let ok = codes.iter().filter(|c| matches!(c, Ok(OK))).count();
    assert_eq!(ok, 50, "every stream answered OK once released: {codes:?}");
    drop(client);

    // A client that ignores the setting gets REFUSED_STREAM past 8.
    let refused = raw_h2_overflow(addr, 20).await;
    eprintln!("raw h2: {refused:?}");
    assert_eq!(refused.max_concurrent_streams, Some(8));
    assert!(
        refused.refused >= 12,
        "20 streams opened at once, max 8: {refused:?}"
    );
    assert!(
        refused.reset_below_limit == 0,
        "streams within the limit were reset: {refused:?}"
    );
    // Still responsive after.
    let request = request(SERVICE, claims(1));
    let reply = other
        .send(Proto::Grpc, None, Proto::Grpc.body(&request))
        .await
        .unwrap();
    assert!(reply.accepted(), "{reply:?}");
    assert!(app.alive());
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}

#[derive(Debug, Default)]
struct RawH2 {
    max_concurrent_streams: Option<u32>,
    /// Streams reset with REFUSED_STREAM.
    refused: usize,
    /// Streams among the first eight reset for any reason.
    reset_below_limit: usize,
    goaway: Option<u32>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn hpack_string(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 127);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// Opens an HTTP/2 connection with raw frames: the preface, empty SETTINGS, then the server's
/// SETTINGS read and acknowledged. Returns the stream and SETTINGS_MAX_CONCURRENT_STREAMS.
async fn raw_h2_handshake(addr: std::net::SocketAddr) -> (TcpStream, Option<u32>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&frame(4, 0, 0, &[])).await.unwrap();
    let mut header = [0u8; 9];
    let mut max_concurrent_streams = None;
    loop {
        tokio::time::timeout(CALL_TIMEOUT, tcp.read_exact(&mut header))
            .await
            .expect("server frames")
            .expect("server frames");
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.unwrap();
        if header[3] == 4 && header[4] & 1 == 0 {
            for param in payload.chunks(6) {
                if param.len() == 6 && u16::from_be_bytes([param[0], param[1]]) == 3 {
                    max_concurrent_streams =
                        Some(u32::from_be_bytes([param[2], param[3], param[4], param[5]]));
                }
            }
            tcp.write_all(&frame(4, 1, 0, &[])).await.unwrap();
            return (tcp, max_concurrent_streams);
        }
    }
}

/// Opens `streams` streams at once with raw frames, ignoring the server's limit, and
/// reports what the server did with them.
async fn raw_h2_overflow(addr: std::net::SocketAddr, streams: u32) -> RawH2 {
    let (mut tcp, max_concurrent_streams) = raw_h2_handshake(addr).await;
    let mut report = RawH2 {
        max_concurrent_streams,
        ..Default::default()
    };
    let mut header = [0u8; 9];
    let mut block = vec![0x83, 0x86, 0x04];
    hpack_string(&mut block, EXPORT);
    block.push(0x01);
    hpack_string(&mut block, &addr.to_string());
    block.extend_from_slice(&[0x0f, 0x10]);
    hpack_string(&mut block, "application/grpc");
    block.push(0x00);
    hpack_string(&mut block, "te");
    hpack_string(&mut block, "trailers");
    let mut burst = Vec::new();
    for i in 0..streams {
        burst.extend(frame(1, 0x4, 2 * i + 1, &block));
    }
    tcp.write_all(&burst).await.unwrap();
    // Collect resets for a while.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let read =
            tokio::time::timeout(Duration::from_millis(300), tcp.read_exact(&mut header)).await;
        let Ok(read) = read else { continue };
        if read.is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        if tcp.read_exact(&mut payload).await.is_err() {
            break;
        }
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        match header[3] {
            3 if payload.len() == 4 => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if code == 7 {
                    report.refused += 1;
                }
                if stream < 2 * 8 + 1 {
                    report.reset_below_limit += 1;
                }
            }
            7 if payload.len() >= 8 => {
                report.goaway = Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
            _ => {}
        }
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_408_or_deadline_exceeded() {
    let mut app = Setup::new()
        .set("receivers.body_read_timeout", "1s")
        .start();
    let body = Proto::HttpProtobuf.body(&request(SERVICE, claims(20)));

    // OTLP/HTTP: the head and half the body, then nothing.
    let mut tcp = TcpStream::connect(app.http()).await.unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: {}\r\ncontent-type: {PROTOBUF}\r\ncontent-length: {}\r\n\r\n",
        app.http(),
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body[..body.len() / 2]).await.unwrap();
    let stalled = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let waited = stalled.elapsed();
    let status_line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    eprintln!("stalled HTTP body: `{status_line}` after {waited:?}");
    assert!(read.is_ok(), "no answer 10 s after the body stalled");
    assert!(
        status_line.starts_with("HTTP/1.1 408"),
        "stalled body answered `{status_line}` after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(2500),
        "408 came {waited:?} after the body stalled (body_read_timeout 1s)"
    );

    // OTLP/gRPC: the same over HTTP/2.
    let mut client = h2_connect(app.grpc()).await;
    let (response, mut stream) = client
        .send_request(h2_head(app.grpc(), &[]), false)
        .unwrap();
    let frame = framed(&body);
    stream
        .send_data(frame.slice(..frame.len() / 2), false)
        .unwrap();
    let stalled = Instant::now();
    let code = h2_status(response).await;
    let waited = stalled.elapsed();
    eprintln!("stalled gRPC body: {code:?} after {waited:?}");
    assert_eq!(code, Ok(DEADLINE_EXCEEDED), "stalled gRPC body");
    assert!(
        waited < Duration::from_millis(2500),
        "DEADLINE_EXCEEDED came {waited:?} after the body stalled"
    );
    drop(stream);

    // Nothing of either was counted, and a complete request still goes through.
    let client = Otlp::new(&app);
    let sent = client
        .accepted(Proto::Grpc, &request(SERVICE, claims(3)))
        .await;
    assert_eq!(app.scrape().await.sum(RECEIVED, &[]), sent as f64);
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_http2_pings_close_the_connection() {
    let mut app = Setup::new()
        .set("receivers.grpc.keepalive_interval", "1s")
        .set("receivers.grpc.keepalive_timeout", "1s")
        .start();
    let addr = app.grpc();

    // A well-behaved client (h2 answers PINGs) keeps its idle connection.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let polite = tokio::spawn(async move {
        let _ = connection.await;
    });

    // A peer that never answers PINGs is dropped after interval + timeout.
    let (mut tcp, _) = raw_h2_handshake(addr).await;
    let started = Instant::now();
    let mut pings = 0;
    let mut header = [0u8; 9];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if tcp.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            if tcp.read_exact(&mut payload).await.is_err() {
                return;
            }
            if header[3] == 6 && header[4] & 1 == 0 {
                pings += 1;
            }
        }
    })
    .await;
    let lived = started.elapsed();
    eprintln!("keepalive: silent peer closed after {lived:?} ({pings} PINGs unanswered)");
    assert!(
        closed.is_ok(),
        "a peer that answers no PING was still connected 10 s later (keepalive 1s + 1s)"
    );
    assert!(pings >= 1, "the server sent no PING before closing");
    assert!(
        lived < Duration::from_secs(5),
        "closed only after {lived:?} with keepalive_interval 1s, keepalive_timeout 1s"
    );

    assert!(
        !polite.is_finished(),
        "the h2 client that answers PINGs was dropped"
    );
    let mut client = client
        .ready()
        .await
        .expect("the polite connection is still usable");
    let (response, mut body) = client.send_request(h2_head(addr, &[]), false).unwrap();
    let payload = prost::Message::encode_to_vec(&request(SERVICE, claims(2)));
    body.send_data(framed(&payload), true).unwrap();
    assert_eq!(h2_status(response).await, Ok(OK));
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}

/// Sends `bytes`, then nothing; returns how long the server kept the connection open, or None
/// when it was still open after `give_up`.
async fn send_then_wait(
    addr: std::net::SocketAddr,
    bytes: &[u8],
    give_up: Duration,
) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    stream.write_all(bytes).await.expect("write");
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(
            give_up.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Connections that send nothing, or stop inside the HTTP/2 preface, are closed after
/// header_read_timeout on both receivers (hyper's protocol detection has no timer of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_and_stalled_prefaces_are_closed() {
    let mut app = Setup::new()
        .set("receivers.header_read_timeout", "1s")
        .start();
    let mut waits = JoinSet::new();
    for addr in [app.http(), app.grpc()] {
        for bytes in [&b""[..], &b"PRI * HTTP/2.0\r\n"[..]] {
            for _ in 0..10 {
                waits.spawn(send_then_wait(addr, bytes, Duration::from_secs(10)));
            }
        }
    }
    let mut longest = Duration::ZERO;
    while let Some(lived) = waits.join_next().await {
        let lived = lived
            .expect("task")
            .expect("a silent connection stayed open for 10 s");
        longest = longest.max(lived);
    }
    eprintln!("silent connections: the longest lived {longest:?} (header_read_timeout 1s)");
    assert!(longest < Duration::from_secs(4), "{longest:?}");
    // The receivers still answer.
    let client = Otlp::new(&app);
    for proto in Proto::ALL {
        assert!(client.accepted(proto, &request(SERVICE, claims(2))).await > 0);
    }
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}
