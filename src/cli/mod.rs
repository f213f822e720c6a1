//! The commands of the binary besides serving.

pub mod breakdown;
pub mod replay;
