//! The real binary: `check-config`, `default-config`, running on the embedded profile, and
//! shutting down on SIGTERM with every accepted span accounted for.

use crate::support::process::{Spanlens, TempDir, on_ephemeral_ports, spanlens_command};
use std::process::Command;
use std::time::Duration;

fn spanlens() -> Command {
    spanlens_command()
}

#[test]
fn check_config_accepts_the_shipped_profile() {
    let out = spanlens()
        .args(["check-config", "config/spanlens.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "config/spanlens.yaml: ok (8 stages, 14 rules)\n"
    );
}

#[test]
fn check_config_memory_prints_every_part_and_the_total() {
    // Without a file: the embedded default profile (or --config).
    let out = spanlens()
        .args(["check-config", "--memory"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parts = [
        "base",
        "series store",
        "label values",
        "join window",
        "dedupe table",
        "breakdown log",
        "request buffers",
        "connections",
        "operator page",
        "scrape",
    ];
    for part in parts {
        assert!(
            stdout.lines().any(|l| l.starts_with(part)),
            "no {part} line in:\n{stdout}"
        );
    }
    // No forwarding endpoint in the default profile: no queue line.
    assert!(!stdout.contains("forwarding queues"), "{stdout}");
    let total = stdout.lines().last().expect("a total line");
    assert!(
        total.starts_with("total") && total.ends_with(" bytes"),
        "{total}"
    );
    // With a file: its check, then its table.
    let out = spanlens()
        .args(["check-config", "--memory", "config/spanlens.yaml"])
        .output()
        .unwrap();
    let with_file = String::from_utf8_lossy(&out.stdout);
    assert!(
        with_file.starts_with("config/spanlens.yaml: ok (8 stages, 14 rules)\ncomponent"),
        "{with_file}"
    );
}

#[test]
fn check_config_reports_every_problem_with_line_and_field() {
    let bad = spanlens::config::DEFAULT_PROFILE
        .replace(
            "    endpoint: 127.0.0.1:4318",
            "    endpoint: 127.0.0.1:4318\n    verbose: true",
        )
        .replace(
            "  - stage: task_finalization",
            "  - stage: task_finalisation",
        )
        .replace(
            "histogram: tasker_step_claim_duration_seconds",
            "histogram: tasker_step_claim_duration",
        );
    let dir = TempDir::new("cli");
    let path = dir.write("bad.yaml", &bad);
    let out = spanlens().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let file = path.display();
    for expected in [
        format!(
            "{file}:{}: receivers.http.verbose: unknown field `verbose`",
            line_of("verbose: true")
        ),
        format!(
            "{file}:{}: stages.step_claim.histogram: histogram `tasker_step_claim_duration` observes seconds",
            line_of("histogram: tasker_step_claim_duration")
        ),
        format!("{file}:{}: rules[", line_of("stage: task_finalisation")),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    assert!(
        stderr.starts_with(&format!("{file}: 3 problems\n")),
        "{stderr}"
    );
}

#[test]
fn default_config_prints_the_embedded_profile() {
    let out = spanlens().arg("default-config").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        std::fs::read_to_string("config/spanlens.yaml").unwrap()
    );
}

#[test]
fn help_teaches_the_defaults() {
    let out = spanlens().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "127.0.0.1:4317",
        "127.0.0.1:4318",
        "9464/metrics",
        "check-config",
        "--config",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn runs_on_the_embedded_profile_with_no_arguments() {
    let mut running = Spanlens::spawn(&mut spanlens());
    assert_eq!(get("http://127.0.0.1:9464/readyz").await.0, 200);
    let (status, body) = get("http://127.0.0.1:9464/metrics").await;
    assert_eq!(status, 200);
    assert!(body.is_empty() || body.starts_with("# HELP"), "{body}");
    assert!(running.terminate().success());
}

#[tokio::test]
async fn sigterm_stops_gracefully_and_accounts_for_every_span() {
    let config = on_ephemeral_ports(spanlens::config::DEFAULT_PROFILE);
    let dir = TempDir::new("cli");
    let path = dir.write("ephemeral.yaml", &config);
    let mut running = Spanlens::start(&path);
    let http = running.http();
    let span = |i: u32| {
        format!(
            r#"{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"{:016x}","name":"step_claim","kind":1,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000015000000"}}"#,
            i + 1
        )
    };
    let spans: Vec<String> = (0..25).map(span).collect();
    let body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"tasker-rust-worker"}}}}]}},"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    );
    let client = reqwest::Client::new();
    for _ in 0..4 {
        let response = client
            .post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let status = running.terminate();
    assert!(status.success(), "exit status {status}");
    let last = running.wait_for("stopped", Duration::from_secs(20));
    assert!(last.contains("spans_accepted=100"), "{last}");
}

/// The test configs' listeners move to ephemeral ports, and only they: a forwarding
/// endpoint whose own ephemeral port begins with a listener's port keeps it.
#[test]
fn only_the_listeners_move_to_ephemeral_ports() {
    let text = "endpoint: 127.0.0.1:4317\nurl: http://127.0.0.1:43173\nmetrics: 127.0.0.1:9464\n";
    assert_eq!(
        on_ephemeral_ports(text),
        "endpoint: 127.0.0.1:0\nurl: http://127.0.0.1:43173\nmetrics: 127.0.0.1:0\n"
    );
}
