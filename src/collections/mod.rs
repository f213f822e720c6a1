//! Small data structures of the hot path, named for what they hold.

pub mod interned;
pub mod recent;
pub mod shards;
pub mod text;
