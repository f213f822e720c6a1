//! A span's adjusted count under OpenTelemetry probability sampling: how many operations
//! one recorded span stands for, as the `ot` entry of its W3C tracestate says.
//!
//! - `th:<hex>`, the rejection threshold T of consistent probability sampling: 1 to 14
//!   hexadecimal digits, trailing zeros omitted, read as a 56-bit number (`th:8` is
//!   2⁵⁵, half the range). A span was kept with probability (2⁵⁶ − T) / 2⁵⁶, so it
//!   stands for 2⁵⁶ / (2⁵⁶ − T) operations; `th:0` keeps everything.
//! - `p:<n>`, the older power-of-two form: kept with probability 2⁻ⁿ, so 2ⁿ operations,
//!   for n in 0..=62; `p:63` means a span not chosen by probability, which counts zero.
//!
//! `th` wins when both are present. A tracestate without either counts 1.

/// The adjusted count of a span with no sampling information.
pub(crate) const UNSAMPLED: f64 = 1.0;

/// Thresholds have 56 bits: 14 hexadecimal digits.
const THRESHOLD_DIGITS: usize = 14;
const THRESHOLD_RANGE: f64 = (1u64 << 56) as f64;
/// `p:63` is the zero-probability value; larger ones do not exist.
const P_ZERO: u32 = 63;

/// Why a tracestate's sampling value was not read. The span counts 1 and is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SamplingProblem {
    /// `th:` with more than 14 digits.
    ThresholdTooLong,
    /// `th:` empty or with a character that is not a hexadecimal digit.
    ThresholdNotHex,
    /// `p:` that is not a number from 0 to 63.
    PowerOutOfRange,
}

impl SamplingProblem {
    /// The `reason` label of the counter of ignored sampling values.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            SamplingProblem::ThresholdTooLong => "th_too_long",
            SamplingProblem::ThresholdNotHex => "th_not_hex",
            SamplingProblem::PowerOutOfRange => "p_out_of_range",
        }
    }
}

/// The adjusted count a tracestate gives: None when it has no `ot` threshold or power.
pub(crate) fn adjusted_count(trace_state: &[u8]) -> Option<Result<f64, SamplingProblem>> {
    let ot = trace_state
        .split(|&b| b == b',')
        .map(trim)
        .find_map(|member| member.strip_prefix(b"ot="))?;
    let field = |name: &[u8]| {
        ot.split(|&b| b == b';')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix(b":"))
    };
    match (field(b"th"), field(b"p")) {
        (Some(th), _) => Some(threshold_count(th)),
        (None, Some(p)) => Some(power_count(p)),
        (None, None) => None,
    }
}

fn threshold_count(digits: &[u8]) -> Result<f64, SamplingProblem> {
    if digits.len() > THRESHOLD_DIGITS {
        return Err(SamplingProblem::ThresholdTooLong);
    }
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(SamplingProblem::ThresholdNotHex);
    }
    let text = std::str::from_utf8(digits).expect("checked: hexadecimal digits");
    let value = u64::from_str_radix(text, 16).expect("checked: at most 14 hex digits");
    let threshold = value << (4 * (THRESHOLD_DIGITS - digits.len()));
    Ok(THRESHOLD_RANGE / ((1u64 << 56) - threshold) as f64)
}

fn power_count(digits: &[u8]) -> Result<f64, SamplingProblem> {
    let power = std::str::from_utf8(digits)
        .ok()
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u32>().ok())
        .filter(|&p| p <= P_ZERO)
        .ok_or(SamplingProblem::PowerOutOfRange)?;
    Ok(match power {
        P_ZERO => 0.0,
        p => (1u64 << p) as f64,
    })
}

/// A tracestate list member without the optional white space (spaces, tabs) around it.
fn trim(member: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = member
        .iter()
        .position(|b| !blank(b))
        .unwrap_or(member.len());
    let end = member
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |e| e + 1);
    &member[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(state: &str) -> Option<Result<f64, SamplingProblem>> {
        adjusted_count(state.as_bytes())
    }

    #[test]
    fn thresholds_give_the_inverse_of_the_probability_kept() {
        assert_eq!(count("ot=th:0"), Some(Ok(1.0)));
        assert_eq!(count("ot=th:8"), Some(Ok(2.0)));
        assert_eq!(count("ot=th:c"), Some(Ok(4.0)));
        assert_eq!(count("ot=th:e"), Some(Ok(8.0)));
        assert_eq!(count("ot=th:ff"), Some(Ok(256.0)));
        // Trailing zeros omitted or written: the same threshold.
        assert_eq!(count("ot=th:8000"), count("ot=th:8"));
        assert_eq!(count("ot=th:80000000000000"), Some(Ok(2.0)));
        // 10%: T = 0.9 × 2⁵⁶ to 4 digits (e666), kept with probability 0x199a / 2¹⁶.
        assert_eq!(count("ot=th:e666"), Some(Ok(65536.0 / 6554.0)));
        // The largest threshold keeps one in 2⁵⁶.
        assert_eq!(count("ot=th:ffffffffffffff"), Some(Ok(THRESHOLD_RANGE)));
    }

    #[test]
    fn powers_of_two_and_the_zero_probability_value() {
        assert_eq!(count("ot=p:0"), Some(Ok(1.0)));
        assert_eq!(count("ot=p:3"), Some(Ok(8.0)));
        assert_eq!(count("ot=p:62"), Some(Ok((1u64 << 62) as f64)));
        assert_eq!(count("ot=p:63"), Some(Ok(0.0)));
    }

    #[test]
    fn the_ot_entry_is_found_among_other_vendors_and_fields() {
        let state = "congo=t61rcWkgMzE, ot=rv:0123456789abcd;th:c ,rojo=00f067aa0ba902b7";
        assert_eq!(count(state), Some(Ok(4.0)));
        assert_eq!(count("ot=p:2;th:8"), Some(Ok(2.0)), "th wins over p");
        assert_eq!(count("\tot=p:1\t"), Some(Ok(2.0)));
        for none in [
            "",
            "rojo=00f067aa0ba902b7",
            "ot=rv:abc",
            "xot=th:8",
            "ot=pth:8",
        ] {
            assert_eq!(count(none), None, "{none:?}");
        }
    }

    #[test]
    fn malformed_values_are_problems_not_counts() {
        use SamplingProblem::*;
        let cases = [
            ("ot=th:fffffffffffffff", ThresholdTooLong),
            ("ot=th:", ThresholdNotHex),
            ("ot=th:0x8", ThresholdNotHex),
            ("ot=th:g", ThresholdNotHex),
            ("ot=th:8 8", ThresholdNotHex),
            ("ot=p:64", PowerOutOfRange),
            ("ot=p:-1", PowerOutOfRange),
            ("ot=p:", PowerOutOfRange),
            ("ot=p:1.5", PowerOutOfRange),
            ("ot=p:99999999999999999999", PowerOutOfRange),
        ];
        for (state, problem) in cases {
            assert_eq!(count(state), Some(Err(problem)), "{state:?}");
        }
        assert_eq!(adjusted_count(b"ot=th:\xff"), Some(Err(ThresholdNotHex)));
    }
}
