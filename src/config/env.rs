//! `${NAME}` and `${NAME:-default}` in config text, replaced from an environment map before
//! the YAML is parsed. `$$` stands for a literal `$`.

use std::collections::HashMap;

/// A reference to a variable that is not set and has no default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnsetVariable {
    pub(crate) name: String,
    pub(crate) line: usize,
}

pub(crate) fn expand(
    text: &str,
    env: &HashMap<String, String>,
) -> Result<String, Vec<UnsetVariable>> {
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        // Comments are copied as they are: they may show `${...}` as an example.
        let code = super::lines::strip_comment(line);
        let comment = &line[code.len()..];
        let mut rest = code;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{')
                && let Some(close) = body.find('}')
            {
                let reference = &body[..close];
                let (name, default) = match reference.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (reference, None),
                };
                match (env.get(name), default) {
                    (Some(value), _) => out.push_str(value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => unset.push(UnsetVariable {
                        name: name.to_string(),
                        line: index + 1,
                    }),
                }
                rest = &body[close + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    if unset.is_empty() {
        Ok(out)
    } else {
        Err(unset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_values_defaults_and_escapes() {
        let env = HashMap::from([("PORT".to_string(), "9999".to_string())]);
        assert_eq!(
            expand("a: ${PORT}\nb: ${HOST:-127.0.0.1} $$x $y # ${NOT}\n", &env).unwrap(),
            "a: 9999\nb: 127.0.0.1 $x $y # ${NOT}\n"
        );
    }

    #[test]
    fn reports_every_unset_variable_with_its_line() {
        let err = expand("a: ${A}\n\nb: ${B}", &HashMap::new()).unwrap_err();
        assert_eq!(
            err,
            vec![
                UnsetVariable {
                    name: "A".into(),
                    line: 1
                },
                UnsetVariable {
                    name: "B".into(),
                    line: 3
                }
            ]
        );
    }
}
