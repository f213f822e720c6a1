//! Alerting: `rules` (the committed rule file is what `spanlens rules` generates, promtool
//! accepts it), `promtool_rules` (its promtool unit tests), `alert_chain` (spanlens →
//! Prometheus → Alertmanager → webhook, for real), `slo_chain` (the SLO burn-rate alerts
//! through the same chain).

#[path = "../support/mod.rs"]
mod support;

mod alert_chain;
mod promtool_rules;
mod rules;
mod slo_chain;
