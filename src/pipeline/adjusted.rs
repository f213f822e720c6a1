//! A span's adjusted count, as `sampling:` says where to find it: the multiplier attribute,
//! else the tracestate's OpenTelemetry sampling value, else 1.

use crate::collections::text::same_str;
use crate::config::SamplingConfig;
use crate::otlp::decode::{AnyValue, Batch, SpanView};
use crate::otlp::sampling::{self, SamplingProblem, UNSAMPLED};

/// The largest multiplier taken from an attribute: the largest count a tracestate threshold
/// gives (one span kept in 2⁵⁶). Larger, a few spans would swamp every counter.
const MAX_MULTIPLIER: f64 = (1u64 << 56) as f64;

pub(super) struct AdjustedCounts {
    tracestate: bool,
    multiplier_key: Option<String>,
}

/// Why a span's sampling information was ignored; the span counts 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ignored {
    TraceState(SamplingProblem),
    /// The multiplier attribute is not a number from 0 to 2⁵⁶.
    Multiplier,
}

impl Ignored {
    pub(super) fn reason(self) -> &'static str {
        match self {
            Ignored::TraceState(problem) => problem.reason(),
            Ignored::Multiplier => "multiplier_invalid",
        }
    }
}

impl AdjustedCounts {
    pub(super) fn new(config: &SamplingConfig) -> AdjustedCounts {
        AdjustedCounts {
            tracestate: config.tracestate,
            multiplier_key: config.multiplier_attribute.clone(),
        }
    }

    /// The span attribute key decode must keep for this.
    pub(super) fn span_key(&self) -> Option<&str> {
        self.multiplier_key.as_deref()
    }

    /// How many operations `span` stands for.
    pub(super) fn of(&self, batch: &Batch, span: &SpanView) -> Result<f64, Ignored> {
        if let Some(key) = &self.multiplier_key {
            let resource = &batch.resources[span.resource];
            let found = (batch.span_attributes(span).iter())
                .chain(batch.resource_attributes(resource))
                .find(|a| same_str(a.key, key));
            if let Some(attribute) = found {
                return multiplier(attribute.value);
            }
        }
        if !self.tracestate || span.trace_state.is_empty() {
            return Ok(UNSAMPLED);
        }
        match sampling::adjusted_count(span.trace_state) {
            None => Ok(UNSAMPLED),
            Some(count) => count.map_err(Ignored::TraceState),
        }
    }
}

fn multiplier(value: AnyValue) -> Result<f64, Ignored> {
    let count = match value {
        AnyValue::Int(n) => n as f64,
        AnyValue::Double(x) => x,
        _ => return Err(Ignored::Multiplier),
    };
    // NaN is in no range.
    match (0.0..=MAX_MULTIPLIER).contains(&count) {
        true => Ok(count),
        false => Err(Ignored::Multiplier),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipliers_are_numbers_in_range() {
        assert_eq!(multiplier(AnyValue::Int(10)), Ok(10.0));
        assert_eq!(multiplier(AnyValue::Double(2.5)), Ok(2.5));
        assert_eq!(multiplier(AnyValue::Int(0)), Ok(0.0));
        assert_eq!(
            multiplier(AnyValue::Double(MAX_MULTIPLIER)),
            Ok(MAX_MULTIPLIER)
        );
        for absurd in [
            AnyValue::Int(-1),
            AnyValue::Double(f64::NAN),
            AnyValue::Double(f64::INFINITY),
            AnyValue::Double(1e300),
            AnyValue::Str("10"),
            AnyValue::Bool(true),
        ] {
            assert_eq!(multiplier(absurd), Err(Ignored::Multiplier), "{absurd:?}");
        }
    }
}
