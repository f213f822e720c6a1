//! `spanlens breakdown`: one task's breakdown fetched from a running spanlens and printed
//! as a table, then as a waterfall of text bars.

use crate::join::breakdown::{Breakdown, StageTiming, Waterfall};
use std::time::Duration;

/// The breakdown as a table for people, like the design note's example.
pub fn render_table(b: &Breakdown) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "correlation_id {}   task_uuid {}   total {:.1} ms",
        if b.correlation_ids.is_empty() {
            "-".to_string()
        } else {
            b.correlation_ids.join(",")
        },
        if b.task_uuids.is_empty() {
            "-".to_string()
        } else {
            b.task_uuids.join(",")
        },
        b.total_ms
    );
    let row = |out: &mut String, indent: &str, t: &StageTiming| {
        let _ = writeln!(
            out,
            "{indent}{:<20} {:<34} {:<26} {:>9.1} ms",
            t.stage, t.span_name, t.service, t.duration_ms
        );
    };
    if !b.task_stages.is_empty() {
        let _ = writeln!(out, "\ntask");
        for t in &b.task_stages {
            row(&mut out, "  ", t);
        }
    }
    for s in &b.steps {
        let _ = writeln!(
            out,
            "\nstep {} ({})   {} {}",
            s.step_name.as_deref().unwrap_or("?"),
            s.step_uuid,
            s.service.as_deref().unwrap_or("?"),
            s.handler_language.as_deref().unwrap_or("?")
        );
        for t in &s.stages {
            row(&mut out, "  ", t);
        }
        for (name, v) in &s.derived {
            derived_row(&mut out, "  ", 20, name, *v);
        }
    }
    if !b.derived.is_empty() {
        let _ = writeln!(out);
        for (name, v) in &b.derived {
            derived_row(&mut out, "", 22, name, *v);
        }
    }
    out
}

/// The waterfall as text bars `width` columns wide: a row per span by start, `█` where it
/// runs and `·` over the idle time before it, with its start, length and gap in milliseconds.
pub fn render_bars(b: &Breakdown, width: usize) -> String {
    use std::fmt::Write;
    let w = Waterfall::of(b);
    let column = |ms: f64| (w.scale(ms, width as f64).round() as usize).min(width);
    let mut out = format!(
        "\nwaterfall ({:.1} ms, one column {:.2} ms)\n",
        w.total_ms,
        w.total_ms / width as f64
    );
    for bar in &w.bars {
        let start = column(bar.offset_ms).min(width - 1);
        let end = column(bar.end_ms()).max(start + 1);
        let idle = bar
            .gap_before_ms
            .map_or(start, |gap| column(bar.offset_ms - gap).min(start));
        let name = bar.name(" ");
        let line: String = (0..width)
            .map(|c| match c {
                c if (start..end).contains(&c) => '█',
                c if (idle..start).contains(&c) => '·',
                _ => ' ',
            })
            .collect();
        let _ = write!(
            out,
            "{:<36} |{line}| {:>8.1} +{:>8.1} ms",
            truncated(&name, 36),
            bar.offset_ms,
            bar.timing.duration_ms
        );
        if let Some(gap) = bar.gap_before_ms {
            let _ = write!(out, "  (gap {gap:.1} ms)");
        }
        out.push('\n');
    }
    out
}

/// At most `chars` characters of `text`, the last one `…` when cut.
fn truncated(text: &str, chars: usize) -> String {
    match text.chars().count() > chars {
        true => text.chars().take(chars - 1).chain(['…']).collect(),
        false => text.to_string(),
    }
}

/// A derived value's row: its name (without `_ms`) in `width` columns after `indent`.
fn derived_row(out: &mut String, indent: &str, width: usize, name: &str, ms: f64) {
    use std::fmt::Write;
    let name = name.trim_end_matches("_ms");
    let _ = writeln!(
        out,
        "{indent}{name:<width$} {:<61} {ms:>9.1} ms",
        "(derived)"
    );
}

/// Fetches a breakdown from a running spanlens (`from` is its metrics address, such as
/// `http://127.0.0.1:9464`). Plain HTTP/1.1 over loopback or a trusted network.
pub fn fetch(from: &str, id: &str) -> Result<Breakdown, String> {
    use std::io::{Read, Write};
    let rest = from
        .strip_prefix("http://")
        .ok_or_else(|| format!("--from must be an http:// URL, got `{from}`"))?;
    let (authority, base) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let encoded = crate::config::percent_encoded(id);
    let path = format!("/{}/api/v1/breakdown/{encoded}", base.trim_end_matches('/'));
    let path = path.replacen("//", "/", 1);
    let mut stream = std::net::TcpStream::connect(authority)
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("cannot read the response: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the response has no body")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err("chunked responses are not expected from spanlens".to_string());
    }
    match status {
        "200" => serde_json::from_str(body).map_err(|e| format!("unexpected breakdown JSON: {e}")),
        "404" => Err(format!("{id}: not found: {}", body.trim())),
        other => Err(format!("{from} answered HTTP {other}: {}", body.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::breakdown::StepBreakdown;
    use std::collections::BTreeMap;

    fn timing(stage: &str, start_ms: u64, duration_ms: f64) -> StageTiming {
        StageTiming {
            stage: stage.to_string(),
            span_name: stage.to_string(),
            service: "s".to_string(),
            duration_ms,
            start_unix_nano: 1_000_000_000 + start_ms * 1_000_000,
            trace_id: String::new(),
            span_id: String::new(),
        }
    }

    #[test]
    fn bars_start_where_their_spans_start_and_gaps_are_dotted() {
        let b = Breakdown {
            correlation_ids: vec!["c".to_string()],
            task_uuids: vec!["t".to_string()],
            task_stages: vec![
                timing("task_creation", 0, 10.0),
                timing("task_finalization", 75, 5.0),
            ],
            steps: vec![StepBreakdown {
                step_uuid: "s1".to_string(),
                step_name: Some("linear_step_1".to_string()),
                service: Some("w".to_string()),
                handler_language: Some("rust".to_string()),
                stages: vec![
                    timing("handler_execution", 20, 40.0),
                    timing("result_submission", 30, 10.0),
                ],
                derived: BTreeMap::new(),
            }],
            derived: BTreeMap::new(),
            total_ms: 80.0,
        };
        let text = render_bars(&b, 16);
        let rows: Vec<&str> = text.lines().skip(2).collect();
        let bar = |row: &str| row.split('|').nth(1).unwrap().to_string();
        assert!(
            text.starts_with("\nwaterfall (80.0 ms, one column 5.00 ms)\n"),
            "{text}"
        );
        assert_eq!(bar(rows[0]), "██              ");
        assert_eq!(bar(rows[1]), "  ··████████    ", "10 ms idle, then 40 ms");
        assert!(rows[1].ends_with("(gap 10.0 ms)"), "{}", rows[1]);
        assert!(rows[1].starts_with("linear_step_1 handler_execution"));
        // Within a running span: no gap.
        assert_eq!(bar(rows[2]), "      ██        ");
        assert!(!rows[2].contains("gap"));
        assert_eq!(bar(rows[3]), "            ···█", "15 ms idle, then 5 ms");
        assert!(rows[3].ends_with("(gap 15.0 ms)"));
    }
}
