//! Content negotiation for `/metrics`: the encoding an `Accept` header prefers.
//!
//! The header is a list of media ranges, each with parameters and an optional weight `q`
//! (RFC 9110, 12.5.1). Each encoding takes the weight of the most specific range that
//! matches it; the highest weight wins, and among equal weights the range matched more
//! specifically, then the one listed first. OpenMetrics and protobuf are served only when
//! named (a client that sends `*/*` may not parse them); text 0.0.4 also answers wildcards,
//! and anything else: a header that accepts nothing we serve gets text too.
//!
//! Prometheus 2.42 with `--enable-feature=native-histograms` sends
//! `application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`
//! (protobuf); without the feature, the same list without protobuf (OpenMetrics).

use super::{Encoding, Format};

/// The encodings served.
const SERVED: [Encoding; 3] = [
    Encoding::Text(Format::Text),
    Encoding::Text(Format::OpenMetrics),
    Encoding::Protobuf,
];

/// How a media range matched an encoding: higher is more specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Match {
    Any,
    AnySubtype,
    Exact,
}

/// The weight an encoding takes from a header: the range that decided it.
#[derive(Debug, Clone, Copy)]
struct Weight {
    /// Thousandths (q has at most three decimals).
    q: u16,
    how: Match,
    /// Position of the range in the header.
    at: usize,
}

pub(super) fn preferred(accept: &str) -> Encoding {
    let mut best: Option<(Weight, Encoding)> = None;
    for encoding in SERVED {
        let Some(weight) = weight(accept, encoding) else {
            continue;
        };
        let better = match best {
            None => true,
            Some((b, _)) => {
                (weight.q, weight.how, std::cmp::Reverse(weight.at))
                    > (b.q, b.how, std::cmp::Reverse(b.at))
            }
        };
        if weight.q > 0 && better {
            best = Some((weight, encoding));
        }
    }
    best.map_or(Encoding::Text(Format::Text), |(_, encoding)| encoding)
}

/// The weight of the most specific range of `accept` that matches `encoding` (the first of
/// equally specific ones), if any does.
fn weight(accept: &str, encoding: Encoding) -> Option<Weight> {
    let mut found: Option<Weight> = None;
    for (at, range) in accept.split(',').enumerate() {
        let Some((how, q)) = matches(range, encoding) else {
            continue;
        };
        if found.is_none_or(|f| how > f.how) {
            found = Some(Weight { q, how, at });
        }
    }
    found
}

/// How one media range (`type/subtype; name=value...; q=...`) matches `encoding`, and its
/// weight. None when it does not match, or is malformed (no `/`, a bad `q`).
fn matches(range: &str, encoding: Encoding) -> Option<(Match, u16)> {
    let mut parts = range.split(';');
    let (kind, subtype) = parts.next()?.trim().split_once('/')?;
    let mut q = 1000;
    let mut params = Vec::new();
    for param in parts {
        let (name, value) = param.split_once('=')?;
        let (name, value) = (name.trim(), value.trim().trim_matches('"'));
        if name.eq_ignore_ascii_case("q") {
            q = weight_of(value)?;
        } else {
            params.push((name, value));
        }
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    };
    let (want_kind, want_subtype) = match encoding {
        Encoding::Text(Format::Text) => ("text", "plain"),
        Encoding::Text(Format::OpenMetrics) => ("application", "openmetrics-text"),
        Encoding::Protobuf => ("application", "vnd.google.protobuf"),
    };
    let how = match (kind.trim(), subtype.trim()) {
        ("*", "*") => Match::Any,
        (k, "*") if k.eq_ignore_ascii_case(want_kind) => Match::AnySubtype,
        (k, s) if k.eq_ignore_ascii_case(want_kind) && s.eq_ignore_ascii_case(want_subtype) => {
            Match::Exact
        }
        _ => return None,
    };
    let fits = match encoding {
        Encoding::Text(Format::Text) => param("version").is_none_or(|v| v == "0.0.4"),
        Encoding::Text(Format::OpenMetrics) => how == Match::Exact,
        Encoding::Protobuf => {
            how == Match::Exact
                && param("proto") == Some("io.prometheus.client.MetricFamily")
                && param("encoding") == Some("delimited")
        }
    };
    fits.then_some((how, q))
}

/// A `q` value in thousandths: `0`, `1`, or `0.` / `1.` with up to three digits (at most 1).
fn weight_of(value: &str) -> Option<u16> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if !matches!(whole, "0" | "1") || fraction.len() > 3 {
        return None;
    }
    let mut thousandths = if whole == "1" { 1000 } else { 0 };
    for (digit, scale) in fraction.bytes().zip([100, 10, 1]) {
        if !digit.is_ascii_digit() {
            return None;
        }
        thousandths += u16::from(digit - b'0') * scale;
    }
    (thousandths <= 1000).then_some(thousandths)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Prometheus 2.42 sends with `--enable-feature=native-histograms` (captured from
    /// /usr/bin/prometheus scraping a listener that printed it).
    const PROMETHEUS_2_42_NATIVE: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    const PROMETHEUS_2_42: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    const TEXT: Encoding = Encoding::Text(Format::Text);
    const OPENMETRICS: Encoding = Encoding::Text(Format::OpenMetrics);

    fn negotiate(accept: &str) -> Encoding {
        Encoding::negotiate(Some(accept))
    }

    #[test]
    fn prometheus_headers() {
        assert_eq!(negotiate(PROMETHEUS_2_42_NATIVE), Encoding::Protobuf);
        assert_eq!(negotiate(PROMETHEUS_2_42), OPENMETRICS);
        assert_eq!(
            negotiate(
                "application/openmetrics-text; version=1.0.0; charset=utf-8,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            ),
            OPENMETRICS
        );
    }

    #[test]
    fn weights_decide() {
        let protobuf = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
        assert_eq!(
            negotiate(&format!("{protobuf};q=0.3,text/plain;version=0.0.4;q=0.7")),
            TEXT
        );
        assert_eq!(
            negotiate(&format!("text/plain;q=0.5, {protobuf} ; q=0.9")),
            Encoding::Protobuf
        );
        assert_eq!(
            negotiate(&format!(
                "application/openmetrics-text;q=0.2,{protobuf};q=0.1,*/*;q=0.05"
            )),
            OPENMETRICS
        );
        assert_eq!(negotiate(&format!("{protobuf};q=0,text/plain")), TEXT);
        // Equal weights: the range listed first.
        assert_eq!(
            negotiate(&format!("{protobuf},application/openmetrics-text")),
            Encoding::Protobuf
        );
        assert_eq!(
            negotiate(&format!("application/openmetrics-text,{protobuf}")),
            OPENMETRICS
        );
        // An exact range beats a wildcard of the same weight.
        assert_eq!(negotiate("*/*,application/openmetrics-text"), OPENMETRICS);
        // A text range with q=0 refuses text even under a heavier wildcard.
        assert_eq!(
            negotiate("text/plain;q=0,*/*;q=1,application/openmetrics-text;q=0.5"),
            OPENMETRICS
        );
    }

    #[test]
    fn protobuf_only_when_named_with_its_parameters() {
        for accept in [
            "application/vnd.google.protobuf",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
            "application/vnd.google.protobuf;proto=other.Message;encoding=delimited",
            "application/*",
            "*/*",
        ] {
            assert_eq!(negotiate(accept), TEXT, "{accept}");
        }
        assert_eq!(
            negotiate(
                "Application/Vnd.Google.Protobuf; Proto=io.prometheus.client.MetricFamily; Encoding=delimited"
            ),
            Encoding::Protobuf
        );
    }

    #[test]
    fn text_by_default_for_wildcards_and_garbage() {
        assert_eq!(Encoding::negotiate(None), TEXT);
        for accept in [
            "",
            "garbage",
            "text/html",
            "text/plain;version=0.0.5",
            "application/openmetrics-text;q=2",
            "application/openmetrics-text;q=0.5.5",
            "application/openmetrics-text;q",
            ",,;;==//",
        ] {
            assert_eq!(negotiate(accept), TEXT, "{accept:?}");
        }
        assert_eq!(negotiate("text/*;q=0.1"), TEXT);
    }

    #[test]
    fn q_values() {
        assert_eq!(weight_of("1"), Some(1000));
        assert_eq!(weight_of("1.000"), Some(1000));
        assert_eq!(weight_of("0.7"), Some(700));
        assert_eq!(weight_of("0.05"), Some(50));
        assert_eq!(weight_of("0"), Some(0));
        for bad in ["1.001", "2", "0.1234", "-0.5", "0.a", "", "."] {
            assert_eq!(weight_of(bad), None, "{bad:?}");
        }
    }
}
