//! The design note's breakdown, without a trace backend: spans of one task sent by three
//! services as separate traces, then `GET /api/v1/breakdown/{id}` and `spanlens breakdown`.

use crate::support;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use spanlens::join::breakdown::Breakdown;
use support::{kv, post_protobuf as post, request};

const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;

/// A span of `ms` milliseconds starting `at` ms after T0, in its service's own trace.
fn span(trace: u8, id: u8, name: &str, at: u64, ms: u64, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        name: name.into(),
        kind: 1,
        start_time_unix_nano: T0 + at * MS,
        end_time_unix_nano: T0 + (at + ms) * MS,
        attributes,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_design_notes_example_put_back_together() {
    let server = support::start(support::test_config(|_| {})).await;
    let task = |extra: Vec<KeyValue>| {
        let mut attributes = vec![kv("correlation_id", "xyz-789"), kv("task_uuid", "task-1")];
        attributes.extend(extra);
        attributes
    };
    let step = || {
        vec![
            kv("correlation_id", "worker-fresh-id"),
            kv("task_uuid", "task-1"),
            kv("step_uuid", "step-1"),
            kv("step_name", "linear_step_1"),
        ]
    };
    // Worker spans arrive first, in their own trace; orchestration later, in another.
    post(
        &server,
        request(
            "tasker-ruby-worker",
            vec![
                span(2, 11, "step_claim", 30, 15, step()),
                span(2, 12, "execute_handler", 45, 42, step()),
                span(2, 13, "submit_result", 87, 23, step()),
            ],
        ),
    )
    .await;
    let mut create = task(vec![kv("task_name", "mathematical_sequence")]);
    create.retain(|kv| kv.key != "task_uuid");
    post(
        &server,
        request(
            "tasker-orchestration",
            vec![
                span(1, 1, "create_task", 0, 18, create),
                span(1, 2, "enqueue_steps", 18, 12, task(vec![])),
                span(
                    1,
                    3,
                    "process_result",
                    110,
                    8,
                    task(vec![kv("step_uuid", "step-1")]),
                ),
                span(1, 4, "finalize_task", 118, 0, task(vec![])),
            ],
        ),
    )
    .await;
    // An unrelated task must not leak in.
    post(
        &server,
        request(
            "tasker-rust-worker",
            vec![span(
                3,
                21,
                "step_claim",
                0,
                5,
                vec![kv("task_uuid", "task-2"), kv("step_uuid", "step-9")],
            )],
        ),
    )
    .await;

    let url = format!("http://{}/api/v1/breakdown/xyz-789", server.metrics_addr());
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    let found: Breakdown = response.json().await.unwrap();
    assert_eq!(found.correlation_ids, vec!["xyz-789"]);
    assert_eq!(found.task_uuids, vec!["task-1"]);
    assert_eq!(found.total_ms, 118.0);
    let task_stages: Vec<(&str, f64)> = found
        .task_stages
        .iter()
        .map(|t| (t.stage.as_str(), t.duration_ms))
        .collect();
    assert_eq!(
        task_stages,
        vec![
            ("task_creation", 18.0),
            ("step_enqueueing", 12.0),
            ("task_finalization", 0.0)
        ]
    );
    assert_eq!(found.steps.len(), 1);
    let s = &found.steps[0];
    assert_eq!(s.step_uuid, "step-1");
    assert_eq!(s.step_name.as_deref(), Some("linear_step_1"));
    assert_eq!(s.service.as_deref(), Some("tasker-ruby-worker"));
    assert_eq!(s.handler_language.as_deref(), Some("ruby"));
    let stages: Vec<(&str, &str, f64)> = s
        .stages
        .iter()
        .map(|t| (t.stage.as_str(), t.service.as_str(), t.duration_ms))
        .collect();
    assert_eq!(
        stages,
        vec![
            ("step_claim", "tasker-ruby-worker", 15.0),
            ("handler_execution", "tasker-ruby-worker", 42.0),
            ("result_submission", "tasker-ruby-worker", 23.0),
            ("result_processing", "tasker-orchestration", 8.0),
        ]
    );
    assert_eq!(s.derived.get("worker_overhead_ms"), Some(&38.0));
    assert_eq!(s.derived.get("result_propagation_ms"), Some(&0.0));
    assert_eq!(found.derived.get("task_e2e_ms"), Some(&118.0));
    assert_eq!(s.stages[0].trace_id, "02".repeat(16));

    // The same task by its uuid; an unknown id is a 404 with a reason.
    let by_uuid: Breakdown = reqwest::get(format!(
        "http://{}/api/v1/breakdown/task-1",
        server.metrics_addr()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(by_uuid, found);
    let missing = reqwest::get(format!(
        "http://{}/api/v1/breakdown/nope",
        server.metrics_addr()
    ))
    .await
    .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("nope"));

    // The command line prints it as a table.
    let from = format!("http://{}", server.metrics_addr());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_spanlens"))
            .args(["breakdown", "xyz-789", "--from", &from])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.starts_with("correlation_id xyz-789   task_uuid task-1   total 118.0 ms\n"),
        "{table}"
    );
    for row in [
        "task_creation        create_task",
        "step linear_step_1 (step-1)   tasker-ruby-worker ruby",
        "handler_execution    execute_handler",
        "worker_overhead",
        "task_e2e",
    ] {
        assert!(table.contains(row), "missing `{row}` in\n{table}");
    }
    assert!(
        table.contains("42.0 ms") && table.contains("38.0 ms") && table.contains("118.0 ms"),
        "{table}"
    );
    server.shutdown().await;
}
