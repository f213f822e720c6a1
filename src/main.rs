//! The spanlens command line. Everything it runs lives in the library.

use clap::{Parser, Subcommand};
use spanlens::config::{Config, DEFAULT_PROFILE};
use spanlens::metrics::exposition;
use spanlens::pipeline::Pipeline;
use spanlens::server::Server;
use std::path::PathBuf;
use std::process::ExitCode;

/// jemalloc rather than the system allocator: see BENCHMARKS.md "Allocator and gzip back end".
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: allocations of 1 MiB and more (large or
/// compressed request bodies) go back to the system when freed instead of staying dirty in
/// an arena for later, so that a burst of them does not raise the resident memory beyond
/// what is in use (SECURITY.md item on decompression bombs; BENCHMARKS.md "Allocator and
/// gzip back end"). Not lower: the HTTP/2 read buffers that 512-span requests arrive in are
/// just under it, and a lower threshold unmapped and faulted each of them in again, which
/// cost spans per CPU-second.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&'static u8> = Some(&b"oversize_threshold:1048576\0"[0]);

/// spanlens: OTLP spans in, per-stage latency histograms out, for Prometheus.
///
/// Run with no arguments to start on the embedded default profile: OTLP/gRPC on
/// 127.0.0.1:4317, OTLP/HTTP on 127.0.0.1:4318 (POST /v1/traces) and Prometheus metrics on
/// http://127.0.0.1:9464/metrics. Point your services' OTLP exporters at it
/// (OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317) and scrape /metrics.
///
/// As a sidecar in front of your trace backend, list it under `forward.endpoints` in the
/// config: every accepted request is passed on (queued, retried, optionally persisted), so
/// nothing is lost by putting spanlens in the path. `spanlens default-config` documents
/// every setting, including limits, TLS and bearer tokens (see SECURITY.md).
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  spanlens\n  spanlens --config my.yaml\n  spanlens default-config > my.yaml\n  spanlens check-config my.yaml\n  spanlens rules --config my.yaml > spanlens.rules.yml\n  spanlens breakdown <correlation_id> --from http://127.0.0.1:9464\n  spanlens replay traces.jsonl jaeger-traces.json\n\nLog level: RUST_LOG (default info), e.g. RUST_LOG=spanlens=debug."
)]
struct Cli {
    /// Config file (YAML) to use instead of the embedded default profile. `${NAME}` and
    /// `${NAME:-default}` are read from the environment.
    #[arg(long, short, global = true, env = "SPANLENS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start spanlens (what running with no subcommand does).
    Run,
    /// Validate config files: report every problem with file, line and field; exit 1 if any.
    CheckConfig {
        /// Files to check (with --memory, none means --config or the embedded default profile).
        #[arg(required_unless_present = "memory")]
        files: Vec<PathBuf>,
        /// Also print the most resident memory each config allows: a table of its parts
        /// (series store, label values, join window, dedupe table, breakdown log, request
        /// buffers, connections, forwarding queues, scrape; each with how it was computed
        /// from the caps) and the total, with every cap reached at once. Served by this
        /// binary on a machine with as many CPUs as this one.
        #[arg(long)]
        memory: bool,
    },
    /// Print the embedded default profile, a documented starting point for your own.
    DefaultConfig,
    /// Print one task's breakdown (stages per step, worker, derived values, total) from a
    /// running spanlens, by correlation id or task uuid.
    Breakdown {
        /// The task's correlation id or task uuid.
        id: String,
        /// The running spanlens's metrics address.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        from: String,
        /// Print the JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Analyse spans offline: OTLP/JSON files (one export request per line, as the Collector's
    /// file exporter writes them) and Jaeger query API responses (/api/traces), through the
    /// same pipeline; prints exact p50/p95/p99 per stage and derived metric.
    Replay {
        /// Files to read.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print the Prometheus text exposition instead of the percentile table.
        #[arg(long)]
        metrics: bool,
    },
    /// Write the Prometheus rule file for the config (recording rules, p95 alerts guarded by
    /// a minimum traffic rate, regression alerts, SLO burn-rate alerts, spanlens's own health).
    Rules {
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::DefaultConfig => {
            print!("{DEFAULT_PROFILE}");
            ExitCode::SUCCESS
        }
        Command::CheckConfig { files, memory } => check_config(cli.config, &files, memory),
        Command::Rules { output } => rules(cli.config, output),
        Command::Replay { files, metrics } => replay(cli.config, &files, metrics),
        Command::Breakdown { id, from, json } => {
            match spanlens::cli::breakdown::fetch(&from, &id) {
                Ok(found) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&found).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Ok(found) => {
                    print!("{}", spanlens::cli::breakdown::render_table(&found));
                    print!("{}", spanlens::cli::breakdown::render_bars(&found, 60));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("spanlens breakdown: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run => run(cli.config),
    }
}

fn load(path: Option<&PathBuf>) -> Result<Config, ExitCode> {
    match path {
        Some(path) => Config::load(path).map_err(|e| {
            eprint!("{e}");
            ExitCode::FAILURE
        }),
        None => Ok(Config::default_profile()),
    }
}

fn rules(config: Option<PathBuf>, output: Option<PathBuf>) -> ExitCode {
    let config = match load(config.as_ref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let text = spanlens::metrics::rules::render(&config);
    match output {
        None => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Some(path) => match std::fs::write(&path, text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("spanlens: cannot write {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn replay(config: Option<PathBuf>, files: &[PathBuf], metrics: bool) -> ExitCode {
    let config = match load(config.as_ref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let pipeline = match Pipeline::keeping_raw_values(&config) {
        Ok(pipeline) => pipeline,
        Err(e) => {
            eprintln!("spanlens replay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", file.display());
                ok = false;
                continue;
            }
        };
        let report = spanlens::cli::replay::ingest_text(&pipeline, &text);
        eprintln!(
            "{}: {} requests, {} spans accepted, {} rejected",
            file.display(),
            report.requests,
            report.spans_accepted,
            report.spans_rejected
        );
        for problem in &report.problems {
            eprintln!("{}: {problem}", file.display());
        }
    }
    if metrics {
        print!(
            "{}",
            exposition::render(&pipeline.snapshot(), exposition::Format::Text)
        );
    } else {
        print!("{}", spanlens::cli::replay::render_percentiles(&pipeline));
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check_config(config: Option<PathBuf>, files: &[PathBuf], memory: bool) -> ExitCode {
    if files.is_empty() {
        return match load(config.as_ref()) {
            Ok(config) => print_memory(&config),
            Err(code) => code,
        };
    }
    let mut ok = true;
    for file in files {
        match Config::load(file) {
            Ok(config) => {
                println!(
                    "{}: ok ({} stages, {} rules)",
                    file.display(),
                    config.stages.len(),
                    config.rules.len()
                );
                ok &= !memory || print_memory(&config) == ExitCode::SUCCESS;
            }
            Err(e) => {
                ok = false;
                eprint!("{e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `check-config --memory`: the worst-case memory table of `config`.
fn print_memory(config: &Config) -> ExitCode {
    match spanlens::cli::memory::estimate(config) {
        Ok(estimate) => {
            print!("{}", estimate.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spanlens check-config --memory: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: Option<PathBuf>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match load(config_path.as_ref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let origin = config_path.map_or("the embedded default profile".to_string(), |p| {
        p.display().to_string()
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("spanlens: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Listened for before the server starts: a SIGTERM as soon as it has started (and
        // said so) is a graceful stop, not the signal's default action.
        let stopped = shutdown_signal();
        let server = match Server::start(config).await {
            Ok(server) => server,
            Err(e) => {
                eprintln!("spanlens: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(config = %origin, metrics = %format!("http://{}/metrics", server.metrics_addr()), "spanlens started");
        stopped.await;
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        let pipeline = server.pipeline().clone();
        server.shutdown().await;
        tracing::info!(spans_accepted = pipeline.accepted_total(), "stopped");
        ExitCode::SUCCESS
    })
}

/// Resolves at the first SIGTERM or SIGINT from now on: the handlers are in place when it
/// returns, before it is polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
