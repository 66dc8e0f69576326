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
//! Redis delete cannot bring the old value back. The marks are striped counters (an
//! indexed key counts under its tags too, so one mark covers every key of a tag): another key
//! on the same stripe only skips an L2 read, never serves a wrong value. A script that
//! fails owes its keys (above) before its marks go.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::log_throttle::{LOG_INTERVAL, LogThrottle};
use crate::outstanding::Outstanding;
use crate::schema::{CacheKey, Schema, Tag};
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
    /// Tags whose indexed keys in Redis could not even be listed.
    tags: HashSet<Tag>,
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
    /// Which tags index a key.
    schema: Schema,
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
    pub fn new(overflow_bypass: Duration, schema: Schema) -> Self {
        PendingDeletes {
            any: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            overflow_bypass,
            in_flight: Outstanding::new(),
            stripes: Stripes::new(),
            schema,
        }
    }

    /// Waits until no invalidation is on its way to Redis (each answered, or owed).
    pub async fn settled(&self) {
        self.in_flight.zero().await;
    }

    /// Marks `keys` and every key of `tags` in flight until the guard drops.
    pub fn begin<'a>(
        &'a self,
        keys: impl IntoIterator<Item = &'a CacheKey>,
        tags: &[Tag],
    ) -> InFlight<'a> {
        let mut stripes: Vec<usize> = keys
            .into_iter()
            .map(|key| self.stripes.of(key))
            .chain(tags.iter().map(|tag| self.stripes.of(tag)))
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

    /// Whether an invalidation of `key`, or of a tag indexing it, is on its way to Redis.
    fn in_flight(&self, key: &CacheKey) -> bool {
        self.in_flight.any()
            && (self.stripes.get(self.stripes.of(key)) > 0
                || self
                    .schema
                    .indexed_tags(key)
                    .any(|tag| self.stripes.get(self.stripes.of(&tag)) > 0))
    }

    /// Owes the deletion of `keys` and of every key of `tags`.
    pub fn add(&self, keys: impl IntoIterator<Item = CacheKey>, tags: &[Tag]) {
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
        state.tags.extend(tags.iter().copied());
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
            || (!state.tags.is_empty()
                && self
                    .schema
                    .indexed_tags(key)
                    .any(|tag| state.tags.contains(&tag)))
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

    /// Every indexed key of `tag` is gone from L2.
    pub fn resolve_tag(&self, tag: &Tag) {
        let mut state = self.lock();
        state.tags.remove(tag);
        self.refresh_any(&state);
    }

    /// Up to `max` keys and tags still owed.
    pub fn snapshot(&self, max: usize) -> (Vec<CacheKey>, Vec<Tag>) {
        let state = self.lock();
        (
            state.keys.iter().take(max).copied().collect(),
            state.tags.iter().take(max).copied().collect(),
        )
    }

    /// How many keys, tags and bus messages are owed.
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.keys.len()
            + state.tags.len()
            + state.publishes.len()
            + usize::from(state.publish_overflow)
    }

    fn refresh_any(&self, state: &State) {
        let any = !state.keys.is_empty()
            || !state.tags.is_empty()
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
    use crate::test_schema::{TestKeys, keys};

    fn pending() -> (&'static TestKeys, PendingDeletes) {
        let k = keys();
        (
            k,
            PendingDeletes::new(Duration::from_secs(60), k.schema.clone()),
        )
    }

    #[test]
    fn owed_keys_block_l2_reads_until_resolved() {
        let (k, pending) = pending();
        assert!(!pending.blocks(&k.by_id.key(1)));
        pending.add([k.by_id.key(1)], &[k.owner.of(7)]);
        assert!(pending.blocks(&k.by_id.key(1)));
        assert!(!pending.blocks(&k.by_id.key(2)));
        assert!(
            pending.blocks(&k.page.key((7, 10))),
            "any indexed key of the tag"
        );
        assert!(!pending.blocks(&k.page.key((8, 10))));
        assert_eq!(pending.len(), 2);
        pending.resolve(&k.by_id.key(1));
        pending.resolve_tag(&k.owner.of(7));
        assert!(!pending.blocks(&k.by_id.key(1)));
        assert!(!pending.blocks(&k.page.key((7, 10))));
        assert_eq!(pending.len(), 0);
        assert!(!pending.any.load(Ordering::Acquire));
    }

    #[test]
    fn keys_in_flight_block_l2_reads_until_the_guard_drops() {
        let (k, pending) = pending();
        let (a, b) = (k.by_id.key(1), k.by_id.key(2));
        let tag = k.owner.of(7);
        let first = pending.begin([&a], &[tag]);
        assert!(pending.blocks(&a));
        assert!(
            pending.blocks(&k.page.key((7, 10))),
            "any indexed key of the tag"
        );
        // Two invalidations of one key: it stays blocked until both are through.
        let second = pending.begin([&a, &b], &[]);
        drop(first);
        assert!(pending.blocks(&a) && pending.blocks(&b));
        // Unless the tag's stripe is one of the keys' (striping: a skipped L2 read only).
        let page = k.page.key((7, 10));
        let stripes = [pending.stripes.of(&a), pending.stripes.of(&b)];
        if !stripes.contains(&pending.stripes.of(&tag))
            && !stripes.contains(&pending.stripes.of(&page))
        {
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
        let (k, pending) = pending();
        pending.add(
            (0..MAX_PENDING_KEYS as i64 + 5).map(|id| k.by_id.key(id)),
            &[],
        );
        assert_eq!(pending.len(), MAX_PENDING_KEYS);
        assert!(
            pending.blocks(&k.sized.key((1, crate::test_schema::Size::Small))),
            "unrelated keys too"
        );
    }
}
