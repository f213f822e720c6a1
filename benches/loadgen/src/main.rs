//! spanlens-loadgen: drives a running spanlens (or any OTLP trace receiver) with realistic
//! tasker workflow spans and reports throughput, server CPU and memory, and client latency.
//! Run `spanlens-loadgen --help` for what it does and how to read its report.

use bytes::Bytes;
use clap::Parser;
use http::Uri;
use prost::Message;
use spanlens_loadgen::client::{self, Answer, MetricsClient, Proto, Sender, Target, connect};
use spanlens_loadgen::fixtures::{DEFAULT_SPANS_PER_REQUEST, Fixtures, Renewable};
use spanlens_loadgen::parse_duration;
use spanlens_loadgen::procfs::{clock_ticks, read_proc};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Load generator for spanlens: realistic tasker workflow spans over OTLP, with server CPU,
/// memory and client latency in the report.
///
/// Requests come from this crate's fixtures builder (`spanlens_loadgen::fixtures`, the one
/// shared with spanlens's tests and benches): tasks of the linear, diamond, DAG, tree and
/// batch workflows on tasker-orchestration and Rust/Ruby/Python workers, in both span
/// vocabularies, eight attributes per span, about 400 bytes per span. `--distinct-requests`
/// bodies are generated and encoded (and compressed) before the clock starts and then sent
/// round-robin, so the client spends its CPU on sending, not on building spans.
///
/// Each of `--concurrency` workers sends one request at a time (closed loop), or, with
/// `--rate`, at its share of a fixed schedule (open loop: latency is measured from the
/// scheduled send time, so a server that falls behind shows it). A `--warmup` phase runs
/// first and is not counted.
///
/// Given `--server-pid`, the report adds the server's CPU time (utime + stime from
/// /proc/PID/stat over the measured phase), spans per server CPU-second (the throughput
/// figure that does not depend on how much CPU the load generator takes from a shared
/// machine), its peak resident memory (VmHWM since it started) and the highest VmRSS
/// sampled every 100 ms during the measured phase.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "\
Examples (start the server first: target/release/spanlens --config bench.yaml):
  # saturate OTLP/gRPC, uncompressed, 20 s after a 3 s warm-up
  spanlens-loadgen --protocol grpc --target http://127.0.0.1:4317 --server-pid $(pgrep -n spanlens) --duration 20s
  # OTLP/HTTP protobuf with gzip
  spanlens-loadgen --protocol http-protobuf --target http://127.0.0.1:4318 --gzip --server-pid PID
  # a steady 100,000 spans/s for the memory target, with latency from the schedule
  spanlens-loadgen --rate 100000 --concurrency 4 --duration 60s --server-pid PID
  # the server's own latency for one request in flight (its part of the round trip)
  spanlens-loadgen -c 1 --server-metrics-url http://127.0.0.1:9464/metrics --server-pid PID
  # ingest while a scraper polls /metrics every 100 ms
  spanlens-loadgen --scrape-url http://127.0.0.1:9464/metrics --scrape-interval 100ms --server-pid PID
  # machine-readable summary
  spanlens-loadgen --requests 2000 --json

Reading the report:
  spans/s                  accepted spans / wall time of the measured phase
  spans per server CPU-s   accepted spans / (server utime+stime) over the same phase
  server CPU               server CPU seconds per wall second (2.00 = both cores of a 2-core box)
  latency p50/p99/p99.9    client round trip of one request (send to last byte/trailers), loopback
  server latency           with --server-metrics-url: the server's own timing (headers to answer),
                           as the bucket bound the percentile falls under
  errors                   failed requests (transport, HTTP status, gRPC status) and rejected spans
On a shared machine compare spans per server CPU-second, not spans/s: the first only counts the
time the server actually ran. A gRPC latency that sits near 40 ms at low load is Nagle's
algorithm meeting delayed ACKs on the server's sockets, not request processing.

Exit status: 0 when every request succeeded, 1 when any failed, 2 on bad arguments or setup."
)]
struct Args {
    /// Wire protocol: OTLP/gRPC (HTTP/2 cleartext), or OTLP/HTTP with a protobuf or JSON body.
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: Proto,
    /// Receiver base URL [default: http://127.0.0.1:4317 for grpc, http://127.0.0.1:4318 for
    /// http-*]. Only http:// (no TLS).
    #[arg(long)]
    target: Option<Uri>,
    /// Compress each request with gzip (grpc-encoding / Content-Encoding: gzip).
    #[arg(long)]
    gzip: bool,
    /// Spans per request.
    #[arg(long, default_value_t = DEFAULT_SPANS_PER_REQUEST)]
    spans_per_request: usize,
    /// Distinct requests generated and encoded up front, sent round-robin. Without --gzip
    /// their trace, span and parent ids and attribute UUIDs are renewed on every send (a
    /// copy and a few thousand XORs per request, off the timed path), so no span is ever
    /// sent twice.
    #[arg(long, default_value_t = 64)]
    distinct_requests: usize,
    /// With --gzip: copies of each distinct request, each with its own ids, compressed up
    /// front (ids repeat after distinct-requests × gzip-variants × spans-per-request spans;
    /// the default 64 × 16 × 512 = 524,288 is twice spanlens's default dedupe window).
    #[arg(long, default_value_t = 16)]
    gzip_variants: usize,
    /// Seed of the fixtures builder.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests in flight at once (one worker each).
    #[arg(long, short = 'c', default_value_t = 8)]
    concurrency: usize,
    /// TCP connections. HTTP/2 multiplexes workers over them [default: 2 for grpc and
    /// --http2, else one per worker, as HTTP/1.1 needs].
    #[arg(long)]
    connections: Option<usize>,
    /// For http-* protocols: use HTTP/2 (h2c, prior knowledge) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Length of the measured phase (e.g. 10s, 500ms, 2m). Ignored with --requests.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Send exactly this many requests in the measured phase instead of running for --duration.
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Unmeasured phase before the measured one (connections, server caches, allocator).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Cap on spans per second over all workers (0: as fast as the server answers).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// pid of the server, for CPU time and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Poll this /metrics URL during the measured phase (a Prometheus stand-in).
    #[arg(long)]
    scrape_url: Option<Uri>,
    /// spanlens's /metrics, read just before and after the measured phase for the server's
    /// own timing of the requests (spanlens_request_duration_seconds): the server's part of
    /// the latency, apart from the client and the kernel, to its buckets' resolution.
    #[arg(long)]
    server_metrics_url: Option<Uri>,
    /// Interval between scrapes with --scrape-url.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    scrape_interval: Duration,
    /// Worker threads of the load generator's own runtime. Keep it low on a small machine:
    /// every core the client uses is one the server does not get.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the summary as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What is sent: templates whose ids are renewed on every send (uncompressed bodies), or
/// bodies compressed in advance with their ids renewed per variant (gzip).
enum Bodies {
    Renewed(Vec<Renewable>),
    Fixed(Vec<Bytes>),
}

impl Bodies {
    fn len(&self) -> usize {
        match self {
            Bodies::Renewed(v) => v.len(),
            Bodies::Fixed(v) => v.len(),
        }
    }

    /// The body of send number `n` (counted over the whole run, warm-up included).
    fn get(&self, n: u64, grpc: bool) -> Bytes {
        match self {
            Bodies::Fixed(bodies) => bodies[(n % bodies.len() as u64) as usize].clone(),
            Bodies::Renewed(templates) => {
                let len = templates.len() as u64;
                let template = &templates[(n % len) as usize];
                client::body(template, (n / len + 1) as u32, grpc, false)
            }
        }
    }
}

/// Builds and encodes every body before anything is timed; returns them with the encoded
/// (uncompressed) bytes per span and the spans sent before an id repeats (None: never).
fn bodies(args: &Args) -> (Bodies, f64, Option<u64>) {
    let mut fixtures = Fixtures::new(args.seed);
    let templates: Vec<Renewable> = (0..args.distinct_requests.max(1))
        .map(|_| {
            let request = fixtures.request(args.spans_per_request);
            match args.protocol {
                Proto::HttpJson => Renewable::json(serde_json::to_vec(&request).expect("JSON")),
                _ => Renewable::protobuf(request.encode_to_vec()),
            }
        })
        .collect();
    let raw: usize = templates.iter().map(|t| t.bytes().len()).sum();
    let per_span = raw as f64 / (templates.len() * args.spans_per_request) as f64;
    if !args.gzip {
        return (Bodies::Renewed(templates), per_span, None);
    }
    // Compressing takes a while: use every core, once, before the clock starts.
    let variants = args.gzip_variants.max(1);
    let jobs: Vec<(usize, u32)> = (0..variants as u32)
        .flat_map(|g| (0..templates.len()).map(move |t| (t, g)))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = jobs.len().div_ceil(threads);
    let grpc = args.protocol == Proto::Grpc;
    let fixed: Vec<Bytes> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|jobs| {
                let templates = &templates;
                scope.spawn(move || {
                    jobs.iter()
                        .map(|&(t, g)| client::body(&templates[t], g, grpc, true))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("gzip worker"))
            .collect()
    });
    let unique = (fixed.len() * args.spans_per_request) as u64;
    (Bodies::Fixed(fixed), per_span, Some(unique))
}

/// What the workers of one phase measured.
#[derive(Default)]
struct Tally {
    requests: u64,
    spans: u64,
    rejected_spans: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    /// Per successful request, nanoseconds.
    latencies: Vec<u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.spans += other.spans;
        self.rejected_spans += other.rejected_spans;
        self.failed += other.failed;
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.latencies.extend(other.latencies);
    }
}

/// How a phase ends.
#[derive(Clone, Copy)]
enum Until {
    Time(Instant),
    Count(u64),
}

/// Runs every worker until the phase ends, and returns what they measured.
async fn phase(
    target: &Arc<Target>,
    senders: &[Sender],
    bodies: &Arc<Bodies>,
    sent: &Arc<AtomicU64>,
    args: &Args,
    until: Until,
) -> Tally {
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let spans = args.spans_per_request as u64;
    let grpc = args.protocol == Proto::Grpc;
    // Seconds between two scheduled requests, over all workers.
    let interval = (args.rate > 0.0).then(|| args.spans_per_request as f64 / args.rate);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|worker| {
            let sender = senders[worker % senders.len()].clone();
            let (target, bodies, next, sent) =
                (target.clone(), bodies.clone(), next.clone(), sent.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let slot = next.fetch_add(1, Ordering::Relaxed);
                    if let Until::Count(n) = until
                        && slot >= n
                    {
                        break;
                    }
                    let body = bodies.get(sent.fetch_add(1, Ordering::Relaxed), grpc);
                    let scheduled = match interval {
                        Some(interval) => {
                            let at = start + Duration::from_secs_f64(slot as f64 * interval);
                            if let Until::Time(end) = until
                                && at >= end
                            {
                                break;
                            }
                            tokio::time::sleep_until(at.into()).await;
                            at
                        }
                        None => Instant::now(),
                    };
                    if let Until::Time(end) = until
                        && Instant::now() >= end
                    {
                        break;
                    }
                    let answer = target.send(&sender, body).await;
                    let elapsed = scheduled.elapsed();
                    tally.requests += 1;
                    match answer {
                        Answer::Ok { rejected } => {
                            tally.spans += spans - rejected.min(spans);
                            tally.rejected_spans += rejected;
                            tally.latencies.push(elapsed.as_nanos() as u64);
                        }
                        Answer::Failed(why) => {
                            tally.failed += 1;
                            *tally.failures.entry(why).or_default() += 1;
                            // Do not spin on a dead server.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for worker in workers {
        if let Ok(tally) = worker.await {
            total.merge(tally);
        }
    }
    total
}

/// Polls /metrics at an interval until told to stop; returns per-scrape latencies and sizes.
async fn scraper(
    uri: Uri,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> Result<(Vec<u64>, u64, u64), String> {
    let mut client = MetricsClient::connect(uri).await?;
    let mut latencies = Vec::new();
    let (mut bytes, mut failed) = (0u64, 0u64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let start = Instant::now();
        let scrape = client
            .get("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
            .await;
        match scrape {
            Ok(body) => {
                latencies.push(start.elapsed().as_nanos() as u64);
                bytes = body.len() as u64;
            }
            Err(_) => failed += 1,
        }
    }
    Ok((latencies, bytes, failed))
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.concurrency == 0 || args.spans_per_request == 0 || args.threads == 0 {
        eprintln!(
            "spanlens-loadgen: --concurrency, --spans-per-request and --threads must be at least 1"
        );
        return ExitCode::from(2);
    }
    spanlens_loadgen::exit_code_of("spanlens-loadgen", args.threads, run(args))
}

async fn run(args: Args) -> Result<bool, String> {
    let http2 = args.protocol == Proto::Grpc || args.http2;
    let base = args.target.clone().unwrap_or_else(|| {
        match args.protocol {
            Proto::Grpc => "http://127.0.0.1:4317",
            _ => "http://127.0.0.1:4318",
        }
        .parse()
        .expect("valid default")
    });
    if base.scheme_str().is_some_and(|s| s != "http") {
        return Err(format!(
            "{base}: only http:// targets are supported (no TLS)"
        ));
    }
    let authority = base
        .authority()
        .ok_or_else(|| format!("{base}: the target needs a host and port"))?
        .to_string();
    let target = Arc::new(Target::new(args.protocol, args.gzip, &authority)?);
    let connections = if http2 {
        args.connections.unwrap_or(2).clamp(1, args.concurrency)
    } else {
        if args.connections.is_some_and(|c| c != args.concurrency) {
            eprintln!(
                "note: HTTP/1.1 has one request in flight per connection; using one connection per worker"
            );
        }
        args.concurrency
    };

    let prepared = Instant::now();
    let (bodies, bytes_per_span, unique_spans) = bodies(&args);
    let body_bytes = (0..bodies.len() as u64)
        .map(|n| bodies.get(n, false).len())
        .sum::<usize>()
        / bodies.len();
    let bodies = Arc::new(bodies);
    let sent = Arc::new(AtomicU64::new(0));
    if !args.json {
        eprintln!(
            "prepared {} bodies of {} spans in {:.1?}: {:.0} bytes/span encoded, {} bytes/request on the wire; {}",
            bodies.len(),
            args.spans_per_request,
            prepared.elapsed(),
            bytes_per_span,
            body_bytes,
            match unique_spans {
                None => "ids renewed on every send".to_string(),
                Some(n) => format!("ids repeat after {n} spans"),
            }
        );
    }

    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(&authority, http2).await?);
    }

    if !args.warmup.is_zero() {
        let warm = phase(
            &target,
            &senders,
            &bodies,
            &sent,
            &args,
            Until::Time(Instant::now() + args.warmup),
        )
        .await;
        if let Some((why, _)) = warm.failures.iter().next()
            && warm.failed == warm.requests
        {
            return Err(format!("every warm-up request failed; first: {why}"));
        }
    }

    let mut server_metrics = match args.server_metrics_url.clone() {
        Some(uri) => Some(MetricsClient::connect(uri).await?),
        None => None,
    };
    let protocol_label = Some(args.protocol.label());
    let durations_before = match &mut server_metrics {
        Some(client) => Some(client.request_durations(protocol_label).await?),
        None => None,
    };
    let pid = args.server_pid.map(|p| p.to_string());
    let ticks = clock_ticks();
    let server_before = pid.as_deref().map(|p| read_proc(p, ticks)).transpose()?;
    let client_before = read_proc("self", ticks).ok();
    let stop = Arc::new(AtomicBool::new(false));
    let rss_sampler = pid.clone().map(|pid| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut max_rss = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(s) = read_proc(&pid, ticks) {
                    max_rss = max_rss.max(s.rss_kib);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max_rss
        })
    });
    let scrapes = args
        .scrape_url
        .clone()
        .map(|uri| tokio::spawn(scraper(uri, args.scrape_interval, stop.clone())));

    let start = Instant::now();
    let until = match args.requests {
        Some(n) => Until::Count(n),
        None => Until::Time(start + args.duration),
    };
    let mut tally = phase(&target, &senders, &bodies, &sent, &args, until).await;
    let wall = start.elapsed().as_secs_f64();
    let server_after = pid.as_deref().map(|p| read_proc(p, ticks)).transpose()?;
    let client_after = read_proc("self", ticks).ok();
    stop.store(true, Ordering::Relaxed);
    let max_rss = match rss_sampler {
        Some(task) => task.await.ok(),
        None => None,
    };
    let scrapes = match scrapes {
        Some(task) => Some(task.await.map_err(|e| e.to_string())??),
        None => None,
    };
    let server_durations = match (&mut server_metrics, &durations_before) {
        (Some(client), Some(before)) => Some(
            client
                .request_durations(protocol_label)
                .await?
                .since(before),
        ),
        _ => None,
    };

    tally.latencies.sort_unstable();
    let lat = |q| percentile(&tally.latencies, q);
    let server_cpu = server_before
        .zip(server_after)
        .map(|(b, a)| a.cpu_seconds - b.cpu_seconds);
    let client_cpu = client_before
        .zip(client_after)
        .map(|(b, a)| a.cpu_seconds - b.cpu_seconds);
    let spans_per_cpu = server_cpu.map(|cpu| tally.spans as f64 / cpu);
    let mut report = serde_json::json!({
        "protocol": format!("{:?}", args.protocol),
        "gzip": args.gzip,
        "http2": http2,
        "spans_per_request": args.spans_per_request,
        "bytes_per_span": bytes_per_span.round(),
        "bytes_per_request_on_wire": body_bytes,
        "concurrency": args.concurrency,
        "connections": connections,
        "rate_cap_spans_per_s": args.rate,
        "wall_seconds": wall,
        "requests": tally.requests,
        "failed_requests": tally.failed,
        "rejected_spans": tally.rejected_spans,
        "spans_accepted": tally.spans,
        "spans_per_second": tally.spans as f64 / wall,
        "latency_ms": {
            "p50": lat(0.5), "p90": lat(0.9), "p99": lat(0.99), "p999": lat(0.999),
            "max": tally.latencies.last().map_or(f64::NAN, |&n| n as f64 / 1e6),
        },
        "client_cpu_seconds": client_cpu,
    });
    if let (Some(cpu), Some(after)) = (server_cpu, server_after) {
        report["server"] = serde_json::json!({
            "pid": args.server_pid,
            "cpu_seconds": cpu,
            "cpu_cores_used": cpu / wall,
            "spans_per_cpu_second": spans_per_cpu,
            "peak_rss_mib_since_start": after.hwm_kib as f64 / 1024.0,
            "max_rss_mib_sampled": max_rss.map(|k| k as f64 / 1024.0),
            "rss_mib_at_end": after.rss_kib as f64 / 1024.0,
        });
    }
    if let Some((mut latencies, bytes, failed)) = scrapes {
        latencies.sort_unstable();
        report["scrapes"] = serde_json::json!({
            "count": latencies.len(),
            "failed": failed,
            "bytes": bytes,
            "latency_ms": { "p50": percentile(&latencies, 0.5), "p99": percentile(&latencies, 0.99),
                            "max": latencies.last().map_or(f64::NAN, |&n| n as f64 / 1e6) },
        });
    }
    if let Some(d) = server_durations {
        let at_most = |q| d.quantile_at_most(q).map(|s| s * 1e3);
        report["server_latency_ms"] = serde_json::json!({
            "requests": d.requests(),
            "p50_at_most": at_most(0.5), "p90_at_most": at_most(0.9),
            "p99_at_most": at_most(0.99), "p999_at_most": at_most(0.999),
            "share_within": d.shares_ms(),
        });
    }
    if !tally.failures.is_empty() {
        report["failures"] = serde_json::json!(tally.failures);
    }

    if args.json {
        println!("{report}");
    } else {
        print_report(&args, &report, wall, &tally);
    }
    Ok(tally.failed == 0 && tally.rejected_spans == 0)
}

fn print_report(args: &Args, r: &serde_json::Value, wall: f64, tally: &Tally) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "protocol {:?}{}, {} spans/request ({} bytes/span), concurrency {} over {} connection(s){}",
        args.protocol,
        if args.gzip { " + gzip" } else { "" },
        args.spans_per_request,
        r["bytes_per_span"],
        args.concurrency,
        r["connections"],
        if args.rate > 0.0 {
            format!(", rate cap {} spans/s", args.rate)
        } else {
            String::new()
        }
    );
    println!(
        "measured {:.2} s: {} requests, {} spans accepted, {} failed requests, {} rejected spans",
        wall, tally.requests, tally.spans, tally.failed, tally.rejected_spans
    );
    println!(
        "throughput            {:>12.0} spans/s  ({:.0} requests/s)",
        f(&r["spans_per_second"]),
        tally.requests as f64 / wall
    );
    let l = &r["latency_ms"];
    println!(
        "latency (ms)          p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        f(&l["p50"]),
        f(&l["p90"]),
        f(&l["p99"]),
        f(&l["p999"]),
        f(&l["max"])
    );
    if let Some(s) = r.get("server") {
        println!(
            "server CPU            {:>12.2} s  ({:.2} cores)",
            f(&s["cpu_seconds"]),
            f(&s["cpu_cores_used"])
        );
        println!(
            "spans per server CPU-s{:>12.0}",
            f(&s["spans_per_cpu_second"])
        );
        println!(
            "server memory (MiB)   peak since start {:.1}, max sampled {:.1}, at end {:.1}",
            f(&s["peak_rss_mib_since_start"]),
            f(&s["max_rss_mib_sampled"]),
            f(&s["rss_mib_at_end"])
        );
    }
    if let Some(cpu) = r["client_cpu_seconds"].as_f64() {
        println!(
            "client CPU            {:>12.2} s  ({:.2} cores)",
            cpu,
            cpu / wall
        );
    }
    if let Some(s) = r.get("server_latency_ms") {
        let bound = |v: &serde_json::Value| match v.as_f64() {
            Some(ms) => format!("≤ {ms}"),
            None => "> every bound".to_string(),
        };
        println!(
            "server latency (ms)   {} requests timed by the server: p50 {}  p99 {}  p99.9 {}",
            s["requests"],
            bound(&s["p50_at_most"]),
            bound(&s["p99_at_most"]),
            bound(&s["p999_at_most"])
        );
    }
    if let Some(s) = r.get("scrapes") {
        println!(
            "scrapes               {} ok, {} failed, {} bytes, latency p50 {:.3} ms p99 {:.3} ms",
            s["count"],
            s["failed"],
            s["bytes"],
            f(&s["latency_ms"]["p50"]),
            f(&s["latency_ms"]["p99"])
        );
    }
    for (why, n) in &tally.failures {
        println!("failure ×{n}: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<u64> = (1..=1000).map(|i| i * 1_000_000).collect();
        assert_eq!(percentile(&sorted, 0.5), 500.0);
        assert_eq!(percentile(&sorted, 0.99), 990.0);
        assert_eq!(percentile(&sorted, 0.999), 999.0);
    }
}
