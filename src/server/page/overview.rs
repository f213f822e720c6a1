//! `/`: per stage and derived metric, each series' rate, error ratio and p50/p95/p99 over the
//! last 1 and 5 minutes beside its alert threshold; spanlens's own health; the slowest
//! recent tasks and steps. Everything comes from the ring's samples: a view reads nothing of
//! ingest.

use super::html::{self, Escaped, ms, threshold_ms};
use super::windows::{Sample, Window, covered, window};
use super::{Kind, Page, WINDOWS};
use crate::join::breakdown::Extent;
use std::fmt::Write;
use std::sync::Arc;

const QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];

/// A count as it reads best: whole counts without decimals.
pub(super) fn count(n: f64) -> String {
    match n.fract() == 0.0 {
        true => format!("{n:.0}"),
        false => format!("{n:.2}"),
    }
}

fn window_name(seconds: u64) -> String {
    format!("last {}m", seconds / 60)
}

pub(super) fn render(page: &Page) -> String {
    let mut out = String::new();
    html::open(&mut out, "overview", "./");
    out.push_str("<h1>Stages, live</h1>");
    match page.ring.windows(WINDOWS) {
        None => out.push_str("<p class=\"note\">No sample taken yet: reload in a moment.</p>"),
        Some((newest, bases)) => {
            let covered = bases.each_ref().map(|base| covered(&newest, base));
            let _ = write!(
                out,
                "<p class=\"note\">Windows end at the latest sample (taken every {:?}); \
                 <span id=\"covered\" data-seconds=\"{} {}\">{} covers {:.1} s, {} covers {:.1} s</span>. \
                 Rows over their alert threshold are marked <span class=\"flag\">over</span>. \
                 <label><input type=\"checkbox\" id=\"refresh\"> refresh every 5 s</label></p>",
                page.interval,
                covered[0],
                covered[1],
                window_name(WINDOWS[0].as_secs()),
                covered[0],
                window_name(WINDOWS[1].as_secs()),
                covered[1],
            );
            for (kind, title) in [(Kind::Stage, "Stages"), (Kind::Derived, "Derived")] {
                let _ = write!(out, "<h2>{title}</h2>");
                for (i, shown) in page.shown.iter().enumerate() {
                    if shown.kind == kind {
                        family_table(&mut out, page, i, &newest, &bases);
                    }
                }
            }
            health(&mut out, &newest, &bases[1]);
            slowest(&mut out, &newest);
        }
    }
    html::close(&mut out);
    out
}

fn family_table(
    out: &mut String,
    page: &Page,
    family: usize,
    newest: &Sample,
    bases: &[Arc<Sample>; 2],
) {
    let shown = &page.shown[family];
    let labels = &page.families[family].row_labels;
    let windows: Vec<Window> = bases.iter().map(|b| window(newest, b, family)).collect();
    let bounds = &newest.bounds[family];
    let _ = write!(
        out,
        "<section class=\"family\" data-family=\"{name}\"><h3>{name} <small>{histogram}</small></h3>",
        name = Escaped(&shown.name),
        histogram = Escaped(&page.families[family].histogram),
    );
    if newest.rows[family].is_empty() {
        out.push_str("<p class=\"note\">No spans yet.</p></section>");
        return;
    }
    out.push_str("<div class=\"scroll\"><table class=\"sortable\"><thead><tr>");
    for label in labels {
        let _ = write!(out, "<th rowspan=\"2\">{}</th>", Escaped(label));
    }
    if labels.is_empty() {
        out.push_str("<th rowspan=\"2\">series</th>");
    }
    out.push_str("<th rowspan=\"2\">alert</th>");
    for length in WINDOWS {
        let _ = write!(
            out,
            "<th colspan=\"6\" class=\"group\">{}</th>",
            window_name(length.as_secs())
        );
    }
    out.push_str("</tr><tr>");
    for _ in WINDOWS {
        out.push_str(
            "<th>spans</th><th>rate</th><th>errors</th><th>p50</th><th>p95</th><th>p99</th>",
        );
    }
    out.push_str("</tr></thead><tbody>");
    for key in newest.rows[family].keys() {
        let alerts: Vec<_> = shown.alerts.iter().filter(|a| a.watches(key)).collect();
        let five = windows[1].rows.get(key);
        let over: Vec<bool> = (alerts.iter())
            .map(|a| {
                five.and_then(|t| t.quantile(a.quantile, bounds))
                    .is_some_and(|v| v > a.above_seconds)
            })
            .collect();
        let marked = over.contains(&true);
        let _ = write!(
            out,
            "<tr data-row=\"{}\"{}>",
            Escaped(&key.join(" / ")),
            if marked { " class=\"over\"" } else { "" }
        );
        for value in key {
            let _ = write!(out, "<td>{}</td>", Escaped(value));
        }
        if key.is_empty() {
            out.push_str("<td>all</td>");
        }
        out.push_str("<td class=\"threshold\">");
        for (alert, over) in alerts.iter().zip(&over) {
            let _ = write!(
                out,
                "{} &gt; {}{} ",
                crate::metrics::rules::quantile_name(alert.quantile),
                threshold_ms(alert.above_seconds),
                if *over {
                    " <span class=\"flag\">over</span>"
                } else {
                    ""
                }
            );
        }
        out.push_str("</td>");
        for w in &windows {
            let totals = w.rows.get(key);
            let calls = totals.map_or(0.0, |t| t.calls);
            let rate = match w.seconds > 0.0 {
                true => format!("{:.3}/s", calls / w.seconds),
                false => "–".to_string(),
            };
            let errors = match (shown.kind, calls > 0.0) {
                (Kind::Stage, true) => {
                    format!("{:.2}%", totals.map_or(0.0, |t| t.errors) / calls * 100.0)
                }
                _ => "–".to_string(),
            };
            let _ = write!(
                out,
                "<td class=\"num\">{}</td><td class=\"num\">{rate}</td><td class=\"num\">{errors}</td>",
                count(calls)
            );
            for q in QUANTILES {
                let value = totals.and_then(|t| t.quantile(q, bounds));
                let hot = (alerts.iter())
                    .any(|a| a.quantile == q && value.is_some_and(|v| v > a.above_seconds));
                let _ = write!(
                    out,
                    "<td class=\"num{}\">{}</td>",
                    if hot { " hot" } else { "" },
                    ms(value)
                );
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div></section>");
}

/// Spanlens's own series: each one's value now and its change over the last 5 minutes.
fn health(out: &mut String, newest: &Sample, base: &Sample) {
    out.push_str(
        "<h2>Join, refusals, forwarding</h2><div class=\"scroll\"><table class=\"sortable\" id=\"health\">\
         <thead><tr><th>metric</th><th>labels</th><th>now</th><th>change, last 5m</th></tr></thead><tbody>",
    );
    if newest.health.is_empty() {
        out.push_str("<tr><td colspan=\"4\">none yet</td></tr>");
    }
    for ((name, labels), value) in &newest.health {
        let before = base
            .health
            .get(&(name.clone(), labels.clone()))
            .copied()
            .unwrap_or(0.0);
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            Escaped(name),
            Escaped(&labels.join(", ")),
            count(*value),
            count(value - before),
        );
    }
    out.push_str("</tbody></table></div>");
}

/// The slowest recent tasks and steps, as of the latest sample.
fn slowest(out: &mut String, newest: &Sample) {
    let [tasks, steps] = &newest.longest;
    let took = |e: &Extent| {
        ms(Some(
            e.end_unix_nano.saturating_sub(e.start_unix_nano) as f64 / 1e9,
        ))
    };
    out.push_str(
        "<h2>Slowest recent tasks</h2><div class=\"scroll\"><table id=\"slowest-tasks\">\
         <thead><tr><th>correlation id</th><th>first start to last end</th></tr></thead><tbody>",
    );
    for task in tasks {
        let _ = write!(
            out,
            "<tr><td><a href=\"{}\">{}</a></td><td class=\"num\">{}</td></tr>",
            Escaped(&html::task_href(&task.link)),
            Escaped(&task.key),
            took(task)
        );
    }
    if tasks.is_empty() {
        out.push_str("<tr><td colspan=\"2\">none kept</td></tr>");
    }
    out.push_str(
        "</tbody></table></div><h2>Slowest recent steps</h2><div class=\"scroll\"><table id=\"slowest-steps\">\
         <thead><tr><th>step</th><th>worker</th><th>language</th><th>first start to last end</th><th>task</th></tr></thead><tbody>",
    );
    for step in steps {
        let text = |t: &Option<String>| Escaped(t.as_deref().unwrap_or("?")).to_string();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td><a href=\"{}\">{}</a></td></tr>",
            text(&step.step_name),
            text(&step.service),
            text(&step.handler_language),
            took(step),
            Escaped(&html::task_href(&step.link)),
            Escaped(&step.link),
        );
    }
    if steps.is_empty() {
        out.push_str("<tr><td colspan=\"5\">none kept</td></tr>");
    }
    out.push_str("</tbody></table></div>");
}
