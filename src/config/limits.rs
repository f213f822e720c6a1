//! Bounds the configuration is checked against. Each is set by how the flow stores what it
//! bounds, so a config that passes `check-config` always builds and runs.

use std::ops::RangeInclusive;
use std::time::Duration;

/// Extra labels a stage may turn on (after service and handler_language): a span's label
/// values are resolved into a fixed array of this many plus two.
pub const MAX_EXTRA_LABELS: usize = 6;

/// Labels a stage or derived histogram may have: service, handler_language and the extras.
pub const MAX_LABELS: usize = 2 + MAX_EXTRA_LABELS;

/// Parts of one derived metric: the join window names a part in a byte, 255 meaning none.
pub const MAX_DERIVED_PARTS: usize = 254;

/// The longest `join.max_wait`: the join window times keys' waits in milliseconds, 31 bits
/// (about 24.8 days).
pub const MAX_JOIN_WAIT: Duration = Duration::from_millis(1 << 31);

/// Native histogram schemas, as Prometheus accepts them: 2^schema buckets per power of two,
/// from 1/16 (a bucket spans 16 powers of two) to 256.
pub const NATIVE_SCHEMAS: RangeInclusive<i8> = -4..=8;

/// The fewest populated buckets a native histogram may be limited to: lowering the schema
/// merges neighbours in pairs, so one bucket could never hold two that straddle a merge.
pub const MIN_NATIVE_BUCKETS: usize = 2;
