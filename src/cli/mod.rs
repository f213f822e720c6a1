//! The commands of the binary besides serving.

pub mod breakdown;
pub mod memory;
pub mod replay;
