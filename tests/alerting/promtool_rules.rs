//! The promtool unit tests of the committed rule file: every file in config/rules/tests/ passes
//! `promtool test rules`, and every alert of config/rules/spanlens.rules.yml has both a firing
//! and a silent case there, so that a new alert without tests fails the build.
//!
//! promtool comes from SPANLENS_PROMTOOL, else from PATH (scripts/test.sh installs Debian's
//! `prometheus` package, which ships it). Without it these tests fail, they never skip.

use crate::support::process::{TempDir, output_text};
use crate::support::tools::{promtool, run_promtool};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const RULES: &str = "config/rules/spanlens.rules.yml";
const TESTS: &str = "config/rules/tests";
/// How every test file names the rule file: relative to itself, the committed file.
const RULE_FILE_REF: &str = "../spanlens.rules.yml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The promtool test files, sorted by name.
fn test_files() -> Vec<PathBuf> {
    let dir = root().join(TESTS);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no promtool test files in {TESTS}");
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[derive(Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
struct Rule {
    alert: Option<String>,
}

#[derive(Deserialize)]
struct TestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    #[serde(default)]
    tests: Vec<TestGroup>,
}

#[derive(Deserialize)]
struct TestGroup {
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
}

#[derive(Deserialize)]
struct AlertTest {
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<yaml_serde::Value>,
}

fn alert_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(RULES)).unwrap();
    let file: RuleFile = yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{RULES}: {e}"));
    let names: BTreeSet<String> = file
        .groups
        .into_iter()
        .flat_map(|g| g.rules)
        .filter_map(|r| r.alert)
        .collect();
    assert!(!names.is_empty(), "{RULES} has no alerts");
    names
}

fn parse_test_file(path: &Path) -> TestFile {
    let text = std::fs::read_to_string(path).unwrap();
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn promtool_unit_tests_pass() {
    let version = run_promtool(&root(), &["--version"]);
    assert!(
        version.status.success(),
        "`{} --version` failed:\n{}",
        promtool().display(),
        output_text(&version)
    );
    // One promtool per file, in parallel: the regression cases evaluate more than a day.
    let dir = root().join(TESTS);
    let runs: Vec<_> = test_files()
        .into_iter()
        .map(|path| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let name = file_name(&path);
                let out = run_promtool(&dir, &["test", "rules", &name]);
                (name, out)
            })
        })
        .collect();
    let mut failures = Vec::new();
    for run in runs {
        let (name, out) = run.join().unwrap();
        let text = output_text(&out);
        if !out.status.success() || !text.contains("SUCCESS") {
            failures.push(format!(
                "---- promtool test rules {TESTS}/{name} ({}) ----\n{text}",
                out.status
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "promtool unit tests failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_alert_has_a_firing_and_a_silent_case() {
    let alerts = alert_names();
    let mut firing: BTreeMap<String, usize> = BTreeMap::new();
    let mut silent: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for path in test_files() {
        let name = file_name(&path);
        let file = parse_test_file(&path);
        if file.rule_files != [RULE_FILE_REF] {
            problems.push(format!(
                "{name}: rule_files must be [{RULE_FILE_REF}] (the committed rule file), not {:?}",
                file.rule_files
            ));
        }
        for case in file.tests.iter().flat_map(|g| &g.alert_rule_test) {
            // promtool passes an empty exp_alerts for a name no rule has: catch renamed alerts.
            if !alerts.contains(&case.alertname) {
                problems.push(format!(
                    "{name}: alertname {} is not an alert of {RULES}",
                    case.alertname
                ));
            }
            let count = if case.exp_alerts.is_empty() {
                &mut silent
            } else {
                &mut firing
            };
            *count.entry(case.alertname.clone()).or_default() += 1;
        }
    }
    for alert in &alerts {
        if !firing.contains_key(alert) {
            problems.push(format!(
                "{alert}: no firing case (an alert_rule_test with exp_alerts) in {TESTS}"
            ));
        }
        if !silent.contains_key(alert) {
            problems.push(format!(
                "{alert}: no silent case (an alert_rule_test with exp_alerts: []) in {TESTS}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The unit tests are not vacuous: with the traffic guard of every latency alert raised ten
/// times, the latency cases that must fire no longer do, and promtool reports it.
#[test]
fn promtool_unit_tests_fail_on_a_changed_rule() {
    let rules = std::fs::read_to_string(root().join(RULES)).unwrap();
    let guard = ">= 0.05\n";
    assert!(
        rules.contains(guard),
        "{RULES} no longer has the `{}` guard this test changes",
        guard.trim()
    );
    let mutated = rules.replace(guard, ">= 0.5\n");
    let work = TempDir::new("promtool_rules_mutation");
    let tests = work.dir("tests");
    work.write("spanlens.rules.yml", mutated);
    let file = "stage_latency_worker.yml";
    std::fs::copy(root().join(TESTS).join(file), tests.join(file)).unwrap();
    let out = run_promtool(&tests, &["test", "rules", file]);
    let text = output_text(&out);
    assert!(
        !out.status.success() && text.contains("FAILED"),
        "promtool accepted {file} against a rule file whose guards were raised ten times \
         ({}):\n{text}",
        out.status
    );
}

/// The SLO cases are not vacuous either: without the short window of each burn-rate alert
/// (so that only the 1h or 6h ratio decides), the recovered and steady-tail cases of
/// slo_burn.yml fail.
#[test]
fn promtool_slo_tests_fail_without_the_short_windows() {
    let rules = std::fs::read_to_string(root().join(RULES)).unwrap();
    let short_window =
        regex::Regex::new(r"\n      and on \([^)]*\) \S+:slow_ratio_rate(5m|30m) > [^\n]*")
            .unwrap();
    let mutated = short_window.replace_all(&rules, "");
    let dropped = short_window.find_iter(&rules).count();
    assert!(
        dropped >= 4,
        "{RULES} has {dropped} short-window conditions for this test to drop"
    );
    let work = TempDir::new("promtool_slo_mutation");
    let tests = work.dir("tests");
    work.write("spanlens.rules.yml", mutated.as_ref());
    let file = "slo_burn.yml";
    std::fs::copy(root().join(TESTS).join(file), tests.join(file)).unwrap();
    let out = run_promtool(&tests, &["test", "rules", file]);
    let text = output_text(&out);
    assert!(
        !out.status.success() && text.contains("FAILED"),
        "promtool accepted {file} against burn-rate alerts without their short windows \
         ({}):\n{text}",
        out.status
    );
}
