use super::*;
use crate::metrics::exposition::{Format, render};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn span(id: u8, name: &str, millis: u64, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![7; 16],
        span_id: vec![id; 8],
        name: name.into(),
        kind: 1,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_000_000_000 + millis * 1_000_000,
        attributes,
        ..Default::default()
    }
}

fn request(service: &str, spans: Vec<Span>) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn lines(pipeline: &Pipeline) -> Vec<String> {
    render(&pipeline.snapshot(), Format::Text)
        .lines()
        .map(str::to_string)
        .collect()
}

fn has(lines: &[String], expected: &[&str]) {
    for line in expected {
        assert!(
            lines.iter().any(|l| l == line),
            "missing {line}\n{}",
            lines.join("\n")
        );
    }
}

#[test]
fn handler_language_chain_prefers_span_then_resource_then_service_name() {
    let pipeline = Pipeline::new(&Config::default_profile()).unwrap();
    let language = |l| vec![kv("handler.language", l)];
    pipeline
        .ingest(
            Protocol::Grpc,
            &request(
                "tasker-rust-worker",
                vec![
                    span(1, "step_claim", 15, vec![]),
                    span(2, "step_claim", 15, language("python")),
                ],
            ),
        )
        .unwrap();
    pipeline
        .ingest(
            Protocol::Grpc,
            &request(
                "tasker-orchestration",
                vec![span(3, "step_claim", 15, vec![])],
            ),
        )
        .unwrap();
    let lines = lines(&pipeline);
    has(
        &lines,
        &[
            r#"tasker_step_claim_calls_total{service="tasker-rust-worker",handler_language="rust"} 1"#,
            r#"tasker_step_claim_calls_total{service="tasker-rust-worker",handler_language="python"} 1"#,
            r#"tasker_step_claim_calls_total{service="tasker-orchestration",handler_language="unknown"} 1"#,
        ],
    );
}

#[test]
fn extra_labels_are_capped_and_overflow_is_counted() {
    let mut config = Config::default_profile();
    config
        .stages
        .get_mut("handler_execution")
        .unwrap()
        .extra_labels = vec!["namespace".into()];
    config.labels.extra.get_mut("namespace").unwrap().max_values = 2;
    let pipeline = Pipeline::new(&config).unwrap();
    let spans = [
        "linear_workflow",
        "diamond_workflow",
        "tree_workflow",
        "linear_workflow",
    ]
    .iter()
    .enumerate()
    .map(|(i, ns)| {
        span(
            i as u8 + 1,
            "worker.step_execution",
            42,
            vec![kv("namespace", ns)],
        )
    })
    .collect();
    pipeline
        .ingest(
            Protocol::HttpProtobuf,
            &request("tasker-ruby-worker", spans),
        )
        .unwrap();
    // read_messages names its namespace only through the queue.
    let claim = span(
        9,
        "read_messages",
        5,
        vec![kv("queue", "worker_linear_workflow_queue")],
    );
    config.stages.get_mut("step_claim").unwrap().extra_labels = vec!["namespace".into()];
    let with_claim = Pipeline::new(&config).unwrap();
    with_claim
        .ingest(Protocol::Grpc, &request("tasker-ruby-worker", vec![claim]))
        .unwrap();
    let lines = lines(&pipeline);
    let base = r#"service="tasker-ruby-worker",handler_language="ruby""#;
    has(
        &lines,
        &[
            &format!(
                r#"tasker_handler_execution_calls_total{{{base},namespace="linear_workflow"}} 2"#
            ),
            &format!(
                r#"tasker_handler_execution_calls_total{{{base},namespace="diamond_workflow"}} 1"#
            ),
            &format!(
                r#"tasker_handler_execution_calls_total{{{base},namespace="__overflow__"}} 1"#
            ),
            r#"spanlens_label_overflow_total{label="namespace"} 1"#,
        ],
    );
    has(
        &self::lines(&with_claim),
        &[&format!(
            r#"tasker_step_claim_calls_total{{{base},namespace="linear_workflow"}} 1"#
        )],
    );
}

#[test]
fn span_metrics_count_every_span_past_a_cap_within_one_request() {
    // Names a and b are kept; c and d are past max_span_names, each of their spans
    // counted. With one series a metric, the spans of every other series are folded,
    // each counted.
    let names = ["a", "b", "c", "a", "c", "d", "b", "c"];
    let spans = |names: &[&str]| {
        let made = names.iter().enumerate();
        made.map(|(i, n)| span(i as u8 + 1, n, 3, vec![])).collect()
    };
    let mut config = Config::default_profile();
    config.span_metrics.max_span_names = 2;
    let pipeline = Pipeline::new(&config).unwrap();
    pipeline
        .ingest(Protocol::Grpc, &request("svc", spans(&names)))
        .unwrap();
    let lines = lines(&pipeline);
    let calls = |name: &str, n: u64| {
        format!(
            r#"traces_span_metrics_calls_total{{service_name="svc",span_name="{name}",span_kind="SPAN_KIND_INTERNAL",status_code="STATUS_CODE_UNSET"}} {n}"#
        )
    };
    has(
        &lines,
        &[
            &calls("a", 2),
            &calls("b", 2),
            &calls("__overflow__", 4),
            r#"spanlens_label_overflow_total{label="span_name"} 4"#,
        ],
    );

    config.metrics.max_series_per_metric = 1;
    let pipeline = Pipeline::new(&config).unwrap();
    pipeline
        .ingest(Protocol::Grpc, &request("svc", spans(&names[..4])))
        .unwrap();
    let lines = self::lines(&pipeline);
    has(&lines, &[&calls("a", 2)]);
    let overflow = r#"{service_name="__overflow__",span_name="__overflow__",span_kind="__overflow__",status_code="__overflow__"}"#;
    has(
        &lines,
        &[
            &format!("traces_span_metrics_calls_total{overflow} 2"),
            &format!("traces_span_metrics_duration_seconds_count{overflow} 2"),
        ],
    );
    // The fold counter has one series too: the duration's folds are in its overflow.
    for metric in ["traces_span_metrics_calls_total", "__overflow__"] {
        has(
            &lines,
            &[&format!(
                r#"spanlens_series_overflow_total{{metric="{metric}"}} 2"#
            )],
        );
    }
}

#[test]
fn stage_metrics_count_every_span_past_a_cap_within_one_request() {
    // python and 7 (an int attribute, written as text) are kept; ruby is past the cap.
    let number = KeyValue {
        key: "handler.language".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(7)),
        }),
        ..Default::default()
    };
    let languages = ["python", "7", "ruby", "7", "python", "ruby", "ruby"];
    let spans = languages.iter().enumerate().map(|(i, &l)| {
        let attribute = match l {
            "7" => number.clone(),
            l => kv("handler.language", l),
        };
        span(i as u8 + 1, "step_claim", 15, vec![attribute])
    });
    let mut config = Config::default_profile();
    config.labels.handler_language.max_values = 2;
    let pipeline = Pipeline::new(&config).unwrap();
    pipeline
        .ingest(Protocol::Grpc, &request("svc", spans.collect()))
        .unwrap();
    let lines = lines(&pipeline);
    for (language, n) in [("python", 2), ("7", 2), ("__overflow__", 3)] {
        has(
            &lines,
            &[&format!(
                r#"tasker_step_claim_calls_total{{service="svc",handler_language="{language}"}} {n}"#
            )],
        );
    }
    has(
        &lines,
        &[r#"spanlens_label_overflow_total{label="handler_language"} 3"#],
    );
}

#[test]
fn decode_keeps_the_breakdown_keys_only_while_breakdowns_are_on() {
    let mut config = Config::default_profile();
    let on = Pipeline::new(&config).unwrap();
    config.breakdown.max_spans = 0;
    let off = Pipeline::new(&config).unwrap();
    // task_uuid is read by the breakdown log alone; step_uuid by derived durations too.
    assert!(on.attribute_keys.keeps("task_uuid"));
    assert!(!off.attribute_keys.keeps("task_uuid"));
    assert!(off.attribute_keys.keeps("step_uuid"));
    assert!(off.attribute_keys.keeps("step_name"));
}

#[test]
fn long_label_values_are_truncated_on_a_character_boundary() {
    let mut config = Config::default_profile();
    config.metrics.max_label_value_length = 10;
    let pipeline = Pipeline::new(&config).unwrap();
    pipeline
        .ingest(
            Protocol::Grpc,
            &request("ééééééééé-service", vec![span(1, "step_claim", 1, vec![])]),
        )
        .unwrap();
    has(
        &lines(&pipeline),
        &[r#"tasker_step_claim_calls_total{service="ééééé",handler_language="unknown"} 1"#],
    );
}

#[test]
fn partial_rejection_counts_only_good_spans_and_explains_the_rest() {
    let pipeline = Pipeline::new(&Config::default_profile()).unwrap();
    let mut bad = span(2, "step_claim", 5, vec![]);
    bad.trace_id = vec![1; 15];
    let mut late = span(3, "step_claim", 5, vec![]);
    late.end_time_unix_nano = 0;
    let outcome = pipeline
        .ingest(
            Protocol::HttpJson,
            &request(
                "tasker-rust-worker",
                vec![span(1, "step_claim", 5, vec![]), bad, late],
            ),
        )
        .unwrap();
    assert_eq!((outcome.accepted, outcome.rejected), (1, 2));
    assert_eq!(
        outcome.message,
        "2 of 3 spans rejected: resource_spans[0].scope_spans[0].spans[1] (\"step_claim\"): trace_id is 15 bytes, must be 16; \
         resource_spans[0].scope_spans[0].spans[2] (\"step_claim\"): end_time_unix_nano is missing"
    );
    let lines = lines(&pipeline);
    has(
        &lines,
        &[
            r#"tasker_step_claim_calls_total{service="tasker-rust-worker",handler_language="rust"} 1"#,
            r#"spanlens_spans_refused_total{protocol="http_json",reason="invalid_trace_id"} 1"#,
            r#"spanlens_spans_refused_total{protocol="http_json",reason="missing_timestamp"} 1"#,
            r#"spanlens_spans_accepted_total{protocol="http_json"} 1"#,
            r#"spanlens_spans_received_total{protocol="http_json"} 3"#,
        ],
    );
}

fn at(mut span: Span, start_ms: u64) -> Span {
    let length = span.end_time_unix_nano - span.start_time_unix_nano;
    span.start_time_unix_nano = 1_700_000_000_000_000_000 + start_ms * 1_000_000;
    span.end_time_unix_nano = span.start_time_unix_nano + length;
    span
}

#[test]
fn derived_durations_join_across_requests_in_any_order_without_double_counting() {
    let pipeline = Pipeline::new(&Config::default_profile()).unwrap();
    let step = |id, name, ms| {
        span(
            id,
            name,
            ms,
            vec![kv("step_uuid", "s-1"), kv("correlation_id", "c-1")],
        )
    };
    let submit = at(step(2, "submit_result", 23), 100);
    let claim = at(step(1, "step_claim", 15), 0);
    let process = at(step(3, "process_result", 8), 130);
    let create = at(
        span(
            4,
            "create_task",
            18,
            vec![
                kv("correlation_id", "c-1"),
                kv("task_name", "mathematical_sequence"),
            ],
        ),
        0,
    );
    let finalize = at(
        span(5, "finalize_task", 10, vec![kv("correlation_id", "c-1")]),
        200,
    );
    // The worker's submission arrives first, then its claim, twice (a retrying exporter).
    pipeline
        .ingest(Protocol::Grpc, &request("tasker-ruby-worker", vec![submit]))
        .unwrap();
    for _ in 0..2 {
        pipeline
            .ingest(
                Protocol::Grpc,
                &request("tasker-ruby-worker", vec![claim.clone()]),
            )
            .unwrap();
    }
    pipeline
        .ingest(
            Protocol::Grpc,
            &request("tasker-orchestration", vec![finalize, process, create]),
        )
        .unwrap();
    let lines = lines(&pipeline);
    let worker = r#"service="tasker-ruby-worker",handler_language="ruby""#;
    has(
        &lines,
        &[
            &format!("tasker_worker_overhead_seconds_sum{{{worker}}} 0.038"),
            &format!("tasker_worker_overhead_seconds_count{{{worker}}} 1"),
        ],
    );
    // From the end of the submission (123 ms) to the start of processing (130 ms).
    has(
        &lines,
        &[&format!(
            "tasker_result_propagation_seconds_sum{{{worker}}} 0.007"
        )],
    );
    // From the start of creation (0) to the end of finalization (210 ms).
    has(
        &lines,
        &[
            r#"tasker_task_e2e_duration_seconds_sum{task_name="mathematical_sequence"} 0.21"#,
            &format!("tasker_step_claim_calls_total{{{worker}}} 1"),
            r#"spanlens_spans_duplicate_total{protocol="grpc"} 1"#,
            r#"spanlens_join_pending{derived="worker_overhead"} 0"#,
        ],
    );
}

#[test]
fn handler_execution_is_compared_by_normalised_step_across_languages() {
    let pipeline = Pipeline::new(&Config::default_profile()).unwrap();
    for (id, service, step, ms) in [
        (1, "tasker-rust-worker", "linear_step_1", 10),
        (2, "tasker-python-worker", "linear_step_1_py", 30),
        (3, "tasker-typescript-worker", "linear_step_1_ts", 20),
    ] {
        let handler = span(id, "worker.step_execution", ms, vec![kv("step_name", step)]);
        pipeline
            .ingest(Protocol::Grpc, &request(service, vec![handler]))
            .unwrap();
    }
    let lines = lines(&pipeline);
    for (language, sum) in [("rust", "0.01"), ("python", "0.03"), ("typescript", "0.02")] {
        has(
            &lines,
            &[&format!(
                r#"tasker_handler_execution_by_step_seconds_sum{{step="linear_step_1",handler_language="{language}"}} {sum}"#
            )],
        );
    }
}

#[test]
fn a_request_with_no_usable_span_is_refused_whole() {
    let pipeline = Pipeline::new(&Config::default_profile()).unwrap();
    let mut bad = span(0, "step_claim", 5, vec![]);
    bad.span_id = vec![0; 8];
    let refusal = pipeline
        .ingest(Protocol::Grpc, &request("s", vec![bad]))
        .unwrap_err();
    assert!(
        matches!(refusal, Refusal::AllSpansInvalid(ref m) if m.contains("span_id is all zeros")),
        "{refusal}"
    );
    let malformed = pipeline
        .ingest(Protocol::Grpc, b"\x0a\x05\x12")
        .unwrap_err();
    assert_eq!(
        malformed,
        Refusal::Malformed("request: field 1 ends past the end of its message".into())
    );
    let lines = lines(&pipeline);
    has(
        &lines,
        &[
            r#"spanlens_requests_refused_total{protocol="grpc",reason="invalid_spans"} 1"#,
            r#"spanlens_requests_refused_total{protocol="grpc",reason="malformed"} 1"#,
        ],
    );
    assert!(!lines.iter().any(|l| l.starts_with("tasker_step_claim")));
}

/// `span` sampled as `trace_state` says, in a trace of its own (`trace`).
fn sampled(mut span: Span, trace: u8, trace_state: &str) -> Span {
    span.trace_id = vec![trace; 16];
    span.trace_state = trace_state.into();
    span
}

#[test]
fn spans_count_as_the_operations_their_sampling_says() {
    let pipeline = Pipeline::new(&Config::default_profile()).unwrap();
    let claim = |id, trace_state| sampled(span(id, "step_claim", 15, vec![]), id, trace_state);
    let spans = vec![
        claim(1, "ot=th:c"),                 // kept 1 in 4
        claim(2, "rojo=1,ot=rv:abcdef;p:3"), // 1 in 8
        claim(3, ""),                        // 1
        claim(4, "ot=p:63"),                 // not by probability: 0
        claim(5, "ot=th:0123456789abcdef"),  // malformed: 1
        claim(6, "ot=p:64"),                 // malformed: 1
    ];
    let outcome = pipeline
        .ingest(Protocol::Grpc, &request("tasker-rust-worker", spans))
        .unwrap();
    assert_eq!(outcome.accepted, 6);
    let worker = r#"service="tasker-rust-worker",handler_language="rust""#;
    has(
        &lines(&pipeline),
        &[
            &format!("tasker_step_claim_calls_total{{{worker}}} 15"),
            &format!(r#"tasker_step_claim_duration_seconds_bucket{{{worker},le="0.025"}} 15"#),
            &format!("tasker_step_claim_duration_seconds_count{{{worker}}} 15"),
            r#"traces_span_metrics_calls_total{service_name="tasker-rust-worker",span_name="step_claim",span_kind="SPAN_KIND_INTERNAL",status_code="STATUS_CODE_UNSET"} 15"#,
            r#"spanlens_spans_accepted_total{protocol="grpc"} 6"#,
            r#"spanlens_spans_adjusted_total{protocol="grpc"} 15"#,
            r#"spanlens_sampling_ignored_total{protocol="grpc",reason="th_too_long"} 1"#,
            r#"spanlens_sampling_ignored_total{protocol="grpc",reason="p_out_of_range"} 1"#,
        ],
    );
}

#[test]
fn a_multiplier_attribute_wins_and_fractions_are_written_as_they_are() {
    let mut config = Config::default_profile();
    config.sampling.multiplier_attribute = Some("sample.weight".into());
    let pipeline = Pipeline::new(&config).unwrap();
    let weight = |w: f64| KeyValue {
        key: "sample.weight".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::DoubleValue(w)),
        }),
        ..Default::default()
    };
    let spans = vec![
        sampled(span(1, "step_claim", 15, vec![weight(2.5)]), 1, "ot=th:8"),
        sampled(span(2, "step_claim", 15, vec![weight(-3.0)]), 2, ""),
        sampled(span(3, "step_claim", 15, vec![]), 3, "ot=th:8"),
    ];
    pipeline
        .ingest(Protocol::Grpc, &request("tasker-rust-worker", spans))
        .unwrap();
    let worker = r#"service="tasker-rust-worker",handler_language="rust""#;
    has(
        &lines(&pipeline),
        &[
            // 2.5 (the attribute over th:8), 1 (a negative multiplier is ignored), 2 (th:8).
            &format!("tasker_step_claim_calls_total{{{worker}}} 5.5"),
            &format!("tasker_step_claim_duration_seconds_count{{{worker}}} 5.5"),
            r#"spanlens_sampling_ignored_total{protocol="grpc",reason="multiplier_invalid"} 1"#,
        ],
    );
}

#[test]
fn a_derived_value_counts_the_product_of_its_traces_counts() {
    let pipeline = Pipeline::new(&Config::default_profile()).unwrap();
    let step = |id, name, ms| span(id, name, ms, vec![kv("step_uuid", "s-1")]);
    // Claim and submission in two traces, kept at 1 in 2 and 1 in 4.
    let claim = sampled(at(step(1, "step_claim", 15), 0), 1, "ot=th:8");
    let submit = sampled(at(step(2, "submit_result", 23), 100), 2, "ot=th:c");
    pipeline
        .ingest(
            Protocol::Grpc,
            &request("tasker-ruby-worker", vec![claim, submit]),
        )
        .unwrap();
    let worker = r#"service="tasker-ruby-worker",handler_language="ruby""#;
    has(
        &lines(&pipeline),
        &[
            &format!("tasker_worker_overhead_seconds_count{{{worker}}} 8"),
            &format!("tasker_worker_overhead_seconds_sum{{{worker}}} 0.304"),
        ],
    );
}
