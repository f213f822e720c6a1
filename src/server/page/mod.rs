//! The operator page on the metrics listener: `/` (the overview), `/task/{id}` (one task's
//! waterfall), `/compare` (handler execution by step and language), and its stylesheet and
//! script, embedded. Server-rendered HTML under a strict Content-Security-Policy; every
//! value from spans is escaped ([`html::Escaped`]).
//!
//! Windowed figures and the slowest lists come from a ring of samples ([`windows`]) that a
//! timer fills from the same merged copy of the series a scrape reads and one pass over the
//! breakdown log; the overview and the comparison read only the ring, and a task page looks
//! its task up as `/api/v1/breakdown` does.

mod comparison;
mod html;
mod overview;
mod task;
mod windows;

use crate::config::{Config, TraceUrl};
use crate::metrics::rules;
use crate::metrics::store::{Snapshot, StoreBound};
use crate::pipeline::Pipeline;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use regex::Regex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use windows::{Family, Ring, Sample};

/// The windows the overview shows.
const WINDOWS: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(300)];

/// spanlens's own series the overview lists: join health, refusals, forwarding queues.
const HEALTH: [&str; 9] = [
    "spanlens_join_pending",
    "spanlens_join_evicted_total",
    "spanlens_join_late_spans_total",
    "spanlens_spans_duplicate_total",
    "spanlens_spans_refused_total",
    "spanlens_requests_refused_total",
    "spanlens_forward_queue_requests",
    "spanlens_forward_queue_bytes",
    "spanlens_forward_dropped_spans_total",
];

/// What a family of the page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stage,
    Derived,
    Comparison,
}

/// A latency alert's threshold, its matchers compiled against the family's row labels.
struct Alert {
    quantile: f64,
    above_seconds: f64,
    /// (position among the row labels, anchored regex).
    matchers: Vec<(usize, Regex)>,
}

impl Alert {
    fn watches(&self, row: &[String]) -> bool {
        (self.matchers.iter()).all(|(at, regex)| regex.is_match(&row[*at]))
    }
}

/// A family as the page shows it.
struct Shown {
    name: String,
    kind: Kind,
    alerts: Vec<Alert>,
}

/// The page's state: what it shows, from the config (read once), and the ring.
pub(crate) struct Page {
    pipeline: Arc<Pipeline>,
    families: Vec<Family>,
    shown: Vec<Shown>,
    /// Per comparison family: (its index, the baseline language).
    comparisons: Vec<(usize, String)>,
    ring: Ring,
    trace_url: Option<TraceUrl>,
    slowest: usize,
    interval: Duration,
}

/// The families the page shows, from the config: every stage (its histogram, calls and
/// errors, by service and handler language), derived metric and comparison.
fn families(config: &Config) -> Vec<(String, Kind, Family)> {
    let level = || vec!["service".to_string(), "handler_language".to_string()];
    let stages = (config.stages.iter()).map(|(name, stage)| {
        let family = Family {
            histogram: stage.histogram.clone(),
            counters: Some([stage.calls.clone(), stage.errors.clone()]),
            row_labels: level(),
        };
        (name.clone(), Kind::Stage, family)
    });
    let derived = (config.derived.iter()).map(|(name, d)| {
        let family = Family {
            histogram: d.histogram.clone(),
            counters: None,
            row_labels: d.labels.clone(),
        };
        (name.clone(), Kind::Derived, family)
    });
    let comparisons = (config.comparisons.iter()).map(|(name, c)| {
        let family = Family {
            histogram: c.histogram.clone(),
            counters: None,
            row_labels: vec![c.step_label.clone(), "handler_language".to_string()],
        };
        (name.clone(), Kind::Comparison, family)
    });
    stages.chain(derived).chain(comparisons).collect()
}

impl Page {
    pub(crate) fn new(config: &Config, pipeline: Arc<Pipeline>) -> Page {
        let thresholds = rules::thresholds(config);
        let mut shown = Vec::new();
        let mut comparisons = Vec::new();
        let mut families = Vec::new();
        for (name, kind, family) in self::families(config) {
            let alerts = (thresholds.iter())
                .filter(|t| t.histogram == family.histogram)
                .filter_map(|t| {
                    let matchers = (t.matchers.iter())
                        .map(|(label, pattern)| {
                            let at = family.row_labels.iter().position(|l| l == label)?;
                            Regex::new(&format!("^(?:{pattern})$"))
                                .ok()
                                .map(|r| (at, r))
                        })
                        .collect::<Option<Vec<_>>>()?;
                    Some(Alert {
                        quantile: t.quantile,
                        above_seconds: t.above_seconds,
                        matchers,
                    })
                })
                .collect();
            if kind == Kind::Comparison
                && let Some(c) = config.comparisons.get(&name)
            {
                comparisons.push((families.len(), c.baseline.clone()));
            }
            shown.push(Shown { name, kind, alerts });
            families.push(family);
        }
        let interval = config.page.sample_interval.get();
        Page {
            pipeline,
            families,
            shown,
            comparisons,
            ring: Ring::new(WINDOWS[0], WINDOWS[1]),
            trace_url: config.page.trace_url.clone(),
            slowest: config.page.slowest,
            interval,
        }
    }

    fn sample(&self, snapshot: &Snapshot) -> Sample {
        let mut sample = Sample::of(snapshot, &self.families, &HEALTH, Instant::now());
        sample.longest = self.pipeline.longest_recent(self.slowest);
        sample
    }
}

/// What the page holds at most (`spanlens check-config --memory`).
pub(crate) struct PageBound {
    /// Samples the ring holds at most with the config's `page.sample_interval`.
    pub(crate) samples: usize,
    /// The most one sample holds (see [`windows::sample_bytes_bound`]).
    pub(crate) sample_bytes: usize,
}

/// The page's bound with every series cap of `store` reached.
pub(crate) fn memory_bound(config: &Config, store: &StoreBound) -> PageBound {
    let families: Vec<Family> = families(config).into_iter().map(|(_, _, f)| f).collect();
    PageBound {
        samples: windows::held_at_most(WINDOWS[0], WINDOWS[1], config.page.sample_interval.get()),
        sample_bytes: windows::sample_bytes_bound(
            &families,
            store,
            config.metrics.max_label_value_length,
            HEALTH.len(),
            config.page.slowest,
        ),
    }
}

/// Takes a sample now and then every `page.sample_interval` until `stop`. `snapshot` gives
/// the series as a scrape sees them (forwarding's and the listeners' included).
pub(crate) fn sample_every_interval(
    page: Arc<Page>,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(page.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let (page, snapshot) = (page.clone(), snapshot.clone());
            let taken = tokio::task::spawn_blocking(move || {
                let sample = page.sample(&snapshot());
                page.ring.push(sample);
            });
            if taken.await.is_err() {
                tracing::warn!("the operator page's sample failed");
            }
        }
    })
}

/// The page's routes (the caller puts them behind the metrics token).
pub(crate) fn router<S: Clone + Send + Sync + 'static>(page: Arc<Page>) -> Router<S> {
    Router::new()
        .route("/", get(overview))
        .route("/compare", get(compare))
        .route("/task", get(find_task))
        .route("/task/{id}", get(task_page))
        .route(
            "/page.css",
            get(|| asset("text/css", include_str!("page.css"))),
        )
        .route(
            "/page.js",
            get(|| asset("text/javascript", include_str!("page.js"))),
        )
        .with_state(page)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// An HTML response with the page's security headers.
fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (
            header::CONTENT_SECURITY_POLICY,
            html::CONTENT_SECURITY_POLICY,
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Renders off the async workers: a page reads the breakdown log and formats tables.
async fn rendered(render: impl FnOnce() -> (StatusCode, String) + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(render).await {
        Ok((status, body)) => html(status, body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn overview(State(page): State<Arc<Page>>) -> Response {
    rendered(move || (StatusCode::OK, overview::render(&page))).await
}

async fn compare(State(page): State<Arc<Page>>) -> Response {
    rendered(move || (StatusCode::OK, comparison::render(&page))).await
}

#[derive(serde::Deserialize)]
struct Find {
    id: String,
}

/// The overview's form: `/task?id=…` goes to `/task/{id}`.
async fn find_task(Query(find): Query<Find>) -> Redirect {
    Redirect::to(&html::task_href(find.id.trim()))
}

async fn task_page(State(page): State<Arc<Page>>, Path(id): Path<String>) -> Response {
    rendered(move || task::render(&page, &id)).await
}
