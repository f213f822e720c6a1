//! URLs the config holds: the trace backend's link template, and the percent-encoding of
//! the values put into URLs.

use serde::Deserialize;

/// `text` with every byte but RFC 3986's unreserved characters percent-encoded: safe in a
/// URL path segment or query value.
pub(crate) fn percent_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// A trace link template, split at its one `{trace_id}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct TraceUrl {
    before: String,
    after: String,
}

impl TryFrom<String> for TraceUrl {
    type Error = String;

    fn try_from(text: String) -> Result<TraceUrl, String> {
        const HOLE: &str = "{trace_id}";
        if !(text.starts_with("http://") || text.starts_with("https://")) {
            return Err(format!(
                "`{text}` must start with http:// or https://, such as http://jaeger:16686/trace/{{trace_id}}"
            ));
        }
        match text.split_once(HOLE) {
            Some((before, after)) if !after.contains(HOLE) => Ok(TraceUrl {
                before: before.to_string(),
                after: after.to_string(),
            }),
            _ => Err(format!(
                "`{text}` must hold `{{trace_id}}` exactly once, where the trace id goes"
            )),
        }
    }
}

impl TraceUrl {
    /// The link for one trace; `trace_id` is percent-encoded (a hex id is unchanged).
    pub fn link(&self, trace_id: &str) -> String {
        format!("{}{}{}", self.before, percent_encoded(trace_id), self.after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_percent_encoded_into_the_template() {
        assert_eq!(percent_encoded("a b/<x>&é"), "a%20b%2F%3Cx%3E%26%C3%A9");
        let jaeger = TraceUrl::try_from("http://jaeger:16686/trace/{trace_id}".to_string());
        assert_eq!(
            jaeger.unwrap().link("0af7651916cd43dd8448eb211c80319c"),
            "http://jaeger:16686/trace/0af7651916cd43dd8448eb211c80319c"
        );
        let tempo = TraceUrl::try_from("https://g/explore?q={trace_id}&x=1".to_string()).unwrap();
        assert_eq!(tempo.link("\"><"), "https://g/explore?q=%22%3E%3C&x=1");
        for bad in [
            "javascript:alert(1)//{trace_id}",
            "//jaeger/trace/{trace_id}",
            "http://jaeger/trace/",
            "http://j/{trace_id}/{trace_id}",
        ] {
            assert!(TraceUrl::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }
}
