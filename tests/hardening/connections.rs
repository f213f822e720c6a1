//! Issue 25, item 2 — connections: `receivers.max_connections` closes connections past it as
//! they arrive (counted by listener), and near the process's file limit the connections idle
//! the longest are closed to make room, so a flood of idle connections never starves clients
//! that send requests.

use crate::otlp::*;
use crate::support::eventually;
use crate::support::process::{Setup, Spanlens};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const OPEN: &str = "spanlens_connections_open";
const REFUSED: &str = "spanlens_connections_refused_total";
const CLOSED_IDLE: &str = "spanlens_connections_closed_idle_total";

/// `n` connections to `addr` that send nothing, opened `batch` at a time.
async fn idle_connections(addr: SocketAddr, n: usize, batch: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..batch.min(n - held.len()) {
            connecting.spawn(TcpStream::connect(addr));
        }
        while let Some(connected) = connecting.join_next().await {
            held.push(connected.unwrap().expect("connect"));
        }
    }
    held
}

/// Whether the server has closed `stream` (end of stream or reset; it never sends bytes).
fn closed_by_server(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    !matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

async fn wait_for(app: &Spanlens, what: &str, check: impl Fn(&crate::support::Exposition) -> bool) {
    eventually(what, Duration::from_secs(20), async || {
        let scraped = app.scrape().await;
        match check(&scraped) {
            true => Ok(()),
            false => Err(scraped
                .text
                .lines()
                .filter(|l| l.starts_with("spanlens_connections_"))
                .collect::<Vec<_>>()
                .join("; ")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_connections_are_closed_and_counted() {
    let mut app = Setup::new()
        .set("receivers.max_connections", "20")
        .set("receivers.header_read_timeout", "5m")
        .start();
    let held = idle_connections(app.http(), 25, 25).await;
    wait_for(&app, "20 open, 5 refused", |m| {
        m.sum(OPEN, &[("listener", "http")]) == 20.0
            && m.sum(REFUSED, &[("listener", "http")]) == 5.0
    })
    .await;
    // The bound is over both receivers.
    let grpc = TcpStream::connect(app.grpc()).await.expect("connect");
    wait_for(&app, "the gRPC one refused", |m| {
        m.sum(REFUSED, &[("listener", "grpc")]) == 1.0
    })
    .await;
    let closed = held.iter().filter(|s| closed_by_server(s)).count();
    assert_eq!(closed, 5, "connections closed as they arrived");
    // The scrape's connections are not receivers' and were never refused.
    let scraped = app.scrape().await;
    assert_eq!(scraped.sum(REFUSED, &[("listener", "metrics")]), 0.0);
    assert_eq!(
        scraped.sum(CLOSED_IDLE, &[]),
        0.0,
        "far from the file limit"
    );

    drop(held);
    drop(grpc);
    wait_for(&app, "the places back", |m| {
        m.sum(OPEN, &[("listener", "http")]) == 0.0
    })
    .await;
    let sent = Otlp::new(&app)
        .accepted(Proto::HttpProtobuf, &request(SERVICE, claims(3)))
        .await;
    assert_accepted_and_observed(&app.scrape().await, sent);
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}

/// The soft open-files limit of this process, raised to its hard limit (prlimit(1)) when
/// below `needed`.
fn open_files_at_least(needed: usize) -> usize {
    let soft = || {
        let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_string();
        let fields: Vec<String> = line["Max open files".len()..]
            .split_whitespace()
            .map(str::to_string)
            .collect();
        (
            fields[0].parse::<usize>().unwrap_or(usize::MAX),
            fields[1].clone(),
        )
    };
    let (now, hard) = soft();
    if now < needed {
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
    let (now, hard) = soft();
    assert!(
        now >= needed,
        "this test holds {needed} sockets: raise the open-files limit (ulimit -n; soft {now}, hard {hard})"
    );
    now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_at_a_1024_file_limit_do_not_starve_requests() {
    const FLOOD: usize = 10_000;
    open_files_at_least(FLOOD + 1_000);
    // The first-bytes deadline, which would close silent connections in the end, is far
    // beyond the test: only closing idle connections for room can let requests in.
    let mut app = Setup::new()
        .set("receivers.header_read_timeout", "5m")
        .start_under_ulimit("-n 1024");
    let started = Instant::now();
    let flood = tokio::spawn(idle_connections(app.http(), FLOOD, 200));

    // Meanwhile, requests over fresh connections (a new client each), gRPC and HTTP, every
    // 10 ms until the flood is over.
    let mut sent = 0;
    let mut requests = 0;
    while !flood.is_finished() || requests < 20 {
        for proto in [Proto::Grpc, Proto::HttpProtobuf] {
            sent += Otlp::new(&app)
                .accepted(proto, &request(SERVICE, claims(5)))
                .await;
            requests += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held = flood.await.expect("the flood");
    let flooded = started.elapsed();
    let scraped = app.scrape().await;
    let open = scraped.sum(OPEN, &[]);
    let closed_idle = scraped.sum(CLOSED_IDLE, &[("listener", "http")]);
    eprintln!(
        "{FLOOD} idle connections in {flooded:?} alongside {requests} requests on fresh \
         connections; open now {open}, idle closed {closed_idle}, refused {}",
        scraped.sum(REFUSED, &[])
    );
    assert_accepted_and_observed(&scraped, sent);
    // An eighth of the file limit is kept for the files spanlens opens besides connections.
    assert!(
        open <= (1024 - 1024 / 8) as f64,
        "{open} connections open with 1,024 files"
    );
    assert_eq!(
        scraped.sum(REFUSED, &[]),
        0.0,
        "an idle connection was always there to close"
    );
    // The server closed the flood's connections (each counted); those it holds are idle.
    let closed = held.iter().filter(|s| closed_by_server(s)).count();
    assert!(
        closed >= FLOOD / 2 && closed_idle >= closed as f64,
        "{closed} flood connections closed by the server, {closed_idle} counted"
    );
    assert!(
        app.find_line("accepting a connection failed").is_none(),
        "the process ran out of files:\n{}",
        app.stderr_text()
    );
    drop(held);
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}
