//! The task page: one task of two steps at known times; each bar of the SVG waterfall must
//! sit where its span started and be as long as it lasted (on the page's scale), each idle
//! gap labelled with its length, each trace id linked through `page.trace_url`; an unknown id
//! gets a 404 page naming it; `spanlens breakdown`'s text bars start in the right columns.

use crate::fixture::{Around, Emitter, Task, emit, uuid};
use crate::support::browser::Browser;
use crate::{first_sample, layout_problems, support};
use spanlens::config::TraceUrl;
use std::time::{Duration, SystemTime};

const TEMPLATE: &str = "http://jaeger.test:16686/trace/{trace_id}";
/// The SVG's label column and plot width (src/server/page/task.rs).
const LABELS: f64 = 300.0;
const PLOT: f64 = 680.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bar_sits_at_its_spans_start_and_lasts_its_duration() {
    let config = support::test_config(|c| {
        c.page.trace_url = Some(TraceUrl::try_from(TEMPLATE.to_string()).unwrap());
        c.page.sample_interval = spanlens::config::PromDuration::secs(1);
    });
    let server = support::start(config).await;
    first_sample(&server).await;
    let task = Task {
        correlation_id: uuid(0xc0cc, 1),
        task_uuid: uuid(0x7a5c, 1),
        task_name: "mathematical_sequence",
        namespace: "rust_e2e_linear",
        worker: "tasker-rust-worker",
        steps: vec![("linear_step_1", 42_000), ("linear_step_2", 30_000)],
    };
    let around = |_| Around {
        wait: 8_000,
        submit: 23_000,
        propagation: 1_500,
        process: 8_000,
    };
    let mut emitter = Emitter::new(SystemTime::now() - Duration::from_secs(5));
    let spans = emit(&mut emitter, &task, 0, around);
    emitter.send(&server).await;
    let sent: Vec<_> = spans.iter().map(|&i| emitter.sent[i].clone()).collect();
    let origin = sent.iter().map(|s| s.start_us).min().unwrap();
    let total = sent.iter().map(|s| s.start_us + s.dur_us).max().unwrap() - origin;
    assert_eq!(
        total,
        22_000 + 2 * (8_000 + 23_000 + 1_500 + 8_000) + 72_000 + 7_000
    );

    let browser = Browser::start(1280, 800).await;
    let base = format!("http://{}", server.metrics_addr());
    browser
        .goto(&format!("{base}/task/{}", task.correlation_id))
        .await;
    let bars = browser
        .js(
            "return Array.from(document.querySelectorAll('#waterfall rect.bar')).map(r => ({
               id: r.dataset.spanId, x: +r.getAttribute('x'), width: +r.getAttribute('width'),
               shown: r.getBoundingClientRect().width }));",
        )
        .await;
    let bars = bars.as_array().expect("bars");
    assert_eq!(bars.len(), sent.len(), "one bar per span: {bars:?}");
    for s in &sent {
        let bar = (bars.iter())
            .find(|b| b["id"] == s.span_id.as_str())
            .unwrap_or_else(|| panic!("no bar for {} ({})", s.name, s.span_id));
        let x = LABELS + (s.start_us - origin) as f64 / total as f64 * PLOT;
        let width = s.dur_us as f64 / total as f64 * PLOT;
        let got = (bar["x"].as_f64().unwrap(), bar["width"].as_f64().unwrap());
        assert!(
            (got.0 - x).abs() < 0.002 && (got.1 - width).abs() < 0.002,
            "{}: bar at {got:?}, want ({x}, {width})",
            s.name
        );
        assert!(bar["shown"].as_f64().unwrap() > 0.0, "{} drawn", s.name);
    }
    let gaps = browser
        .js("return Array.from(document.querySelectorAll('#waterfall .gap-label')).map(t => t.textContent);")
        .await;
    assert_eq!(
        gaps,
        serde_json::json!([
            "gap 8.0 ms",
            "gap 1.5 ms",
            "gap 8.0 ms",
            "gap 1.5 ms",
            "gap 2.0 ms"
        ]),
        "queue waits, result propagation and the wait before finalization"
    );
    // Every span's trace id links to its trace.
    let links = browser
        .js(
            "return Array.from(document.querySelectorAll('#spans tr[data-span-id]')).map(r => ({
               id: r.dataset.spanId, href: r.querySelector('a.trace').href,
               text: r.querySelector('a.trace').textContent }));",
        )
        .await;
    let links = links.as_array().unwrap();
    assert_eq!(links.len(), sent.len());
    for s in &sent {
        let link = links
            .iter()
            .find(|l| l["id"] == s.span_id.as_str())
            .unwrap();
        let want = format!("http://jaeger.test:16686/trace/{}", s.trace_id);
        assert_eq!(link["href"], want.as_str(), "{}", s.name);
        assert_eq!(link["text"], s.trace_id.as_str());
    }
    let steps = browser
        .js("return Array.from(document.querySelectorAll('#steps tbody tr')).map(r => Array.from(r.cells).map(c => c.textContent));")
        .await;
    for (row, step) in steps
        .as_array()
        .unwrap()
        .iter()
        .zip(["linear_step_1", "linear_step_2"])
    {
        assert_eq!(row[0], step);
        assert_eq!(row[2], "tasker-rust-worker");
        assert_eq!(row[3], "rust");
        assert!(
            row[4]
                .as_str()
                .unwrap()
                .contains("result_propagation 1.5 ms"),
            "{row}"
        );
    }
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    // The form finds the same task by its uuid.
    browser
        .goto(&format!("{base}/task?id={}", task.task_uuid))
        .await;
    let h1 = browser
        .js("return document.querySelector('h1').textContent;")
        .await;
    assert_eq!(h1, format!("Task {}", task.task_uuid).as_str());
    assert_eq!(
        browser
            .js("return document.querySelectorAll('#waterfall rect.bar').length;")
            .await,
        sent.len()
    );
    // On a phone.
    browser.resize(390, 844).await;
    browser
        .goto(&format!("{base}/task/{}", task.correlation_id))
        .await;
    assert_eq!(layout_problems(&browser, "h1").await, Vec::<String>::new());
    assert_eq!(
        layout_problems(&browser, "#total").await,
        Vec::<String>::new()
    );

    // An unknown id: 404, saying what was looked up (as text).
    let unknown = "no-such-task<b>";
    let response = reqwest::get(format!("{base}/task/no-such-task%3Cb%3E"))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    browser
        .goto(&format!("{base}/task/no-such-task%3Cb%3E"))
        .await;
    let text = browser
        .js("return document.getElementById('not-found').innerText;")
        .await;
    assert!(text.as_str().unwrap().contains(unknown), "{text}");
    assert_eq!(
        browser
            .js("return document.querySelectorAll('b').length;")
            .await,
        0
    );
    // 404 responses are console errors in Chromium; the 404 page itself logs nothing else.
    let errors = browser.console_errors().await;
    assert!(errors.iter().all(|e| e.contains("404")), "{errors:?}");
    browser.close().await;

    // The same waterfall as text bars.
    let found = server.pipeline().breakdown(&task.correlation_id).unwrap();
    let text = spanlens::cli::breakdown::render_bars(&found, 60);
    let rows: Vec<&str> = text.lines().filter(|l| l.contains('|')).collect();
    assert_eq!(rows.len(), sent.len(), "{text}");
    let mut by_start = sent.clone();
    by_start.sort_by_key(|s| s.start_us);
    for (row, s) in rows.iter().zip(&by_start) {
        let bar: Vec<char> = row.split('|').nth(1).unwrap().chars().collect();
        let first = bar.iter().position(|&c| c == '█').expect("a bar");
        let want = ((s.start_us - origin) as f64 / total as f64 * 60.0).round() as usize;
        assert_eq!(first, want.min(59), "{}: {row}", s.name);
        let length = bar.iter().filter(|&&c| c == '█').count();
        let want_len = (((s.start_us + s.dur_us - origin) as f64 / total as f64 * 60.0).round()
            as usize)
            .max(want + 1)
            - want;
        assert_eq!(length, want_len, "{}: {row}", s.name);
    }
    assert!(
        text.contains("(gap 8.0 ms)") && text.contains("(gap 2.0 ms)"),
        "{text}"
    );
    server.shutdown().await;
}
