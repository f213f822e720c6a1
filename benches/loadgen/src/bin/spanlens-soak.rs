//! spanlens-soak: hours of mixed traffic against a running spanlens that forwards to this
//! process's failing downstream, sampled and judged (`scripts/soak.sh` starts both).

use clap::Parser;
use http::Uri;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use spanlens_loadgen::client::{self, Answer, MetricsClient, Proto, Target, connect};
use spanlens_loadgen::fixtures::{DEFAULT_SPANS_PER_REQUEST, Fixtures, Renewable, string_values};
use spanlens_loadgen::parse_duration;
use spanlens_loadgen::procfs::{clock_ticks, open_fds, read_proc};
use spanlens_loadgen::server_latency::Buckets;
use spanlens_loadgen::sink::Sink;
use spanlens_loadgen::soak::{self, Bounds, Bursts, CSV_HEADER, Delivery, Sample, metric_sum};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Soak of a running spanlens: open-loop load at `--rate` spans/s, one request in four of
/// each kind (OTLP/gRPC, OTLP/HTTP protobuf, each plain and gzip), with `--burst-factor`
/// times the rate for `--burst-length` a quarter into every `--burst-every`, and new step
/// names (a suffix per epoch) every `--rename-every`. Meanwhile /metrics is scraped every
/// `--scrape-every` (as Prometheus, OpenMetrics), a breakdown of the task last sent is looked
/// up every `--breakdown-every`, and every `--sample-every` the server's RSS, open files,
/// threads, CPU and ingest p99 (from its spanlens_request_duration_seconds deltas) are
/// recorded (`--csv`). spanlens must forward to `--sink-listen`, where this process answers
/// a `--sink-fail-share` of the calls with UNAVAILABLE.
///
/// After the load, the forwarding queue drains, and the verdict table is printed: RSS slope
/// after warm-up (samples of a burst and of as long again after it left out), open files
/// and threads flat, spans forwarded == accepted (== acknowledged to the client == received
/// downstream), p99 between bursts of the last window against the first window after
/// warm-up (with the bursts' p99 shown beside it).
///
/// Exit status: 0 when every check holds, 1 when one fails (named on stderr), 2 on setup
/// errors.
#[derive(Parser, Debug)]
#[command(version, args_override_self = true)]
struct Args {
    /// pid of the spanlens under test.
    #[arg(long)]
    pid: u32,
    /// Its OTLP/gRPC receiver, host:port.
    #[arg(long, default_value = "127.0.0.1:4317")]
    grpc: String,
    /// Its OTLP/HTTP receiver, host:port.
    #[arg(long, default_value = "127.0.0.1:4318")]
    http: String,
    /// Its metrics endpoint, host:port (/metrics, /api/v1/breakdown).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics: String,
    /// Where the failing downstream listens (spanlens's forward endpoint, protocol grpc).
    #[arg(long)]
    sink_listen: SocketAddr,
    /// Share of the downstream's calls answered UNAVAILABLE.
    #[arg(long, default_value_t = 0.3)]
    sink_fail_share: f64,
    /// Length of the load.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    duration: Duration,
    /// Spans per second outside bursts.
    #[arg(long, default_value_t = 50_000.0)]
    rate: f64,
    #[arg(long, default_value_t = 10.0)]
    burst_factor: f64,
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    burst_every: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    burst_length: Duration,
    /// New step names (suffix `_e<epoch>`) this often.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    rename_every: Duration,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    scrape_every: Duration,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    breakdown_every: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    sample_every: Duration,
    /// Samples up to this time are not in the RSS slope.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    warmup: Duration,
    /// The windows compared for p99, open files and threads: the first after warm-up, the last.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    window: Duration,
    /// Highest RSS growth after warm-up, MiB per 10 minutes.
    #[arg(long, default_value_t = 1.0)]
    rss_mib_per_10min: f64,
    /// Highest relative change of p99, last window against the first after warm-up.
    #[arg(long, default_value_t = 0.2)]
    p99_tolerance: f64,
    /// Workers (each one connection, one request at a time) per kind of request.
    #[arg(long, default_value_t = 8)]
    workers_per_kind: usize,
    /// Longest wait for the forwarding queue to drain after the load.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Write the samples here.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Worker threads of this process (load, scrapes, the downstream).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// The bodies of one step-name epoch: templates, and the correlation id of each.
struct Epoch {
    templates: Vec<Renewable>,
    correlation_ids: Vec<String>,
}

const TEMPLATES: usize = 64;

fn epoch(seed: u64, n: u64) -> Epoch {
    let mut fixtures = Fixtures::new(seed.wrapping_add(n)).step_suffix(&format!("_e{n}"));
    let (mut templates, mut correlation_ids) = (Vec::new(), Vec::new());
    for _ in 0..TEMPLATES {
        let request = fixtures.request(DEFAULT_SPANS_PER_REQUEST);
        correlation_ids.push(first_correlation_id(&request).unwrap_or_default());
        templates.push(Renewable::protobuf(request.encode_to_vec()));
    }
    Epoch {
        templates,
        correlation_ids,
    }
}

fn first_correlation_id(request: &ExportTraceServiceRequest) -> Option<String> {
    string_values(request, "correlation_id")
        .next()
        .map(str::to_string)
}

/// One request to send: which template of which epoch, in which generation.
struct Job {
    epoch: Arc<Epoch>,
    template: usize,
    generation: u32,
}

/// What the load workers saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    acknowledged_spans: AtomicU64,
    failed: Mutex<BTreeMap<String, u64>>,
}

const KINDS: [(Proto, bool); 4] = [
    (Proto::Grpc, false),
    (Proto::HttpProtobuf, false),
    (Proto::Grpc, true),
    (Proto::HttpProtobuf, true),
];

fn main() -> ExitCode {
    let args = Args::parse();
    spanlens_loadgen::exit_code_of("spanlens-soak", args.threads, run(args))
}

async fn run(args: Args) -> Result<bool, String> {
    let sink = Sink::start(args.sink_listen, args.sink_fail_share, args.seed)
        .await
        .map_err(|e| format!("downstream on {}: {e}", args.sink_listen))?;
    let metrics_uri: Uri = format!("http://{}/metrics", args.metrics)
        .parse()
        .map_err(|e| format!("--metrics: {e}"))?;
    ready(&metrics_uri).await?;
    let tally = Arc::new(Tally::default());
    let latest_correlation = Arc::new(Mutex::new(String::new()));
    let stop = Arc::new(AtomicBool::new(false));

    // Workers: one connection each, fed by their kind's channel.
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for (protocol, gzip) in KINDS {
        let authority = match protocol {
            Proto::Grpc => &args.grpc,
            _ => &args.http,
        };
        let target = Arc::new(Target::new(protocol, gzip, authority)?);
        let (send, receive) = mpsc::channel::<Job>(args.workers_per_kind);
        let receive = Arc::new(tokio::sync::Mutex::new(receive));
        for _ in 0..args.workers_per_kind {
            let connection = connect(authority, protocol == Proto::Grpc).await?;
            let (target, receive, tally) = (target.clone(), receive.clone(), tally.clone());
            let latest_correlation = latest_correlation.clone();
            workers.push(tokio::spawn(async move {
                loop {
                    let job = receive.lock().await.recv().await;
                    let Some(job) = job else { break };
                    let template = &job.epoch.templates[job.template];
                    let body =
                        client::body(template, job.generation, protocol == Proto::Grpc, gzip);
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                    match target.send(&connection, body).await {
                        Answer::Ok { rejected } => {
                            let spans = DEFAULT_SPANS_PER_REQUEST as u64;
                            tally
                                .acknowledged_spans
                                .fetch_add(spans - rejected.min(spans), Ordering::Relaxed);
                            *latest_correlation.lock().unwrap() = Renewable::renew_uuid(
                                &job.epoch.correlation_ids[job.template],
                                job.generation,
                            );
                        }
                        Answer::Failed(why) => {
                            *tally.failed.lock().unwrap().entry(why).or_default() += 1;
                        }
                    }
                }
            }));
        }
        senders.push(send);
    }

    let start = Instant::now();
    let scraper = tokio::spawn(scrapes(
        metrics_uri.clone(),
        args.scrape_every,
        stop.clone(),
    ));
    let lookups = tokio::spawn(breakdowns(
        metrics_uri.clone(),
        args.breakdown_every,
        latest_correlation.clone(),
        stop.clone(),
    ));
    let bursts = Bursts {
        every: args.burst_every.as_secs_f64(),
        length: args.burst_length.as_secs_f64(),
    };
    let sampler = tokio::spawn(sampler(
        metrics_uri.clone(),
        args.pid,
        args.sample_every,
        (args.duration.as_secs_f64() / args.sample_every.as_secs_f64()).round() as u32,
        start,
        bursts,
    ));

    // The schedule: open loop, one request every spans-per-request / rate seconds.
    let total = args.duration.as_secs_f64();
    let mut current = (0u64, Arc::new(epoch(args.seed, 0)));
    let mut next_epoch = tokio::task::spawn_blocking({
        let seed = args.seed;
        move || epoch(seed, 1)
    });
    let (mut sent, mut at) = (0u64, 0.0f64);
    let mut late_sends = 0u64;
    // Until the last sample is taken, so that it sees the load.
    while !sampler.is_finished() {
        let number = (at / args.rename_every.as_secs_f64()) as u64;
        if number != current.0 {
            let ready = (&mut next_epoch).await.map_err(|e| e.to_string())?;
            current = (number, Arc::new(ready));
            next_epoch = tokio::task::spawn_blocking({
                let seed = args.seed;
                move || epoch(seed, number + 1)
            });
        }
        let scheduled = start + Duration::from_secs_f64(at);
        if Instant::now() > scheduled + Duration::from_secs(1) {
            late_sends += 1;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let template = (sent % TEMPLATES as u64) as usize;
        let generation = (sent / TEMPLATES as u64 + 1) as u32;
        let job = Job {
            epoch: current.1.clone(),
            template,
            generation,
        };
        senders[(sent % KINDS.len() as u64) as usize]
            .send(job)
            .await
            .map_err(|_| "a load worker stopped".to_string())?;
        sent += 1;
        let rate = args.rate
            * if bursts.active(at) {
                args.burst_factor
            } else {
                1.0
            };
        at += DEFAULT_SPANS_PER_REQUEST as f64 / rate;
    }
    drop(senders);
    for worker in workers {
        worker.await.map_err(|e| e.to_string())?;
    }
    let load_seconds = start.elapsed().as_secs_f64();
    let samples = sampler.await.map_err(|e| e.to_string())??;
    stop.store(true, Ordering::Relaxed);
    let (scrapes_ok, scrapes_failed) = scraper.await.map_err(|e| e.to_string())??;
    let lookups = lookups.await.map_err(|e| e.to_string())??;

    // Drain: every accepted span forwarded, or the timeout.
    let mut metrics = MetricsClient::connect(metrics_uri).await?;
    let drain_start = Instant::now();
    let (accepted, forwarded, lost) = loop {
        let text =
            String::from_utf8_lossy(&metrics.get("text/plain;version=0.0.4").await?).into_owned();
        let accepted = metric_sum(&text, "spanlens_spans_accepted_total");
        let forwarded = metric_sum(&text, "spanlens_forward_sent_spans_total");
        let lost = metric_sum(&text, "spanlens_forward_dropped_spans_total")
            + metric_sum(&text, "spanlens_forward_failed_spans_total");
        let queued = metric_sum(&text, "spanlens_forward_queue_requests");
        if (forwarded + lost >= accepted && queued == 0.0)
            || drain_start.elapsed() > args.drain_timeout
        {
            break (accepted, forwarded, lost);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let drain_seconds = drain_start.elapsed().as_secs_f64();
    let delivery = Delivery {
        client_acknowledged: tally.acknowledged_spans.load(Ordering::Relaxed),
        accepted,
        forwarded,
        lost,
        downstream: sink.counts().delivered_spans,
    };

    if let Some(path) = &args.csv {
        let mut file =
            std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(file, "{CSV_HEADER}").map_err(|e| e.to_string())?;
        for s in &samples {
            writeln!(file, "{}", s.csv()).map_err(|e| e.to_string())?;
        }
    }
    let downstream = sink.counts();
    let failed = tally.failed.lock().unwrap().clone();
    println!(
        "load: {} requests in {load_seconds:.1} s ({} sent more than 1 s late), {} spans acknowledged; {} requests failed",
        tally.requests.load(Ordering::Relaxed),
        late_sends,
        delivery.client_acknowledged,
        failed.values().sum::<u64>(),
    );
    for (why, n) in &failed {
        println!("  failed ×{n}: {why}");
    }
    println!(
        "downstream: {} calls answered OK, {} UNAVAILABLE, {} undecodable; queue drained in {drain_seconds:.1} s",
        downstream.delivered_calls, downstream.failed_calls, downstream.undecodable_calls
    );
    println!(
        "scrapes: {scrapes_ok} ok, {scrapes_failed} failed; breakdown lookups: {} found, {} not found, {} failed",
        lookups.0, lookups.1, lookups.2
    );
    let bounds = Bounds {
        warmup: args.warmup.as_secs_f64(),
        window: args.window.as_secs_f64(),
        duration: total,
        rss_mib_per_10min: args.rss_mib_per_10min,
        p99_tolerance: args.p99_tolerance,
    };
    let checks = soak::checks(&samples, &bounds, &delivery);
    print!("{}", soak::table(&checks));
    let failing: Vec<&str> = checks.iter().filter(|c| !c.holds).map(|c| c.name).collect();
    if failing.is_empty() {
        println!("soak: every check holds");
        Ok(true)
    } else {
        println!("soak: FAILED: {}", failing.join(", "));
        Ok(false)
    }
}

/// Waits up to 30 s for spanlens to answer /readyz with 200.
async fn ready(uri: &Uri) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = match MetricsClient::connect(uri.clone()).await {
            Ok(mut client) => client.fetch("/readyz", "text/plain").await,
            Err(e) => Err(e),
        };
        match answer {
            Ok((http::StatusCode::OK, _)) => return Ok(()),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => {
                return Err(format!(
                    "spanlens is not ready at {uri} after 30 s: {other:?}"
                ));
            }
        }
    }
}

/// A Prometheus stand-in: OpenMetrics scrapes until told to stop; (ok, failed).
async fn scrapes(uri: Uri, every: Duration, stop: Arc<AtomicBool>) -> Result<(u64, u64), String> {
    let mut client = MetricsClient::connect(uri).await?;
    let (mut ok, mut failed) = (0, 0);
    let mut ticker = tokio::time::interval(every);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        match client
            .get("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
            .await
        {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    Ok((ok, failed))
}

/// Looks up the breakdown of the task last acknowledged; (found, not found, failed).
async fn breakdowns(
    uri: Uri,
    every: Duration,
    latest: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
) -> Result<(u64, u64, u64), String> {
    let mut client = MetricsClient::connect(uri).await?;
    let (mut found, mut missing, mut failed) = (0, 0, 0);
    let mut ticker = tokio::time::interval(every);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let id = latest.lock().unwrap().clone();
        if id.is_empty() {
            continue;
        }
        match client
            .fetch(&format!("/api/v1/breakdown/{id}"), "application/json")
            .await
        {
            Ok((http::StatusCode::OK, _)) => found += 1,
            Ok((http::StatusCode::NOT_FOUND, _)) => missing += 1,
            _ => failed += 1,
        }
    }
    Ok((found, missing, failed))
}

/// `count` samples, one every `every` from `start`: the server's RSS, open files, threads,
/// CPU and what /metrics says.
async fn sampler(
    uri: Uri,
    pid: u32,
    every: Duration,
    count: u32,
    start: Instant,
    bursts: Bursts,
) -> Result<Vec<Sample>, String> {
    let pid = pid.to_string();
    let ticks = clock_ticks();
    let mut client = MetricsClient::connect(uri).await?;
    let mut durations_before = Buckets::default();
    let mut cpu_before = (read_proc(&pid, ticks)?.cpu_seconds, Instant::now());
    let mut samples = Vec::new();
    for tick in 1..=count {
        tokio::time::sleep_until((start + every * tick).into()).await;
        let text =
            String::from_utf8_lossy(&client.get("text/plain;version=0.0.4").await?).into_owned();
        let process = read_proc(&pid, ticks)?;
        let now = Instant::now();
        let durations = Buckets::parse(&text, None);
        samples.push(Sample {
            t: (every * tick).as_secs_f64(),
            burst: bursts.overlaps(
                (every * (tick - 1)).as_secs_f64(),
                (every * tick).as_secs_f64(),
            ),
            rss_mib: process.rss_kib as f64 / 1024.0,
            fds: open_fds(&pid)?,
            threads: process.threads,
            cpu_cores: (process.cpu_seconds - cpu_before.0) / (now - cpu_before.1).as_secs_f64(),
            durations: durations.since(&durations_before),
            spans_accepted: metric_sum(&text, "spanlens_spans_accepted_total"),
            spans_forwarded: metric_sum(&text, "spanlens_forward_sent_spans_total"),
            forward_queue_requests: metric_sum(&text, "spanlens_forward_queue_requests"),
            join_pending: metric_sum(&text, "spanlens_join_pending"),
            step_series: soak::label_values(
                &text,
                "tasker_handler_execution_by_step_seconds_count",
                "step",
            ),
        });
        durations_before = durations;
        cpu_before = (process.cpu_seconds, now);
    }
    Ok(samples)
}
