//! The overview and the comparison against a scrape: 40 tasks on Rust, Ruby and Python
//! workers (linear and diamond workflows; a few slow tasks and slow Python submissions, so
//! that rows go over their alert thresholds). Native histograms are off, so the page's
//! percentiles come from the classic buckets the text scrape shows, and this file computes
//! them from the scrape as Prometheus's `histogram_quantile` does. Every row of every stage
//! and derived table, the join gauges, the comparison's cells and the slowest task are
//! checked; the page must fit a 390-pixel-wide phone and log no console error.

use crate::fixture::{Around, Emitter, Task, emit, uuid};
use crate::support::browser::Browser;
use crate::support::{Exposition, Rng};
use crate::{first_sample, layout_problems, support};
use serde_json::Value;
use spanlens::config::{Config, PromDuration};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

const WORKERS: [(&str, &str, &str); 3] = [
    ("tasker-rust-worker", "rust_e2e_linear", ""),
    ("tasker-ruby-worker", "linear_workflow", ""),
    ("tasker-python-worker", "linear_workflow_py", "_py"),
];

/// What [`send_tasks`] sent: each task's correlation id and its first start to last end, and
/// each handler execution's worker service and duration (microseconds).
struct Sent {
    extents: Vec<(String, u64)>,
    executions: Vec<(&'static str, u64)>,
}

/// The tasks, sent.
async fn send_tasks(server: &spanlens::server::Server) -> Sent {
    let mut rng = Rng::new(24);
    let mut emitter = Emitter::new(SystemTime::now() - Duration::from_secs(20));
    let mut extents = Vec::new();
    let mut executions = Vec::new();
    let names: [[&'static str; 4]; 2] = [
        [
            "linear_step_1",
            "linear_step_2",
            "linear_step_3",
            "linear_step_4",
        ],
        [
            "linear_step_1_py",
            "linear_step_2_py",
            "linear_step_3_py",
            "linear_step_4_py",
        ],
    ];
    for n in 0..40u64 {
        let (worker, namespace, suffix) = WORKERS[n as usize % 3];
        let diamond = n % 10 == 9;
        let slow = n == 4 || n == 17;
        let factor = match worker {
            "tasker-rust-worker" => 1.0,
            "tasker-ruby-worker" => 1.25,
            _ => 1.4,
        };
        let steps: Vec<(&'static str, u64)> = match diamond {
            true => [
                "diamond_start",
                "diamond_branch_b",
                "diamond_branch_c",
                "diamond_end",
            ]
            .to_vec(),
            false => names[usize::from(!suffix.is_empty())].to_vec(),
        }
        .into_iter()
        .map(|name| {
            let base = if slow {
                180_000.0
            } else {
                25_000.0 + rng.unit() * 30_000.0
            };
            (name, (base * factor) as u64)
        })
        .collect();
        let task = Task {
            correlation_id: uuid(0xc0cc, n),
            task_uuid: uuid(0x7a5c, n),
            task_name: if diamond {
                "diamond_pattern"
            } else {
                "mathematical_sequence"
            },
            namespace: if diamond {
                "rust_e2e_diamond"
            } else {
                namespace
            },
            worker,
            steps,
        };
        let python = worker == "tasker-python-worker";
        let mut draws: Vec<Around> = Vec::new();
        for _ in 0..task.steps.len() {
            draws.push(Around {
                wait: 2_000 + (rng.unit() * 8_000.0) as u64,
                submit: match python && rng.chance(0.3) {
                    true => 120_000,
                    false => 15_000 + (rng.unit() * 15_000.0) as u64,
                },
                propagation: 500 + (rng.unit() * 3_000.0) as u64,
                process: 4_000 + (rng.unit() * 6_000.0) as u64,
            });
        }
        let spans = emit(&mut emitter, &task, n * 50_000, |i| draws[i]);
        let sent = |i: usize| &emitter.sent[spans[i]];
        let (first, last) = (sent(0), sent(spans.len() - 1));
        extents.push((
            task.correlation_id.clone(),
            last.start_us + last.dur_us - first.start_us,
        ));
        executions.extend(
            (0..spans.len())
                .map(sent)
                .filter(|s| s.name == "worker.step_execution")
                .map(|s| (worker, s.dur_us)),
        );
    }
    emitter.send(server).await;
    Sent {
        extents,
        executions,
    }
}

/// Waits until every span of [`send_tasks`] is accepted and a sample has been taken after.
async fn wait_sampled(server: &spanlens::server::Server) {
    let spans = 40 * 2 + 40 * 4 * 3 + 40;
    support::eventually("every span accepted", Duration::from_secs(10), async || {
        let accepted = support::scrape(server)
            .await
            .sum("spanlens_spans_accepted_total", &[]);
        match accepted as usize == spans {
            true => Ok(()),
            false => Err(format!("{accepted} of {spans}")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

/// Prometheus's `histogram_quantile` over one classic histogram of a scrape (cumulative
/// counts by `le`), written here apart from the page's code.
fn histogram_quantile(buckets: &[(String, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for (le, cumulative) in buckets {
        let le: f64 = le.parse().unwrap_or(f64::INFINITY);
        if *cumulative >= rank {
            if le.is_infinite() {
                return Some(previous.0);
            }
            let count = cumulative - previous.1;
            return Some(previous.0 + (le - previous.0) * (rank - previous.1) / count);
        }
        previous = (le, *cumulative);
    }
    None
}

/// "12.34 ms" → 12.34; "–" → None.
fn millis(cell: &Value) -> Option<f64> {
    let text = cell.as_str().unwrap();
    text.strip_suffix(" ms").map(|n| n.parse().unwrap())
}

fn close(got: Option<f64>, want: Option<f64>, tolerance: f64, what: &str) {
    match (got, want) {
        (Some(g), Some(w)) => assert!((g - w).abs() <= tolerance, "{what}: page {g}, scrape {w}"),
        (g, w) => assert_eq!(g.is_some(), w.is_some(), "{what}: page {g:?}, scrape {w:?}"),
    }
}

/// A table row of the page: its `data-row`, whether it is marked over, its cells' texts.
type Row = (String, bool, Vec<Value>);

/// A family the overview shows: name, histogram, row labels, calls and errors counters.
type Family = (String, String, Vec<String>, Option<[String; 2]>);

/// Every table of the page: family → rows.
async fn tables(browser: &Browser) -> BTreeMap<String, Vec<Row>> {
    let v = browser
        .js("return Array.from(document.querySelectorAll('section.family')).map(s => [s.dataset.family,
               Array.from(s.querySelectorAll('tbody tr')).map(r => [r.dataset.row || '',
                 r.classList.contains('over'), Array.from(r.cells).map(c => c.textContent)])]);")
        .await;
    let parsed: Vec<(String, Vec<Row>)> = serde_json::from_value(v).unwrap();
    parsed.into_iter().collect()
}

/// The rows the scrape has for `histogram`, keyed by `labels`' values joined as the page's
/// `data-row`.
fn scraped_rows(
    scrape: &Exposition,
    histogram: &str,
    labels: &[String],
) -> BTreeMap<String, Vec<(String, String)>> {
    let mut rows = BTreeMap::new();
    for sample in scrape.all(&format!("{histogram}_count")) {
        let pairs: Vec<(String, String)> = (labels.iter())
            .map(|l| (l.clone(), sample.labels.get(l).cloned().unwrap_or_default()))
            .collect();
        let key = pairs
            .iter()
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(" / ");
        rows.insert(key, pairs);
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_what_the_scrape_says() {
    let config = support::test_config(|c: &mut Config| {
        c.metrics.native_histograms.enabled = false;
        c.page.sample_interval = PromDuration::secs(1);
    });
    let server = support::start(config.clone()).await;
    first_sample(&server).await;
    let extents = send_tasks(&server).await.extents;
    wait_sampled(&server).await;
    let scrape = support::scrape(&server).await;

    let browser = Browser::start(1280, 800).await;
    let base = format!("http://{}", server.metrics_addr());
    browser.goto(&format!("{base}/")).await;
    let covered = browser
        .js("return document.getElementById('covered').dataset.seconds;")
        .await;
    let seconds: Vec<f64> = (covered.as_str().unwrap().split(' '))
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(seconds.len(), 2, "{covered}");
    let page = tables(&browser).await;

    let mut families: Vec<Family> = Vec::new();
    let level = vec!["service".to_string(), "handler_language".to_string()];
    for (name, stage) in &config.stages {
        let counters = Some([stage.calls.clone(), stage.errors.clone()]);
        families.push((
            name.clone(),
            stage.histogram.clone(),
            level.clone(),
            counters,
        ));
    }
    for (name, d) in &config.derived {
        families.push((name.clone(), d.histogram.clone(), d.labels.clone(), None));
    }
    let mut checked = 0;
    let mut over = Vec::new();
    for (name, histogram, labels, counters) in &families {
        let rows = &page[name];
        let scraped = scraped_rows(&scrape, histogram, labels);
        if scraped.is_empty() {
            assert!(rows.is_empty(), "{name}: no spans, no rows: {rows:?}");
            continue;
        }
        assert_eq!(
            rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
            scraped.keys().cloned().collect::<Vec<_>>(),
            "{name}: the scrape's series"
        );
        for (key, marked, cells) in rows {
            let pairs = &scraped[key];
            let selector: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let buckets = scrape.buckets(histogram, &selector);
            let calls = match counters {
                Some([calls, _]) => scrape.sum(calls, &selector),
                None => scrape.sum(&format!("{histogram}_count"), &selector),
            };
            let errors = counters
                .as_ref()
                .map(|[_, errors]| scrape.sum(errors, &selector));
            let first = labels.len().max(1) + 1;
            for (w, at) in [first, first + 6].into_iter().enumerate() {
                let what = format!("{name} {key} window {w}");
                assert_eq!(cells[at], format!("{calls:.0}").as_str(), "{what}: spans");
                let rate: f64 = cells[at + 1]
                    .as_str()
                    .unwrap()
                    .trim_end_matches("/s")
                    .parse()
                    .unwrap();
                close(
                    Some(rate),
                    Some(calls / seconds[w]),
                    0.0006,
                    &format!("{what}: rate"),
                );
                match errors {
                    Some(errors) => {
                        let ratio: f64 = cells[at + 2]
                            .as_str()
                            .unwrap()
                            .trim_end_matches('%')
                            .parse()
                            .unwrap();
                        close(Some(ratio), Some(errors / calls * 100.0), 0.006, &what);
                    }
                    None => assert_eq!(cells[at + 2], "–", "{what}"),
                }
                for (i, q) in [0.5, 0.95, 0.99].into_iter().enumerate() {
                    let want = histogram_quantile(&buckets, q).map(|s| s * 1000.0);
                    close(
                        millis(&cells[at + 3 + i]),
                        want,
                        0.006,
                        &format!("{what}: p{q}"),
                    );
                }
            }
            // Marked over when the alert's quantile is above its threshold.
            let alerts: Vec<(f64, f64, BTreeMap<String, String>)> = match config.stages.get(name) {
                Some(stage) => (stage.alert.iter())
                    .map(|a| (a.quantile, a.above_seconds, BTreeMap::new()))
                    .collect(),
                None => (config.derived[name].alerts.iter())
                    .map(|a| (a.quantile, a.above_seconds, a.matchers.clone()))
                    .collect(),
            };
            let want = alerts.iter().any(|(q, above, matchers)| {
                let watched = matchers.iter().all(|(label, pattern)| {
                    let value = pairs
                        .iter()
                        .find(|(k, _)| k == label)
                        .map(|(_, v)| v.as_str());
                    let anchored = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
                    value.is_some_and(|v| anchored.is_match(v))
                });
                watched && histogram_quantile(&buckets, *q).is_some_and(|v| v > *above)
            });
            assert_eq!(*marked, want, "{name} {key}: over its threshold");
            if want {
                over.push(format!("{name} {key}"));
            }
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked} rows checked");
    assert!(
        over.contains(&"result_submission tasker-python-worker / python".to_string())
            && over.contains(&"task_e2e mathematical_sequence".to_string()),
        "the slow rows are marked: {over:?}"
    );

    // Join health: the gauges and counters as scraped.
    let health = browser
        .js("return Array.from(document.querySelectorAll('#health tbody tr')).map(r => Array.from(r.cells).map(c => c.textContent));")
        .await;
    let mut pending = 0;
    for row in health.as_array().unwrap() {
        if row[0] == "spanlens_join_pending" {
            let derived = row[1].as_str().unwrap().trim_start_matches("derived=");
            let want = scrape
                .value("spanlens_join_pending", &[("derived", derived)])
                .unwrap();
            assert_eq!(row[2], format!("{want:.0}").as_str(), "pending {derived}");
            pending += 1;
        }
    }
    assert_eq!(pending, config.derived.len(), "{health}");

    // The slowest task first, linking to its page.
    let slowest = extents.iter().max_by_key(|(_, took)| *took).unwrap();
    let first = browser
        .js("const a = document.querySelector('#slowest-tasks tbody a');
             return [a.textContent, a.closest('tr').cells[1].textContent];")
        .await;
    assert_eq!(first[0], slowest.0.as_str());
    close(
        millis(&first[1]),
        Some(slowest.1 as f64 / 1000.0),
        0.006,
        "slowest task",
    );
    // A click on a header sorts the rows by that column, largest first.
    let sorted = browser
        .js(
            "const t = document.querySelector('section[data-family=handler_execution] table');
             t.tHead.rows[1].cells[3].click();
             return Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[6].textContent));",
        )
        .await;
    let sorted: Vec<f64> = serde_json::from_value(sorted).unwrap();
    assert!(
        sorted.windows(2).all(|w| w[0] >= w[1]) && sorted.len() == 3,
        "{sorted:?}"
    );
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    assert_eq!(
        layout_problems(&browser, "section.family table").await,
        Vec::<String>::new()
    );

    // The comparison: each step's handler execution by language, as scraped.
    browser.goto(&format!("{base}/compare")).await;
    let compare = browser
        .js("const t = document.querySelector('table.comparison');
             return [Array.from(t.tHead.rows[0].cells).slice(1).map(c => c.textContent),
                     Array.from(t.tBodies[0].rows).map(r => Array.from(r.cells).map(c => c.textContent))];")
        .await;
    let languages: Vec<String> = serde_json::from_value(compare[0].clone()).unwrap();
    assert_eq!(languages, ["rust", "python", "ruby"], "the baseline first");
    let histogram = &config.comparisons["ffi_handler_execution"].histogram;
    for row in compare[1].as_array().unwrap() {
        let step = row[0].as_str().unwrap();
        for (i, language) in languages.iter().enumerate() {
            let selector = [("step", step), ("handler_language", language.as_str())];
            let buckets = scrape.buckets(histogram, &selector);
            let count = buckets.last().map_or(0.0, |b| b.1);
            let what = format!("compare {step} {language}");
            assert_eq!(row[1 + 3 * i], format!("{count:.0}").as_str(), "{what}");
            for (j, q) in [0.5, 0.95].into_iter().enumerate() {
                let want = histogram_quantile(&buckets, q).map(|s| s * 1000.0);
                close(millis(&row[2 + 3 * i + j]), want, 0.006, &what);
            }
        }
    }
    assert!(compare[1].as_array().unwrap().len() >= 8, "{compare}");
    assert_eq!(browser.console_errors().await, Vec::<String>::new());

    // A phone: nothing wider than the screen, the first table in view.
    browser.resize(390, 844).await;
    for path in ["/", "/compare", &format!("/task/{}", slowest.0)] {
        browser.goto(&format!("{base}{path}")).await;
        assert_eq!(
            layout_problems(&browser, "h1").await,
            Vec::<String>::new(),
            "{path}"
        );
    }
    assert_eq!(browser.console_errors().await, Vec::<String>::new());

    if std::env::var_os("SPANLENS_SCREENSHOTS").is_some() {
        browser.resize(1280, 800).await;
        browser.goto(&format!("{base}/")).await;
        std::fs::write("docs/page-overview.png", browser.screenshot().await).unwrap();
        browser.goto(&format!("{base}/task/{}", slowest.0)).await;
        std::fs::write("docs/page-task.png", browser.screenshot().await).unwrap();
    }
    browser.close().await;
    server.shutdown().await;
}

/// With native histograms on (the default), the overview's percentiles come from them: each
/// handler execution row's p50, p95 and p99, in both windows, lie within one native bucket
/// (a factor 2^(2^-schema)) of the exact value of the durations sent, nearest rank. The
/// classic buckets' estimate of the same spans is further off than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_reads_native_histograms_to_their_resolution() {
    let config = support::test_config(|c: &mut Config| {
        c.page.sample_interval = PromDuration::secs(1);
    });
    let native = &config.metrics.native_histograms;
    assert!(native.enabled, "native histograms are on by default");
    let bucket = 2f64.powf(2f64.powi(-i32::from(native.schema)));
    let server = support::start(config.clone()).await;
    first_sample(&server).await;
    let executions = send_tasks(&server).await.executions;
    wait_sampled(&server).await;

    let browser = Browser::start(1280, 800).await;
    browser
        .goto(&format!("http://{}/", server.metrics_addr()))
        .await;
    let rows = &tables(&browser).await["handler_execution"];
    let mut checked = 0;
    for (worker, _, _) in WORKERS {
        let mut millis_sent: Vec<f64> = (executions.iter())
            .filter(|(w, _)| *w == worker)
            .map(|(_, us)| *us as f64 / 1000.0)
            .collect();
        millis_sent.sort_by(f64::total_cmp);
        let (_, _, cells) = (rows.iter())
            .find(|r| r.0.starts_with(&format!("{worker} / ")))
            .unwrap_or_else(|| panic!("no row for {worker}: {rows:?}"));
        // Cells: the row's name and labels, then each window's spans, rate, errors, p50,
        // p95, p99.
        for (w, at) in [3, 9].into_iter().enumerate() {
            for (i, q) in [0.5, 0.95, 0.99].into_iter().enumerate() {
                let rank = (q * millis_sent.len() as f64).ceil() as usize;
                let exact = millis_sent[rank.max(1) - 1];
                let page = millis(&cells[at + 3 + i]).expect("a percentile");
                assert!(
                    page <= exact * bucket && page >= exact / bucket,
                    "{worker} window {w} p{q}: page {page} ms, sent {exact} ms (one bucket: ×{bucket:.4})"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 18);
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}
