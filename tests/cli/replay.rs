//! `spanlens replay` on committed files: an OTLP/JSON file as the Collector's file exporter
//! writes it (real tasker-core span names, two linear tasks) and a Jaeger query API response
//! (the design note's example), compared with a golden percentile table.

use crate::support;

const OTLP: &str = "tests/data/replay/tasker-linear.otlp.jsonl";
const JAEGER: &str = "tests/data/replay/note-example.jaeger.json";

fn replay(args: &[&str]) -> (String, String) {
    let mut all = vec!["replay"];
    all.extend_from_slice(args);
    support::run_spanlens(&all)
}

#[test]
fn percentiles_match_the_golden_table() {
    let (table, summary) = replay(&[OTLP, JAEGER]);
    let golden = std::fs::read_to_string("tests/data/replay/expected-percentiles.txt").unwrap();
    assert_eq!(
        table, golden,
        "regenerate only after checking the new numbers by hand"
    );
    assert_eq!(
        summary,
        format!(
            "{OTLP}: 4 requests, 38 spans accepted, 0 rejected\n{JAEGER}: 1 requests, 7 spans accepted, 0 rejected\n"
        )
    );
}

#[test]
fn the_golden_numbers_are_the_fixtures_own() {
    // Hand-checked against the files: the note's example (Jaeger) gives worker overhead
    // 15 + 23 = 38 ms and task end to end 118 ms; the Rust task of the OTLP file takes
    // 30 + 4 × (15 + 23 + 4 + 8) + (12 + 15 + 13 + 18) + 10 = 298 ms, the Ruby one 437 ms.
    let (table, _) = replay(&[OTLP, JAEGER]);
    let row = |metric: &str, labels: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(metric) && l.contains(labels))
            .unwrap_or_else(|| panic!("no row {metric} {labels} in\n{table}"))
            .split_whitespace()
            .skip(2)
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        row("tasker_worker_overhead_seconds", "handler_language=ruby"),
        ["1", "38.000", "38.000", "38.000"]
    );
    assert_eq!(
        row("tasker_task_e2e_duration_seconds", "mathematical_sequence"),
        ["3", "298.000", "437.000", "437.000"]
    );
    assert_eq!(
        row(
            "tasker_handler_execution_duration_seconds",
            "handler_language=ruby"
        ),
        ["5", "44.000", "61.000", "61.000"]
    );
}

#[test]
fn metrics_output_is_the_exposition() {
    let (text, _) = replay(&["--metrics", JAEGER]);
    assert!(text.contains("tasker_worker_overhead_seconds_sum{service=\"tasker-ruby-worker\",handler_language=\"ruby\"} 0.038"), "{text}");
    assert!(
        text.contains("spanlens_spans_accepted_total{protocol=\"replay\"} 7"),
        "{text}"
    );
}
