//! What spanlens serves: the sharded series store, its exposition for scrapes, and the
//! Prometheus rules generated from the same config.

pub mod exposition;
pub mod rules;
pub mod store;
