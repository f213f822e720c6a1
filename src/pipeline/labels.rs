//! Label values from spans: each label has an ordered chain of sources (span attribute,
//! resource attribute, regex on service.name) and a default. Sources that depend only on the
//! resource are resolved once per resource per request, not once per span. A regex runs once
//! per distinct value: its answers are remembered across requests (a label's inputs repeat a
//! few step names, queues and services many times), and a request looks each span's value
//! up once in its own map before it takes the shared one's lock.

use crate::collections::text::same_str;
use crate::config::{LabelConfig, LabelSourceKind, validate::compile_capture_regex};
use crate::otlp::decode::{AnyValue, Attribute, Batch, SpanView};
use crate::pipeline::BuildError;
use regex::Regex;
use std::cell::RefCell;
use std::fmt::Write;
use std::ops::Range;
use std::sync::Mutex;

#[derive(Debug)]
enum Source {
    Span { key: String, regex: Option<Captor> },
    Resource { key: String, regex: Option<Captor> },
    ServiceName(Captor),
}

/// A capture regex and the answers it gave: where in each value it captured the label
/// value, if it matched. Values up to [`Captor::MAX_LEN`] bytes are remembered, at most
/// [`Captor::MAX_VALUES`] of them (a flood of new values empties the memory, then refills it).
#[derive(Debug)]
struct Captor {
    regex: Regex,
    answers: Mutex<hashbrown::HashMap<Box<str>, Option<Range<u32>>>>,
}

impl Captor {
    const MAX_VALUES: usize = 1024;
    const MAX_LEN: usize = 128;

    fn new(regex: Regex) -> Captor {
        Captor {
            regex,
            answers: Mutex::default(),
        }
    }

    fn capture<'a>(&self, value: &'a str) -> Option<&'a str> {
        if value.len() > Self::MAX_LEN {
            return capture(&self.regex, value).map(|r| &value[r]);
        }
        let answers = || self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let known = answers().get(value).cloned();
        let range = known.unwrap_or_else(|| {
            // Run without the lock: another request's values need not wait for it.
            let range = capture(&self.regex, value).map(|r| r.start as u32..r.end as u32);
            let mut answers = answers();
            if answers.len() >= Self::MAX_VALUES {
                answers.clear();
            }
            answers.insert(value.into(), range.clone());
            range
        });
        range.map(|r| &value[r.start as usize..r.end as usize])
    }
}

/// A label value as a span or its resource carries it: text in the request, or a bool, int
/// or double attribute still to be written as text ([`format_scalar`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Found<'a> {
    Text(&'a str),
    Scalar(AnyValue<'a>),
}

impl<'a> Found<'a> {
    /// The value if it is text.
    pub(crate) fn text(self) -> Option<&'a str> {
        match self {
            Found::Text(text) => Some(text),
            Found::Scalar(_) => None,
        }
    }

    /// The value as text, written into `buf` if it is a number or a bool.
    pub(crate) fn written<'r>(self, buf: &'r mut String) -> &'r str
    where
        'a: 'r,
    {
        match self {
            Found::Text(text) => text,
            Found::Scalar(value) => format_scalar(&value, buf),
        }
    }
}

/// One label's source chain, compiled.
#[derive(Debug)]
pub(crate) struct LabelResolver {
    sources: Vec<Source>,
    default: String,
}

/// Resource-level answers of one resolver for every resource of a batch, and the captures
/// its span-attribute regexes gave so far in that batch.
#[derive(Debug, Default)]
pub(crate) struct ResourceValues<'a> {
    /// Per resource, per source: the value that source yields (None for span sources).
    values: Vec<Vec<Option<&'a str>>>,
    /// (source, attribute value) → what the source's regex captured from it.
    captured: RefCell<hashbrown::HashMap<(usize, &'a str), Option<&'a str>>>,
}

impl LabelResolver {
    /// The resolver of the label configured at `path`.
    pub(crate) fn compile(config: &LabelConfig, path: &str) -> Result<LabelResolver, BuildError> {
        let sources = (config.sources.iter().enumerate())
            .map(|(i, s)| {
                let path = format!("{path}.sources[{i}]");
                let captor = |field: &str, pattern: &str| {
                    let regex =
                        compile_capture_regex(pattern).map_err(|message| BuildError::Invalid {
                            path: format!("{path}.{field}.regex"),
                            message,
                        })?;
                    Ok::<_, BuildError>(Captor::new(regex))
                };
                let optional = |field: &str, pattern: &Option<String>| {
                    pattern.as_deref().map(|p| captor(field, p)).transpose()
                };
                let kind = s.kind().ok_or_else(|| BuildError::Invalid {
                    path: path.clone(),
                    message: "set exactly one of span_attribute, resource_attribute, service_name"
                        .to_string(),
                })?;
                Ok(match kind {
                    LabelSourceKind::SpanAttribute(a) => Source::Span {
                        key: a.key.clone(),
                        regex: optional("span_attribute", &a.regex)?,
                    },
                    LabelSourceKind::ResourceAttribute(a) => Source::Resource {
                        key: a.key.clone(),
                        regex: optional("resource_attribute", &a.regex)?,
                    },
                    LabelSourceKind::ServiceName(s) => {
                        Source::ServiceName(captor("service_name", &s.regex)?)
                    }
                })
            })
            .collect::<Result<_, BuildError>>()?;
        Ok(LabelResolver {
            sources,
            default: config.default.clone(),
        })
    }

    /// Resolves the resource-level sources for every resource in `batch`.
    pub(crate) fn per_resource<'a>(&self, batch: &Batch<'a>) -> ResourceValues<'a> {
        ResourceValues {
            values: batch
                .resources
                .iter()
                .map(|resource| {
                    self.sources
                        .iter()
                        .map(|source| match source {
                            Source::Span { .. } => None,
                            Source::Resource { key, regex } => {
                                let value = attribute_str(batch.resource_attributes(resource), key);
                                match regex {
                                    None => value,
                                    Some(regex) => value.and_then(|v| regex.capture(v)),
                                }
                            }
                            Source::ServiceName(regex) => {
                                resource.service_name.and_then(|name| regex.capture(name))
                            }
                        })
                        .collect()
                })
                .collect(),
            captured: RefCell::default(),
        }
    }

    /// The label value for one span. Non-string attribute values are written into `buf`.
    pub(crate) fn resolve<'a: 'r, 'r>(
        &'r self,
        batch: &Batch<'a>,
        span: &SpanView<'a>,
        resource_values: &ResourceValues<'a>,
        buf: &'r mut String,
    ) -> &'r str {
        self.find(batch, span, resource_values, buf)
            .unwrap_or(&self.default)
    }

    /// The value of the first source that yields one, without the default.
    pub(crate) fn find<'a: 'r, 'r>(
        &self,
        batch: &Batch<'a>,
        span: &SpanView<'a>,
        resource_values: &ResourceValues<'a>,
        buf: &'r mut String,
    ) -> Option<&'r str> {
        Some(
            self.find_in_request(batch, span, resource_values)?
                .written(buf),
        )
    }

    /// [`LabelResolver::find`], before a bool, int or double attribute is written as text.
    pub(crate) fn find_in_request<'a>(
        &self,
        batch: &Batch<'a>,
        span: &SpanView<'a>,
        resource_values: &ResourceValues<'a>,
    ) -> Option<Found<'a>> {
        for (i, source) in self.sources.iter().enumerate() {
            let found = match source {
                Source::Span { key, regex } => {
                    match batch
                        .span_attributes(span)
                        .iter()
                        .find(|a| same_str(a.key, key))
                    {
                        Some(Attribute {
                            value: AnyValue::Str(v),
                            ..
                        }) => match regex {
                            None => Some(*v),
                            Some(regex) => *resource_values
                                .captured
                                .borrow_mut()
                                .entry((i, *v))
                                .or_insert_with(|| regex.capture(v)),
                        },
                        Some(Attribute {
                            value:
                                value @ (AnyValue::Bool(_) | AnyValue::Int(_) | AnyValue::Double(_)),
                            ..
                        }) if regex.is_none() => return Some(Found::Scalar(*value)),
                        _ => None,
                    }
                }
                _ => resource_values.values[span.resource][i],
            };
            if let Some(text) = found {
                return Some(Found::Text(text));
            }
        }
        None
    }

    /// The span attribute keys this label may read.
    pub(crate) fn span_keys(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().filter_map(|s| match s {
            Source::Span { key, .. } => Some(key.as_str()),
            _ => None,
        })
    }

    pub(crate) fn default_value(&self) -> &str {
        &self.default
    }
}

fn attribute_str<'a>(attributes: &[Attribute<'a>], key: &str) -> Option<&'a str> {
    attributes.iter().find_map(|a| match a.value {
        AnyValue::Str(v) if same_str(a.key, key) => Some(v),
        _ => None,
    })
}

/// Where `regex` captures the label value in `value`: its group named `value`, or else its
/// first group.
fn capture(regex: &Regex, value: &str) -> Option<Range<usize>> {
    let captures = regex.captures(value)?;
    captures
        .name("value")
        .or_else(|| captures.get(1))
        .map(|m| m.range())
}

/// Writes a bool, int or double attribute value as text (other values write nothing).
pub(crate) fn format_scalar<'b>(value: &AnyValue, buf: &'b mut String) -> &'b str {
    buf.clear();
    let _ = match value {
        AnyValue::Bool(b) => write!(buf, "{b}"),
        AnyValue::Int(i) => write!(buf, "{i}"),
        AnyValue::Double(d) => write!(buf, "{d}"),
        _ => Ok(()),
    };
    buf
}

/// Cuts a label value to at most `max` bytes on a character boundary.
pub(crate) fn truncate(value: &str, max: usize) -> &str {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step_captor() -> Captor {
        Captor::new(compile_capture_regex("^(?P<value>.+?)(?:_py|_ts)?$").unwrap())
    }

    fn remembered(captor: &Captor) -> usize {
        captor.answers.lock().unwrap().len()
    }

    #[test]
    fn a_captor_answers_as_its_regex_and_remembers_each_value_once() {
        let captor = step_captor();
        for _ in 0..3 {
            assert_eq!(captor.capture("validate_order_py"), Some("validate_order"));
            assert_eq!(captor.capture("validate_order"), Some("validate_order"));
            assert_eq!(captor.capture(""), None);
        }
        assert_eq!(remembered(&captor), 3);
        // Remembered answers are ranges, read from the value asked about.
        let owned = String::from("fetch_ts");
        assert_eq!(captor.capture(&owned), Some("fetch"));
        assert_eq!(captor.capture("fetch_ts"), Some("fetch"));
    }

    #[test]
    fn a_captor_remembers_a_bounded_number_of_short_values() {
        let captor = step_captor();
        let long = format!("{}_py", "x".repeat(Captor::MAX_LEN));
        assert_eq!(captor.capture(&long), Some(&long[..long.len() - 3]));
        assert_eq!(remembered(&captor), 0);
        for n in 0..3 * Captor::MAX_VALUES {
            let value = format!("step_{n}_py");
            assert_eq!(captor.capture(&value), Some(&value[..value.len() - 3]));
            assert!(remembered(&captor) <= Captor::MAX_VALUES);
        }
        assert!(remembered(&captor) > 0);
    }
}
