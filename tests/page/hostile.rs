//! Anyone who can send OTLP chooses span names and attribute values: a task whose service
//! name, span name, step name, handler language, task name and correlation id carry
//! `<script>`, `"><img onerror=…>`, SVG payloads and a `javascript:` id must show those as
//! text on every page. A script installed before each page's own replaces `alert`, `confirm`
//! and `prompt`; each payload would set `window.__pwned`. After each load: no payload ran, no
//! element or handler came from span data, every link is http(s), the payloads read as text,
//! and the console holds no error (a payload blocked by the Content-Security-Policy would
//! log one).

use crate::fixture::{Around, Emitter, Task, emit};
use crate::support::browser::Browser;
use crate::{first_sample, support};
use opentelemetry::KeyValue;
use spanlens::config::{PromDuration, RuleConfig, TraceUrl};
use std::time::{Duration, SystemTime};

const SERVICE: &str = "<script>window.__pwned=1</script>";
const LANGUAGE: &str = "\"><img src=x onerror=\"window.__pwned=2\">";
const SPAN_NAME: &str =
    "</text><svg onload=\"window.__pwned=3\"><script>window.__pwned=4</script></svg>";
const STEP: &str = "<svg><script>window.__pwned=5</script></svg>";
const CORRELATION: &str = "javascript:window.__pwned=6//";
const TASK_NAME: &str = "<img src=x onerror=\"window.__pwned=7\">";

const HOOK: &str = "window.__alerts = 0;
  for (const f of ['alert', 'confirm', 'prompt']) { window[f] = function () { window.__alerts++; }; }";

/// What must hold on any page after it loaded; `shown` are payloads it must show as text.
async fn check_inert(browser: &Browser, page: &str, shown: &[&str]) {
    let state = browser
        .js("return {
               pwned: window.__pwned === undefined ? null : window.__pwned,
               alerts: window.__alerts,
               elements: document.querySelectorAll('img, iframe, object, embed, svg script, svg svg, svg foreignObject').length,
               svgs: document.querySelectorAll('svg').length,
               scripts: Array.from(document.scripts).map(s => s.getAttribute('src')),
               handlers: document.querySelectorAll('[onerror], [onload], [onmouseover], [onclick]').length,
               links: Array.from(document.links).map(a => a.protocol).filter(p => p !== 'http:' && p !== 'https:'),
               text: document.body.innerText + Array.from(document.querySelectorAll('svg text, svg title')).map(t => t.textContent).join(' '),
             };")
        .await;
    assert_eq!(
        state["pwned"],
        serde_json::Value::Null,
        "{page}: a payload ran: {state}"
    );
    assert_eq!(state["alerts"], 0, "{page}: alert called");
    assert_eq!(
        state["elements"], 0,
        "{page}: elements from span data: {state}"
    );
    assert!(state["svgs"].as_u64().unwrap() <= 1, "{page}: {state}");
    assert_eq!(
        state["handlers"], 0,
        "{page}: event handlers from span data"
    );
    assert_eq!(
        state["links"],
        serde_json::json!([]),
        "{page}: non-http links"
    );
    let scripts = state["scripts"].as_array().unwrap();
    assert!(
        scripts.len() == 1 && scripts[0].as_str().unwrap().ends_with("page.js"),
        "{page}: scripts {scripts:?}"
    );
    let text = state["text"].as_str().unwrap();
    for payload in shown {
        assert!(
            text.contains(payload),
            "{page}: `{payload}` not shown as text"
        );
    }
    assert_eq!(
        browser.console_errors().await,
        Vec::<String>::new(),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_attributes_from_spans_render_as_text_and_nothing_runs() {
    let config = support::test_config(|c| {
        c.metrics.native_histograms.enabled = false;
        c.page.sample_interval = PromDuration::secs(1);
        c.page.trace_url =
            Some(TraceUrl::try_from("https://tempo.test/trace/{trace_id}".to_string()).unwrap());
        // Spans of any other name count as handler resolution, so that a hostile name is kept.
        c.rules.push(RuleConfig {
            stage: "handler_resolution".to_string(),
            span_name: None,
            span_name_regex: Some(".*".to_string()),
            service: None,
            service_regex: None,
            attributes: Vec::new(),
        });
    });
    let server = support::start(config).await;
    first_sample(&server).await;
    let task = Task {
        correlation_id: CORRELATION.to_string(),
        task_uuid: "0191e3c2-0024-7a00-8000-00000000a11c".to_string(),
        task_name: TASK_NAME,
        namespace: "rust_e2e_linear",
        worker: SERVICE,
        steps: vec![(STEP, 40_000)],
    };
    let mut emitter = Emitter::new(SystemTime::now() - Duration::from_secs(5));
    let around = |_| Around {
        wait: 5_000,
        submit: 20_000,
        propagation: 1_000,
        process: 6_000,
    };
    emit(&mut emitter, &task, 0, around);
    emitter.span(
        SERVICE,
        SPAN_NAME,
        30_000,
        4_000,
        vec![
            KeyValue::new("task_uuid", task.task_uuid.clone()),
            KeyValue::new("step_uuid", "0191e3c2-0024-7b00-8000-0000000000aa"),
            KeyValue::new("step_name", STEP),
            KeyValue::new("handler.language", LANGUAGE),
        ],
    );
    emitter.send(&server).await;
    support::eventually(
        "the task kept",
        Duration::from_secs(10),
        async || match server.pipeline().breakdown(CORRELATION) {
            Some(found) if found.steps.len() == 2 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let browser = Browser::start(1280, 800).await;
    browser.before_each_page(HOOK).await;
    let base = format!("http://{}", server.metrics_addr());
    browser.goto(&format!("{base}/")).await;
    check_inert(
        &browser,
        "/",
        &[SERVICE, LANGUAGE, TASK_NAME, CORRELATION, STEP],
    )
    .await;
    // The task's link, followed as a person would.
    let link = browser
        .js("const a = document.querySelector('#slowest-tasks tbody a'); a.click(); return a.getAttribute('href');")
        .await;
    assert_eq!(link, "task/javascript%3Awindow.__pwned%3D6%2F%2F");
    support::eventually("the task page", Duration::from_secs(10), async || {
        let url = browser
            .client
            .current_url()
            .await
            .map_err(|e| e.to_string())?;
        match url.path().starts_with("/task/") {
            true => Ok(()),
            false => Err(url.to_string()),
        }
    })
    .await;
    let title = browser
        .js("return document.querySelector('h1').innerText;")
        .await;
    assert_eq!(title, format!("Task {CORRELATION}").as_str());
    check_inert(
        &browser,
        "task page",
        &[SERVICE, LANGUAGE, SPAN_NAME, STEP, CORRELATION],
    )
    .await;
    browser.goto(&format!("{base}/compare")).await;
    check_inert(&browser, "/compare", &[STEP]).await;
    // An id that is itself a payload: the 404 page shows it as text.
    browser
        .goto(&format!(
            "{base}/task/%3Cimg%20src%3Dx%20onerror%3D%22window.__pwned%3D8%22%3E"
        ))
        .await;
    let errors = browser.console_errors().await;
    assert!(errors.iter().all(|e| e.contains("404")), "{errors:?}");
    check_inert(
        &browser,
        "404 page",
        &["<img src=x onerror=\"window.__pwned=8\">"],
    )
    .await;
    browser.close().await;
    server.shutdown().await;
}
