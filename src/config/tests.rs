use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.yaml", &HashMap::new())
}

/// Every problem of a config that must not parse, as `path: message`.
fn problems(text: &str) -> Vec<String> {
    let err = parse(text).expect_err("problems");
    (err.problems.iter())
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect()
}

#[test]
fn default_profile_is_valid_and_complete() {
    let config = Config::default_profile();
    assert_eq!(config.stages.len(), 8);
    assert!(config.rules.len() >= 14);
    assert_eq!(config.receivers.grpc.endpoint.to_string(), "127.0.0.1:4317");
    assert_eq!(config.receivers.http.endpoint.to_string(), "127.0.0.1:4318");
    assert_eq!(config.metrics.endpoint.to_string(), "127.0.0.1:9464");
}

#[test]
fn default_profile_restates_the_code_defaults() {
    // Sections left out of a user's file take the code defaults; the shipped profile writes
    // them out for documentation. They must not drift apart.
    let config = Config::default_profile();
    assert_eq!(config.receivers, ReceiversConfig::default());
    assert_eq!(config.metrics, MetricsConfig::default());
    assert_eq!(config.span_metrics, SpanMetricsConfig::default());
    assert_eq!(config.alerting, AlertingConfig::default());
    assert_eq!(config.join, JoinConfig::default());
    assert_eq!(config.breakdown, BreakdownConfig::default());
    assert_eq!(config.forward, super::forward::ForwardConfig::default());
    assert_eq!(config.page, PageConfig::default());
}

#[test]
fn alert_thresholds_must_be_bucket_bounds() {
    let text = MINIMAL.replace(
        "    errors: claim_errors_total\n",
        "    errors: claim_errors_total\n    alert: { above_seconds: 0.3, for: 5 minutes }\n",
    );
    let err = parse(&text).unwrap_err();
    let mut found: Vec<(&str, Option<usize>)> = err
        .problems
        .iter()
        .map(|p| (p.path.as_str(), p.line))
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("stages.claim.alert.above_seconds", Some(13)),
            ("stages.claim.alert.for", Some(13))
        ],
        "{err}"
    );
    let bound = err
        .problems
        .iter()
        .find(|p| p.path.ends_with("above_seconds"));
    assert!(
        bound.is_some_and(|p| p.message.contains("not a bucket bound")),
        "{err}"
    );
    assert!(
        parse(&MINIMAL.replace(
            "    errors: claim_errors_total\n",
            "    errors: claim_errors_total\n    alert: { above_seconds: 0.25, for: 1h30m }\n",
        ))
        .is_ok()
    );
}

#[test]
fn every_shipped_profile_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

const MINIMAL: &str = "\
labels:
  service: { max_values: 10 }
  handler_language:
    sources: []
    default: unknown
    max_values: 4
stages:
  claim:
    help: h
    histogram: claim_duration_seconds
    calls: claim_calls_total
    errors: claim_errors_total
rules:
  - stage: claim
    span_name: step_claim
";

#[test]
fn omitted_sections_take_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.receivers, ReceiversConfig::default());
    assert!(config.span_metrics.enabled);
}

#[test]
fn reports_every_problem_with_line_and_path() {
    let text = "\
receivers:
  grpc:
    endpoint: 127.0.0.1:4317
    colour: blue
labels:
  service: { max_values: 10 }
  handler_language:
    sources:
      - service_name: { regex: '^tasker-worker$' }
    default: unknown
    max_values: 4
stages:
  claim:
    help: h
    histogram: claim_duration
    calls: claim_calls_total
    errors: claim_errors_total
    buckets: [0.5, 0.1]
rules:
  - stage: claim
    span_name: step_claim
  - stage: clam
    span_name_regex: '(unclosed'
  - stage: claim
    span_name: x
    attributes:
      - { key: queue }
";
    let err = parse(text).unwrap_err();
    let found: Vec<(Option<usize>, &str)> = err
        .problems
        .iter()
        .map(|p| (p.line, p.path.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (Some(4), "receivers.grpc.colour"),
            (
                Some(9),
                "labels.handler_language.sources[0].service_name.regex"
            ),
            (Some(15), "stages.claim.histogram"),
            (Some(18), "stages.claim.buckets"),
            (Some(22), "rules[1].stage"),
            (Some(23), "rules[1].span_name_regex"),
            (Some(27), "rules[2].attributes[0]"),
        ],
        "{err}"
    );
    let text = err.to_string();
    assert!(text.starts_with("test.yaml: 7 problems\n"), "{text}");
    assert!(
        text.contains("test.yaml:4: receivers.grpc.colour: unknown field `colour`"),
        "{text}"
    );
    assert!(
        text.contains("test.yaml:22: rules[1].stage: unknown stage `clam`"),
        "{text}"
    );
}

#[test]
fn items_fail_independently() {
    let text = MINIMAL.replace(
        "    span_name: step_claim",
        "    span_name: step_claim\n    spam: 1\n  - stage: claim\n    span_name: [1]",
    );
    let err = parse(&text).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, vec!["rules[0].spam", "rules[1].span_name"], "{err}");
}

#[test]
fn yaml_syntax_errors_have_a_line() {
    let err = parse("labels:\n  service: [\n").unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert!(err.problems[0].line.is_some(), "{err}");
    assert!(
        err.problems[0].message.starts_with("not valid YAML"),
        "{err}"
    );
}

#[test]
fn environment_references_are_expanded() {
    let text = format!("receivers:\n  http:\n    endpoint: ${{HTTP_ADDR}}\n{MINIMAL}");
    let env = HashMap::from([("HTTP_ADDR".to_string(), "127.0.0.1:14318".to_string())]);
    let config = Config::parse(&text, "t", &env).unwrap();
    assert_eq!(config.receivers.http.endpoint.port(), 14318);
    let err = Config::parse(&text, "t", &HashMap::new()).unwrap_err();
    assert_eq!(err.problems[0].line, Some(3));
}

#[test]
fn listeners_must_not_share_an_address() {
    let text = format!("receivers:\n  http:\n    endpoint: 127.0.0.1:9464\n{MINIMAL}");
    let err = parse(&text).unwrap_err();
    assert_eq!(err.problems[0].path, "metrics.endpoint");
}

#[test]
fn forwarding_problems_are_all_reported_with_their_paths() {
    let text = format!(
        "{MINIMAL}\
forward:
  endpoints:
    - url: tempo:4317
    - name: b
      url: http://127.0.0.1:4317
      tls: {{ ca_file: /ca.pem }}
      timeout: 0s
      headers: {{ \"bad header\": x }}
    - name: b
      url: https://127.0.0.1:4317
      compression: brotli
  queue: {{ max_bytes: 1024, senders: 0 }}
  retry: {{ max_elapsed: soon }}
"
    );
    let err = parse(&text).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["forward.endpoints[2].compression"],
        "an unknown compression fails the section: {err}"
    );
    let text = text.replace("      compression: brotli\n", "");
    let err = parse(&text).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "forward.retry.max_elapsed",
            "forward.endpoints[0].url",
            "forward.endpoints[1].tls",
            "forward.endpoints[1].timeout",
            "forward.endpoints[1].headers.bad header",
            "forward.endpoints[2].name",
            "forward.queue.senders",
            "forward.queue.max_bytes",
        ],
        "{err}"
    );
}

#[test]
fn forwarding_is_off_unless_an_endpoint_is_set() {
    let config = parse(MINIMAL).expect("valid");
    assert!(!config.forward.enabled());
    let text = format!("{MINIMAL}forward:\n  endpoints: [ {{ url: http://127.0.0.1:4317 }} ]\n");
    let config = parse(&text).expect("valid");
    assert!(config.forward.enabled());
    assert_eq!(config.forward.endpoints[0].label(), "http://127.0.0.1:4317");
}

#[test]
fn forwarding_refuses_credentials_in_urls_colliding_queue_directories_and_zero_waits() {
    let text = format!(
        "{MINIMAL}\
forward:
  endpoints:
    - url: https://user:secret@tempo:4317
    - {{ name: eu.prod, url: http://a:4317 }}
    - {{ name: eu_prod, url: http://b:4317 }}
  retry: {{ initial_interval: 0s, max_interval: 1s }}
  queue: {{ retry_after: 0s }}
"
    );
    let err = parse(&text).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "forward.queue.retry_after",
            "forward.retry.initial_interval",
            "forward.endpoints[0].url",
            "forward.endpoints[2].name",
        ],
        "{err}"
    );
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn join_waits_are_bounded() {
    for (wait, problems) in [("24d", 0), ("25d", 1), ("1y", 1), ("soon", 1)] {
        let text = format!("{MINIMAL}join:\n  max_wait: {wait}\n");
        let found = match parse(&text) {
            Ok(_) => 0,
            Err(err) => {
                assert!(
                    err.problems.iter().all(|p| p.path == "join.max_wait"),
                    "{err}"
                );
                err.problems.len()
            }
        };
        assert_eq!(found, problems, "max_wait {wait}");
    }
}

#[test]
fn the_page_takes_an_http_trace_template_and_a_bounded_interval() {
    let text = format!(
        "{MINIMAL}page:\n  trace_url: http://jaeger:16686/trace/{{trace_id}}\n  sample_interval: 10s\n"
    );
    let page = parse(&text).unwrap().page;
    assert_eq!(
        page.sample_interval.get(),
        std::time::Duration::from_secs(10)
    );
    let link = page
        .trace_url
        .unwrap()
        .link("0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        link,
        "http://jaeger:16686/trace/0af7651916cd43dd8448eb211c80319c"
    );
    let text = format!("{MINIMAL}page:\n  trace_url: 'javascript:alert({{trace_id}})'\n");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("page.trace_url: "), "{found:?}");
    assert!(
        found[0].contains("must start with http:// or https://"),
        "{found:?}"
    );
    let text = format!("{MINIMAL}page:\n  sample_interval: 2m\n  slowest: 0\n");
    assert_eq!(
        problems(&text),
        [
            "page.sample_interval: 2m is outside 1s..1m: the page's 1-minute window needs a snapshot at least every minute",
            "page.slowest: must be between 1 and 1000 rows",
        ]
    );
}

#[test]
fn a_duration_that_does_not_parse_hides_no_other_problem_of_its_section() {
    let text = format!("{MINIMAL}join:\n  max_wait: soon\n  max_pending: 0\n");
    assert_eq!(
        problems(&text),
        [
            "join.max_wait: `soon` is not a Prometheus duration (such as 30s, 5m, 1h, 1d)",
            "join.max_pending: must be at least 1",
        ]
    );
}

#[test]
fn durations_are_parsed_once_and_keep_their_text() {
    let text = format!("{MINIMAL}alerting:\n  rate_window: 90s\njoin:\n  max_wait: 1h30m\n");
    let config = parse(&text).expect("valid");
    assert_eq!(config.alerting.rate_window.text(), "90s");
    assert_eq!(
        config.alerting.rate_window.get(),
        std::time::Duration::from_secs(90)
    );
    assert_eq!(
        config.join.max_wait.get(),
        std::time::Duration::from_secs(5400)
    );
    assert_eq!(config.join.max_wait.to_string(), "1h30m");
}

#[test]
fn the_limits_the_pipeline_needs_are_checked() {
    let text = MINIMAL.replace(
        "    errors: claim_errors_total\n",
        "    errors: claim_errors_total\n    extra_labels: [a, b, c, d, e, f, g]\n",
    );
    let extra: String = ["a", "b", "c", "d", "e", "f", "g"]
        .iter()
        .map(|l| format!("    {l}: {{ sources: [], default: x, max_values: 2 }}\n"))
        .collect();
    let text = text.replacen("labels:\n", &format!("labels:\n  extra:\n{extra}"), 1);
    let err = parse(&text).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, vec!["stages.claim.extra_labels"], "{err}");
}

/// MINIMAL with `line` added to the claim stage (as its line 13).
fn with_claim(line: &str) -> String {
    MINIMAL.replace(
        "    errors: claim_errors_total\n",
        &format!("    errors: claim_errors_total\n    {line}\n"),
    )
}

/// The (path, line) of every problem, sorted.
fn problem_places(err: &ConfigError) -> Vec<(String, Option<usize>)> {
    let mut found: Vec<(String, Option<usize>)> = err
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.line))
        .collect();
    found.sort();
    found
}

#[test]
fn slo_objectives_must_be_strictly_between_0_and_1() {
    for objective in ["0", "1", "1.5", "-0.1"] {
        let text = with_claim(&format!(
            "slo: {{ objective: {objective}, threshold: 250ms }}"
        ));
        let err = parse(&text).expect_err(objective);
        assert_eq!(
            problem_places(&err),
            vec![("stages.claim.slo.objective".to_string(), Some(13))],
            "objective {objective}: {err}"
        );
        assert!(
            err.problems[0].message.contains("strictly between 0 and 1"),
            "{err}"
        );
    }
    let config = parse(&with_claim("slo: { objective: 0.999, threshold: 250ms }")).unwrap();
    let slo = config.stages["claim"].slo.as_ref().unwrap();
    assert_eq!(slo.objective, 0.999);
    assert_eq!(slo.threshold.text(), "250ms");
    assert_eq!(slo.threshold_seconds(), 0.25);
}

#[test]
fn classic_slo_thresholds_must_be_bucket_bounds_native_ones_need_not() {
    let off_bound = with_claim("slo: { objective: 0.99, threshold: 300ms }");
    let err = parse(&off_bound).unwrap_err();
    assert_eq!(
        problem_places(&err),
        vec![("stages.claim.slo.threshold".to_string(), Some(13))],
        "{err}"
    );
    assert!(
        err.problems[0].message.contains("not a bucket bound"),
        "{err}"
    );
    let zero = parse(&with_claim("slo: { objective: 0.99, threshold: 0s }")).unwrap_err();
    assert_eq!(
        problem_places(&zero),
        vec![("stages.claim.slo.threshold".to_string(), Some(13))],
        "{zero}"
    );
    assert!(
        zero.problems[0].message.contains("not a positive"),
        "{zero}"
    );

    // Native: neither SLO thresholds nor alert thresholds need be bucket bounds.
    let native = "alerting:\n  histograms: native\n";
    let config = parse(&format!("{off_bound}{native}")).unwrap();
    assert_eq!(
        config.alerting.histograms,
        super::HistogramKind::Native,
        "parsed as native"
    );
    let alert = with_claim("alert: { above_seconds: 0.3 }");
    assert!(parse(&alert).is_err());
    parse(&format!("{alert}{native}")).unwrap();
    // ... but a zero threshold is still wrong.
    let zero = with_claim("slo: { objective: 0.99, threshold: 0s }");
    assert!(parse(&format!("{zero}{native}")).is_err());
}

#[test]
fn derived_slos_are_checked_like_stage_slos() {
    let derived = |slo: &str| {
        format!(
            "{MINIMAL}derived:
  both:
    help: h
    histogram: both_seconds
    key: k
    operation: sum
    parts: [ {{ stage: claim }}, {{ stage: claim }} ]
    slo: {slo}
"
        )
    };
    let err = parse(&derived("{ objective: 1, threshold: 1s300ms }")).unwrap_err();
    assert_eq!(
        problem_places(&err),
        vec![
            ("derived.both.slo.objective".to_string(), Some(23)),
            ("derived.both.slo.threshold".to_string(), Some(23)),
        ],
        "{err}"
    );
    parse(&derived("{ objective: 0.99, threshold: 2500ms }")).unwrap();
    parse(&format!(
        "{}alerting: {{ histograms: native }}\n",
        derived("{ objective: 0.99, threshold: 1s300ms }")
    ))
    .unwrap();
}

#[test]
fn native_rules_need_native_histograms() {
    let text = format!(
        "{MINIMAL}metrics:\n  native_histograms: {{ enabled: false }}\nalerting:\n  histograms: native\n"
    );
    let err = parse(&text).unwrap_err();
    assert_eq!(
        problem_places(&err),
        vec![("alerting.histograms".to_string(), Some(19))],
        "{err}"
    );
    assert!(
        err.problems[0]
            .message
            .contains("metrics.native_histograms.enabled"),
        "{err}"
    );
    parse(&text.replace("native\n", "classic\n")).unwrap();
    let err = parse(&format!("{MINIMAL}alerting:\n  histograms: sparse\n")).unwrap_err();
    assert_eq!(
        problem_places(&err),
        vec![("alerting.histograms".to_string(), Some(17))],
        "an unknown kind: {err}"
    );
}

#[test]
fn native_histogram_settings_are_checked_with_their_lines() {
    for (field, value, line) in [
        ("schema", "9", 18),
        ("schema", "-5", 18),
        ("max_buckets", "1", 19),
        ("zero_threshold", "-1.0e-9", 20),
    ] {
        let mut settings = vec![
            "    schema: 3".to_string(),
            "    max_buckets: 160".to_string(),
            "    zero_threshold: 1.0e-9".to_string(),
        ];
        for s in &mut settings {
            if s.trim_start().starts_with(&format!("{field}:")) {
                *s = format!("    {field}: {value}");
            }
        }
        let text = format!(
            "{MINIMAL}metrics:\n  native_histograms:\n{}\n",
            settings.join("\n")
        );
        let err = parse(&text).expect_err(field);
        assert_eq!(
            problem_places(&err),
            vec![(format!("metrics.native_histograms.{field}"), Some(line))],
            "{field}: {value}: {err}"
        );
    }
    parse(&format!(
        "{MINIMAL}metrics:\n  native_histograms: {{ schema: -4, max_buckets: 2, zero_threshold: 0 }}\n"
    ))
    .unwrap();
}

#[test]
fn receivers_need_room_for_a_connection() {
    let text = format!("{MINIMAL}receivers:\n  max_connections: 0\n");
    assert_eq!(
        problems(&text),
        ["receivers.max_connections: must be at least 1"]
    );
    let text = format!("{MINIMAL}receivers:\n  max_connections: 100\n");
    assert_eq!(parse(&text).expect("valid").receivers.max_connections, 100);
}
