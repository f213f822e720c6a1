//! One task's spans laid out in time: a row per stage span across services and traces, by
//! start, placed from the task's first start (its creation), with the idle time before each
//! row (nothing of the task running: a queue wait, a result on its way). The operator page
//! draws it in SVG, `spanlens breakdown` as text bars.

use super::{Breakdown, StageTiming, StepBreakdown};

/// A row of the waterfall.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bar<'a> {
    pub(crate) timing: &'a StageTiming,
    /// The step the span belongs to; None for the task's own spans.
    pub(crate) step: Option<&'a StepBreakdown>,
    /// From the task's first start to this span's start, in milliseconds.
    pub(crate) offset_ms: f64,
    /// Milliseconds since every earlier row had ended, when none was running at this start.
    pub(crate) gap_before_ms: Option<f64>,
}

impl Bar<'_> {
    pub(crate) fn end_ms(&self) -> f64 {
        self.offset_ms + self.timing.duration_ms
    }

    /// The row's name: the stage, after the step's name (`?` when unknown) and `separator`
    /// for a step's span.
    pub(crate) fn name(&self, separator: &str) -> String {
        match self.step {
            Some(step) => format!(
                "{}{separator}{}",
                step.step_name.as_deref().unwrap_or("?"),
                self.timing.stage
            ),
            None => self.timing.stage.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Waterfall<'a> {
    pub(crate) bars: Vec<Bar<'a>>,
    /// From the first start to the last end, in milliseconds.
    pub(crate) total_ms: f64,
}

impl<'a> Waterfall<'a> {
    pub(crate) fn of(b: &'a Breakdown) -> Waterfall<'a> {
        let mut spans: Vec<(&StageTiming, Option<&StepBreakdown>)> = (b.task_stages.iter())
            .map(|t| (t, None))
            .chain((b.steps.iter()).flat_map(|s| s.stages.iter().map(move |t| (t, Some(s)))))
            .collect();
        spans.sort_by_key(|(t, _)| t.start_unix_nano);
        let origin = spans.first().map_or(0, |(t, _)| t.start_unix_nano);
        let mut ended_ms = f64::NEG_INFINITY;
        let bars: Vec<Bar> = spans
            .into_iter()
            .map(|(timing, step)| {
                let offset_ms = (timing.start_unix_nano - origin) as f64 / 1e6;
                let gap = offset_ms - ended_ms;
                let bar = Bar {
                    timing,
                    step,
                    offset_ms,
                    gap_before_ms: (ended_ms.is_finite() && gap > 0.0).then_some(gap),
                };
                ended_ms = ended_ms.max(bar.end_ms());
                bar
            })
            .collect();
        let total_ms = bars.iter().map(Bar::end_ms).fold(0.0, f64::max);
        Waterfall { bars, total_ms }
    }

    /// Where `ms` falls on a scale of `width` units over the whole task.
    pub(crate) fn scale(&self, ms: f64, width: f64) -> f64 {
        match self.total_ms > 0.0 {
            true => ms / self.total_ms * width,
            false => 0.0,
        }
    }
}
