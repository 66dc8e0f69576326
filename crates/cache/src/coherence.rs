//! How far this instance can trust what it holds: the staleness bound.
//!
//! A cached value is only as fresh as the invalidations this instance hears. They arrive on
//! feeds: the Redis bus (see `bus_listener.rs`) and any the application registers (the
//! PostgreSQL listener). Each feed confirms it is live (the bus by a `PING` answered on its
//! subscription, after every message sent before it was applied). While every feed confirmed
//! within half the bound, values are served until their TTL: an invalidation would have
//! reached this instance. Otherwise (a feed is down, or it came back less than
//! `recovery` ago, while other instances may still be replaying what they owe) a value
//! is served only if it left the source of truth less than half the bound ago; older ones
//! are loaded again. Either way, no value is served more than the bound after a write
//! committed, as long as the writer reached Redis within the bound (an instance that
//! cannot reach Redis cannot tell anyone; the L1 TTL is the last resort).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Feeds a cache can wait on besides its own bus.
const MAX_FEEDS: usize = 4;
/// A slot no feed holds: it never makes the cache distrust L1.
const FREE: u64 = u64::MAX;

/// The trust state shared by a cache and its feeds.
pub(crate) struct Coherence {
    base: Instant,
    /// Milliseconds since `base` of each feed's last confirmation; `FREE` when unused.
    feeds: [AtomicU64; MAX_FEEDS],
    claimed: Mutex<[bool; MAX_FEEDS]>,
    /// Until when (ms since `base`) values are capped by age after a feed came back.
    recovering_until: AtomicU64,
    /// A feed is live while it confirmed within this.
    live_within: u64,
    /// While not every feed is live, values older than this are loaded again.
    age_cap: Duration,
    recovery: u64,
}

impl Coherence {
    /// Trust for a promised `bound`; after an outage, `recovery` passes before full trust.
    pub fn new(bound: Duration, recovery: Duration) -> Self {
        Coherence {
            base: Instant::now(),
            feeds: std::array::from_fn(|_| AtomicU64::new(FREE)),
            claimed: Mutex::new([false; MAX_FEEDS]),
            recovering_until: AtomicU64::new(0),
            live_within: millis(bound / 2),
            age_cap: bound / 2,
            recovery: millis(recovery),
        }
    }

    fn now_ms(&self, now: Instant) -> u64 {
        millis(now.saturating_duration_since(self.base))
    }

    /// How often a feed should confirm: well inside the window it is trusted for.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis((self.live_within / 4).max(1))
    }

    /// Whether every feed is live and none came back too recently.
    pub fn trusted(&self, now: Instant) -> bool {
        let now = self.now_ms(now);
        if now < self.recovering_until.load(Ordering::Relaxed) {
            return false;
        }
        self.feeds.iter().all(|feed| {
            let at = feed.load(Ordering::Relaxed);
            at == FREE || now.saturating_sub(at) <= self.live_within
        })
    }

    /// Whether a value that left the source of truth at `loaded_at_ms` (Unix ms) may be
    /// served as fresh right now.
    pub fn serveable(&self, now: Instant, loaded_at_ms: u64) -> bool {
        self.trusted(now) || crate::clock::age_since(loaded_at_ms) <= self.age_cap
    }

    /// Claims a slot for a feed, counted as confirmed now: nothing cached so far can have
    /// missed it, and it is distrusted if it does not confirm within the window.
    pub fn claim(self: &Arc<Self>) -> Option<Feed> {
        let mut claimed = self.claimed.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = claimed.iter().position(|c| !c)?;
        claimed[slot] = true;
        self.feeds[slot].store(self.now_ms(Instant::now()), Ordering::Relaxed);
        Some(Feed {
            coherence: Arc::clone(self),
            slot,
        })
    }
}

/// One source of invalidations; the cache trusts L1 fully only while every feed confirms.
/// Dropping it releases its slot (the cache stops waiting on it).
pub struct Feed {
    coherence: Arc<Coherence>,
    slot: usize,
}

impl Feed {
    /// The feed is live: everything sent on it before now has been applied.
    pub fn confirm(&self) {
        let c = &self.coherence;
        c.feeds[self.slot].store(c.now_ms(Instant::now()), Ordering::Relaxed);
    }

    /// The feed came back after an outage: what others owe may still be on its way, so
    /// values stay capped by age for the recovery period.
    pub fn recovered(&self) {
        let c = &self.coherence;
        let until = c.now_ms(Instant::now()).saturating_add(c.recovery);
        c.recovering_until.fetch_max(until, Ordering::Relaxed);
        self.confirm();
    }

    /// How often to confirm.
    pub fn heartbeat(&self) -> Duration {
        self.coherence.heartbeat()
    }
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("slot", &self.slot).finish()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let c = &self.coherence;
        c.feeds[self.slot].store(FREE, Ordering::Relaxed);
        c.claimed.lock().unwrap_or_else(PoisonError::into_inner)[self.slot] = false;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_that_stops_confirming_caps_values_by_age() {
        let c = Arc::new(Coherence::new(
            Duration::from_millis(200),
            Duration::from_millis(500),
        ));
        let start = Instant::now();
        assert!(c.trusted(start), "no feed: trusted");
        let feed = c.claim().unwrap();
        assert!(c.trusted(Instant::now()), "trusted when claimed");
        assert!(
            !c.trusted(start + Duration::from_millis(150)),
            "never confirmed since"
        );
        feed.confirm();
        let confirmed = Instant::now();
        assert!(c.trusted(confirmed));
        assert!(c.trusted(confirmed + Duration::from_millis(90)));
        assert!(!c.trusted(confirmed + Duration::from_millis(150)));
        // Untrusted: only values younger than half the bound are served.
        let later = confirmed + Duration::from_millis(150);
        let now_ms = crate::clock::unix_millis();
        assert!(c.serveable(later, now_ms));
        assert!(!c.serveable(later, now_ms - 1_000));
        drop(feed);
        assert!(c.trusted(later), "a released feed is not waited on");
    }

    #[test]
    fn a_feed_that_came_back_is_trusted_only_after_the_recovery_period() {
        let c = Arc::new(Coherence::new(
            Duration::from_millis(200),
            Duration::from_millis(500),
        ));
        let feed = c.claim().unwrap();
        feed.recovered();
        let now = Instant::now();
        assert!(!c.trusted(now));
        feed.confirm();
        assert!(
            !c.trusted(now),
            "recovery is not cut short by a confirmation"
        );
        let slots: Vec<Feed> = (0..MAX_FEEDS - 1).filter_map(|_| c.claim()).collect();
        assert_eq!(slots.len(), MAX_FEEDS - 1);
        assert!(c.claim().is_none(), "slots are bounded");
    }
}
