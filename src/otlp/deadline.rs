//! A caller's deadline: gRPC's `grpc-timeout` request header ("gRPC over HTTP2": a value of
//! at most 8 ASCII digits, then the unit `H`, `M`, `S`, `m`, `u` or `n`). A request whose
//! deadline passes before spanlens processes it is refused, DEADLINE_EXCEEDED, and nothing of
//! it is observed or forwarded: its caller has given up, and its retry would count the spans
//! again.

use super::refusal::Refusal;
use std::time::{Duration, Instant};

/// When the caller stops waiting for an answer; None: it waits as long as it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline.
    pub(crate) const NONE: Deadline = Deadline(None);

    /// The deadline a `grpc-timeout` value sets for a request whose headers arrived at
    /// `arrived`. A malformed value is ignored, as if it were not sent (the protocol defines no
    /// error for it, and a missing timeout means an infinite one; tonic does the same); `0S`
    /// is read as a deadline already past, as tonic and grpc-go read it.
    pub(crate) fn from_grpc_timeout(value: Option<&[u8]>, arrived: Instant) -> Deadline {
        let timeout = value.and_then(grpc_timeout);
        if value.is_some() && timeout.is_none() {
            tracing::debug!(
                value = %String::from_utf8_lossy(value.unwrap_or_default()),
                "malformed grpc-timeout header ignored"
            );
        }
        Deadline(timeout.and_then(|t| arrived.checked_add(t)))
    }

    /// When the deadline passes, if there is one.
    pub(crate) fn instant(self) -> Option<Instant> {
        self.0
    }

    /// Refuses once the deadline has passed.
    pub(crate) fn check(self) -> Result<(), Refusal> {
        match self.0 {
            Some(at) if Instant::now() >= at => Err(Refusal::DeadlineExceeded),
            _ => Ok(()),
        }
    }
}

/// A `grpc-timeout` value; None when malformed.
fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 digits: no overflow below, even in hours.
    let n = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_and_the_eight_digit_bound() {
        let cases: [(&str, Duration); 8] = [
            ("2H", Duration::from_secs(7200)),
            ("3M", Duration::from_secs(180)),
            ("10S", Duration::from_secs(10)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("99999999n", Duration::from_nanos(99_999_999)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
            ("0S", Duration::ZERO),
        ];
        for (value, want) in cases {
            assert_eq!(grpc_timeout(value.as_bytes()), Some(want), "{value}");
        }
    }

    #[test]
    fn malformed_values_are_none() {
        for value in [
            "",
            "S",
            "5",
            "123456789S",
            "5s",
            "5 S",
            " 5S",
            "-5S",
            "+5S",
            "5.0S",
            "5SS",
            "５S",
            "0x5S",
        ] {
            assert_eq!(grpc_timeout(value.as_bytes()), None, "{value:?}");
        }
    }

    #[test]
    fn a_malformed_header_sets_no_deadline_and_a_passed_one_refuses() {
        let now = Instant::now();
        assert_eq!(
            Deadline::from_grpc_timeout(Some(b"5s"), now),
            Deadline::NONE
        );
        assert_eq!(Deadline::from_grpc_timeout(None, now), Deadline::NONE);
        assert_eq!(Deadline::NONE.check(), Ok(()));
        let later = Deadline::from_grpc_timeout(Some(b"1H"), now);
        assert_eq!(later.instant(), Some(now + Duration::from_secs(3600)));
        assert_eq!(later.check(), Ok(()));
        let passed = Deadline::from_grpc_timeout(Some(b"0m"), now);
        assert_eq!(passed.check(), Err(Refusal::DeadlineExceeded));
    }
}
