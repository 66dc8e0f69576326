//! [`LogThrottle`]: at most one log line per interval for a warning that repeats under a
//! fault, the next line saying how many were left out.
//!
//! A small shared helper: the engine, the repository and the server each log warnings that
//! a fault repeats (per write, per request), and they all depend on this crate. Counting
//! every occurrence is the metrics' job: a throttle only decides whether this one is also
//! written to the log.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a throttled warning may be logged: one line per kind per interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One kind of repeated warning: the first occurrence is logged, then at most one per
/// interval, and each logged line carries the count of those left out since the last.
///
/// Lock-free (two atomics), so it can sit on a request path and in a `static`:
///
/// ```
/// use tiercache::log_throttle::{LOG_INTERVAL, LogThrottle};
///
/// static PAST_BUDGET: LogThrottle = LogThrottle::new(LOG_INTERVAL);
///
/// if let Some(suppressed) = PAST_BUDGET.admit() {
///     tracing::warn!(suppressed, "webhook past its budget");
/// }
/// ```
#[derive(Debug)]
pub struct LogThrottle {
    interval_ms: u64,
    /// When the next line may be written, in milliseconds on [`now_ms`]'s clock.
    next_ms: AtomicU64,
    /// Occurrences left out since the last line.
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// A throttle letting one line through per `interval`.
    pub const fn new(interval: Duration) -> Self {
        let millis = interval.as_millis();
        LogThrottle {
            interval_ms: if millis > u64::MAX as u128 {
                u64::MAX
            } else {
                millis as u64
            },
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to log this occurrence: `Some(n)` with the `n` occurrences left out since the
    /// last line, or `None` when this one is left out (and counted for the next line).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(now_ms())
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Acquire);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        // Lost to the interval or to a concurrent caller that logs instead: counted, so one
        // taken just after that caller's swap goes to the line after it, never nowhere.
        self.suppressed.fetch_add(1, Ordering::AcqRel);
        None
    }
}

/// Milliseconds on a monotonic clock shared by every throttle of the process.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_is_logged_and_the_rest_of_the_interval_left_out() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(throttle.admit_at(0), Some(0));
        for at in [1, 500, 9_999] {
            assert_eq!(throttle.admit_at(at), None, "at {at} ms");
        }
    }

    #[test]
    fn the_next_line_says_how_many_were_left_out() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(throttle.admit_at(1_000), Some(0));
        for at in 1_001..1_100 {
            assert_eq!(throttle.admit_at(at), None);
        }
        assert_eq!(throttle.admit_at(11_000), Some(99));
        // The count starts over with each line.
        assert_eq!(throttle.admit_at(11_001), None);
        assert_eq!(throttle.admit_at(21_000), Some(1));
    }

    #[test]
    fn after_a_quiet_spell_the_next_occurrence_is_logged_at_once() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(throttle.admit_at(0), Some(0));
        assert_eq!(throttle.admit_at(3_600_000), Some(0));
    }

    #[test]
    fn concurrent_callers_log_one_line_and_lose_no_count() {
        let throttle = LogThrottle::new(Duration::from_secs(3_600));
        let logged = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        if throttle.admit_at(5).is_some() {
                            logged.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(logged.load(Ordering::Relaxed), 1);
        assert_eq!(throttle.admit_at(3_600_005), Some(3_999));
    }

    #[test]
    fn the_shared_clock_admits_the_first_call() {
        let throttle = LogThrottle::new(LOG_INTERVAL);
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), None);
    }
}
