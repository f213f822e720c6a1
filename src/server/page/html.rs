//! Writing HTML that holds values from spans: every text goes through [`Escaped`], which
//! makes it inert in element text, quoted attribute values and SVG text alike; links are
//! only the page's own paths (ids percent-encoded) and the operator's trace URL template.

use std::fmt::{self, Display, Write};

/// The policy every page is served with: nothing from elsewhere, no inline script or style,
/// no framing, forms only to the page itself.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A value written as HTML text or a quoted attribute value: `& < > " '` as character
/// references (so `<script>`, `"><img onerror=…>` and SVG markup stay text).
pub(crate) struct Escaped<'a>(pub(crate) &'a str);

impl Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// The page's link to a task: `/task/{id}` with the id percent-encoded.
pub(crate) fn task_href(id: &str) -> String {
    format!("task/{}", crate::config::percent_encoded(id))
}

/// Seconds as milliseconds with two decimals, or a dash for none.
pub(crate) fn ms(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "–".to_string(), |s| format!("{:.2} ms", s * 1000.0))
}

/// A configured threshold in milliseconds, as short as it was written: `0.1` → `100 ms`.
pub(crate) fn threshold_ms(seconds: f64) -> String {
    let text = format!("{:.3}", seconds * 1000.0);
    format!("{} ms", text.trim_end_matches('0').trim_end_matches('.'))
}

/// The opening of a page: doctype, head (title, the page's stylesheet and script), the
/// navigation, and `<main>`. Relative links (`./`, `task/…`) work behind a path prefix.
pub(crate) fn open(out: &mut String, title: &str, base: &str) {
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · spanlens</title><link rel=\"icon\" href=\"data:,\">\
         <link rel=\"stylesheet\" href=\"{base}page.css\">\
         <script src=\"{base}page.js\" defer></script></head>\n<body>\
         <header><nav><a class=\"brand\" href=\"{base}\">spanlens</a> \
         <a href=\"{base}\">overview</a> <a href=\"{base}compare\">handlers by language</a>\
         <form action=\"{base}task\" method=\"get\" class=\"find\">\
         <input name=\"id\" placeholder=\"correlation id or task uuid\" aria-label=\"correlation id or task uuid\">\
         <button>open task</button></form></nav></header>\n<main>",
        title = Escaped(title),
    );
}

/// The end of a page opened by [`open`].
pub(crate) fn close(out: &mut String) {
    out.push_str("</main></body></html>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_escaped_for_text_and_attributes() {
        for (raw, escaped) in [
            (
                "<script>alert(1)</script>",
                "&lt;script&gt;alert(1)&lt;/script&gt;",
            ),
            (
                "\"><img src=x onerror=alert(1)>",
                "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;",
            ),
            ("' onmouseover='x", "&#39; onmouseover=&#39;x"),
            (
                "<svg onload=alert(1)><text>&amp;</text></svg>",
                "&lt;svg onload=alert(1)&gt;&lt;text&gt;&amp;amp;&lt;/text&gt;&lt;/svg&gt;",
            ),
            ("plain step_name é", "plain step_name é"),
        ] {
            assert_eq!(Escaped(raw).to_string(), escaped);
        }
    }

    #[test]
    fn task_links_percent_encode_the_id() {
        assert_eq!(
            task_href("javascript:alert(1)"),
            "task/javascript%3Aalert%281%29"
        );
        assert_eq!(
            task_href("5f0c7a1e-0001-4c2b-9d1e-0000c0441d00"),
            "task/5f0c7a1e-0001-4c2b-9d1e-0000c0441d00"
        );
        assert_eq!(ms(Some(0.0125)), "12.50 ms");
        assert_eq!(ms(None), "–");
        assert_eq!(threshold_ms(0.1), "100 ms");
        assert_eq!(threshold_ms(0.0125), "12.5 ms");
        assert_eq!(threshold_ms(1.0), "1000 ms");
    }
}
