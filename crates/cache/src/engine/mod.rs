//! The engine behind [`TwoTierCache`](crate::TwoTierCache): its shared state, and one
//! submodule per job over it. The state's fields are private to this module and its jobs;
//! everything else reaches the engine through the cache's methods.
//!
//! - `read`: the read path (L1, then L2 under a load lease, then the loader), `lease`:
//!   leases between instances;
//! - `install`: putting values in L1 and taking them out, under each key's lock;
//! - `invalidate` and `replay`: invalidations through both tiers and the bus, and what is
//!   owed to Redis while it fails;
//! - `batch`: batched reads (a [`Plan`](crate::Plan)) in one Redis round trip;
//! - `write_behind` and `write_through`: loaded values on their way to Redis, written rows
//!   into L1;
//! - `bus_listener`: other instances' invalidations.

mod batch;
mod bus_listener;
mod install;
mod invalidate;
mod lease;
mod read;
mod replay;
mod write_behind;
mod write_through;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::notification::RemovalCause;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use batch::{Batch, Identified, Plan, Slot, Step, Value};
pub use invalidate::InvalidationReport;
pub use write_through::WriteTicket;

use crate::coherence::{Coherence, Feed};
use crate::config::CacheConfig;
use crate::epoch::Epochs;
use crate::error::Error;
use crate::failures::Failures;
use crate::l1::{L1Entry, L1Stats, PerEntryTtl};
use crate::l2::{L2, PoolState};
use crate::observer::{CacheObserver, CircuitState, EvictionCause};
use crate::pending::PendingDeletes;
use crate::policy::{EntityPolicy, Policies};
use crate::schema::{CacheKey, Entity, KeySchema};
use crate::seal::Sealing;
use crate::stripes::Stripes;
use crate::tag_index::TagIndex;
use write_behind::WriteBehind;

/// The engine's shared state; the cache holds it in an `Arc`, its tasks a `Weak`.
pub(crate) struct Engine {
    keys: KeySchema,
    // Without L1 the cache still exists (its per-key lock merges loads), but entries
    // expire the moment they are installed.
    l1: moka::future::Cache<CacheKey, L1Entry>,
    l1_enabled: bool,
    l2: Option<L2>,
    /// Whether values in Redis are sealed, and with what (see `seal.rs`).
    sealing: Sealing,
    policies: Policies,
    /// Bounds a whole read that misses.
    load_timeout: Duration,
    soft_timeout: Duration,
    coherence: Arc<Coherence>,
    /// The bus's place among the invalidation feeds (with L2).
    bus_feed: Option<Feed>,
    tag_index: TagIndex,
    failures: Failures,
    pending: PendingDeletes,
    epochs: Epochs,
    /// Keys an L1 install may be under way for (a load, from before it reads anything to
    /// after it installs; a batched install, around its epoch check and insert): an
    /// invalidation takes the compute lock only of keys L1 holds or that are held here.
    installing: Stripes,
    /// How often invalidations removed a key from L1, per key stripe: what a write-through
    /// checks (see `write_through.rs`).
    dropped: Stripes,
    replay_wake: Arc<Notify>,
    // The replay task holds only a `Weak` to this, so it never keeps the cache alive; the
    // cache aborts it when dropped.
    replay_task: Mutex<Option<JoinHandle<()>>>,
    /// This cache's id on the bus (its own messages are ignored).
    instance: u64,
    /// Numbers the tokens this cache writes to Redis (see `token`).
    token_seq: std::sync::atomic::AtomicU64,
    /// When this cache last renewed the bus stream's TTL (Unix ms; 0: never).
    stream_renewed_ms: std::sync::atomic::AtomicU64,
    bus_channel: String,
    bus_stream: String,
    bus_task: Mutex<Option<JoinHandle<()>>>,
    /// Loaded values on their way to Redis (see `write_behind.rs`).
    write_behind: WriteBehind,
    write_task: Mutex<Option<JoinHandle<()>>>,
    observer: Arc<dyn CacheObserver>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        for task in [
            &mut self.replay_task,
            &mut self.bus_task,
            &mut self.write_task,
        ] {
            let task = task.get_mut().unwrap_or_else(PoisonError::into_inner);
            if let Some(task) = task.take() {
                task.abort();
            }
        }
    }
}

impl Engine {
    /// Builds the engine and, with Redis, starts its tasks (replay, bus, write-behind).
    pub(crate) fn start(
        config: CacheConfig,
        observer: Arc<dyn CacheObserver>,
    ) -> Result<Arc<Self>, Error> {
        let keys = KeySchema::new(
            &config.prefix,
            &config.env,
            config.version,
            &config.key_secret,
            config.schema.clone(),
        )
        .map_err(|e| config_error("namespace", e.to_string()))?;
        let l2 = match &config.redis {
            Some(_) if tokio::runtime::Handle::try_current().is_err() => {
                return Err(Error::NoRuntime);
            }
            Some(redis) => Some(
                L2::new(redis, config.breaker, Arc::clone(&observer))
                    .map_err(|e| config_error("redis_url", e.to_string()))?,
            ),
            None => None,
        };
        let listener = Arc::clone(&observer);
        let l1 = moka::future::Cache::builder()
            .max_capacity(config.l1_max_bytes)
            .weigher(|_key: &CacheKey, entry: &L1Entry| entry.weight())
            .expire_after(PerEntryTtl)
            .eviction_listener(move |key: Arc<CacheKey>, _entry, cause| {
                let cause = match cause {
                    RemovalCause::Size => EvictionCause::Size,
                    RemovalCause::Expired => EvictionCause::Expired,
                    RemovalCause::Explicit | RemovalCause::Replaced => return,
                };
                listener.evicted(key.entity(), cause);
            })
            .build();
        // An indexed key is recorded before its load; it lives in L1 at most load + max TTL
        // after.
        let longest_l1_ttl = config
            .policies
            .iter()
            .map(|(_, p)| p.max_ttl(p.l1_ttl))
            .max()
            .unwrap_or_default();
        let tag_idle = longest_l1_ttl + config.load_timeout + Duration::from_secs(1);
        let longest_l2_ttl = config
            .policies
            .iter()
            .map(|(_, p)| p.max_ttl(p.l2_ttl.max(p.negative_ttl)))
            .max()
            .unwrap_or_default();
        let has_l2 = l2.is_some();
        let keys_namespace = keys.namespace().to_owned();
        let instance: u64 = rand::random();
        let coherence = Arc::new(Coherence::new(config.staleness_bound, config.recovery));
        let (write_behind, writes) = WriteBehind::new();
        let engine = Arc::new(Engine {
            keys,
            l1,
            l1_enabled: config.l1_enabled,
            l2,
            sealing: Sealing::new(config.encryption_key.as_ref()),
            policies: config.policies,
            load_timeout: config.load_timeout,
            soft_timeout: config.soft_timeout,
            bus_feed: if has_l2 { coherence.claim() } else { None },
            coherence,
            tag_index: TagIndex::new(tag_idle),
            failures: Failures::new(),
            pending: PendingDeletes::new(longest_l2_ttl, config.schema.clone()),
            epochs: Epochs::new(),
            installing: Stripes::new(),
            dropped: Stripes::new(),
            replay_wake: Arc::new(Notify::new()),
            replay_task: Mutex::new(None),
            instance,
            token_seq: std::sync::atomic::AtomicU64::new(0),
            stream_renewed_ms: std::sync::atomic::AtomicU64::new(0),
            bus_channel: format!("{keys_namespace}bus"),
            bus_stream: format!("{keys_namespace}bus:stream"),
            bus_task: Mutex::new(None),
            write_behind,
            write_task: Mutex::new(None),
            observer,
        });
        if has_l2 {
            let task = tokio::spawn(replay::run(
                Arc::downgrade(&engine),
                Arc::clone(&engine.replay_wake),
            ));
            *engine
                .replay_task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(task);
            let listener = tokio::spawn(bus_listener::listen(Arc::downgrade(&engine)));
            *engine
                .bus_task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(listener);
            let writer = tokio::spawn(write_behind::run(Arc::downgrade(&engine), writes));
            *engine
                .write_task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(writer);
        }
        Ok(engine)
    }

    /// The key schema.
    pub(crate) fn keys(&self) -> &KeySchema {
        &self.keys
    }

    /// Whether values are kept in process.
    pub(crate) fn has_l1(&self) -> bool {
        self.l1_enabled
    }

    /// The Redis tier, when configured.
    pub(crate) fn l2(&self) -> Option<&L2> {
        self.l2.as_ref()
    }

    /// The L2 circuit breaker's state, when L2 is configured.
    pub(crate) fn circuit(&self) -> Option<CircuitState> {
        self.l2.as_ref().map(L2::circuit)
    }

    /// The L2 pool's state, when L2 is configured.
    pub(crate) fn pool_state(&self) -> Option<PoolState> {
        self.l2.as_ref().map(L2::pool_state)
    }

    /// Registers an invalidation feed besides the bus (see `coherence.rs`).
    pub(crate) fn invalidation_feed(&self) -> Option<Feed> {
        self.coherence.claim()
    }

    /// Whether every invalidation feed is live right now.
    pub(crate) fn l1_trusted(&self) -> bool {
        self.coherence.trusted(std::time::Instant::now())
    }

    /// Waits for the writes and invalidations on their way to Redis.
    pub(crate) async fn flush_l2_writes(&self) {
        self.pending.settled().await;
        self.write_behind.flushed().await;
    }

    /// Keys (and tags' indexed keys) whose invalidation has not reached Redis yet.
    pub(crate) fn owed_invalidations(&self) -> usize {
        self.pending.len()
    }

    /// L1's size right now.
    pub(crate) fn l1_stats(&self) -> L1Stats {
        L1Stats {
            entries: self.l1.entry_count(),
            weighted_bytes: self.l1.weighted_size(),
            max_bytes: self.l1.policy().max_capacity().unwrap_or(0),
        }
    }

    /// Runs L1's pending housekeeping now.
    pub(crate) async fn run_pending_tasks(&self) {
        self.l1.run_pending_tasks().await;
    }

    fn policy(&self, entity: Entity) -> &EntityPolicy {
        self.policies.get(entity)
    }

    /// How long a new L1 entry is fresh, and how long it is kept after that (grace).
    fn l1_life(
        &self,
        policy: &crate::policy::EntityPolicy,
        negative: bool,
    ) -> (Duration, Duration) {
        if self.l1_enabled {
            (policy.ttl(true, negative), policy.grace)
        } else {
            (Duration::ZERO, Duration::ZERO)
        }
    }

    /// The L1 TTL (jittered) and grace for a value of `entity`; zero with L1 off.
    fn l1_life_for(&self, entity: Entity, negative: bool) -> (Duration, Duration) {
        self.l1_life(self.policy(entity), negative)
    }

    /// The L2 TTL (jittered) for a value of `entity`.
    fn l2_ttl_for(&self, entity: Entity, negative: bool) -> Duration {
        self.policy(entity).ttl(false, negative)
    }

    /// A value no other write to Redis by any instance carries: this cache's id and a
    /// sequence number. A load lease's marker is one, and so is an invalidation's epoch value.
    fn token(&self) -> String {
        let seq = self
            .token_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{:x}:{seq:x}", self.instance)
    }

    /// Whether `key`'s invalidation is still owed to Redis (so Redis may hold it stale).
    fn owes(&self, key: &CacheKey) -> bool {
        self.pending.blocks(key)
    }
}

fn config_error(field: &str, message: String) -> Error {
    Error::Config(crate::error::ConfigError {
        problems: vec![crate::error::ConfigProblem {
            field: field.to_owned(),
            message,
        }],
    })
}
