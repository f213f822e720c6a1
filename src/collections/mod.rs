//! Small data structures of the hot path, named for what they hold.

pub(crate) mod interned;
pub(crate) mod recent;
pub(crate) mod shards;
pub(crate) mod sizes;
pub(crate) mod text;
