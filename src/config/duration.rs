//! Durations as the configuration writes them: Prometheus durations (`500ms`, `30s`, `5m`,
//! `1h30m`, `1d`), parsed once when the config is read. Each keeps its text, which the
//! generated rules repeat as written.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// What the message of a duration that does not parse says; config reading recognises the
/// problem by it (see `config::read_item`).
pub(super) const NOT_A_DURATION: &str = "is not a Prometheus duration";

/// A Prometheus duration and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromDuration {
    value: Duration,
    text: String,
}

impl PromDuration {
    /// Parses digits and a unit (ms, s, m, h, d, w, y), possibly repeated (`1h30m`).
    pub fn parse(text: &str) -> Option<PromDuration> {
        const UNITS: [(&str, u64); 7] = [
            ("ms", 1),
            ("s", 1_000),
            ("m", 60_000),
            ("h", 3_600_000),
            ("d", 86_400_000),
            ("w", 604_800_000),
            ("y", 31_536_000_000),
        ];
        if text.is_empty() {
            return None;
        }
        let mut rest = text;
        let mut millis = 0u64;
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let amount: u64 = rest[..digits].parse().ok()?;
            rest = &rest[digits..];
            let (unit, scale) = UNITS.into_iter().find(|(u, _)| rest.starts_with(u))?;
            rest = &rest[unit.len()..];
            millis = millis.checked_add(amount.checked_mul(scale)?)?;
        }
        Some(PromDuration {
            value: Duration::from_millis(millis),
            text: text.to_string(),
        })
    }

    /// `n` milliseconds, written `<n>ms`.
    pub fn millis(n: u64) -> PromDuration {
        PromDuration::written(Duration::from_millis(n), format!("{n}ms"))
    }

    /// `n` seconds, written `<n>s`.
    pub fn secs(n: u64) -> PromDuration {
        PromDuration::written(Duration::from_secs(n), format!("{n}s"))
    }

    /// `n` minutes, written `<n>m`.
    pub fn minutes(n: u64) -> PromDuration {
        PromDuration::written(Duration::from_secs(60 * n), format!("{n}m"))
    }

    /// `n` hours, written `<n>h`.
    pub fn hours(n: u64) -> PromDuration {
        PromDuration::written(Duration::from_secs(3_600 * n), format!("{n}h"))
    }

    /// `n` days, written `<n>d`.
    pub fn days(n: u64) -> PromDuration {
        PromDuration::written(Duration::from_secs(86_400 * n), format!("{n}d"))
    }

    fn written(value: Duration, text: String) -> PromDuration {
        PromDuration { value, text }
    }

    pub fn get(&self) -> Duration {
        self.value
    }

    /// The duration as the config wrote it.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn is_zero(&self) -> bool {
        self.value.is_zero()
    }
}

impl fmt::Display for PromDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for PromDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PromDuration::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` {NOT_A_DURATION} (such as 30s, 5m, 1h, 1d)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_durations_and_keeps_their_text() {
        for (text, millis) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("1d", 86_400_000),
            ("2w", 1_209_600_000),
            ("0s", 0),
        ] {
            let d = PromDuration::parse(text).expect(text);
            assert_eq!(d.get(), Duration::from_millis(millis), "{text}");
            assert_eq!(d.to_string(), text);
        }
        for bad in [
            "",
            "5",
            "m",
            "5 minutes",
            "1.5h",
            "-1s",
            "99999999999999999999y",
        ] {
            assert_eq!(PromDuration::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn constructors_write_what_they_hold() {
        for d in [
            PromDuration::millis(500),
            PromDuration::secs(30),
            PromDuration::minutes(5),
            PromDuration::hours(1),
            PromDuration::days(1),
        ] {
            assert_eq!(PromDuration::parse(d.text()), Some(d));
        }
    }
}
