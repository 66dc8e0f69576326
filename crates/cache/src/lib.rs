//! Tiercache's engine: a two-tier read-through cache (moka L1, Redis L2) for the entities a
//! service declares ([`Schema`]): typed keys, per-entity TTL policies, negative caching,
//! invalidation of derived keys through tags, batched reads that follow ids in one Redis
//! round trip, a circuit breaker in front of Redis, and an observer that reports
//! everything it does.
//!
//! Start at [`Schema`], then [`TwoTierCache`]. The crate knows nothing of Postgres, HTTP or Prometheus:
//! loaders are plain async closures, and what happens is reported through
//! [`CacheObserver`] for the monitoring crate to count.

pub mod breaker;
mod bus;
mod cache;
mod clock;
mod coherence;
mod config;
mod engine;
pub mod envelope;
mod epoch;
mod error;
mod failures;
mod invalidation;
mod l1;
pub mod l2;
pub mod log_throttle;
mod observer;
mod outstanding;
mod pending;
mod policy;
mod schema;
pub mod seal;
pub mod stale;
mod stripes;
mod tag_index;
#[cfg(test)]
mod test_schema;

pub use bus::STREAM_TTL_MS as BUS_STREAM_TTL_MS;
pub use cache::TwoTierCache;
pub use coherence::Feed;
pub use config::{BreakerConfig, CacheConfig, CacheConfigBuilder, RedisConfig};
pub use engine::{Batch, Identified, InvalidationReport, Plan, Slot, Step, Value, WriteTicket};
pub use error::{
    BoxError, ConfigError, ConfigProblem, EncryptionKeyError, Error, KeyError, SchemaError,
    SealError,
};
pub use invalidation::Invalidation;
pub use l1::L1Stats;
pub use l2::{L2Error, L2ErrorKind, LastL2Error, PoolState, RedisInfo};
pub use observer::{
    CacheObserver, CircuitState, CorruptKind, EvictionCause, Fanout, InvalidationSource,
    LoadOutcome, NoopObserver, Outcome, StaleReason, Tier,
};
pub use pending::MAX_PENDING_KEYS;
pub use policy::{EntityPolicy, Policies};
pub use schema::{
    CacheKey, Digest, Entity, Group, KeyDef, KeyPart, KeyParts, KeySchema, KeyWord, PartKind,
    Schema, SchemaBuilder, Tag, TagDef,
};
pub use seal::EncryptionKey;
pub use tag_index::MAX_INDEXED_PER_TAG;
