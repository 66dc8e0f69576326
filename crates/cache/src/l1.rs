//! L1's entries: the decoded value (no decoding on a hit) or a cached "not found", with
//! how long each is fresh and kept, and the size it is charged.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::coherence::Coherence;
use crate::schema::CacheKey;

/// Bytes charged to every L1 entry on top of its encoded size (key, entry, moka's own node).
const ENTRY_OVERHEAD: u32 = 160;

/// A value in L1: the decoded value itself (no decoding on a hit), or a cached "not found".
/// It is fresh until `fresh_until`; L1 keeps it for its entity's grace window beyond that,
/// to be served stale when the loader fails or is slow.
#[derive(Clone)]
pub(crate) struct L1Entry {
    pub(crate) value: Option<Arc<dyn Any + Send + Sync>>,
    weight: u32,
    /// How long L1 keeps it: freshness plus grace.
    keep: Duration,
    fresh_until: Instant,
    stale_until: Instant,
    /// When the value left the source of truth, in Unix milliseconds.
    pub(crate) loaded_at_ms: u64,
}

impl L1Entry {
    pub(crate) fn new<T: Send + Sync + 'static>(
        value: Option<Arc<T>>,
        encoded_len: usize,
        life: (Duration, Duration),
        loaded_at_ms: u64,
    ) -> Self {
        Self::erased(
            value.map(|v| v as Arc<dyn Any + Send + Sync>),
            encoded_len,
            life,
            loaded_at_ms,
        )
    }

    /// [`new`](Self::new) for a value whose type is known only to its reader.
    pub(crate) fn erased(
        value: Option<Arc<dyn Any + Send + Sync>>,
        encoded_len: usize,
        (ttl, grace): (Duration, Duration),
        loaded_at_ms: u64,
    ) -> Self {
        let weight = u32::try_from(encoded_len)
            .unwrap_or(u32::MAX)
            .saturating_add(ENTRY_OVERHEAD);
        let now = Instant::now();
        let keep = ttl.saturating_add(grace);
        L1Entry {
            value,
            weight,
            keep,
            fresh_until: now + ttl,
            stale_until: now + keep,
            loaded_at_ms,
        }
    }

    /// Whether it may be served as fresh at `now`: within its TTL, and young enough for
    /// what this instance can vouch for (see `coherence.rs`).
    pub(crate) fn fresh(&self, now: Instant, coherence: &Coherence) -> bool {
        now < self.fresh_until && coherence.serveable(now, self.loaded_at_ms)
    }

    /// Whether this entry can be served to a caller asking for a `T`.
    pub(crate) fn holds<T: 'static>(&self) -> bool {
        self.value.as_ref().is_none_or(|v| (**v).is::<T>())
    }

    /// What it is charged against L1's bound.
    pub(crate) fn weight(&self) -> u32 {
        self.weight
    }

    /// Until when it may be served stale (its grace window's end).
    pub(crate) fn stale_until(&self) -> Instant {
        self.stale_until
    }

    /// The value as a `T`; `Err` when it holds another type.
    pub(crate) fn downcast<T: Send + Sync + 'static>(self) -> Result<Option<Arc<T>>, ()> {
        match self.value {
            None => Ok(None),
            Some(value) => value.downcast::<T>().map(Some).map_err(|_| ()),
        }
    }
}

/// Each entry lives its own freshness plus grace.
pub(crate) struct PerEntryTtl;

impl Expiry<CacheKey, L1Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &L1Entry,
        _at: Instant,
    ) -> Option<Duration> {
        Some(value.keep)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &L1Entry,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep)
    }
}

/// The L1 side of the cache right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L1Stats {
    /// Entries held (moka's estimate until pending housekeeping has run).
    pub entries: u64,
    /// Bytes charged against the bound.
    pub weighted_bytes: u64,
    /// The bound.
    pub max_bytes: u64,
}
