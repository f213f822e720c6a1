//! Maps config paths (`rules[3].attributes[0].regex`) to the line they are written on, so that
//! problems found after parsing can still point at the file. It reads block-style YAML
//! (what spanlens's profiles use) and the keys of one-line flow mappings; anything it cannot
//! place falls back to the nearest enclosing path that it could.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub(crate) struct LineIndex {
    lines: HashMap<String, usize>,
}

struct Frame {
    indent: usize,
    path: String,
    is_item: bool,
}

impl LineIndex {
    pub(crate) fn build(text: &str) -> LineIndex {
        let mut index = LineIndex::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut item_counts: HashMap<String, usize> = HashMap::new();
        for (number, raw) in text.lines().enumerate() {
            let line = number + 1;
            let content = strip_comment(raw);
            let trimmed = content.trim_start();
            if trimmed.is_empty() || trimmed.starts_with("---") {
                continue;
            }
            let mut indent = content.len() - trimmed.len();
            let mut rest = trimmed;
            if rest == "-" || rest.starts_with("- ") {
                while stack
                    .last()
                    .is_some_and(|f| f.indent > indent || (f.indent == indent && f.is_item))
                {
                    stack.pop();
                }
                let parent = stack.last().map(|f| f.path.clone()).unwrap_or_default();
                let count = item_counts.entry(parent.clone()).or_insert(0);
                let path = format!("{parent}[{count}]");
                *count += 1;
                index.lines.entry(path.clone()).or_insert(line);
                stack.push(Frame {
                    indent,
                    path,
                    is_item: true,
                });
                rest = rest[1..].trim_start();
                indent = content.len() - rest.len();
                if rest.is_empty() {
                    continue;
                }
            }
            if let Some(flow) = rest.strip_prefix('{') {
                let parent = stack.last().map(|f| f.path.clone()).unwrap_or_default();
                index.flow_keys(&parent, flow, line);
                continue;
            }
            let Some((key, value)) = split_key(rest) else {
                continue;
            };
            while stack.last().is_some_and(|f| f.indent >= indent) {
                stack.pop();
            }
            let parent = stack.last().map(|f| f.path.clone()).unwrap_or_default();
            let path = join(&parent, key);
            index.lines.entry(path.clone()).or_insert(line);
            if let Some(flow) = value.trim_start().strip_prefix('{') {
                index.flow_keys(&path, flow, line);
            }
            stack.push(Frame {
                indent,
                path,
                is_item: false,
            });
        }
        index
    }

    fn flow_keys(&mut self, parent: &str, flow: &str, line: usize) {
        for part in flow.trim_end_matches('}').split(',') {
            if let Some((key, _)) = split_key(part.trim()) {
                self.lines.entry(join(parent, key)).or_insert(line);
            }
        }
    }

    /// The line of `path`, or of the nearest enclosing path that has one.
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(&line) = self.lines.get(path) {
                return Some(line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn split_key(text: &str) -> Option<(&str, &str)> {
    let (key, value) = text.split_once(':')?;
    if !(value.is_empty() || value.starts_with(' ')) {
        return None;
    }
    let key = key.trim().trim_matches(['"', '\'']);
    (!key.is_empty()).then_some((key, value))
}

pub(super) fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (at, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => return &line[..at],
            _ => {}
        }
        previous = c;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_block_and_flow_paths() {
        let text = "\
a:
  b: 1 # comment: x
rules:
  - stage: s
    attributes:
      - { key: queue, regex: 'x#y' }
  - stage: t
list:
- one
- two: 2
stages:
  claim:
    help: h
";
        let index = LineIndex::build(text);
        assert_eq!(index.line_of("a.b"), Some(2));
        assert_eq!(index.line_of("rules[0].stage"), Some(4));
        assert_eq!(index.line_of("rules[0].attributes[0].regex"), Some(6));
        assert_eq!(index.line_of("rules[1].stage"), Some(7));
        assert_eq!(index.line_of("rules[1].missing"), Some(7));
        assert_eq!(index.line_of("list[1].two"), Some(10));
        assert_eq!(index.line_of("stages.claim.help"), Some(13));
        assert_eq!(index.line_of("nowhere"), None);
    }
}
