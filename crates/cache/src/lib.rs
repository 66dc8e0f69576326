//! Tiercache's engine: a two-tier read-through cache (moka L1, Redis L2) with a typed key
//! schema, per-entity TTL policies, negative caching, invalidation of derived keys, a
//! circuit breaker in front of Redis, and an observer that reports everything it does.
//!
//! Start at [`TwoTierCache`]. The crate knows nothing of Postgres, HTTP or Prometheus:
//! loaders are plain async closures, and what happens is reported through
//! [`CacheObserver`] for the monitoring crate to count.

pub mod breaker;
mod bus;
mod bus_listener;
mod cache;
mod call;
mod coherence;
mod config;
pub mod envelope;
mod epoch;
mod error;
mod failures;
mod history_index;
mod invalidation;
mod key;
pub mod l2;
pub mod log_throttle;
mod observer;
mod outstanding;
mod pending;
mod policy;
pub mod seal;
pub mod stale;
mod stripes;
mod write_behind;
mod write_through;

pub use bus::STREAM_TTL_MS as BUS_STREAM_TTL_MS;
pub use cache::{InvalidationReport, L1Stats, TwoTierCache};
pub use call::{CallSlots, Identified, Slot};
pub use coherence::Feed;
pub use config::{BreakerConfig, CacheConfig, CacheConfigBuilder, RedisConfig};
pub use error::{
    BoxError, ConfigError, ConfigProblem, EncryptionKeyError, Error, KeyError, SealError,
};
pub use history_index::MAX_PAGES_PER_LEAD;
pub use invalidation::Invalidation;
pub use key::{CacheKey, Channel, KeySchema, PhoneDigest};
pub use l2::{L2Error, L2ErrorKind, LastL2Error, PoolState, RedisInfo};
pub use observer::{
    CacheObserver, CircuitState, CorruptKind, Entity, EvictionCause, Fanout, InvalidationSource,
    LoadOutcome, NoopObserver, Outcome, StaleReason, Tier,
};
pub use pending::MAX_PENDING_KEYS;
pub use policy::{EntityPolicy, Policies};
pub use seal::EncryptionKey;
pub use write_through::WriteTicket;
