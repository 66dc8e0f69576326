//! Invalidations that did not reach Redis, kept until they do.
//!
//! # When Redis fails
//!
//! An invalidation always clears L1 at once; its Redis deletes may fail (timeout, circuit
//! open). Such keys are kept here, and until Redis has confirmed their deletion this
//! instance does not read them from L2: a read loads from the source of truth and
//! overwrites the stale copy, so a read after a write on this instance never sees the old
//! value. A background task replays the deletes with capped backoff once Redis answers.
//!
//! The set is bounded. Past the bound the keys themselves are no longer remembered, so
//! every L2 read is skipped until the longest L2 TTL has passed (every stale copy has
//! expired by then): slower, never wrong.
//!
//! # In flight
//!
//! An invalidation's Redis script and its L1 removals run side by side. While the script
//! is on its way, its keys are marked in flight ([`PendingDeletes::begin`]): this
//! instance does not read them from L2 either, so a read between the L1 removal and the
//! Redis delete cannot bring the old value back. The marks are striped counters (a
//! history page counts under its lead, so one mark covers every page of it): another key
//! on the same stripe only skips an L2 read, never serves a wrong value. A script that
//! fails owes its keys (above) before its marks go.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::key::CacheKey;
use crate::log_throttle::{LOG_INTERVAL, LogThrottle};
use crate::outstanding::Outstanding;
use crate::stripes::Stripes;

/// Keys kept at most; beyond, L2 reads are skipped altogether for a while.
pub const MAX_PENDING_KEYS: usize = 100_000;

/// Bus messages kept at most; beyond, one "flush everything" is owed instead.
pub const MAX_OWED_PUBLISHES: usize = 10_000;

#[derive(Default)]
struct State {
    /// Bus messages not yet published.
    publishes: std::collections::VecDeque<String>,
    /// Publishes were dropped past the bound: owe one "flush everything" instead.
    publish_overflow: bool,
    keys: HashSet<CacheKey>,
    /// Leads whose history pages in Redis could not even be listed.
    history_leads: HashSet<i64>,
    /// After an overflow: skip every L2 read until then.
    bypass_until: Option<Instant>,
}

/// The set of L2 deletes still owed, and those on their way.
pub(crate) struct PendingDeletes {
    // A cheap check on the read path: nothing owed, nothing to look up.
    any: AtomicBool,
    state: Mutex<State>,
    overflow_bypass: Duration,
    /// Invalidations on their way to Redis (a cheap check, as `any`).
    in_flight: Outstanding,
    /// Their keys' marks, per stripe.
    stripes: Stripes,
}

/// An invalidation's in-flight marks; dropping it takes them back.
pub(crate) struct InFlight<'a> {
    pending: &'a PendingDeletes,
    stripes: Vec<usize>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        for &stripe in &self.stripes {
            self.pending.stripes.sub(stripe);
        }
        self.pending.in_flight.done(1);
    }
}

impl PendingDeletes {
    /// An empty set; `overflow_bypass` is the longest L2 TTL.
    pub fn new(overflow_bypass: Duration) -> Self {
        PendingDeletes {
            any: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            overflow_bypass,
            in_flight: Outstanding::new(),
            stripes: Stripes::new(),
        }
    }

    /// Waits until no invalidation is on its way to Redis (each answered, or owed).
    pub async fn settled(&self) {
        self.in_flight.zero().await;
    }

    /// Marks `keys` and `history_of`'s pages in flight until the guard drops.
    pub fn begin<'a>(
        &'a self,
        keys: impl IntoIterator<Item = &'a CacheKey>,
        history_of: Option<i64>,
    ) -> InFlight<'a> {
        let mut stripes: Vec<usize> = keys
            .into_iter()
            .map(|key| self.stripe(key))
            .chain(history_of.map(|lead| self.lead_stripe(lead)))
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        // The total first, so a reader that sees a stripe's mark also passes the cheap check.
        self.in_flight.add(1);
        for &stripe in &stripes {
            self.stripes.add(stripe);
        }
        InFlight {
            pending: self,
            stripes,
        }
    }

    /// Whether an invalidation of `key` is on its way to Redis.
    fn in_flight(&self, key: &CacheKey) -> bool {
        self.in_flight.any() && self.stripes.get(self.stripe(key)) > 0
    }

    /// A key's stripe; every history page of a lead shares its lead's.
    fn stripe(&self, key: &CacheKey) -> usize {
        match key.history_page() {
            Some((lead, _, _)) => self.lead_stripe(lead),
            None => self.stripes.of(key),
        }
    }

    fn lead_stripe(&self, lead: i64) -> usize {
        // Apart from any key's hash: a lead's pages are not a key of their own.
        self.stripes.of(&("history", lead))
    }

    /// Owes the deletion of `keys` and of `history_of`'s pages.
    pub fn add(&self, keys: impl IntoIterator<Item = CacheKey>, history_of: Option<i64>) {
        let mut state = self.lock();
        for key in keys {
            if state.keys.len() >= MAX_PENDING_KEYS {
                state.bypass_until = Some(Instant::now() + self.overflow_bypass);
                // Every write while the set is full: one line per interval.
                static OVERFLOW: LogThrottle = LogThrottle::new(LOG_INTERVAL);
                if let Some(suppressed) = OVERFLOW.admit() {
                    tracing::error!(
                        max = MAX_PENDING_KEYS,
                        suppressed,
                        "too many invalidations owed to Redis; skipping L2 reads until they expire"
                    );
                }
                break;
            }
            state.keys.insert(key);
        }
        if let Some(lead) = history_of {
            state.history_leads.insert(lead);
        }
        self.any.store(true, Ordering::Release);
    }

    /// Owes the publication of a bus message.
    pub fn owe_publish(&self, payload: String) {
        let mut state = self.lock();
        if state.publishes.len() >= MAX_OWED_PUBLISHES {
            state.publishes.clear();
            state.publish_overflow = true;
        } else {
            state.publishes.push_back(payload);
        }
        self.any.store(true, Ordering::Release);
    }

    /// The owed publications, oldest first (and whether some were dropped for the bound).
    /// They stay owed until [`published`](Self::published) says they went out.
    pub fn publishes(&self) -> (Vec<String>, bool) {
        let state = self.lock();
        (
            state.publishes.iter().cloned().collect(),
            state.publish_overflow,
        )
    }

    /// The oldest `n` owed publications (and the flush, if `overflow`) went out.
    pub fn published(&self, n: usize, overflow: bool) {
        let mut state = self.lock();
        let n = n.min(state.publishes.len());
        state.publishes.drain(..n);
        if overflow {
            state.publish_overflow = false;
        }
        self.refresh_any(&state);
    }

    /// Whether a read of `key` must not trust L2: its delete is owed or on its way.
    pub fn blocks(&self, key: &CacheKey) -> bool {
        if self.in_flight(key) {
            return true;
        }
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let mut state = self.lock();
        if let Some(until) = state.bypass_until {
            if Instant::now() < until {
                return true;
            }
            state.bypass_until = None;
            self.refresh_any(&state);
        }
        state.keys.contains(key)
            || key
                .history_page()
                .is_some_and(|(lead, _, _)| state.history_leads.contains(&lead))
    }

    /// `key` no longer holds a stale value in L2 (deleted, or overwritten with a fresh one).
    pub fn resolve(&self, key: &CacheKey) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        state.keys.remove(key);
        self.refresh_any(&state);
    }

    /// Every lead's history pages are gone from L2.
    pub fn resolve_history(&self, lead: i64) {
        let mut state = self.lock();
        state.history_leads.remove(&lead);
        self.refresh_any(&state);
    }

    /// Up to `max` keys and leads still owed.
    pub fn snapshot(&self, max: usize) -> (Vec<CacheKey>, Vec<i64>) {
        let state = self.lock();
        (
            state.keys.iter().take(max).copied().collect(),
            state.history_leads.iter().take(max).copied().collect(),
        )
    }

    /// How many keys, leads and bus messages are owed.
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.keys.len()
            + state.history_leads.len()
            + state.publishes.len()
            + usize::from(state.publish_overflow)
    }

    fn refresh_any(&self, state: &State) {
        let any = !state.keys.is_empty()
            || !state.history_leads.is_empty()
            || !state.publishes.is_empty()
            || state.publish_overflow
            || state.bypass_until.is_some();
        self.any.store(any, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain sets with no invariant a panic could break mid-update.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeySchema;

    fn keys() -> KeySchema {
        KeySchema::new("tc", "t", 1, b"0123456789abcdef").unwrap()
    }

    #[test]
    fn owed_keys_block_l2_reads_until_resolved() {
        let k = keys();
        let pending = PendingDeletes::new(Duration::from_secs(60));
        assert!(!pending.blocks(&k.lead_by_id(1)));
        pending.add([k.lead_by_id(1)], Some(7));
        assert!(pending.blocks(&k.lead_by_id(1)));
        assert!(!pending.blocks(&k.lead_by_id(2)));
        assert!(pending.blocks(&k.history(7, 10, 0)), "any page of the lead");
        assert!(!pending.blocks(&k.history(8, 10, 0)));
        assert_eq!(pending.len(), 2);
        pending.resolve(&k.lead_by_id(1));
        pending.resolve_history(7);
        assert!(!pending.blocks(&k.lead_by_id(1)));
        assert!(!pending.blocks(&k.history(7, 10, 0)));
        assert_eq!(pending.len(), 0);
        assert!(!pending.any.load(Ordering::Acquire));
    }

    #[test]
    fn keys_in_flight_block_l2_reads_until_the_guard_drops() {
        let k = keys();
        let pending = PendingDeletes::new(Duration::from_secs(60));
        let (a, b) = (k.lead_by_id(1), k.lead_by_id(2));
        let first = pending.begin([&a], Some(7));
        assert!(pending.blocks(&a));
        assert!(pending.blocks(&k.history(7, 10, 0)), "any page of the lead");
        // Two invalidations of one key: it stays blocked until both are through.
        let second = pending.begin([&a, &b], None);
        drop(first);
        assert!(pending.blocks(&a) && pending.blocks(&b));
        // Unless the lead's stripe is one of the keys' (striping: a skipped L2 read only).
        let page = k.history(7, 10, 0);
        if ![pending.stripe(&a), pending.stripe(&b)].contains(&pending.stripe(&page)) {
            assert!(!pending.blocks(&page));
        }
        drop(second);
        assert!(!pending.blocks(&a) && !pending.blocks(&b));
        assert_eq!(pending.len(), 0, "in flight is not owed");
        assert!(!pending.in_flight.any());
        assert!(pending.stripes.all_zero());
    }

    #[test]
    fn overflow_skips_every_l2_read_for_a_while() {
        let k = keys();
        let pending = PendingDeletes::new(Duration::from_secs(60));
        pending.add(
            (0..MAX_PENDING_KEYS as i64 + 5).map(|id| k.lead_by_id(id)),
            None,
        );
        assert_eq!(pending.len(), MAX_PENDING_KEYS);
        assert!(pending.blocks(&k.org_by_phone("+1")), "unrelated keys too");
    }
}
