//! Wall-clock time in Unix milliseconds: when a value left the source of truth travels with
//! it (in the envelope, in bus messages), so instances compare ages across processes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long ago `loaded_at_ms` (Unix milliseconds) was; zero if the clock went back.
pub(crate) fn age_since(loaded_at_ms: u64) -> Duration {
    Duration::from_millis(unix_millis().saturating_sub(loaded_at_ms))
}

/// Now, in Unix milliseconds (0 before 1970).
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
