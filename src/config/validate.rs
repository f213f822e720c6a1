//! Checks that need more than types: names, references, regexes, buckets, addresses.

use super::limits::{
    MAX_DERIVED_PARTS, MAX_EXTRA_LABELS, MAX_JOIN_WAIT, MAX_LABELS, MIN_NATIVE_BUCKETS,
    NATIVE_SCHEMAS,
};
use super::security;
use super::{
    AlertingConfig, ComparisonConfig, DerivedConfig, HistogramKind, LabelConfig, LabelSourceKind,
    LabelsConfig, MetricsConfig, Operation, PageConfig, ReceiversConfig, RuleConfig, Sections,
    SloConfig, SpanMetricsConfig, StageAlert, StageConfig,
};
use super::{Problems, PromDuration};
use regex::Regex;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::Duration;

/// Labels every stage histogram has before its extra labels.
pub(crate) const BUILTIN_STAGE_LABELS: [&str; 2] = ["service", "handler_language"];

/// Compiles a config regex, with a message fit for a config problem.
pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| format!("invalid regex: {e}"))
}

/// Compiles a label-source regex: it must capture the value in a group named `value` or in
/// its first group.
pub(crate) fn compile_capture_regex(pattern: &str) -> Result<Regex, String> {
    let regex = compile_regex(pattern)?;
    if regex.captures_len() < 2 {
        return Err(
            "the regex must capture the label value, in a group named `value` or its first group"
                .to_string(),
        );
    }
    Ok(regex)
}

/// Runs every check whose sections could be read.
pub(super) fn check(s: &Sections, problems: &mut Problems) {
    if let (Some(receivers), Some(metrics)) = (&s.receivers, &s.metrics) {
        check_listeners(receivers, metrics, problems);
    }
    if let Some(metrics) = &s.metrics {
        check_metrics(metrics, problems);
    }
    if let Some(page) = &s.page {
        check_page(page, problems);
    }
    if let Some(span_metrics) = &s.span_metrics {
        check_span_metrics(span_metrics, problems);
    }
    if let Some(labels) = &s.labels {
        check_labels(labels, problems);
    }
    if let Some(stages) = &s.stages {
        check_stages(
            stages,
            s.labels.as_ref(),
            s.span_metrics.as_ref(),
            s.derived.as_ref(),
            s.comparisons.as_ref(),
            problems,
        );
    }
    if let Some(rules) = &s.rules {
        check_rules(rules, s.stages.as_ref(), problems);
    }
    if let Some(alerting) = &s.alerting {
        check_alerting(alerting, s.metrics.as_ref(), problems);
    }
    // Thresholds must be bucket bounds only when rules read the classic buckets; unknown
    // when the alerting section did not parse (that is reported already).
    let classic = s
        .alerting
        .as_ref()
        .is_some_and(|a| a.histograms == HistogramKind::Classic);
    if let (Some(stages), Some(metrics)) = (&s.stages, &s.metrics) {
        for (name, stage) in stages {
            let buckets = stage.buckets.as_ref().unwrap_or(&metrics.default_buckets);
            let bounds = classic.then_some(buckets.as_slice());
            if let Some(alert) = &stage.alert {
                check_stage_alert(alert, bounds, &format!("stages.{name}.alert"), problems);
            }
            if let Some(slo) = &stage.slo {
                check_slo(slo, bounds, &format!("stages.{name}.slo"), problems);
            }
        }
    }
    if let (Some(comparisons), Some(stages), Some(labels)) = (&s.comparisons, &s.stages, &s.labels)
    {
        for (name, c) in comparisons {
            let path = format!("comparisons.{name}");
            check_histogram_name(&c.histogram, &format!("{path}.histogram"), problems);
            if !stages.contains_key(&c.stage) {
                problems.add(
                    format!("{path}.stage"),
                    format!("unknown stage `{}`", c.stage),
                );
            }
            if !labels.extra.contains_key(&c.step_label) {
                problems.add(
                    format!("{path}.step_label"),
                    format!("`{}` is not defined under labels.extra", c.step_label),
                );
            }
            if !(c.quantile > 0.0 && c.quantile < 1.0) {
                problems.add(
                    format!("{path}.quantile"),
                    "must be between 0 and 1, such as 0.95",
                );
            }
            if let Some(buckets) = &c.buckets {
                check_buckets(buckets, &format!("{path}.buckets"), problems);
            }
        }
    }
    if let Some(forward) = &s.forward {
        super::forward::check(
            forward,
            s.receivers.as_ref().map(|r| r.max_request_bytes),
            problems,
        );
    }
    if let Some(join) = &s.join {
        if join.max_wait.get() > MAX_JOIN_WAIT {
            problems.add(
                "join.max_wait",
                "must be at most 24d (keys' waits are timed in milliseconds, 32 bits)",
            );
        }
        if join.max_pending == 0 {
            problems.add("join.max_pending", "must be at least 1");
        }
    }
    if let (Some(derived), Some(stages), Some(labels), Some(metrics)) =
        (&s.derived, &s.stages, &s.labels, &s.metrics)
    {
        for (name, d) in derived {
            check_derived(
                d,
                &format!("derived.{name}"),
                stages,
                labels,
                (classic, &metrics.default_buckets),
                problems,
            );
        }
    }
}

fn check_derived(
    d: &DerivedConfig,
    path: &str,
    stages: &BTreeMap<String, StageConfig>,
    labels: &LabelsConfig,
    (classic, default_buckets): (bool, &[f64]),
    problems: &mut Problems,
) {
    check_histogram_name(&d.histogram, &format!("{path}.histogram"), problems);
    if d.key.is_empty() {
        problems.add(
            format!("{path}.key"),
            "name the span attribute that joins the parts, such as step_uuid",
        );
    }
    let parts = d.parts.len();
    let fits = match d.operation {
        Operation::Difference | Operation::Gap => parts == 2,
        Operation::Sum | Operation::Envelope => (2..=MAX_DERIVED_PARTS).contains(&parts),
    };
    if !fits {
        problems.add(
            format!("{path}.parts"),
            format!(
                "{:?} needs {} parts, found {parts}",
                d.operation,
                match d.operation {
                    Operation::Difference | Operation::Gap => "exactly 2",
                    Operation::Sum | Operation::Envelope => "between 2 and 254",
                }
            ),
        );
    }
    for (i, part) in d.parts.iter().enumerate() {
        if !stages.contains_key(&part.stage) {
            problems.add(
                format!("{path}.parts[{i}].stage"),
                format!("unknown stage `{}`", part.stage),
            );
        }
    }
    if d.labels.len() > MAX_LABELS {
        problems.add(format!("{path}.labels"), "too many labels");
    }
    for (i, label) in d.labels.iter().enumerate() {
        if !(BUILTIN_STAGE_LABELS.contains(&label.as_str()) || labels.extra.contains_key(label)) {
            problems.add(
                format!("{path}.labels[{i}]"),
                format!(
                    "`{label}` is neither service, handler_language nor a label under labels.extra"
                ),
            );
        }
    }
    let buckets = d.buckets.as_deref().unwrap_or(default_buckets);
    if let Some(own) = &d.buckets {
        check_buckets(own, &format!("{path}.buckets"), problems);
    }
    let bounds = classic.then_some(buckets);
    if let Some(slo) = &d.slo {
        check_slo(slo, bounds, &format!("{path}.slo"), problems);
    }
    for (i, alert) in d.alerts.iter().enumerate() {
        let apath = format!("{path}.alerts[{i}]");
        check_stage_alert(
            &StageAlert {
                quantile: alert.quantile,
                above_seconds: alert.above_seconds,
                for_duration: alert.for_duration.clone(),
                severity: alert.severity.clone(),
            },
            bounds,
            &apath,
            problems,
        );
        if !alert.name.chars().all(|c| c.is_ascii_alphanumeric()) {
            problems.add(
                format!("{apath}.name"),
                "must be letters and digits (it ends the alert name)",
            );
        }
        for (label, pattern) in &alert.matchers {
            if !d.labels.contains(label) {
                problems.add(
                    format!("{apath}.matchers.{label}"),
                    format!("`{label}` is not a label of {}", d.histogram),
                );
            }
            if let Err(message) = compile_regex(pattern) {
                problems.add(format!("{apath}.matchers.{label}"), message);
            }
        }
    }
}

fn check_alerting(a: &AlertingConfig, metrics: Option<&MetricsConfig>, problems: &mut Problems) {
    if a.histograms == HistogramKind::Native
        && metrics.is_some_and(|m| !m.native_histograms.enabled)
    {
        problems.add(
            "alerting.histograms",
            "native rules read the native histograms, but metrics.native_histograms.enabled is false: enable them, or use classic",
        );
    }
    if !(a.min_calls_per_second >= 0.0 && a.min_calls_per_second.is_finite()) {
        problems.add(
            "alerting.min_calls_per_second",
            "must be a number of spans per second, 0 or more",
        );
    }
    if !(a.regression_ratio > 1.0 && a.regression_ratio.is_finite()) {
        problems.add(
            "alerting.regression_ratio",
            "must be above 1 (1.5 means 50% slower than before)",
        );
    }
    if a.job.is_empty() {
        problems.add(
            "alerting.job",
            "must name the Prometheus job that scrapes spanlens",
        );
    }
}

/// `bounds` are the histogram's bucket bounds when rules read the classic buckets (thresholds
/// must then be bounds), None when they read the native histogram.
fn check_stage_alert(
    alert: &StageAlert,
    bounds: Option<&[f64]>,
    path: &str,
    problems: &mut Problems,
) {
    if !(alert.quantile > 0.0 && alert.quantile < 1.0) {
        problems.add(
            format!("{path}.quantile"),
            "must be between 0 and 1, such as 0.95",
        );
    }
    if let Some(buckets) = bounds.filter(|b| !b.contains(&alert.above_seconds)) {
        problems.add(
            format!("{path}.above_seconds"),
            format!(
                "{} is not a bucket bound of this histogram, so the quantile would be interpolated around it; use one of {} or add it to the buckets (or set alerting.histograms: native)",
                alert.above_seconds,
                list(buckets)
            ),
        );
    }
    if alert.severity.is_empty()
        || !alert
            .severity
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        problems.add(
            format!("{path}.severity"),
            "must be a word such as warning, critical or page",
        );
    }
}

fn list(buckets: &[f64]) -> String {
    let bounds: Vec<String> = buckets.iter().map(f64::to_string).collect();
    bounds.join(", ")
}

fn check_slo(slo: &SloConfig, bounds: Option<&[f64]>, path: &str, problems: &mut Problems) {
    if !(slo.objective > 0.0 && slo.objective < 1.0) {
        problems.add(
            format!("{path}.objective"),
            format!(
                "{} is not strictly between 0 and 1: write the share of spans that must be fast enough, such as 0.99",
                slo.objective
            ),
        );
    }
    check_positive(&slo.threshold, &format!("{path}.threshold"), problems);
    let seconds = slo.threshold_seconds();
    if let Some(buckets) = bounds.filter(|b| !slo.threshold.is_zero() && !b.contains(&seconds)) {
        problems.add(
            format!("{path}.threshold"),
            format!(
                "{} ({seconds} s) is not a bucket bound of this histogram, so the classic buckets cannot count the spans above it; use one of {} (seconds) or add it to the buckets, or set alerting.histograms: native",
                slo.threshold,
                list(buckets)
            ),
        );
    }
}

fn check_listeners(receivers: &ReceiversConfig, metrics: &MetricsConfig, problems: &mut Problems) {
    let mut seen = HashMap::new();
    let listeners = [
        (
            "receivers.grpc.endpoint",
            receivers.grpc.enabled,
            receivers.grpc.endpoint,
        ),
        (
            "receivers.http.endpoint",
            receivers.http.enabled,
            receivers.http.endpoint,
        ),
        ("metrics.endpoint", true, metrics.endpoint),
    ];
    for (path, enabled, addr) in listeners {
        if !enabled || addr.port() == 0 {
            continue;
        }
        if let Some(other) = seen.insert(addr, path) {
            problems.add(path, format!("{addr} is already used by {other}"));
        }
    }
    if receivers.max_request_bytes < 1024 {
        problems.add("receivers.max_request_bytes", "must be at least 1024 bytes");
    }
    if receivers.max_pending_requests == 0 {
        problems.add("receivers.max_pending_requests", "must be at least 1");
    }
    if receivers.max_connections == 0 {
        problems.add("receivers.max_connections", "must be at least 1");
    }
    if receivers.memory_limit_bytes != 0
        && receivers.memory_limit_bytes < 4 * receivers.max_request_bytes as u64
    {
        problems.add(
            "receivers.memory_limit_bytes",
            "must be 0 (off) or at least four times receivers.max_request_bytes",
        );
    }
    for (value, path) in [
        (&receivers.retry_after, "receivers.retry_after"),
        (
            &receivers.header_read_timeout,
            "receivers.header_read_timeout",
        ),
        (&receivers.body_read_timeout, "receivers.body_read_timeout"),
    ] {
        check_positive(value, path, problems);
    }
    for (listener, path) in [
        (&receivers.grpc, "receivers.grpc"),
        (&receivers.http, "receivers.http"),
    ] {
        if listener.max_concurrent_streams == 0 {
            problems.add(
                format!("{path}.max_concurrent_streams"),
                "must be at least 1",
            );
        }
        check_positive(
            &listener.keepalive_interval,
            &format!("{path}.keepalive_interval"),
            problems,
        );
        check_positive(
            &listener.keepalive_timeout,
            &format!("{path}.keepalive_timeout"),
            problems,
        );
        if let Some(tls) = &listener.tls {
            security::check_tls(tls, &format!("{path}.tls"), problems);
        }
    }
    if let Some(auth) = &receivers.auth {
        security::check_auth(auth, "receivers.auth", problems);
    }
    if let Some(tls) = &metrics.tls {
        security::check_tls(tls, "metrics.tls", problems);
    }
    if let Some(auth) = &metrics.auth {
        security::check_auth(auth, "metrics.auth", problems);
    }
}

/// A duration that must be above zero.
pub(super) fn check_positive(value: &PromDuration, path: &str, problems: &mut Problems) {
    if value.is_zero() {
        problems.add(
            path,
            format!("`{value}` is not a positive Prometheus duration (such as 500ms, 10s)"),
        );
    }
}

fn check_page(page: &PageConfig, problems: &mut Problems) {
    let interval = page.sample_interval.get();
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&interval) {
        problems.add(
            "page.sample_interval",
            format!(
                "{} is outside 1s..1m: the page's 1-minute window needs a snapshot at least every minute",
                page.sample_interval
            ),
        );
    }
    if page.slowest == 0 || page.slowest > 1000 {
        problems.add("page.slowest", "must be between 1 and 1000 rows");
    }
}

fn check_metrics(m: &MetricsConfig, problems: &mut Problems) {
    check_buckets(&m.default_buckets, "metrics.default_buckets", problems);
    if m.overflow_value.is_empty() {
        problems.add("metrics.overflow_value", "must not be empty");
    }
    if m.max_label_value_length < 8 {
        problems.add("metrics.max_label_value_length", "must be at least 8");
    }
    if m.max_series_per_metric == 0 {
        problems.add("metrics.max_series_per_metric", "must be at least 1");
    }
    let native = &m.native_histograms;
    if !NATIVE_SCHEMAS.contains(&native.schema) {
        problems.add(
            "metrics.native_histograms.schema",
            format!(
                "{} is out of range: {} to {}",
                native.schema,
                NATIVE_SCHEMAS.start(),
                NATIVE_SCHEMAS.end()
            ),
        );
    }
    if native.max_buckets < MIN_NATIVE_BUCKETS {
        problems.add(
            "metrics.native_histograms.max_buckets",
            format!("must be at least {MIN_NATIVE_BUCKETS}"),
        );
    }
    if !(native.zero_threshold.is_finite() && native.zero_threshold >= 0.0) {
        problems.add(
            "metrics.native_histograms.zero_threshold",
            "must be a number of seconds, 0 or more",
        );
    }
}

fn check_span_metrics(s: &SpanMetricsConfig, problems: &mut Problems) {
    if s.enabled {
        check_counter_name(&s.calls, "span_metrics.calls", problems);
        check_histogram_name(&s.duration, "span_metrics.duration", problems);
        if s.max_span_names == 0 {
            problems.add("span_metrics.max_span_names", "must be at least 1");
        }
        if let Some(buckets) = &s.buckets {
            check_buckets(buckets, "span_metrics.buckets", problems);
        }
    }
}

fn check_labels(labels: &LabelsConfig, problems: &mut Problems) {
    if labels.service.max_values == 0 {
        problems.add("labels.service.max_values", "must be at least 1");
    }
    check_label(
        &labels.handler_language,
        "labels.handler_language",
        problems,
    );
    for (name, label) in &labels.extra {
        let path = format!("labels.extra.{name}");
        if !is_label_name(name) {
            problems.add(
                &path,
                "not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)",
            );
        } else if BUILTIN_STAGE_LABELS.contains(&name.as_str()) || name == "le" {
            problems.add(&path, format!("`{name}` is reserved"));
        }
        check_label(label, &path, problems);
    }
}

fn check_label(label: &LabelConfig, path: &str, problems: &mut Problems) {
    if label.max_values == 0 {
        problems.add(format!("{path}.max_values"), "must be at least 1");
    }
    for (i, source) in label.sources.iter().enumerate() {
        let (kind, regex) = match source.kind() {
            Some(LabelSourceKind::SpanAttribute(a)) => ("span_attribute", a.regex.as_deref()),
            Some(LabelSourceKind::ResourceAttribute(a)) => {
                ("resource_attribute", a.regex.as_deref())
            }
            Some(LabelSourceKind::ServiceName(s)) => ("service_name", Some(s.regex.as_str())),
            None => {
                problems.add(
                    format!("{path}.sources[{i}]"),
                    "set exactly one of span_attribute, resource_attribute, service_name",
                );
                continue;
            }
        };
        if let Some(Err(message)) = regex.map(compile_capture_regex) {
            problems.add(format!("{path}.sources[{i}].{kind}.regex"), message);
        }
    }
}

fn check_stages(
    stages: &BTreeMap<String, StageConfig>,
    labels: Option<&LabelsConfig>,
    span_metrics: Option<&SpanMetricsConfig>,
    derived: Option<&BTreeMap<String, DerivedConfig>>,
    comparisons: Option<&BTreeMap<String, ComparisonConfig>>,
    problems: &mut Problems,
) {
    let mut names: HashMap<String, String> = HashMap::new();
    let mut claim = |name: &str, path: String, problems: &mut Problems| {
        for taken in [
            name.to_string(),
            format!("{name}_bucket"),
            format!("{name}_sum"),
            format!("{name}_count"),
        ] {
            if let Some(other) = names.get(&taken) {
                problems.add(&path, format!("metric name `{name}` collides with {other}"));
                return;
            }
        }
        names.insert(name.to_string(), path);
    };
    if let Some(s) = span_metrics.filter(|s| s.enabled) {
        claim(&s.calls, "span_metrics.calls".into(), problems);
        claim(&s.duration, "span_metrics.duration".into(), problems);
    }
    for (name, d) in derived.into_iter().flatten() {
        claim(&d.histogram, format!("derived.{name}.histogram"), problems);
    }
    for (name, c) in comparisons.into_iter().flatten() {
        claim(
            &c.histogram,
            format!("comparisons.{name}.histogram"),
            problems,
        );
    }
    if stages.is_empty() {
        problems.add("stages", "at least one stage is needed");
    }
    for (stage, c) in stages {
        let path = format!("stages.{stage}");
        check_histogram_name(&c.histogram, &format!("{path}.histogram"), problems);
        check_counter_name(&c.calls, &format!("{path}.calls"), problems);
        check_counter_name(&c.errors, &format!("{path}.errors"), problems);
        claim(&c.histogram, format!("{path}.histogram"), problems);
        claim(&c.calls, format!("{path}.calls"), problems);
        claim(&c.errors, format!("{path}.errors"), problems);
        if let Some(buckets) = &c.buckets {
            check_buckets(buckets, &format!("{path}.buckets"), problems);
        }
        for (i, label) in c.extra_labels.iter().enumerate() {
            if labels.is_some_and(|l| !l.extra.contains_key(label)) {
                problems.add(
                    format!("{path}.extra_labels[{i}]"),
                    format!("`{label}` is not defined under labels.extra"),
                );
            } else if c.extra_labels[..i].contains(label) {
                problems.add(
                    format!("{path}.extra_labels[{i}]"),
                    format!("`{label}` is listed twice"),
                );
            }
        }
        if c.extra_labels.len() > MAX_EXTRA_LABELS {
            problems.add(
                format!("{path}.extra_labels"),
                format!("a stage may have at most {MAX_EXTRA_LABELS} extra labels"),
            );
        }
    }
}

fn check_rules(
    rules: &[RuleConfig],
    stages: Option<&BTreeMap<String, StageConfig>>,
    problems: &mut Problems,
) {
    if rules.is_empty() {
        problems.add("rules", "at least one rule is needed");
    }
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("rules[{i}]");
        if let Some(stages) = stages.filter(|s| !s.contains_key(&rule.stage)) {
            let known: Vec<&str> = stages.keys().map(String::as_str).collect();
            problems.add(
                format!("{path}.stage"),
                format!(
                    "unknown stage `{}`; stages are: {}",
                    rule.stage,
                    known.join(", ")
                ),
            );
        }
        match (&rule.span_name, &rule.span_name_regex) {
            (Some(_), Some(_)) => problems.add(&path, "set span_name or span_name_regex, not both"),
            (None, None) => problems.add(&path, "set span_name or span_name_regex"),
            _ => {}
        }
        if rule.service.is_some() && rule.service_regex.is_some() {
            problems.add(&path, "set service or service_regex, not both");
        }
        for (field, pattern) in [
            ("span_name_regex", &rule.span_name_regex),
            ("service_regex", &rule.service_regex),
        ] {
            if let Some(Err(message)) = pattern.as_deref().map(compile_regex) {
                problems.add(format!("{path}.{field}"), message);
            }
        }
        for (j, a) in rule.attributes.iter().enumerate() {
            let apath = format!("{path}.attributes[{j}]");
            match (&a.equals, &a.regex) {
                (Some(_), Some(_)) => problems.add(&apath, "set equals or regex, not both"),
                (None, None) => problems.add(&apath, "set equals or regex"),
                (None, Some(pattern)) => {
                    if let Err(message) = compile_regex(pattern) {
                        problems.add(format!("{apath}.regex"), message);
                    }
                }
                _ => {}
            }
        }
    }
}

fn check_buckets(buckets: &[f64], path: &str, problems: &mut Problems) {
    if buckets.is_empty() {
        problems.add(path, "needs at least one bucket bound");
    } else if buckets.iter().any(|b| !b.is_finite() || *b <= 0.0) {
        problems.add(
            path,
            "bucket bounds must be finite and above 0 (+Inf is always added)",
        );
    } else if buckets.windows(2).any(|w| w[0] >= w[1]) {
        problems.add(path, "bucket bounds must be strictly increasing");
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_counter_name(name: &str, path: &str, problems: &mut Problems) {
    if !is_metric_name(name) {
        problems.add(path, format!("`{name}` is not a valid metric name"));
    } else if !name.ends_with("_total") {
        problems.add(path, format!("counter `{name}` must end in _total"));
    } else if name.starts_with("spanlens_") {
        problems.add(
            path,
            "the spanlens_ prefix is reserved for spanlens's own metrics",
        );
    }
}

fn check_histogram_name(name: &str, path: &str, problems: &mut Problems) {
    if !is_metric_name(name) {
        problems.add(path, format!("`{name}` is not a valid metric name"));
    } else if !name.ends_with("_seconds") {
        problems.add(
            path,
            format!("histogram `{name}` observes seconds: its name must end in _seconds"),
        );
    } else if name.starts_with("spanlens_") {
        problems.add(
            path,
            "the spanlens_ prefix is reserved for spanlens's own metrics",
        );
    }
}
