//! Durations joined across services: `e2e_derived` (derived histograms and the join window),
//! `e2e_breakdown` and `breakdown` (the per-correlation breakdown, JSON and `spanlens
//! breakdown`), `scale_out` (sidecars summed by Prometheus, a restart, key-affine gateways in
//! front of replicas).

#[path = "../support/mod.rs"]
mod support;

mod breakdown;
mod e2e_breakdown;
mod e2e_derived;
mod scale_out;
