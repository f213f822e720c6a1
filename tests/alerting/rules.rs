//! The committed rule file is what `spanlens rules` generates for the shipped config, it
//! passes `promtool check rules`, and every runbook link lands on a section of the runbook.

use crate::support;
use crate::support::process::{TempDir, output_text};
use crate::support::tools::promtool;
use std::process::Command;

const COMMITTED: &str = "config/rules/spanlens.rules.yml";

fn generated() -> String {
    support::run_spanlens(&["rules"]).0
}

#[test]
fn committed_rules_match_the_shipped_config() {
    let committed = std::fs::read_to_string(COMMITTED).unwrap();
    assert!(
        committed == generated(),
        "{COMMITTED} is stale: regenerate it with `cargo run -- rules --output {COMMITTED}`"
    );
}

#[test]
fn promtool_accepts_the_rules() {
    let out = Command::new(promtool())
        .args(["check", "rules", COMMITTED])
        .output()
        .unwrap_or_else(|e| panic!("promtool is needed (scripts/test.sh installs it): {e}"));
    assert!(out.status.success(), "{}", output_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("SUCCESS"), "{stdout}");
}

#[test]
fn every_runbook_link_has_a_section() {
    let runbook = std::fs::read_to_string("docs/RUNBOOK.md").unwrap();
    let anchors: Vec<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let rules = generated();
    let links: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
        .collect();
    assert!(links.len() >= 20, "{}", links.len());
    for link in links {
        let anchor = link.rsplit('#').next().unwrap();
        assert!(
            anchors.iter().any(|a| a == anchor),
            "docs/RUNBOOK.md has no section for #{anchor}"
        );
    }
}

/// `alerting.histograms: native` rules (quantiles and SLO ratios from the native histograms,
/// with thresholds off the bucket bounds) pass `promtool check rules` too.
#[test]
fn promtool_accepts_the_native_rules() {
    let scratch = TempDir::new("native_rules");
    let profile = std::fs::read_to_string("config/spanlens.yaml").unwrap();
    let native = profile
        .replace("  histograms: classic\n", "  histograms: native\n")
        .replace(
            "slo: { objective: 0.999, threshold: 1s }",
            "slo: { objective: 0.999, threshold: 300ms }",
        );
    assert_ne!(
        native, profile,
        "the profile no longer has the lines this test edits"
    );
    let config = scratch.write("native.yaml", native);
    let rules = scratch.path().join("native.rules.yml");
    support::run_spanlens(&[
        "rules",
        "--config",
        &config.display().to_string(),
        "--output",
        &rules.display().to_string(),
    ]);
    let text = std::fs::read_to_string(&rules).unwrap();
    assert!(
        text.contains(
            "1 - histogram_fraction(0, 0.3, sum by (service, handler_language) (rate(tasker_handler_execution_duration_seconds[5m])))"
        ),
        "{text}"
    );
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap_or_else(|e| panic!("promtool is needed (scripts/test.sh installs it): {e}"));
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
}
