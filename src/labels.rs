//! Label values from spans: each label has an ordered chain of sources (span attribute,
//! resource attribute, regex on service.name) and a default. Sources that depend only on the
//! resource are resolved once per resource per request, not once per span, and a regex on a
//! span attribute runs once per distinct value per request (a request's spans repeat a few
//! step names and queues many times).

use crate::config::{LabelConfig, LabelSourceKind, validate::compile_capture_regex};
use crate::decode::{AnyValue, Attribute, Batch, SpanView};
use regex::Regex;
use std::cell::RefCell;
use std::fmt::Write;

#[derive(Debug, Clone)]
enum Source {
    Span { key: String, regex: Option<Regex> },
    Resource { key: String, regex: Option<Regex> },
    ServiceName(Regex),
}

/// One label's source chain, compiled.
#[derive(Debug, Clone)]
pub struct LabelResolver {
    sources: Vec<Source>,
    default: String,
}

/// Resource-level answers of one resolver for every resource of a batch, and the captures
/// its span-attribute regexes gave so far in that batch.
#[derive(Debug, Default)]
pub struct ResourceValues<'a> {
    /// Per resource, per source: the value that source yields (None for span sources).
    values: Vec<Vec<Option<&'a str>>>,
    /// (source, attribute value) → what the source's regex captured from it.
    captured: RefCell<hashbrown::HashMap<(usize, &'a str), Option<&'a str>>>,
}

impl LabelResolver {
    pub fn compile(config: &LabelConfig) -> Result<LabelResolver, String> {
        let sources = config
            .sources
            .iter()
            .map(|s| {
                let regex = |pattern: &Option<String>| {
                    pattern.as_deref().map(compile_capture_regex).transpose()
                };
                Ok(
                    match s.kind().ok_or("a label source must set exactly one kind")? {
                        LabelSourceKind::SpanAttribute(a) => Source::Span {
                            key: a.key.clone(),
                            regex: regex(&a.regex)?,
                        },
                        LabelSourceKind::ResourceAttribute(a) => Source::Resource {
                            key: a.key.clone(),
                            regex: regex(&a.regex)?,
                        },
                        LabelSourceKind::ServiceName(s) => {
                            Source::ServiceName(compile_capture_regex(&s.regex)?)
                        }
                    },
                )
            })
            .collect::<Result<_, String>>()?;
        Ok(LabelResolver {
            sources,
            default: config.default.clone(),
        })
    }

    /// Resolves the resource-level sources for every resource in `batch`.
    pub fn per_resource<'a>(&self, batch: &Batch<'a>) -> ResourceValues<'a> {
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
                                attribute_str(batch.resource_attributes(resource), key)
                                    .and_then(|v| capture(regex.as_ref(), v))
                            }
                            Source::ServiceName(regex) => resource
                                .service_name
                                .and_then(|name| capture(Some(regex), name)),
                        })
                        .collect()
                })
                .collect(),
            captured: RefCell::default(),
        }
    }

    /// The label value for one span. Non-string attribute values are written into `buf`.
    pub fn resolve<'a: 'r, 'r>(
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
    pub fn find<'a: 'r, 'r>(
        &self,
        batch: &Batch<'a>,
        span: &SpanView<'a>,
        resource_values: &ResourceValues<'a>,
        buf: &'r mut String,
    ) -> Option<&'r str> {
        for (i, source) in self.sources.iter().enumerate() {
            let found = match source {
                Source::Span { key, regex } => {
                    match batch.span_attributes(span).iter().find(|a| a.key == key) {
                        Some(Attribute {
                            value: AnyValue::Str(v),
                            ..
                        }) => match regex {
                            None => Some(*v),
                            Some(regex) => *resource_values
                                .captured
                                .borrow_mut()
                                .entry((i, *v))
                                .or_insert_with(|| capture(Some(regex), v)),
                        },
                        Some(Attribute {
                            value:
                                value @ (AnyValue::Bool(_) | AnyValue::Int(_) | AnyValue::Double(_)),
                            ..
                        }) if regex.is_none() => return Some(format_scalar(value, buf)),
                        _ => None,
                    }
                }
                _ => resource_values.values[span.resource][i],
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// The span attribute keys this label may read.
    pub fn span_keys(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().filter_map(|s| match s {
            Source::Span { key, .. } => Some(key.as_str()),
            _ => None,
        })
    }

    pub fn default_value(&self) -> &str {
        &self.default
    }
}

fn attribute_str<'a>(attributes: &[Attribute<'a>], key: &str) -> Option<&'a str> {
    attributes.iter().find_map(|a| match a.value {
        AnyValue::Str(v) if a.key == key => Some(v),
        _ => None,
    })
}

fn capture<'a>(regex: Option<&Regex>, value: &'a str) -> Option<&'a str> {
    let Some(regex) = regex else {
        return Some(value);
    };
    let captures = regex.captures(value)?;
    captures
        .name("value")
        .or_else(|| captures.get(1))
        .map(|m| m.as_str())
}

/// Writes a bool, int or double attribute value as text (other values write nothing).
pub fn format_scalar<'b>(value: &AnyValue, buf: &'b mut String) -> &'b str {
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
pub fn truncate(value: &str, max: usize) -> &str {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}
