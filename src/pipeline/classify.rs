//! Classification: which stage a span belongs to, by the ordered rules of the config. Pure:
//! no I/O, no locks, no allocation per span.

use crate::collections::text::{Text, same_str};
use crate::config::RuleConfig;
use crate::config::validate::compile_regex;
use crate::otlp::decode::{AnyValue, Attribute};
use crate::pipeline::BuildError;
use crate::pipeline::labels::format_scalar;
use hashbrown::HashMap;
use regex::Regex;

/// Index of a stage in the pipeline's stage table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StageId(pub(crate) usize);

#[derive(Debug, Clone)]
enum Match {
    Exact(String),
    Regex(Regex),
}

impl Match {
    /// The match of an exact value or a regex (at `path`), None when neither is set.
    fn new(
        exact: &Option<String>,
        regex: &Option<String>,
        path: impl Fn() -> String,
    ) -> Result<Option<Match>, BuildError> {
        Ok(match (exact, regex) {
            (Some(e), _) => Some(Match::Exact(e.clone())),
            (None, Some(r)) => Some(Match::Regex(compile_regex(r).map_err(|message| {
                BuildError::Invalid {
                    path: path(),
                    message,
                }
            })?)),
            (None, None) => None,
        })
    }

    /// The match at `path`, which validation made sure is set.
    fn required(
        exact: &Option<String>,
        regex: &Option<String>,
        path: impl Fn() -> String,
    ) -> Result<Match, BuildError> {
        Match::new(exact, regex, &path)?.ok_or_else(|| BuildError::Invalid {
            path: path(),
            message: "neither a value nor a regex is set".to_string(),
        })
    }

    fn is_match(&self, value: &str) -> bool {
        match self {
            Match::Exact(e) => same_str(e, value),
            Match::Regex(r) => r.is_match(value),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    stage: StageId,
    service: Option<Match>,
    attributes: Vec<(String, Match)>,
}

/// Compiled rules. Exact span names are looked up in a map; regex-named rules are tried in
/// their place in the order.
#[derive(Debug, Clone)]
pub(crate) struct Classifier {
    rules: Vec<Rule>,
    by_name: HashMap<String, Vec<usize>>,
    by_regex: Vec<(usize, Regex)>,
}

/// What a rule may look at.
pub(crate) struct SpanFacts<'a, 'b> {
    pub(crate) name: &'a str,
    pub(crate) service: &'a str,
    pub(crate) attributes: &'b [Attribute<'a>],
}

impl Classifier {
    /// The span attribute keys the rules look at.
    pub(crate) fn attribute_keys(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|r| r.attributes.iter().map(|(key, _)| key.as_str()))
    }

    /// `stage_of` maps a rule's stage name (at a path) to its id.
    pub(crate) fn compile(
        rules: &[RuleConfig],
        stage_of: impl Fn(&str, String) -> Result<StageId, BuildError>,
    ) -> Result<Classifier, BuildError> {
        let mut classifier = Classifier {
            rules: Vec::with_capacity(rules.len()),
            by_name: HashMap::new(),
            by_regex: Vec::new(),
        };
        for (i, rule) in rules.iter().enumerate() {
            let stage = stage_of(&rule.stage, format!("rules[{i}].stage"))?;
            let name = Match::required(&rule.span_name, &rule.span_name_regex, || {
                format!("rules[{i}].span_name_regex")
            })?;
            match name {
                Match::Exact(name) => classifier.by_name.entry(name).or_default().push(i),
                Match::Regex(regex) => classifier.by_regex.push((i, regex)),
            }
            let attributes = (rule.attributes.iter().enumerate())
                .map(|(j, a)| {
                    let path = || format!("rules[{i}].attributes[{j}].regex");
                    Ok((a.key.clone(), Match::required(&a.equals, &a.regex, path)?))
                })
                .collect::<Result<_, BuildError>>()?;
            classifier.rules.push(Rule {
                stage,
                service: Match::new(&rule.service, &rule.service_regex, || {
                    format!("rules[{i}].service_regex")
                })?,
                attributes,
            });
        }
        Ok(classifier)
    }

    /// The stage of the first rule that matches, if any.
    pub(crate) fn classify(&self, span: &SpanFacts) -> Option<StageId> {
        let exact = self
            .by_name
            .get(&Text(span.name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut exact = exact.iter().copied().peekable();
        let mut regex = self
            .by_regex
            .iter()
            .filter(|(_, r)| r.is_match(span.name))
            .map(|(i, _)| *i)
            .peekable();
        // Merge the two ordered candidate lists, keeping rule order.
        loop {
            let next = match (exact.peek(), regex.peek()) {
                (Some(&e), Some(&r)) if e < r => exact.next(),
                (Some(_), Some(_)) => regex.next(),
                (Some(_), None) => exact.next(),
                (None, Some(_)) => regex.next(),
                (None, None) => return None,
            }?;
            let rule = &self.rules[next];
            if rule.matches(span) {
                return Some(rule.stage);
            }
        }
    }
}

impl Rule {
    fn matches(&self, span: &SpanFacts) -> bool {
        if let Some(service) = &self.service
            && !service.is_match(span.service)
        {
            return false;
        }
        self.attributes.iter().all(|(key, m)| {
            span.attributes.iter().any(|a| {
                same_str(a.key, key)
                    && match a.value {
                        AnyValue::Str(v) => m.is_match(v),
                        ref other => m.is_match(format_scalar(other, &mut String::new())),
                    }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn classifier() -> (Classifier, Vec<String>) {
        let config = Config::default_profile();
        let stages: Vec<String> = config.stages.keys().cloned().collect();
        let c = Classifier::compile(&config.rules, |name, path| {
            let found = stages.iter().position(|s| s == name).map(StageId);
            found.ok_or(BuildError::UnknownStage {
                path,
                stage: name.to_string(),
            })
        })
        .unwrap();
        (c, stages)
    }

    fn stage(name: &str, attributes: &[Attribute]) -> Option<String> {
        let (c, stages) = classifier();
        c.classify(&SpanFacts {
            name,
            service: "tasker-ruby-worker",
            attributes,
        })
        .map(|s| stages[s.0].clone())
    }

    #[test]
    fn default_profile_maps_both_vocabularies() {
        let queue = |q| {
            [Attribute {
                key: "queue",
                value: AnyValue::Str(q),
            }]
        };
        let table: &[(&str, &[Attribute], Option<&str>)] = &[
            ("step_claim", &[], Some("step_claim")),
            (
                "read_messages",
                &queue("worker_linear_workflow_queue"),
                Some("step_claim"),
            ),
            ("read_messages", &queue("orchestration_step_results"), None),
            ("read_messages", &[], None),
            ("execute_handler", &[], Some("handler_execution")),
            ("worker.step_execution", &[], Some("handler_execution")),
            ("resolve", &[], Some("handler_resolution")),
            ("submit_result", &[], Some("result_submission")),
            (
                "worker.step_completion_received",
                &[],
                Some("result_submission"),
            ),
            ("create_task", &[], Some("task_creation")),
            ("create_task_from_request", &[], Some("task_creation")),
            ("create_and_enqueue_task_from_request", &[], None),
            ("enqueue_steps", &[], Some("step_enqueueing")),
            ("enqueue_ready_steps", &[], Some("step_enqueueing")),
            ("process_result", &[], Some("result_processing")),
            (
                "handle_step_execution_result",
                &[],
                Some("result_processing"),
            ),
            ("finalize_task", &[], Some("task_finalization")),
            ("send_json_message", &[], None),
        ];
        for (name, attributes, expected) in table {
            assert_eq!(
                stage(name, attributes).as_deref(),
                *expected,
                "{name} {attributes:?}"
            );
        }
    }

    #[test]
    fn first_matching_rule_wins_across_exact_and_regex_rules() {
        let rules: Vec<RuleConfig> = yaml_serde::from_str(
            "
- { stage: b, span_name_regex: '^x.*', service: s1 }
- { stage: a, span_name: xy }
- { stage: b, span_name_regex: '^x' }
- { stage: a, span_name: int, attributes: [{ key: n, equals: '3' }] }
",
        )
        .unwrap();
        let c =
            Classifier::compile(&rules, |n, _| Ok(StageId(if n == "a" { 0 } else { 1 }))).unwrap();
        let facts = |name, service| SpanFacts {
            name,
            service,
            attributes: &[],
        };
        assert_eq!(c.classify(&facts("xy", "s1")), Some(StageId(1)));
        assert_eq!(c.classify(&facts("xy", "s2")), Some(StageId(0)));
        assert_eq!(c.classify(&facts("xz", "s2")), Some(StageId(1)));
        assert_eq!(c.classify(&facts("y", "s2")), None);
        let n3 = [Attribute {
            key: "n",
            value: AnyValue::Int(3),
        }];
        assert_eq!(
            c.classify(&SpanFacts {
                name: "int",
                service: "",
                attributes: &n3
            }),
            Some(StageId(0))
        );
    }
}
