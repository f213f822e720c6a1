//! `/compare`: the design note's comparison, handler execution p50 and p95 over the last 5
//! minutes per step, one column group per handler language, the baseline (Rust) first.

use super::html::{self, Escaped, ms};
use super::overview::count;
use super::windows::window;
use super::{Page, WINDOWS};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

pub(super) fn render(page: &Page) -> String {
    let mut out = String::new();
    html::open(&mut out, "handlers by language", "./");
    out.push_str("<h1>Handlers by language</h1>");
    let windows = page.ring.windows([WINDOWS[1]]);
    if page.comparisons.is_empty() {
        out.push_str(
            "<p class=\"note\">No comparison is configured (<code>comparisons:</code>).</p>",
        );
    }
    for (family, baseline) in &page.comparisons {
        let name = &page.shown[*family].name;
        let _ = write!(
            out,
            "<section class=\"family\" data-family=\"{}\"><h2>{} <small>{}</small></h2>",
            Escaped(name),
            Escaped(name),
            Escaped(&page.families[*family].histogram)
        );
        let Some((newest, [base])) = &windows else {
            out.push_str("<p class=\"note\">No sample taken yet.</p></section>");
            continue;
        };
        let w = window(newest, base, *family);
        let bounds = &newest.bounds[*family];
        // Row key: [step, language].
        let mut by_step: BTreeMap<&str, BTreeMap<&str, _>> = BTreeMap::new();
        let mut languages: BTreeSet<&str> = BTreeSet::new();
        for (key, totals) in &w.rows {
            if let [step, language] = key.as_slice() {
                by_step
                    .entry(step)
                    .or_default()
                    .insert(language.as_str(), totals);
                languages.insert(language);
            }
        }
        let mut columns: Vec<&str> = languages
            .iter()
            .copied()
            .filter(|l| l != baseline)
            .collect();
        columns.insert(0, baseline);
        let _ = write!(
            out,
            "<p class=\"note\">Last 5 minutes ({:.1} s sampled); baseline <strong>{}</strong>.</p>\
             <div class=\"scroll\"><table class=\"sortable comparison\"><thead><tr><th rowspan=\"2\">step</th>",
            w.seconds,
            Escaped(baseline)
        );
        for language in &columns {
            let _ = write!(
                out,
                "<th colspan=\"3\" class=\"group\">{}</th>",
                Escaped(language)
            );
        }
        out.push_str("</tr><tr>");
        for _ in &columns {
            out.push_str("<th>spans</th><th>p50</th><th>p95</th>");
        }
        out.push_str("</tr></thead><tbody>");
        for (step, cells) in &by_step {
            let _ = write!(
                out,
                "<tr data-row=\"{}\"><td>{}</td>",
                Escaped(step),
                Escaped(step)
            );
            for language in &columns {
                let totals = cells.get(language);
                let _ = write!(
                    out,
                    "<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
                    count(totals.map_or(0.0, |t| t.count())),
                    ms(totals.and_then(|t| t.quantile(0.5, bounds))),
                    ms(totals.and_then(|t| t.quantile(0.95, bounds))),
                );
            }
            out.push_str("</tr>");
        }
        if by_step.is_empty() {
            out.push_str("<tr><td>no spans yet</td></tr>");
        }
        out.push_str("</tbody></table></div></section>");
    }
    html::close(&mut out);
    out
}
