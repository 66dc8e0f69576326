//! What the engine reports: the observer trait and the label enums it speaks in.
//!
//! Every label is an enum with `as_str() -> &'static str`, so the type fixes the label
//! set and a key, a piece of text or an id can never become a metric label.

use std::time::Duration;

use crate::l2::L2ErrorKind;
pub use crate::schema::Entity;

/// A cache tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The in-process moka cache.
    L1,
    /// The shared Redis cache.
    L2,
}

impl Tier {
    /// Every variant, in declaration order (the order of `self as usize`).
    pub const ALL: [Tier; 2] = [Tier::L1, Tier::L2];

    /// The tiers whose lookups carry a duration: L2 only (see [`CacheObserver::lookup`]).
    pub const TIMED: [Tier; 1] = [Tier::L2];

    /// The label value for this tier.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::L1 => "l1",
            Tier::L2 => "l2",
        }
    }
}

/// What a lookup in one tier found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A value was found.
    Hit,
    /// A cached "not found" was found and served as not found.
    NegativeHit,
    /// Nothing usable was found.
    Miss,
}

impl Outcome {
    /// Every variant, in declaration order (the order of `self as usize`).
    pub const ALL: [Outcome; 3] = [Outcome::Hit, Outcome::NegativeHit, Outcome::Miss];

    /// The label value for this outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::NegativeHit => "negative_hit",
            Outcome::Miss => "miss",
        }
    }
}

/// How a loader call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoadOutcome {
    /// The loader returned a value.
    Found,
    /// The loader returned "not found".
    NotFound,
    /// The loader returned an error.
    Error,
    /// The loader passed its timeout.
    Timeout,
}

impl LoadOutcome {
    /// Every variant, in declaration order (the order of `self as usize`).
    pub const ALL: [LoadOutcome; 4] = [
        LoadOutcome::Found,
        LoadOutcome::NotFound,
        LoadOutcome::Error,
        LoadOutcome::Timeout,
    ];

    /// The label value for this outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadOutcome::Found => "found",
            LoadOutcome::NotFound => "not_found",
            LoadOutcome::Error => "error",
            LoadOutcome::Timeout => "timeout",
        }
    }
}

/// Why a cached payload was thrown away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CorruptKind {
    /// The bytes do not decode as an envelope or as the expected type.
    Decode,
    /// The envelope was written by another envelope version.
    Version,
    /// An L1 entry held a value of another Rust type than the caller asked for.
    Type,
    /// A sealed value that does not open here (another encryption key, another Redis key,
    /// tampered), a sealed value where values are plain, or a plain one where they are sealed.
    Seal,
}

impl CorruptKind {
    /// Every variant, in declaration order (the order of `self as usize`).
    pub const ALL: [CorruptKind; 4] = [
        CorruptKind::Decode,
        CorruptKind::Version,
        CorruptKind::Type,
        CorruptKind::Seal,
    ];

    /// The label value for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            CorruptKind::Decode => "decode",
            CorruptKind::Version => "version",
            CorruptKind::Type => "type",
            CorruptKind::Seal => "seal",
        }
    }

    /// Whether a payload in `tier` can be found corrupt this way: L1 holds typed values, so
    /// only [`Type`](Self::Type) there; L2 holds bytes, never of the wrong Rust type.
    pub fn occurs_in(self, tier: Tier) -> bool {
        match tier {
            Tier::L1 => self == CorruptKind::Type,
            Tier::L2 => self != CorruptKind::Type,
        }
    }
}

/// Why L1 dropped an entry on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvictionCause {
    /// The byte bound was reached.
    Size,
    /// The entry's TTL ran out.
    Expired,
}

impl EvictionCause {
    /// Every variant, in declaration order (the order of `self as usize`).
    pub const ALL: [EvictionCause; 2] = [EvictionCause::Size, EvictionCause::Expired];

    /// The label value for this cause.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionCause::Size => "size",
            EvictionCause::Expired => "expired",
        }
    }
}

/// Why a stale value was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StaleReason {
    /// The loader failed (the source of truth is down, or timed out).
    LoadFailed,
    /// The loader was still running at the soft timeout; it refreshes in the background.
    SoftTimeout,
}

impl StaleReason {
    /// Every variant, in declaration order (the order of `self as usize`).
    pub const ALL: [StaleReason; 2] = [StaleReason::LoadFailed, StaleReason::SoftTimeout];

    /// The label value for this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::LoadFailed => "load_failed",
            StaleReason::SoftTimeout => "soft_timeout",
        }
    }
}

/// Who asked for an invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidationSource {
    /// A write through this process's repositories.
    Write,
    /// An operator through the admin API.
    Admin,
    /// Another instance, heard on the invalidation bus.
    Bus,
    /// A database trigger (a write that bypassed the service).
    Database,
}

impl InvalidationSource {
    /// Every variant, in declaration order (the order of `self as usize`).
    pub const ALL: [InvalidationSource; 4] = [
        InvalidationSource::Write,
        InvalidationSource::Admin,
        InvalidationSource::Bus,
        InvalidationSource::Database,
    ];

    /// The label value for this source.
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidationSource::Write => "write",
            InvalidationSource::Admin => "admin",
            InvalidationSource::Bus => "bus",
            InvalidationSource::Database => "database",
        }
    }
}

/// The circuit breaker's state in front of L2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// L2 is used.
    Closed,
    /// L2 is skipped after repeated failures.
    Open,
    /// One probe request is let through to see whether L2 has recovered.
    HalfOpen,
}

impl CircuitState {
    /// Every variant, in declaration order (the order of `self as usize`).
    pub const ALL: [CircuitState; 3] = [
        CircuitState::Closed,
        CircuitState::Open,
        CircuitState::HalfOpen,
    ];

    /// The label value for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// Receives what the engine does; every method defaults to doing nothing.
///
/// Methods are called on the request path, so an implementation must be cheap and must
/// not block: bump a counter, send on a channel, never await.
pub trait CacheObserver: Send + Sync + 'static {
    /// A lookup in `tier` ended with `outcome` after `took` (zero for L1: an in-process
    /// lookup is too fast to time usefully, and timing it would double a hit's cost).
    fn lookup(&self, _entity: Entity, _tier: Tier, _outcome: Outcome, _took: Duration) {}
    /// A cached value (or "not found") from `tier` was served, loaded from the source of
    /// truth `age` ago: how far behind the source an answer may be.
    fn served(&self, _entity: Entity, _tier: Tier, _age: Duration) {}
    /// A loader call ended with `outcome` after `took`.
    fn load(&self, _entity: Entity, _outcome: LoadOutcome, _took: Duration) {}
    /// A caller was served by another caller's load of the same key instead of loading.
    fn coalesced(&self, _entity: Entity) {}
    /// A stale value (past its freshness, within its grace window) was served.
    fn stale_served(&self, _entity: Entity, _reason: StaleReason) {}
    /// A payload in `tier` was unreadable; it was treated as a miss and deleted.
    fn corrupt(&self, _entity: Entity, _tier: Tier, _kind: CorruptKind) {}
    /// An L2 command failed (or was skipped by the open circuit).
    fn l2_error(&self, _kind: L2ErrorKind) {}
    /// L1 dropped an entry on its own.
    fn evicted(&self, _entity: Entity, _cause: EvictionCause) {}
    /// An entity's keys were invalidated.
    fn invalidated(&self, _entity: Entity, _source: InvalidationSource) {}
    /// Deletes owed to L2 (an invalidation that could not reach Redis) were replayed.
    fn owed_replayed(&self, _keys: usize) {}
    /// Another instance's invalidation arrived on the bus, `lag` after it was sent.
    fn bus_received(&self, _lag: Duration) {}
    /// The bus subscriber missed more than the stream keeps: L1 was flushed.
    fn bus_gap(&self) {}
    /// The circuit breaker in front of L2 changed state.
    fn circuit_changed(&self, _from: CircuitState, _to: CircuitState) {}
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopObserver;

impl CacheObserver for NoopObserver {}

/// Sends every event to each of several observers, in order.
pub struct Fanout(pub Vec<std::sync::Arc<dyn CacheObserver>>);

impl CacheObserver for Fanout {
    fn lookup(&self, entity: Entity, tier: Tier, outcome: Outcome, took: Duration) {
        self.0
            .iter()
            .for_each(|o| o.lookup(entity, tier, outcome, took));
    }
    fn served(&self, entity: Entity, tier: Tier, age: Duration) {
        self.0.iter().for_each(|o| o.served(entity, tier, age));
    }
    fn load(&self, entity: Entity, outcome: LoadOutcome, took: Duration) {
        self.0.iter().for_each(|o| o.load(entity, outcome, took));
    }
    fn coalesced(&self, entity: Entity) {
        self.0.iter().for_each(|o| o.coalesced(entity));
    }
    fn stale_served(&self, entity: Entity, reason: StaleReason) {
        self.0.iter().for_each(|o| o.stale_served(entity, reason));
    }
    fn corrupt(&self, entity: Entity, tier: Tier, kind: CorruptKind) {
        self.0.iter().for_each(|o| o.corrupt(entity, tier, kind));
    }
    fn l2_error(&self, kind: L2ErrorKind) {
        self.0.iter().for_each(|o| o.l2_error(kind));
    }
    fn evicted(&self, entity: Entity, cause: EvictionCause) {
        self.0.iter().for_each(|o| o.evicted(entity, cause));
    }
    fn invalidated(&self, entity: Entity, source: InvalidationSource) {
        self.0.iter().for_each(|o| o.invalidated(entity, source));
    }
    fn owed_replayed(&self, keys: usize) {
        self.0.iter().for_each(|o| o.owed_replayed(keys));
    }
    fn bus_received(&self, lag: Duration) {
        self.0.iter().for_each(|o| o.bus_received(lag));
    }
    fn bus_gap(&self) {
        self.0.iter().for_each(|o| o.bus_gap());
    }
    fn circuit_changed(&self, from: CircuitState, to: CircuitState) {
        self.0.iter().for_each(|o| o.circuit_changed(from, to));
    }
}
