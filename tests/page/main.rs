//! The operator page (issue 24) in Debian's headless Chromium, driven over WebDriver
//! (`support::browser`), against spanlens fed tasker workflows by the real
//! `opentelemetry-otlp` exporter: `overview` (its figures against a scrape, its native
//! percentiles against the durations sent, the comparison, the slowest lists, both window
//! sizes), `waterfall` (bars against the spans' timings, trace links, the 404 page,
//! `spanlens breakdown`'s text bars) and `hostile` (span names and attributes carrying markup
//! and scripts render as text, and nothing runs).
//!
//! With `SPANLENS_SCREENSHOTS=1`, `overview` also writes docs/page-overview.png and
//! docs/page-task.png (the README's screenshots).

#[path = "../support/mod.rs"]
mod support;

mod fixture;
mod hostile;
mod overview;
mod waterfall;

use serde_json::Value;
use spanlens::server::Server;
use std::time::Duration;
use support::browser::Browser;

/// Waits until the page has taken its first sample, so that the windows hold every span a
/// test sends after it.
pub async fn first_sample(server: &Server) {
    let url = format!("http://{}/", server.metrics_addr());
    support::eventually(
        "the page's first sample",
        Duration::from_secs(10),
        async || {
            let body = reqwest::get(&url).await.map_err(|e| e.to_string())?;
            let body = body.text().await.map_err(|e| e.to_string())?;
            match body.contains("No sample taken yet") {
                true => Err("no sample yet".to_string()),
                false => Ok(()),
            }
        },
    )
    .await;
}

/// What a person at this viewport would miss: the page wider than the viewport, or
/// `selector` (a key element) not shown in the first screen.
pub async fn layout_problems(browser: &Browser, selector: &str) -> Vec<String> {
    let script = format!(
        "const e = document.querySelector({selector:?});
         const r = e ? e.getBoundingClientRect() : null;
         return {{
           viewport: document.documentElement.clientWidth,
           page: document.documentElement.scrollWidth,
           main: document.querySelector('main').scrollWidth,
           shown: !!r && r.width > 0 && r.height > 0 && r.top < window.innerHeight && r.left >= 0,
         }};"
    );
    let v: Value = browser.js(&script).await;
    let mut problems = Vec::new();
    if v["page"].as_f64() > v["viewport"].as_f64() || v["main"].as_f64() > v["viewport"].as_f64() {
        problems.push(format!("wider than the viewport: {v}"));
    }
    if v["shown"] != Value::Bool(true) {
        problems.push(format!("{selector} not shown in the first screen: {v}"));
    }
    problems
}
