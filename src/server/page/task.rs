//! `/task/{correlation id or task uuid}`: the task's waterfall in SVG (a row per stage span
//! across services and traces, placed from the task's creation, idle gaps drawn and
//! labelled), each step's worker and language, the derived values, and every span's trace
//! id, linked to the trace backend when `page.trace_url` is set.

use super::Page;
use super::html::{self, Escaped, ms};
use crate::join::breakdown::{Breakdown, Waterfall};
use axum::http::StatusCode;
use std::fmt::Write;

/// The SVG's coordinates: labels on the left, the time axis right of them.
const LABELS: f64 = 300.0;
const PLOT: f64 = 680.0;
const ROW: f64 = 24.0;
const TOP: f64 = 28.0;

pub(super) fn render(page: &Page, id: &str) -> (StatusCode, String) {
    let mut out = String::new();
    let Some(found) = page.pipeline.breakdown(id) else {
        html::open(&mut out, "task not found", "../");
        let _ = write!(
            out,
            "<h1>No task <code>{id}</code></h1><p id=\"not-found\">Looked up <code>{id}</code> as a \
             correlation id and as a task uuid: no recent span carries it. Spans are kept for \
             <code>breakdown.max_age</code>, at most <code>breakdown.max_spans</code> of them.</p>",
            id = Escaped(id)
        );
        html::close(&mut out);
        return (StatusCode::NOT_FOUND, out);
    };
    html::open(&mut out, &format!("task {id}"), "../");
    let list = |ids: &[String]| {
        let ids: Vec<String> = ids
            .iter()
            .map(|i| format!("<code>{}</code>", Escaped(i)))
            .collect();
        match ids.is_empty() {
            true => "–".to_string(),
            false => ids.join(", "),
        }
    };
    let _ = write!(
        out,
        "<h1>Task <code>{}</code></h1><p class=\"note\">correlation id {} · task uuid {} · \
         first start to last end <strong id=\"total\">{}</strong></p>",
        Escaped(id),
        list(&found.correlation_ids),
        list(&found.task_uuids),
        ms(Some(found.total_ms / 1e3)),
    );
    let waterfall = Waterfall::of(&found);
    svg(&mut out, &waterfall);
    spans(&mut out, page, &waterfall);
    steps(&mut out, &found);
    html::close(&mut out);
    (StatusCode::OK, out)
}

fn svg(out: &mut String, w: &Waterfall) {
    let height = TOP + ROW * w.bars.len() as f64 + 8.0;
    let _ = write!(
        out,
        "<h2>Waterfall</h2><div class=\"scroll\"><svg id=\"waterfall\" class=\"waterfall\" \
         viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" \
         aria-label=\"task waterfall\" xmlns=\"http://www.w3.org/2000/svg\">",
        width = LABELS + PLOT + 40.0,
    );
    // The time axis: 0, a quarter, half, three quarters, the whole.
    for i in 0..=4 {
        let at = w.total_ms * f64::from(i) / 4.0;
        let x = LABELS + w.scale(at, PLOT);
        let _ = write!(
            out,
            "<line class=\"tick\" x1=\"{x:.2}\" x2=\"{x:.2}\" y1=\"{}\" y2=\"{height}\"/>\
             <text class=\"axis\" x=\"{x:.2}\" y=\"14\">{at:.1} ms</text>",
            TOP - 6.0
        );
    }
    for (i, bar) in w.bars.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let x = LABELS + w.scale(bar.offset_ms, PLOT);
        let width = w.scale(bar.timing.duration_ms, PLOT);
        let language = bar
            .step
            .and_then(|s| s.handler_language.as_deref())
            .unwrap_or("orchestration");
        let _ = write!(
            out,
            "<g class=\"row\"><text class=\"label\" x=\"4\" y=\"{ty:.2}\">{name}</text>",
            ty = y + 15.0,
            name = Escaped(&bar.name(" · ")),
        );
        if let Some(gap) = bar.gap_before_ms {
            let gx = LABELS + w.scale(bar.offset_ms - gap, PLOT);
            let _ = write!(
                out,
                "<rect class=\"gap\" x=\"{gx:.3}\" y=\"{gy:.2}\" width=\"{gw:.3}\" height=\"4\"/>\
                 <text class=\"gap-label\" x=\"{lx:.2}\" y=\"{ly:.2}\">gap {gap:.1} ms</text>",
                gy = y + 9.0,
                gw = x - gx,
                lx = gx - 3.0,
                ly = y + 15.0,
            );
        }
        let _ = write!(
            out,
            "<rect class=\"bar lang-{lang}\" x=\"{x:.3}\" y=\"{by:.2}\" width=\"{width:.3}\" height=\"14\" \
             data-span-id=\"{span}\"><title>{name}: {dur:.1} ms from {start:.1} ms ({service})</title></rect></g>",
            lang = Escaped(language),
            by = y + 4.0,
            span = Escaped(&bar.timing.span_id),
            name = Escaped(&bar.timing.span_name),
            dur = bar.timing.duration_ms,
            start = bar.offset_ms,
            service = Escaped(&bar.timing.service),
        );
    }
    out.push_str("</svg></div>");
}

fn spans(out: &mut String, page: &Page, w: &Waterfall) {
    out.push_str(
        "<h2>Spans</h2><div class=\"scroll\"><table id=\"spans\"><thead><tr><th>stage</th><th>span</th>\
         <th>service</th><th>language</th><th>step</th><th>start</th><th>duration</th>\
         <th>gap before</th><th>trace</th></tr></thead><tbody>",
    );
    for bar in &w.bars {
        let t = bar.timing;
        let step = bar.step;
        let trace = match &page.trace_url {
            Some(url) => format!(
                "<a class=\"trace\" href=\"{}\" rel=\"noreferrer\">{}</a>",
                Escaped(&url.link(&t.trace_id)),
                Escaped(&t.trace_id)
            ),
            None => format!("<code class=\"trace\">{}</code>", Escaped(&t.trace_id)),
        };
        let _ = write!(
            out,
            "<tr data-span-id=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{:.1} ms</td><td class=\"num\">{:.1} ms</td><td class=\"num\">{}</td><td>{trace}</td></tr>",
            Escaped(&t.span_id),
            Escaped(&t.stage),
            Escaped(&t.span_name),
            Escaped(&t.service),
            Escaped(
                step.and_then(|s| s.handler_language.as_deref())
                    .unwrap_or("–")
            ),
            Escaped(step.and_then(|s| s.step_name.as_deref()).unwrap_or("–")),
            bar.offset_ms,
            t.duration_ms,
            bar.gap_before_ms
                .map_or_else(|| "–".to_string(), |g| format!("{g:.1} ms")),
        );
    }
    out.push_str("</tbody></table></div>");
}

fn steps(out: &mut String, b: &Breakdown) {
    out.push_str(
        "<h2>Steps</h2><div class=\"scroll\"><table id=\"steps\"><thead><tr><th>step</th><th>step uuid</th>\
         <th>worker</th><th>language</th><th>derived</th></tr></thead><tbody>",
    );
    let derived = |values: &std::collections::BTreeMap<String, f64>| {
        let values: Vec<String> = (values.iter())
            .map(|(k, v)| format!("{} {v:.1} ms", Escaped(k.trim_end_matches("_ms"))))
            .collect();
        values.join(", ")
    };
    for s in &b.steps {
        let _ = write!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            Escaped(s.step_name.as_deref().unwrap_or("?")),
            Escaped(&s.step_uuid),
            Escaped(s.service.as_deref().unwrap_or("?")),
            Escaped(s.handler_language.as_deref().unwrap_or("?")),
            derived(&s.derived),
        );
    }
    out.push_str("</tbody></table></div>");
    if !b.derived.is_empty() {
        let _ = write!(
            out,
            "<h2>Task, derived</h2><p id=\"task-derived\">{}</p>",
            derived(&b.derived)
        );
    }
}
