//! Loads that failed, kept briefly so the callers queued behind one share its error instead
//! of each trying again.
//!
//! Every miss asks here, and almost none finds anything: the time of the last failure,
//! kept in an atomic, lets a miss that began after it skip the map.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::schema::CacheKey;

/// How long a failed load is shared with the callers that were queued behind it.
const SHARING: Duration = Duration::from_secs(1);
/// Keys remembered at most.
const CAPACITY: u64 = 10_000;

/// Recent failed loads by key.
pub(crate) struct Failures {
    /// Each with when it was recorded, as `last` counts.
    recent: moka::sync::Cache<CacheKey, Arc<(u64, Error)>>,
    /// When the last failure was recorded, in nanoseconds after `base` (0: never).
    last: AtomicU64,
    base: Instant,
}

impl Failures {
    pub fn new() -> Self {
        Failures {
            recent: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(SHARING)
                .build(),
            last: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// Records that a load of `key` failed with `error` now.
    pub fn record(&self, key: CacheKey, error: Error) {
        let at = self.since_base(Instant::now());
        self.recent.insert(key, Arc::new((at, error)));
        self.last.fetch_max(at, Ordering::Release);
    }

    /// The error of a load of `key` that failed at or after `asked`, if one did.
    pub fn since(&self, key: &CacheKey, asked: Instant) -> Option<Error> {
        let asked = self.since_base(asked);
        if self.last.load(Ordering::Acquire) < asked {
            return None;
        }
        self.recent
            .get(key)
            .filter(|failed| failed.0 >= asked)
            .map(|failed| failed.1.clone())
    }

    /// Nanoseconds from `base` to `at`, at least 1 (0 stands for "never").
    fn since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_schema::keys;

    #[test]
    fn a_failure_answers_those_who_asked_before_it_and_no_one_after() {
        let k = keys();
        let (a, b) = (k.by_id.key(1), k.by_id.key(2));
        let failures = Failures::new();
        let before = Instant::now();
        assert!(failures.since(&a, before).is_none(), "nothing failed yet");
        failures.record(
            a,
            Error::LoadTimeout {
                entity: k.item,
                after: Duration::from_secs(2),
            },
        );
        assert!(matches!(
            failures.since(&a, before),
            Some(Error::LoadTimeout { .. })
        ));
        assert!(failures.since(&b, before).is_none(), "another key");
        let after = Instant::now();
        assert!(failures.since(&a, after).is_none(), "asked after it failed");
    }
}
