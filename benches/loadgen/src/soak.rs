//! What a soak run is judged by (`spanlens-soak`, `scripts/soak.sh`): the samples taken every
//! few seconds, and the checks over them: resident memory after warm-up grows no faster than
//! a bound (least-squares slope), open files and threads stay flat, every accepted span is
//! forwarded, and ingest p99 at the end stays within a tolerance of the start.

use crate::server_latency::Buckets;
use std::fmt::Write as _;

/// When the load bursts: for `length` seconds from a quarter into every `every` seconds, so
/// that windows of whole periods hold one burst each, and the run ends long after its last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bursts {
    pub every: f64,
    pub length: f64,
}

impl Bursts {
    /// Whether the load bursts at `t` seconds.
    pub fn active(&self, t: f64) -> bool {
        (0.0..self.length).contains(&(t % self.every - self.every / 4.0))
    }

    /// Whether a burst, or the time after it that memory takes to settle (as long again),
    /// falls in the interval (`from`, `to`].
    pub fn overlaps(&self, from: f64, to: f64) -> bool {
        let first = (from / self.every).floor() as i64 - 1;
        let last = (to / self.every).ceil() as i64;
        (first..=last).any(|k| {
            let start = (k as f64 + 0.25) * self.every;
            start < to && start + 2.0 * self.length > from
        })
    }
}

/// One sample of the server, taken every `--sample-every`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the load started at which the sample was due (the end of the interval
    /// it covers; it is taken as soon after as the server answers).
    pub t: f64,
    pub rss_mib: f64,
    pub fds: u64,
    pub threads: u64,
    /// Server CPU seconds per second over the interval.
    pub cpu_cores: f64,
    /// Requests the server timed over the interval (spanlens_request_duration_seconds).
    pub durations: Buckets,
    /// Counters since the server started.
    pub spans_accepted: f64,
    pub spans_forwarded: f64,
    pub forward_queue_requests: f64,
    /// Keys waiting in the join window (spanlens_join_pending).
    pub join_pending: f64,
    /// Distinct `step` label values of the by-step handler histogram now.
    pub step_series: usize,
    /// Whether a burst, or the settling after it, fell in the interval the sample covers.
    pub burst: bool,
}

/// The CSV header of [`Sample::csv`].
pub const CSV_HEADER: &str = "t_s,burst,rss_mib,fds,threads,cpu_cores,requests,p99_ms,spans_accepted,spans_forwarded,forward_queue_requests,join_pending,step_series";

impl Sample {
    pub fn csv(&self) -> String {
        format!(
            "{:.1},{},{:.3},{},{},{:.3},{},{},{},{},{},{},{}",
            self.t,
            u8::from(self.burst),
            self.rss_mib,
            self.fds,
            self.threads,
            self.cpu_cores,
            self.durations.requests(),
            self.durations
                .quantile(0.99)
                .map_or(String::new(), |s| format!("{:.3}", s * 1e3)),
            self.spans_accepted,
            self.spans_forwarded,
            self.forward_queue_requests,
            self.join_pending,
            self.step_series
        )
    }
}

/// The sum of every sample of the metric `name` (any labels) in a Prometheus text exposition.
pub fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.as_bytes().first()? {
                b' ' => rest,
                b'{' => &rest[rest.find("} ")? + 1..],
                _ => return None,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Distinct values of `label` among the samples of the metric `name`.
pub fn label_values(exposition: &str, name: &str, label: &str) -> usize {
    let key = format!("{label}=\"");
    let values: std::collections::BTreeSet<&str> = exposition
        .lines()
        .filter_map(|line| {
            let labels = line.strip_prefix(name)?.strip_prefix('{')?;
            let at = labels.find(&key)? + key.len();
            labels[at..].split('"').next()
        })
        .collect();
    values.len()
}

/// Least-squares slope of y over x (0 with fewer than two distinct x).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// The bounds a run is judged by.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    /// Samples up to this many seconds are warm-up: not in the RSS slope (nor are samples
    /// of a burst, whose transient memory is not growth).
    pub warmup: f64,
    /// Length of the windows compared (p99, fds, threads), the first after warm-up and the
    /// last, in seconds.
    pub window: f64,
    /// Run length in seconds.
    pub duration: f64,
    /// Highest RSS growth after warm-up, MiB per 10 minutes.
    pub rss_mib_per_10min: f64,
    /// Highest relative change of ingest p99, last window against the first (0.2: 20%).
    pub p99_tolerance: f64,
}

/// Every count of a span's way through, read after the forwarding queue drained.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Delivery {
    /// Spans of the requests the load generator saw answered with success.
    pub client_acknowledged: u64,
    /// spanlens_spans_accepted_total.
    pub accepted: f64,
    /// spanlens_forward_sent_spans_total.
    pub forwarded: f64,
    /// spanlens_forward_dropped_spans_total + spanlens_forward_failed_spans_total.
    pub lost: f64,
    /// Spans of the calls the failing downstream answered with success.
    pub downstream: u64,
}

/// One line of the verdict table.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub figure: String,
    pub bound: String,
    pub holds: bool,
}

/// The checks of a run, in the order of the verdict table.
pub fn checks(samples: &[Sample], bounds: &Bounds, delivery: &Delivery) -> Vec<Check> {
    let after_warmup: Vec<&Sample> = samples.iter().filter(|s| s.t > bounds.warmup).collect();
    // The first window after warm-up is what the end is compared with: a cold process (join
    // window, breakdown log and allocator still filling) is slower than a warm one.
    let first: Vec<&Sample> = after_warmup
        .iter()
        .copied()
        .filter(|s| s.t <= bounds.warmup + bounds.window + 1e-6)
        .collect();
    let last: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t > bounds.duration - bounds.window + 1e-6)
        .collect();
    let mut out = Vec::new();

    let points: Vec<(f64, f64)> = after_warmup
        .iter()
        .filter(|s| !s.burst)
        .map(|s| (s.t, s.rss_mib))
        .collect();
    let per_10min = slope(&points) * 600.0;
    out.push(Check {
        name: "rss_slope",
        figure: format!(
            "{per_10min:+.3} MiB / 10 min over {} samples between bursts after {:.0} s ({:.1} to {:.1} MiB)",
            points.len(),
            bounds.warmup,
            points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
            points.iter().map(|p| p.1).fold(0.0, f64::max),
        ),
        bound: format!("≤ {} MiB / 10 min", bounds.rss_mib_per_10min),
        holds: points.len() >= 2 && per_10min <= bounds.rss_mib_per_10min,
    });

    // Flat: the last window comes down at least once to the highest value of the first
    // window after warm-up. Threads of the blocking pool and connections come and go with
    // the load; a leak stays, and climbs past that range.
    for (name, get) in [
        ("fds_flat", (|s: &Sample| s.fds) as fn(&Sample) -> u64),
        ("threads_flat", |s: &Sample| s.threads),
    ] {
        let before = first.iter().map(|s| get(s)).max();
        let end = last.iter().map(|s| get(s)).min();
        out.push(Check {
            name,
            figure: format!(
                "lowest {} in the last {:.0} s, highest {} in the {:.0} s after warm-up (all samples {}..{})",
                show(end),
                bounds.window,
                show(before),
                bounds.window,
                show(samples.iter().map(get).min()),
                show(samples.iter().map(get).max()),
            ),
            bound: "last's low ≤ first's high".to_string(),
            holds: matches!((before, end), (Some(b), Some(e)) if e <= b),
        });
    }

    let d = delivery;
    let equal = d.accepted == d.forwarded
        && d.forwarded == d.downstream as f64
        && d.client_acknowledged as f64 == d.accepted
        && d.lost == 0.0
        && d.accepted > 0.0;
    out.push(Check {
        name: "forwarded_eq_accepted",
        figure: format!(
            "client acknowledged {}, accepted {}, forwarded {}, downstream received {}, dropped or failed {}",
            d.client_acknowledged, d.accepted, d.forwarded, d.downstream, d.lost
        ),
        bound: "all equal, none lost".to_string(),
        holds: equal,
    });

    // Ingest p99 of the load the run holds between bursts: a burst (10x the rate for 10 s,
    // on two shared cores) sets a window's p99 alone, and one burst's luck against another's
    // is not a trend. The windows' p99 with their bursts is shown beside it.
    let window_p99 = |samples: &[&Sample], with_bursts: bool| {
        let mut total = Buckets::default();
        for s in samples.iter().filter(|s| with_bursts || !s.burst) {
            total = total.plus(&s.durations);
        }
        total.quantile(0.99)
    };
    let ms = |p: Option<f64>| p.map_or("-".to_string(), |s| format!("{:.3}", s * 1e3));
    let (p_first, p_last) = (window_p99(&first, false), window_p99(&last, false));
    let change = match (p_first, p_last) {
        (Some(a), Some(b)) if a > 0.0 => Some(b / a - 1.0),
        _ => None,
    };
    out.push(Check {
        name: "p99_stable",
        figure: format!(
            "between bursts {} ms in the last {:.0} s against {} ms in the {:.0} s after warm-up ({}); with the bursts {} ms against {} ms",
            ms(p_last),
            bounds.window,
            ms(p_first),
            bounds.window,
            change.map_or("no requests".to_string(), |c| format!("{:+.1}%", c * 100.0)),
            ms(window_p99(&last, true)),
            ms(window_p99(&first, true)),
        ),
        bound: format!("within ±{:.0}%", bounds.p99_tolerance * 100.0),
        holds: change.is_some_and(|c| c.abs() <= bounds.p99_tolerance),
    });
    out
}

fn show(v: Option<u64>) -> String {
    v.map_or("-".to_string(), |v| v.to_string())
}

/// The verdict table: one line per check.
pub fn table(checks: &[Check]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:<8} {:<26} figure",
        "check", "verdict", "bound"
    );
    for c in checks {
        let _ = writeln!(
            out,
            "{:<22} {:<8} {:<26} {}",
            c.name,
            if c.holds { "holds" } else { "FAILS" },
            c.bound,
            c.figure
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "\
# TYPE spanlens_spans_accepted_total counter
spanlens_spans_accepted_total{protocol=\"grpc\"} 1024
spanlens_spans_accepted_total{protocol=\"http_protobuf\"} 512
spanlens_spans_accepted_totally_different 7
spanlens_forward_sent_spans_total{endpoint=\"sink\"} 1.5e3
spanlens_forward_queue_requests 3
tasker_handler_execution_by_step_seconds_count{step=\"a_e1\",handler_language=\"rust\"} 4
tasker_handler_execution_by_step_seconds_count{step=\"a_e1\",handler_language=\"ruby\"} 4
tasker_handler_execution_by_step_seconds_count{step=\"b_e1\",handler_language=\"rust\"} 4
";

    #[test]
    fn reads_counters_and_label_values() {
        assert_eq!(
            metric_sum(EXPOSITION, "spanlens_spans_accepted_total"),
            1536.0
        );
        assert_eq!(
            metric_sum(EXPOSITION, "spanlens_forward_sent_spans_total"),
            1500.0
        );
        assert_eq!(
            metric_sum(EXPOSITION, "spanlens_forward_queue_requests"),
            3.0
        );
        assert_eq!(metric_sum(EXPOSITION, "spanlens_absent_total"), 0.0);
        let by_step = "tasker_handler_execution_by_step_seconds_count";
        assert_eq!(label_values(EXPOSITION, by_step, "step"), 2);
    }

    #[test]
    fn bursts_in_the_middle_of_each_period() {
        let bursts = Bursts {
            every: 40.0,
            length: 10.0,
        };
        assert!(!bursts.active(9.9) && bursts.active(10.0) && bursts.active(19.9));
        assert!(!bursts.active(20.0) && bursts.active(50.0) && !bursts.active(0.0));
        assert!(bursts.overlaps(10.0, 20.0) && bursts.overlaps(0.0, 10.5));
        // Settling: as long again after the burst.
        assert!(bursts.overlaps(25.0, 26.0) && bursts.overlaps(20.0, 30.0));
        assert!(!bursts.overlaps(0.0, 10.0) && !bursts.overlaps(30.0, 50.0));
        assert!(!bursts.overlaps(70.0, 90.0) && bursts.overlaps(85.0, 95.0));
    }

    #[test]
    fn least_squares_slope() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 + 0.5 * i as f64)).collect();
        assert!((slope(&line) - 0.5).abs() < 1e-12);
        // Noise around a flat line: the outliers cancel.
        let flat = [(0.0, 1.0), (1.0, 3.0), (2.0, 2.0), (3.0, 3.0), (4.0, 1.0)];
        assert!(slope(&flat).abs() < 0.2);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
    }

    fn durations(fast: u64, slow: u64) -> Buckets {
        let text = format!(
            "spanlens_request_duration_seconds_bucket{{protocol=\"grpc\",le=\"0.001\"}} {fast}\n\
             spanlens_request_duration_seconds_bucket{{protocol=\"grpc\",le=\"0.01\"}} {}\n\
             spanlens_request_duration_seconds_bucket{{protocol=\"grpc\",le=\"+Inf\"}} {}\n",
            fast + slow,
            fast + slow
        );
        Buckets::parse(&text, None)
    }

    /// A steady run of 120 s sampled every 10 s: 40 s of warm-up, 40 s windows.
    fn run(rss: impl Fn(f64) -> f64, fds: impl Fn(f64) -> u64, slow_at_end: u64) -> Vec<Sample> {
        (1..=12)
            .map(|i| {
                let t = i as f64 * 10.0;
                let burst = t % 40.0 == 20.0;
                Sample {
                    t,
                    burst,
                    // A burst holds 10 MiB more for a while.
                    rss_mib: rss(t) + if burst { 10.0 } else { 0.0 },
                    fds: fds(t),
                    threads: 9,
                    durations: durations(990, if t > 80.0 { slow_at_end } else { 10 }),
                    ..Sample::default()
                }
            })
            .collect()
    }

    const BOUNDS: Bounds = Bounds {
        warmup: 40.0,
        window: 40.0,
        duration: 120.0,
        rss_mib_per_10min: 1.0,
        p99_tolerance: 0.2,
    };

    const DELIVERED: Delivery = Delivery {
        client_acknowledged: 1000,
        accepted: 1000.0,
        forwarded: 1000.0,
        lost: 0.0,
        downstream: 1000,
    };

    fn failing(checks: &[Check]) -> Vec<&'static str> {
        checks.iter().filter(|c| !c.holds).map(|c| c.name).collect()
    }

    #[test]
    fn a_steady_run_holds() {
        // Memory climbing during warm-up only, then flat with noise.
        let mut samples = run(
            |t| {
                if t <= 40.0 {
                    t / 4.0
                } else {
                    10.0 + (t / 10.0) % 2.0 * 0.1
                }
            },
            |_| 40,
            10,
        );
        // Blocking-pool threads and connections that come and go with the load.
        samples[10].threads += 3;
        samples[11].fds += 2;
        // The last window's burst was slower than the first's: luck, not a trend.
        samples[9].durations = durations(900, 100);
        assert!(samples[9].burst);
        let checks = checks(&samples, &BOUNDS, &DELIVERED);
        assert_eq!(failing(&checks), Vec::<&str>::new(), "{}", table(&checks));
    }

    #[test]
    fn each_check_can_fail() {
        // 0.02 MiB a second after warm-up is 12 MiB per 10 minutes.
        let leak = run(|t| 10.0 + 0.02 * t, |_| 40, 10);
        assert_eq!(failing(&checks(&leak, &BOUNDS, &DELIVERED)), ["rss_slope"]);
        let fds = run(|_| 10.0, |t| 40 + (t / 30.0) as u64, 10);
        assert_eq!(failing(&checks(&fds, &BOUNDS, &DELIVERED)), ["fds_flat"]);
        let slower = run(|_| 10.0, |_| 40, 20);
        assert_eq!(
            failing(&checks(&slower, &BOUNDS, &DELIVERED)),
            ["p99_stable"]
        );
        let steady = run(|_| 10.0, |_| 40, 10);
        for lost in [
            Delivery {
                forwarded: 999.0,
                ..DELIVERED
            },
            Delivery {
                downstream: 1001,
                ..DELIVERED
            },
            Delivery {
                client_acknowledged: 999,
                ..DELIVERED
            },
            Delivery {
                lost: 1.0,
                ..DELIVERED
            },
            Delivery::default(),
        ] {
            let failed = failing(&checks(&steady, &BOUNDS, &lost));
            assert_eq!(failed, ["forwarded_eq_accepted"], "{lost:?}");
        }
    }
}
