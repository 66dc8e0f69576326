//! [`TwoTierCache`]: the read-through engine, L1 (moka) in front of L2 (Redis) in front of
//! a loader.

use std::any::Any;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::Expiry;
use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::bus::BusMessage;
use crate::coherence::{Coherence, Feed};
use crate::config::CacheConfig;
use crate::envelope;
use crate::epoch::Epochs;
use crate::error::{BoxError, Error};
use crate::failures::Failures;
use crate::invalidation::Invalidation;
use crate::l2::{GetOrLease, IndexEntry, L2, L2ErrorKind, LEASE_MARKER_PREFIX, PoolState, Publish};
use crate::log_throttle::{LOG_INTERVAL, LogThrottle};
use crate::observer::{
    CacheObserver, CircuitState, CorruptKind, EvictionCause, InvalidationSource, LoadOutcome,
    Outcome, StaleReason, Tier,
};
use crate::pending::PendingDeletes;
use crate::policy::Policies;
use crate::schema::{CacheKey, Entity, Group, KeySchema, Tag};
use crate::seal::Sealing;
use crate::stripes::Stripes;
use crate::tag_index::TagIndex;
use crate::write_behind::{QueuedSet, WriteBehind};
use crate::write_through::Written;

/// Bytes charged to every L1 entry on top of its encoded size (key, entry, moka's own node).
const ENTRY_OVERHEAD: u32 = 160;

/// Backoff between replays of invalidations owed to Redis.
const REPLAY_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Kept well under the recovery period (`CacheConfig::DEFAULT_RECOVERY`), so what an instance
/// owes reaches Redis before the others trust it fully again.
const REPLAY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often a caller waiting on another instance's load looks for its value.
const LEASE_POLL_MIN: Duration = Duration::from_millis(1);
const LEASE_POLL_MAX: Duration = Duration::from_millis(25);

/// How long an invalidation epoch stays in Redis after its last bump; far longer than any
/// read it guards (a read lasts at most the load timeout).
const EPOCH_TTL: Duration = Duration::from_secs(3600);

/// Keys deleted per replay command.
const REPLAY_BATCH: usize = 256;

/// A two-tier read-through cache: L1 in process, L2 in Redis, the loader behind both.
///
/// Cloning is cheap and clones share everything.
///
/// # Reading
///
/// [`get_or_load`](Self::get_or_load) looks in L1, then L2, then calls the loader, and
/// fills the tiers on the way back. Concurrent callers missing the same key on this
/// instance wait for one load (moka's per-key compute lock) instead of each loading. A
/// loader's `Ok(None)` ("not found") is cached too, for the entity's negative TTL. A
/// loaded value goes to Redis behind the read (one task sends the values of concurrent
/// misses together; [`flush_l2_writes`](Self::flush_l2_writes) waits for them), still
/// under the load's lease.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use tiercache::{
///     CacheConfig, EntityPolicy, Invalidation, InvalidationSource, KeyDef, NoopObserver, Schema,
///     TwoTierCache,
/// };
///
/// let mut schema = Schema::builder();
/// let user = schema.entity("user", EntityPolicy::with_l2_ttl(Duration::from_secs(600)));
/// let user_by_id: KeyDef<i64> = schema.key(user, "user:{}");
/// let config = CacheConfig::builder().schema(schema.build()?).build()?;
/// // No Redis URL: L1 only. With `.redis_url(Some(..))` the same code uses both tiers.
/// let cache = TwoTierCache::new(config, NoopObserver)?;
/// let key = user_by_id.key(42);
/// let load = || async { Ok::<_, std::io::Error>(Some("Ada".to_owned())) };
/// let name = cache.get_or_load(key, load).await?;
/// assert_eq!(name.as_deref().map(String::as_str), Some("Ada"));
///
/// // A second read is an L1 hit: the loader is not called.
/// let again = cache.get_or_load(key, || async { Ok::<Option<String>, std::io::Error>(None) }).await?;
/// assert_eq!(again, name);
///
/// // After a write: the next read loads again.
/// cache.invalidate(Invalidation::key(key), InvalidationSource::Write).await;
/// let gone = cache.get_or_load(key, || async { Ok::<Option<String>, std::io::Error>(None) }).await?;
/// assert_eq!(gone, None);
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
///
/// # Writing
///
/// After the source of truth has committed, [`invalidate`](Self::invalidate) drops the
/// entity's keys and every key derived from it from both tiers. Each key is removed under
/// the same per-key lock a load holds, so a load that began before the invalidation either
/// finishes first (and its value is then removed) or starts after (and reads the new
/// value): a stale value is never installed after the invalidation returns. The Redis
/// delete and the L1 removals run side by side, one Redis round trip in all; until Redis
/// has answered, this instance reads none of the keys from Redis (they are in flight, see
/// `pending.rs`), so the old value cannot come back from there either. When the write
/// returned the new row, [`invalidate_and_cache`](Self::invalidate_and_cache) also puts it
/// in this instance's L1, unless another invalidation of it came first (see
/// [`WriteTicket`](crate::WriteTicket)), and returns as soon as this instance serves the
/// new row: Redis's part (the deletes, the epochs, the bus message) goes on behind it, the
/// keys in flight meanwhile. A write with no row to cache (a message added to a lead's
/// conversation, say) returns as early through
/// [`invalidate_after_write`](Self::invalidate_after_write).
///
/// # When Redis fails
///
/// Reads never fail because of Redis: every L2 command has a timeout, failures are counted
/// by kind and the read goes on to the loader; after repeated failures a circuit breaker
/// skips L2 outright and probes it for recovery (see [`crate::breaker`]). With no Redis
/// configured the same engine runs with L2 absent, and answers the same.
///
/// # Corrupt entries
///
/// A payload that does not decode, or was written by another envelope version, is a miss:
/// it is deleted, counted through [`CacheObserver::corrupt`], and the value is reloaded.
///
/// # Sealed values
///
/// With an encryption key ([`CacheConfigBuilder::encryption_key`](crate::CacheConfigBuilder::encryption_key)),
/// every value written to Redis is sealed (see [`crate::seal`]) and only values sealed under
/// that key at that Redis key are read; anything else there is corrupt, as above. L1 holds
/// decoded values, so an L1 hit costs the same either way.
#[derive(Clone)]
pub struct TwoTierCache {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) keys: KeySchema,
    // Without L1 the cache still exists (its per-key lock merges loads), but entries
    // expire the moment they are installed.
    pub(crate) l1: moka::future::Cache<CacheKey, L1Entry>,
    l1_enabled: bool,
    pub(crate) l2: Option<L2>,
    /// Whether values in Redis are sealed, and with what (see `seal.rs`).
    pub(crate) sealing: Sealing,
    policies: Policies,
    /// Bounds a whole read that misses.
    load_timeout: Duration,
    soft_timeout: Duration,
    pub(crate) coherence: Arc<Coherence>,
    /// The bus's place among the invalidation feeds (with L2).
    pub(crate) bus_feed: Option<Feed>,
    pub(crate) tag_index: TagIndex,
    failures: Failures,
    pub(crate) pending: PendingDeletes,
    pub(crate) epochs: Epochs,
    /// Keys an L1 install may be under way for (a load, from before it reads anything to
    /// after it installs; a batched install, around its epoch check and insert): an
    /// invalidation takes the compute lock only of keys L1 holds or that are held here.
    pub(crate) installing: Stripes,
    /// How often invalidations removed a key from L1, per key stripe: what a write-through
    /// checks (see `write_through.rs`).
    pub(crate) dropped: Stripes,
    replay_wake: Arc<Notify>,
    // The replay task holds only a `Weak` to this, so it never keeps the cache alive; the
    // cache aborts it when dropped.
    replay_task: Mutex<Option<JoinHandle<()>>>,
    /// This cache's id on the bus (its own messages are ignored).
    pub(crate) instance: u64,
    /// Numbers the load leases this cache takes (see `lease_marker`).
    lease_seq: std::sync::atomic::AtomicU64,
    pub(crate) bus_channel: String,
    pub(crate) bus_stream: String,
    bus_task: Mutex<Option<JoinHandle<()>>>,
    /// Loaded values on their way to Redis (see `write_behind.rs`).
    pub(crate) write_behind: WriteBehind,
    write_task: Mutex<Option<JoinHandle<()>>>,
    pub(crate) observer: Arc<dyn CacheObserver>,
}

impl Drop for Inner {
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
    fn holds<T: 'static>(&self) -> bool {
        self.value.as_ref().is_none_or(|v| (**v).is::<T>())
    }

    /// The value as a `T`; `Err` when it holds another type.
    pub(crate) fn downcast<T: Send + Sync + 'static>(self) -> Result<Option<Arc<T>>, ()> {
        match self.value {
            None => Ok(None),
            Some(value) => value.downcast::<T>().map(Some).map_err(|_| ()),
        }
    }
}

/// How a miss left the compute closure without installing anything.
enum Exit {
    Failed(Error),
    /// A value to serve that must not be cached.
    Uncached(L1Entry),
}

struct PerEntryTtl;

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

/// What an invalidation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidationReport {
    /// Keys removed (or found absent) in L1.
    pub keys: usize,
    /// `None` when L2 is absent or took every delete; otherwise why some did not land.
    /// Those deletes are owed: kept, replayed in the background, and until then this
    /// instance does not read those keys from L2.
    pub l2_failure: Option<L2ErrorKind>,
}

impl TwoTierCache {
    /// Builds the cache; with Redis configured, the pool connects lazily, so a Redis that
    /// is down at start-up is not an error.
    ///
    /// # Errors
    /// [`Error::NoRuntime`] when Redis is configured and no Tokio runtime is running.
    pub fn new(config: CacheConfig, observer: impl CacheObserver) -> Result<Self, Error> {
        Self::with_observer(config, Arc::new(observer))
    }

    /// Builds the cache around a shared observer.
    pub fn with_observer(
        config: CacheConfig,
        observer: Arc<dyn CacheObserver>,
    ) -> Result<Self, Error> {
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
            .weigher(|_key: &CacheKey, entry: &L1Entry| entry.weight)
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
        let inner = Arc::new(Inner {
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
            lease_seq: std::sync::atomic::AtomicU64::new(0),
            bus_channel: format!("{keys_namespace}bus"),
            bus_stream: format!("{keys_namespace}bus:stream"),
            bus_task: Mutex::new(None),
            write_behind,
            write_task: Mutex::new(None),
            observer,
        });
        if has_l2 {
            let task = tokio::spawn(replay_owed_deletes(
                Arc::downgrade(&inner),
                Arc::clone(&inner.replay_wake),
            ));
            *inner
                .replay_task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(task);
            let listener = tokio::spawn(crate::bus_listener::listen(Arc::downgrade(&inner)));
            *inner
                .bus_task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(listener);
            let writer = tokio::spawn(crate::write_behind::run(Arc::downgrade(&inner), writes));
            *inner
                .write_task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(writer);
        }
        Ok(TwoTierCache { inner })
    }

    /// The key schema: build keys and invalidations with it.
    pub fn keys(&self) -> &KeySchema {
        &self.inner.keys
    }

    /// Whether values are kept in process.
    pub fn has_l1(&self) -> bool {
        self.inner.l1_enabled
    }

    /// Whether an L2 tier is configured (it may still be failing; see [`Self::circuit`]).
    pub fn has_l2(&self) -> bool {
        self.inner.l2.is_some()
    }

    /// The L2 circuit breaker's state, when L2 is configured.
    pub fn circuit(&self) -> Option<CircuitState> {
        self.inner.l2.as_ref().map(L2::circuit)
    }

    /// The L2 pool's state, when L2 is configured.
    pub fn pool_state(&self) -> Option<PoolState> {
        self.inner.l2.as_ref().map(L2::pool_state)
    }

    /// Round trip of a `PING` to L2 (through the breaker and timeout like any command).
    pub async fn ping_l2(&self) -> Option<Result<Duration, crate::l2::L2Error>> {
        match &self.inner.l2 {
            Some(l2) => Some(l2.ping().await),
            None => None,
        }
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The shared engine, for a task that outlives the call.
    pub(crate) fn shared(&self) -> &Arc<Inner> {
        &self.inner
    }

    pub(crate) fn epochs(&self) -> &Epochs {
        &self.inner.epochs
    }

    pub(crate) fn installing(&self) -> &Stripes {
        &self.inner.installing
    }

    pub(crate) fn l1(&self) -> &moka::future::Cache<CacheKey, L1Entry> {
        &self.inner.l1
    }

    pub(crate) fn l2(&self) -> Option<&L2> {
        self.inner.l2.as_ref()
    }

    pub(crate) fn sealing(&self) -> &Sealing {
        &self.inner.sealing
    }

    /// Registers a source of invalidations besides the Redis bus (e.g. a database
    /// listener): until it confirms, and whenever it stops confirming, values are served
    /// only while younger than half the staleness bound. `None` when every slot is taken.
    pub fn invalidation_feed(&self) -> Option<Feed> {
        self.inner.coherence.claim()
    }

    /// Whether every invalidation feed is live right now, so L1 values are served until
    /// their TTL (otherwise values older than half the staleness bound are loaded again).
    pub fn l1_trusted(&self) -> bool {
        self.inner.coherence.trusted(Instant::now())
    }

    /// Waits until every loaded value queued for Redis so far has been sent (see
    /// `# Reading`) and no invalidation is on its way to Redis (answered, or owed when
    /// Redis failed): for a graceful shutdown, and for tests that look into Redis.
    pub async fn flush_l2_writes(&self) {
        self.inner.pending.settled().await;
        self.inner.write_behind.flushed().await;
    }

    pub(crate) fn coherence(&self) -> &Coherence {
        &self.inner.coherence
    }

    pub(crate) fn observer(&self) -> &dyn CacheObserver {
        &*self.inner.observer
    }

    /// Whether `key`'s invalidation is still owed to Redis (so Redis may hold it stale).
    pub(crate) fn owes(&self, key: &CacheKey) -> bool {
        self.inner.pending.blocks(key)
    }

    /// The L1 TTL (jittered) and grace for a value of `entity`; zero with L1 off.
    pub(crate) fn l1_life_for(&self, entity: Entity, negative: bool) -> (Duration, Duration) {
        self.inner
            .l1_life(self.inner.policies.get(entity), negative)
    }

    /// The L2 TTL (jittered) for a value of `entity`.
    pub(crate) fn l2_ttl_for(&self, entity: Entity, negative: bool) -> Duration {
        self.inner.policies.get(entity).ttl(false, negative)
    }

    /// What Redis says of itself, when L2 is configured.
    pub async fn l2_info(&self) -> Option<Result<crate::l2::RedisInfo, crate::l2::L2Error>> {
        match &self.inner.l2 {
            Some(l2) => Some(l2.info().await),
            None => None,
        }
    }

    /// Why Redis does not take writes right now, when it does not (out of memory,
    /// read-only, …): from the bus heartbeat's write probe and from commands refused within
    /// the last 10 s. While the probe fails, L1 is not trusted (see [`Self::l1_trusted`]).
    pub fn l2_refusing_writes(&self) -> Option<String> {
        self.inner.l2.as_ref().and_then(L2::refusing_writes)
    }

    /// The last L2 failure, when L2 is configured and has failed.
    pub fn last_l2_error(&self) -> Option<crate::l2::LastL2Error> {
        self.inner.l2.as_ref().and_then(L2::last_error)
    }

    /// Drops everything: L1 at once, and every key under the namespace from Redis in a
    /// background task (`SCAN` and `UNLINK` in batches: Redis is never blocked, no
    /// `FLUSHDB`). Loads in flight are not installed afterwards (the global epoch moves).
    ///
    /// Returns the task deleting from Redis (its result is the number of keys removed), when
    /// L2 is configured.
    pub fn invalidate_all(
        &self,
        source: InvalidationSource,
    ) -> Option<JoinHandle<Result<u64, crate::l2::L2Error>>> {
        self.inner.clear_l1();
        for entity in self.inner.keys.schema().entities() {
            self.inner.observer.invalidated(entity, source);
        }
        let inner = Arc::clone(&self.inner);
        self.inner.l2.as_ref()?;
        Some(tokio::spawn(async move {
            // Values loaded before this call are swept too, not written after the sweep.
            inner.write_behind.flushed().await;
            inner
                .publish(BusMessage::flush_all(inner.instance).encode())
                .await;
            let pattern = format!("{}*", inner.keys.namespace());
            match &inner.l2 {
                // The bus stream stays: it is how other instances catch up.
                Some(l2) => l2.unlink_matching(&pattern, &inner.bus_channel).await,
                None => Ok(0),
            }
        }))
    }

    /// Drops every L1 entry and leaves Redis alone: for an instance that may have missed
    /// invalidations others applied to Redis (a change listener that lost its connection).
    /// Loads in flight are not installed afterwards (the global epoch moves).
    pub fn flush_l1(&self) {
        self.inner.clear_l1();
    }

    /// Keys (and tags' indexed keys) whose invalidation has not reached Redis yet.
    pub fn owed_invalidations(&self) -> usize {
        self.inner.pending.len()
    }

    /// L1's size right now.
    pub fn l1_stats(&self) -> L1Stats {
        let l1 = &self.inner.l1;
        L1Stats {
            entries: l1.entry_count(),
            weighted_bytes: l1.weighted_size(),
            max_bytes: l1.policy().max_capacity().unwrap_or(0),
        }
    }

    /// Runs L1's pending housekeeping (evictions, expiries, exact counts) now.
    pub async fn run_pending_tasks(&self) {
        self.inner.l1.run_pending_tasks().await;
    }

    /// Reads `key` through the tiers, calling `loader` on a miss in both.
    ///
    /// `Ok(None)` is "not found", from the loader or from a cached "not found". Every
    /// loader of one key should return the same `T`; an entry of another type is a miss.
    ///
    /// # Stale values
    /// When L1 holds the key past its freshness but within its entity's grace window, the
    /// load runs in a task of its own: if it fails, or is still running after the soft
    /// timeout, the stale value is served (counted through [`CacheObserver::stale_served`]
    /// and reported to [`crate::stale::track`]) and the load goes on to refresh the key.
    /// This is why the loader must be `Send + 'static`.
    ///
    /// # Errors
    /// Only the loader's: [`Error::Load`], [`Error::LoadTimeout`] when the whole read passes
    /// the load timeout (the hard bound on every call), or [`Error::Encode`] for a value
    /// whose `Serialize` fails. Never a Redis error.
    ///
    /// # Cancel safety
    /// Dropping the future mid-load releases the key for the next caller and installs
    /// nothing (a background refresh of a stale value goes on); an L2 write already sent may
    /// still land, which is harmless (it holds what the loader returned, under its lease).
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        key: CacheKey,
        loader: F,
    ) -> Result<Option<Arc<T>>, Error>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        E: Into<BoxError> + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let inner = &*self.inner;
        let entity = key.entity();
        // L1 lookups are not timed: they take a fraction of a microsecond, and two clock
        // reads would cost a hit more than the lookup's own work (see `CacheObserver::lookup`).
        let mut stale = None;
        if let Some(entry) = inner.l1.get(&key).await {
            if !entry.holds::<T>() {
                inner.observer.corrupt(entity, Tier::L1, CorruptKind::Type);
            } else if entry.fresh(Instant::now(), &inner.coherence) {
                let outcome = if entry.value.is_some() {
                    Outcome::Hit
                } else {
                    Outcome::NegativeHit
                };
                inner
                    .observer
                    .lookup(entity, Tier::L1, outcome, Duration::ZERO);
                inner
                    .observer
                    .served(entity, Tier::L1, age_since(entry.loaded_at_ms));
                return Ok(entry.downcast::<T>().unwrap_or(None));
            } else {
                stale = Some(entry);
            }
        }
        inner
            .observer
            .lookup(entity, Tier::L1, Outcome::Miss, Duration::ZERO);
        match stale {
            None => inner.load_bounded(key, Instant::now(), loader).await,
            Some(stale) => self.refresh_or_stale(key, stale, loader).await,
        }
    }

    /// The read of a key whose L1 entry is past its freshness: load it in a task of its own,
    /// and serve the stale value if that fails or outlasts the soft timeout.
    async fn refresh_or_stale<T, E, F, Fut>(
        &self,
        key: CacheKey,
        stale: L1Entry,
        loader: F,
    ) -> Result<Option<Arc<T>>, Error>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        E: Into<BoxError> + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let entity = key.entity();
        let requested_at = Instant::now();
        let mut refresh =
            tokio::spawn(async move { inner.load_bounded(key, requested_at, loader).await });
        let inner = &*self.inner;
        let outcome = tokio::select! {
            joined = &mut refresh => match joined.unwrap_or_else(|e| Err(task_failed(entity, &e))) {
                Ok(value) => return Ok(value),
                Err(error) => Err(error),
            },
            () = tokio::time::sleep(inner.soft_timeout) => Ok(()),
        };
        let reason = match &outcome {
            Ok(()) => StaleReason::SoftTimeout,
            Err(_) => StaleReason::LoadFailed,
        };
        let age = age_since(stale.loaded_at_ms);
        // Past the grace window (L1 is about to drop it) the load's own answer stands.
        if Instant::now() >= stale.stale_until {
            return match outcome {
                Err(error) => Err(error),
                Ok(()) => refresh
                    .await
                    .unwrap_or_else(|e| Err(task_failed(entity, &e))),
            };
        }
        let Ok(value) = stale.downcast::<T>() else {
            return outcome.map(|()| None);
        };
        inner.observer.stale_served(entity, reason);
        inner.observer.served(entity, Tier::L1, age);
        crate::stale::record(age);
        Ok(value)
    }
    /// Drops `invalidation`'s keys from both tiers; see the type's `# Writing` section.
    ///
    /// # Cancel safety
    /// The work runs in a task of its own, so a caller that goes away does not leave an
    /// invalidation half done.
    pub async fn invalidate(
        &self,
        invalidation: Invalidation,
        source: InvalidationSource,
    ) -> InvalidationReport {
        let inner = Arc::clone(&self.inner);
        let task =
            tokio::spawn(async move { inner.invalidate(invalidation, source, None, None).await });
        match task.await {
            Ok(report) => report,
            // Only a panic inside the task, or a runtime shutting down, gets here.
            Err(e) => {
                tracing::error!(error = %e, "invalidation task failed");
                InvalidationReport {
                    keys: 0,
                    l2_failure: None,
                }
            }
        }
    }

    /// [`invalidate`](Self::invalidate) for a write this instance has just committed:
    /// returns once this instance's L1 no longer serves the keys, while Redis's part (the
    /// deletes, the epochs, the bus message) goes on in the same task, the keys in flight
    /// meanwhile (no read here takes them from Redis; a failure is owed and replayed).
    /// Other instances hear of it exactly when they would through `invalidate`.
    ///
    /// # Cancel safety
    /// As `invalidate`'s: the work runs in a task of its own.
    pub async fn invalidate_after_write(
        &self,
        invalidation: Invalidation,
        source: InvalidationSource,
    ) {
        self.invalidate_here_first(invalidation, source, None).await;
    }

    /// [`invalidate`](Self::invalidate), installing `written` once L1 is clear, in a task
    /// of its own; returns when this instance no longer serves anything older than
    /// `written` (L1 cleared, `written` installed or kept out), while Redis's part goes on.
    pub(crate) async fn invalidate_here_first(
        &self,
        invalidation: Invalidation,
        source: InvalidationSource,
        written: Option<Written>,
    ) {
        let inner = Arc::clone(&self.inner);
        let (here, done_here) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            inner
                .invalidate(invalidation, source, written, Some(here))
                .await
        });
        // The task drops the sender unsent only when it panics or the runtime shuts down.
        if done_here.await.is_err() {
            tracing::error!("invalidation task ended before clearing L1");
        }
    }
}

impl Inner {
    /// A miss under the load timeout (the hard bound on it): the key's compute lock, then
    /// [`fill`](Self::fill) unless another caller's load or failure answers it.
    async fn load_bounded<T, E, F, Fut>(
        &self,
        key: CacheKey,
        requested_at: Instant,
        loader: F,
    ) -> Result<Option<Arc<T>>, Error>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        E: Into<BoxError>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        // Before anything is read, so an invalidation that misses this hold began after it
        // (see `drop_from_l1`).
        let _installing = self.installing.hold(&key);
        let load = async {
            let entity = key.entity();
            let computed = self
                .l1
                .entry(key)
                .and_try_compute_with(|existing| async move {
                    // Another caller's load finished while this one waited for the key.
                    if let Some(existing) = existing {
                        let entry = existing.into_value();
                        if entry.holds::<T>() && entry.fresh(Instant::now(), &self.coherence) {
                            self.observer.coalesced(entity);
                            return Ok(Op::Nop);
                        }
                    }
                    if let Some(error) = self.failures.since(&key, requested_at) {
                        self.observer.coalesced(entity);
                        return Err(Exit::Failed(error));
                    }
                    self.fill::<T, E, F, Fut>(key, loader).await.map(Op::Put)
                })
                .await;
            let entry = match computed {
                Ok(
                    CompResult::Inserted(e)
                    | CompResult::ReplacedWith(e)
                    | CompResult::Unchanged(e),
                ) => e.into_value(),
                // Nop on an absent entry: cannot happen (a Nop is returned only for an existing one).
                Ok(CompResult::StillNone(_) | CompResult::Removed(_)) => return Ok(None),
                Err(Exit::Uncached(entry)) => entry,
                Err(Exit::Failed(error)) => {
                    if !matches!(error, Error::Encode { .. }) {
                        self.failures.record(key, error.clone());
                    }
                    return Err(error);
                }
            };
            // The entry was just checked or built for a `T`.
            Ok(entry.downcast::<T>().unwrap_or(None))
        };
        tokio::time::timeout(self.load_timeout, load)
            .await
            .unwrap_or(Err(Error::LoadTimeout {
                entity: key.entity(),
                after: self.load_timeout,
            }))
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

    /// The marker of one load's lease: the lease prefix, this instance's id and a sequence
    /// number.
    fn lease_marker(&self) -> String {
        let seq = self
            .lease_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{LEASE_MARKER_PREFIX}{:x}:{seq:x}", self.instance)
    }

    /// The load lease of `redis_key` over its value (which is not trusted); the marker, or
    /// `None` when another load holds the key or Redis fails.
    async fn take_lease(&self, l2: &L2, redis_key: &str, index: &[IndexEntry]) -> Option<String> {
        let marker = self.lease_marker();
        match l2
            .take_lease(redis_key, &marker, self.load_timeout, index)
            .await
        {
            Ok(GetOrLease::Leased) => Some(marker),
            _ => None,
        }
    }

    /// Lets another instance load at once instead of waiting out the lease; a lease that
    /// expired and went to another load meanwhile is left alone.
    async fn release_lease(&self, redis_key: Option<&str>, marker: Option<&str>) {
        if let (Some(l2), Some(redis_key), Some(marker)) = (&self.l2, redis_key, marker) {
            let _ = l2.release_lease(redis_key, marker).await;
        }
    }

    /// Waits, polling with a growing interval, for another instance's load of `redis_key`
    /// to land. Each poll is the miss command again, so a lease that went without its value
    /// (an invalidation deleted it, and with it the load's write) is taken here at once
    /// instead of waited out. Gives up after half the load timeout (the caller then loads
    /// itself, within the other half): a lease nobody holds any more (taken by a command
    /// that timed out on its sender's side and ran when Redis woke up) costs one wait, not a
    /// failed read. `Busy` when it gave up, or Redis failed: the caller loads without a lease.
    async fn await_value(
        &self,
        l2: &L2,
        redis_key: &str,
        marker: &str,
        index: &[IndexEntry],
    ) -> GetOrLease {
        let deadline = Instant::now() + self.load_timeout / 2;
        let mut pause = LEASE_POLL_MIN;
        while Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            match l2
                .get_or_lease(redis_key, marker, self.load_timeout, index)
                .await
            {
                Ok(GetOrLease::Busy) => {}
                Ok(found) => return found,
                Err(_) => return GetOrLease::Busy,
            }
            pause = (pause * 2).min(LEASE_POLL_MAX);
        }
        GetOrLease::Busy
    }

    /// The miss path under the key's lock: L2, then the loader, filling L2 on the way back.
    async fn fill<T, E, F, Fut>(&self, key: CacheKey, loader: F) -> Result<L1Entry, Exit>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        E: Into<BoxError>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let entity = key.entity();
        let policy = self.policies.get(entity);
        // Recorded in its tags' indexes before anything is read, so an invalidation racing
        // this load finds it.
        let tags: Vec<Tag> = self.keys.schema().indexed_tags(&key).collect();
        let mut cacheable = true;
        for tag in &tags {
            cacheable &= self.tag_index.add(*tag, key);
        }

        let redis_key = self.l2.as_ref().map(|_| self.keys.render(&key));
        // A key whose invalidation has not reached Redis yet may be stale there: its value
        // is not read, and the lease is taken over it, so the fresh value replaces it.
        let owed = self.l2.is_some() && self.pending.blocks(&key);
        // The marker of the load lease this caller holds, if it won one (see `# Reading` on
        // the type). The value is written to L2 only over it: an invalidation deletes the
        // key, marker included, so a load that an invalidation overtook does not land.
        let mut lease: Option<String> = None;
        // A value Redis holds that is too old to serve as fresh here but within its grace:
        // served stale if the loader fails or is slow (see `stale_from_l2`).
        let mut fallback: Option<(envelope::Decoded<T>, usize)> = None;
        if let (Some(l2), Some(redis_key)) = (&self.l2, &redis_key) {
            let started = Instant::now();
            // An indexed key joins its tags' indexes in Redis when its load takes the lease.
            let index: Vec<IndexEntry> = tags
                .iter()
                .map(|tag| IndexEntry {
                    index_key: self.keys.tag_index(tag),
                    ttl: policy.max_ttl(policy.l2_ttl),
                })
                .collect();
            let index = index.as_slice();
            let marker = self.lease_marker();
            let found = if owed {
                l2.take_lease(redis_key, &marker, self.load_timeout, index)
                    .await
            } else {
                l2.get_or_lease(redis_key, &marker, self.load_timeout, index)
                    .await
            };
            let found = match found {
                Ok(GetOrLease::Value(bytes)) => Some(bytes),
                Ok(GetOrLease::Leased) => {
                    lease = Some(marker);
                    None
                }
                // Another instance is loading this key: wait (bounded) for its value.
                Ok(GetOrLease::Busy) if !owed => {
                    match self.await_value(l2, redis_key, &marker, index).await {
                        GetOrLease::Value(bytes) => {
                            self.observer.coalesced(entity);
                            Some(bytes)
                        }
                        GetOrLease::Leased => {
                            lease = Some(marker);
                            None
                        }
                        GetOrLease::Busy => None,
                    }
                }
                // Absorbed: counted by L2 itself, then on to the loader.
                Ok(GetOrLease::Busy) | Err(_) => None,
            };
            let sealed = self.sealing.is_on().then_some(redis_key.as_str());
            match found {
                // Opened in place when sealed; L1 weighs the plain envelope either way.
                Some(mut bytes) => match self
                    .sealing
                    .plain(sealed, &mut bytes)
                    .and_then(|plain| Ok((envelope::decode::<T>(plain)?, plain.len())))
                {
                    // Older than this instance can vouch for right now (see `coherence.rs`):
                    // loaded again, under a lease taken now.
                    Ok((decoded, size))
                        if !self
                            .coherence
                            .serveable(Instant::now(), decoded.loaded_at_ms) =>
                    {
                        self.observer
                            .lookup(entity, Tier::L2, Outcome::Miss, started.elapsed());
                        let negative = decoded.value.is_none();
                        let ttl = policy.max_ttl(policy.base_ttl(false, negative));
                        if age_since(decoded.loaded_at_ms) <= ttl + policy.grace {
                            // Left in Redis, not leased over: should the load fail, it is
                            // what every instance falls back on. A fresh load stays in L1.
                            fallback = Some((decoded, size));
                        } else {
                            lease = self.take_lease(l2, redis_key, index).await;
                        }
                    }
                    Ok((decoded, size)) => {
                        let negative = decoded.value.is_none();
                        let outcome = if negative {
                            Outcome::NegativeHit
                        } else {
                            Outcome::Hit
                        };
                        self.observer
                            .lookup(entity, Tier::L2, outcome, started.elapsed());
                        self.observer
                            .served(entity, Tier::L2, age_since(decoded.loaded_at_ms));
                        let entry = L1Entry::new(
                            decoded.value.map(Arc::new),
                            size,
                            self.l1_life(policy, negative),
                            decoded.loaded_at_ms,
                        );
                        return if cacheable {
                            Ok(entry)
                        } else {
                            Err(Exit::Uncached(entry))
                        };
                    }
                    Err(kind) => {
                        self.observer.corrupt(entity, Tier::L2, kind);
                        self.observer
                            .lookup(entity, Tier::L2, Outcome::Miss, started.elapsed());
                        // The load below overwrites it, under a lease taken now over it (so
                        // a failing loader, releasing the lease, leaves nothing behind).
                        lease = self.take_lease(l2, redis_key, index).await;
                    }
                },
                None => self
                    .observer
                    .lookup(entity, Tier::L2, Outcome::Miss, started.elapsed()),
            }
        }

        let started = Instant::now();
        // With a stale value to fall back on, a slow loader is cut at the soft timeout, as
        // a read of a stale L1 value would be (that one refreshes in the background; this
        // one leaves the refresh to the next read, which finds the value in L1).
        let limit = if fallback.is_some() {
            self.soft_timeout
        } else {
            self.load_timeout
        };
        let loaded = match tokio::time::timeout(limit, loader()).await {
            Ok(Ok(value)) => {
                let outcome = if value.is_some() {
                    LoadOutcome::Found
                } else {
                    LoadOutcome::NotFound
                };
                self.observer.load(entity, outcome, started.elapsed());
                value
            }
            Ok(Err(e)) => {
                self.release_lease(redis_key.as_deref(), lease.as_deref())
                    .await;
                self.observer
                    .load(entity, LoadOutcome::Error, started.elapsed());
                if let Some(stale) = fallback {
                    return self.stale_from_l2(entity, stale, StaleReason::LoadFailed, cacheable);
                }
                return Err(Exit::Failed(Error::Load {
                    entity,
                    source: Arc::from(e.into()),
                }));
            }
            Err(_elapsed) => {
                self.release_lease(redis_key.as_deref(), lease.as_deref())
                    .await;
                self.observer
                    .load(entity, LoadOutcome::Timeout, started.elapsed());
                if let Some(stale) = fallback {
                    return self.stale_from_l2(entity, stale, StaleReason::SoftTimeout, cacheable);
                }
                return Err(Exit::Failed(Error::LoadTimeout {
                    entity,
                    after: self.load_timeout,
                }));
            }
        };
        let negative = loaded.is_none();
        let loaded_at_ms = unix_millis();
        let bytes = envelope::encode(loaded.as_ref(), loaded_at_ms)
            .map_err(|source| Exit::Failed(Error::Encode { entity, source }))?;
        let size = bytes.len();
        // Without a lease (another instance's load outlived the wait, or Redis failed)
        // nothing is written: the lease holder writes it. With one, the write goes behind
        // (see `write_behind.rs`), or here when its queue is full.
        if let (Some(redis_key), Some(lease)) = (redis_key, lease) {
            match self
                .sealing
                .store(&redis_key, bytes, self.keys.schema().followable(&key))
            {
                Ok(bytes) => {
                    let set = QueuedSet {
                        key,
                        owed,
                        redis_key,
                        bytes,
                        ttl: policy.ttl(false, negative),
                        lease,
                    };
                    if let Some(set) = self.write_behind.queue(set) {
                        crate::write_behind::send(self, std::slice::from_ref(&set)).await;
                    }
                }
                // Nothing to write (never in practice: over 256 GiB): others load it.
                Err(_) => self.release_lease(Some(&redis_key), Some(&lease)).await,
            }
        }
        let entry = L1Entry::new(
            loaded.map(Arc::new),
            size,
            self.l1_life(policy, negative),
            loaded_at_ms,
        );
        if cacheable {
            Ok(entry)
        } else {
            Err(Exit::Uncached(entry))
        }
    }

    /// Serves `stale`, a value read from Redis past what this instance vouches for but
    /// within its grace, because the load failed or was slow (`reason`): counted and
    /// reported as a stale L1 value is, and kept in L1 (still stale), so the next read is
    /// answered from there while it refreshes.
    fn stale_from_l2<T: Send + Sync + 'static>(
        &self,
        entity: Entity,
        (stale, size): (envelope::Decoded<T>, usize),
        reason: StaleReason,
        cacheable: bool,
    ) -> Result<L1Entry, Exit> {
        let age = age_since(stale.loaded_at_ms);
        self.observer.stale_served(entity, reason);
        self.observer.served(entity, Tier::L2, age);
        crate::stale::record(age);
        let negative = stale.value.is_none();
        let entry = L1Entry::new(
            stale.value.map(Arc::new),
            size,
            self.l1_life(self.policies.get(entity), negative),
            stale.loaded_at_ms,
        );
        if cacheable {
            Ok(entry)
        } else {
            Err(Exit::Uncached(entry))
        }
    }

    /// Drops `keys` from L1 for an invalidation of `groups` (none: every group).
    ///
    /// The local epochs move first (see `epoch.rs`), so a batched install that checks them
    /// after this skips its value. Then a key is removed under its compute lock, which
    /// waits for a load or install of it in flight, only if L1 holds it or an install may
    /// be under way (`installing`). Any other install is safe without the lock: it took its
    /// hold after the epochs moved (the holds and this check are fenced), so a load's reads
    /// come after the write committed and its keys were marked in flight to Redis, and a
    /// batched install finds the epochs moved.
    pub(crate) async fn drop_from_l1(&self, keys: &[CacheKey], groups: &[Group]) {
        if groups.is_empty() {
            self.epochs.bump(None);
        }
        for group in groups {
            self.epochs.bump(Some(group));
        }
        for key in keys {
            self.dropped.add(self.dropped.of(key));
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let locked = keys
            .iter()
            .filter(|key| self.l1.contains_key(*key) || self.installing.busy(*key))
            .map(|key| async move {
                self.l1
                    .entry(*key)
                    .and_compute_with(|_| async { Op::Remove })
                    .await;
            });
        futures_util::future::join_all(locked).await;
    }

    /// Puts `entry` in L1 at `key`, from outside a load, unless L1 holds a fresh entry
    /// there (a load that began later read the same or newer) or `unmoved` finds that an
    /// invalidation came since the value was read. `unmoved` is asked under the key's lock
    /// while the key is held in `installing`, so an invalidation either moved what it
    /// checks first or finds the key held and removes the entry after (see
    /// [`drop_from_l1`](Self::drop_from_l1)).
    pub(crate) async fn install_unless_moved(
        &self,
        key: CacheKey,
        entry: L1Entry,
        unmoved: impl Fn() -> bool,
    ) {
        let _installing = self.installing.hold(&key);
        self.l1
            .entry(key)
            .and_compute_with(|existing| async {
                let fresh =
                    existing.is_some_and(|e| e.value().fresh(Instant::now(), &self.coherence));
                if fresh || !unmoved() {
                    Op::Nop
                } else {
                    Op::Put(entry)
                }
            })
            .await;
    }

    /// Drops every L1 entry; loads and installs in flight do not land afterwards (the global
    /// epoch moves first).
    pub(crate) fn clear_l1(&self) {
        self.epochs.bump(None);
        self.l1.invalidate_all();
    }

    async fn invalidate(
        &self,
        invalidation: Invalidation,
        source: InvalidationSource,
        written: Option<Written>,
        here: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> InvalidationReport {
        let mut keys = invalidation.keys;
        let groups = &invalidation.groups;
        // A tag's keys: those its words enumerate, and the indexed ones this instance may
        // hold; those other instances cached are found in Redis, through the tag's index.
        let schema = self.keys.schema();
        let mut indexed: Vec<Tag> = Vec::new();
        for tag in &invalidation.tags {
            schema.enumerate(tag, &mut keys);
            if schema.has_index(tag) {
                keys.extend(self.tag_index.take(tag));
                indexed.push(*tag);
            }
        }
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        keys.retain(|k| seen.insert(*k));
        // Other instances hear of it (not of what they told us: no echo; nor of what the
        // database told every instance's listener already).
        let message = (!matches!(
            source,
            InvalidationSource::Bus | InvalidationSource::Database
        ))
        .then(|| {
            BusMessage {
                instance: self.instance,
                sent_ms: unix_millis(),
                entity: Some(invalidation.entity),
                groups: groups.clone(),
                // A tag's index stands for all its indexed keys, those an instance could not
                // list in Redis included.
                keys: keys
                    .iter()
                    .map(|k| self.keys.render(k))
                    .chain(indexed.iter().map(|tag| self.keys.tag_index(tag)))
                    .collect(),
                all: false,
            }
            .encode()
        });

        // One Redis script, one round trip: the invalidation epochs (batched installs on
        // every instance check them), every key (a load's lease marker with it), the keys
        // the tags' indexes list, and the bus message. A load in flight then cannot write its
        // value to Redis (its marker is gone), and a batched install whose read began before
        // this write does not land. The L1 removals below run meanwhile: the keys are marked
        // in flight first (see `pending.rs`), so no read here trusts Redis for them until the
        // script has answered; when Redis does not take it, they are owed before the marks
        // go, and the message is owed.
        let in_flight = self
            .l2
            .is_some()
            .then(|| self.pending.begin(&keys, &indexed));
        let l2_part = async {
            let Some(l2) = &self.l2 else {
                return (0, None);
            };
            let epochs: Vec<String> = if groups.is_empty() {
                vec![self.keys.epoch_key(None)]
            } else {
                groups
                    .iter()
                    .map(|g| self.keys.epoch_key(Some(g)))
                    .collect()
            };
            let doomed: Vec<String> = keys.iter().map(|k| self.keys.render(k)).collect();
            let indexes: Vec<String> = indexed.iter().map(|t| self.keys.tag_index(t)).collect();
            let publish = message.as_deref().map(|payload| Publish {
                stream: &self.bus_stream,
                channel: &self.bus_channel,
                payload,
            });
            match l2
                .invalidate(&epochs, EPOCH_TTL, &doomed, &indexes, publish.as_ref())
                .await
            {
                Ok(members) => {
                    let found = members
                        .iter()
                        .filter_map(|m| self.keys.parse(m).ok())
                        .filter(|key| !seen.contains(key))
                        .count();
                    (found, None)
                }
                Err(e) => {
                    self.pending.add(keys.iter().copied(), &indexed);
                    if let Some(payload) = &message {
                        self.pending.owe_publish(payload.clone());
                    }
                    (0, Some(e.kind))
                }
            }
        };

        // What this instance serves: clear, then the written row (its guard counts only
        // local removals, so it need not wait for Redis), then `here` hears of it.
        let l1_part = async {
            self.drop_from_l1(&keys, groups).await;
            if let Some(written) = written {
                // An invalidation that names no phone moved the global epoch itself.
                self.cache_written(written, &keys, u64::from(groups.is_empty()))
                    .await;
            }
            if let Some(here) = here {
                // Its receiver may have gone (the caller hung up): nothing to tell then.
                let _ = here.send(());
            }
        };
        let ((pages_found, l2_failure), ()) = tokio::join!(l2_part, l1_part);
        let report_keys = keys.len() + pages_found;
        if let Some(kind) = l2_failure {
            // Every write while Redis fails: one line per interval (the L2 errors and the
            // owed invalidations are counted).
            static NOT_IN_L2: LogThrottle = LogThrottle::new(LOG_INTERVAL);
            if let Some(suppressed) = NOT_IN_L2.admit() {
                tracing::warn!(
                    entity = invalidation.entity.as_str(),
                    kind = kind.as_str(),
                    suppressed,
                    "invalidation did not reach L2; owed and replayed in the background"
                );
            }
            self.replay_wake.notify_one();
        }
        // Counted once both tiers are done, before the marks go, so whoever waits for them
        // (`flush_l2_writes`) sees it counted.
        self.observer.invalidated(invalidation.entity, source);
        drop(in_flight);
        InvalidationReport {
            keys: report_keys,
            l2_failure,
        }
    }
}

impl Inner {
    /// Publishes a bus message, or owes it when Redis does not take it.
    pub(crate) async fn publish(&self, payload: String) {
        let Some(l2) = &self.l2 else { return };
        if let Err(e) = self.try_publish(l2, &payload).await {
            tracing::debug!(error = %e, "bus message not published; owed");
            self.pending.owe_publish(payload);
            self.replay_wake.notify_one();
        }
    }

    async fn try_publish(&self, l2: &L2, payload: &str) -> Result<(), crate::l2::L2Error> {
        let script = publish_script();
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&self.bus_stream)
            .arg(crate::bus::STREAM_MAXLEN)
            .arg(payload)
            .arg(crate::bus::STREAM_TTL_MS)
            .arg(&self.bus_channel);
        l2.invoke::<String>("publish", &invocation)
            .await
            .map(|_| ())
    }

    /// Replays owed deletes once; `Err` when Redis still fails.
    async fn replay_owed(&self) -> Result<(), L2ErrorKind> {
        let Some(l2) = &self.l2 else {
            return Ok(());
        };
        let (keys, tags) = self.pending.snapshot(REPLAY_BATCH);
        let tags_done = tags.len();
        for tag in tags {
            let index_key = self.keys.tag_index(&tag);
            let mut doomed = l2.members(&index_key).await.map_err(|e| e.kind)?;
            // Only keys of this namespace: a member is deleted as it is written.
            doomed.retain(|m| m.starts_with(self.keys.namespace()));
            doomed.push(index_key);
            l2.del(&doomed).await.map_err(|e| e.kind)?;
            self.pending.resolve_tag(&tag);
        }
        if !keys.is_empty() {
            let rendered: Vec<String> = keys.iter().map(|k| self.keys.render(k)).collect();
            l2.del(&rendered).await.map_err(|e| e.kind)?;
            for key in &keys {
                self.pending.resolve(key);
            }
        }
        let (publishes, overflowed) = self.pending.publishes();
        if overflowed {
            let all = BusMessage::flush_all(self.instance);
            self.try_publish(l2, &all.encode())
                .await
                .map_err(|e| e.kind)?;
            self.pending.published(0, true);
        }
        let mut published = 0;
        for payload in &publishes {
            let sent = self.try_publish(l2, payload).await;
            // In order: what went out is no longer owed, the rest stays for the next round.
            self.pending.published(usize::from(sent.is_ok()), false);
            sent.map_err(|e| e.kind)?;
            published += 1;
        }
        self.observer
            .owed_replayed(keys.len() + tags_done + published);
        Ok(())
    }
}

/// The background task that replays owed L2 deletes with capped exponential backoff.
/// It holds only a `Weak`, and the cache aborts it on drop.
async fn replay_owed_deletes(cache: Weak<Inner>, wake: Arc<Notify>) {
    let mut backoff = REPLAY_BACKOFF_MIN;
    loop {
        let Some(inner) = cache.upgrade() else {
            return;
        };
        if inner.pending.len() == 0 {
            backoff = REPLAY_BACKOFF_MIN;
            // Not holding the cache while idle: it may be dropped meanwhile (and abort us).
            drop(inner);
            wake.notified().await;
            continue;
        }
        match inner.replay_owed().await {
            Ok(()) => {
                tracing::info!(
                    left = inner.pending.len(),
                    "replayed invalidations owed to L2"
                );
                backoff = REPLAY_BACKOFF_MIN;
            }
            Err(kind) => {
                tracing::debug!(
                    kind = kind.as_str(),
                    "owed invalidations still cannot reach L2"
                );
                backoff = (backoff * 2).min(REPLAY_BACKOFF_MAX);
            }
        }
        drop(inner);
        tokio::time::sleep(backoff).await;
    }
}

fn publish_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(crate::bus::PUBLISH_SCRIPT))
}

fn config_error(field: &str, message: String) -> Error {
    Error::Config(crate::error::ConfigError {
        problems: vec![crate::error::ConfigProblem {
            field: field.to_owned(),
            message,
        }],
    })
}

/// A load task that panicked (or was cancelled by a runtime shutting down), as a load error.
fn task_failed(entity: Entity, e: &tokio::task::JoinError) -> Error {
    Error::Load {
        entity,
        source: Arc::from(BoxError::from(e.to_string())),
    }
}

/// How long ago `loaded_at_ms` (Unix milliseconds) was; zero if the clock went back.
pub(crate) fn age_since(loaded_at_ms: u64) -> Duration {
    Duration::from_millis(unix_millis().saturating_sub(loaded_at_ms))
}

pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;
    use std::task::Poll;

    use super::*;

    fn entry(version: u32) -> L1Entry {
        let ttl = (Duration::from_secs(60), Duration::from_secs(60));
        L1Entry::new(Some(Arc::new(version)), 4, ttl, unix_millis())
    }

    /// A namespace the key schema refuses is reported as such, not as the key secret.
    #[test]
    fn a_bad_namespace_is_reported_as_the_namespace() {
        let mut config = CacheConfig::builder().build().unwrap();
        config.prefix = "no spaces allowed".to_owned();
        let Err(Error::Config(error)) = TwoTierCache::new(config, crate::NoopObserver) else {
            panic!("a bad namespace is a config error");
        };
        assert_eq!(error.problems[0].field, "namespace");
    }

    /// An install that checked the epochs before an invalidation bumped them, and inserts
    /// after the invalidation looked at L1: the invalidation must wait for it and remove
    /// its value, though the key was not in L1 when it looked.
    #[tokio::test]
    async fn an_invalidation_waits_for_an_install_under_way_and_removes_its_value() {
        let k = crate::test_schema::keys();
        let config = CacheConfig::builder()
            .schema(k.schema.clone())
            .build()
            .unwrap();
        let cache = TwoTierCache::new(config, crate::NoopObserver).unwrap();
        let inner = Arc::clone(&cache.inner);
        let key = k.by_id.key(7);
        let (checked_tx, checked_rx) = tokio::sync::oneshot::channel();
        let (insert_tx, insert_rx) = tokio::sync::oneshot::channel::<()>();
        let installer = {
            let inner = Arc::clone(&inner);
            tokio::spawn(async move {
                let _installing = inner.installing.hold(&key);
                inner
                    .l1
                    .entry(key)
                    .and_compute_with(|_| async {
                        // The epoch check passed here; the insert waits for the test.
                        let _ = checked_tx.send(());
                        let _ = insert_rx.await;
                        Op::Put(entry(1))
                    })
                    .await;
            })
        };
        checked_rx.await.unwrap();
        assert!(!inner.l1.contains_key(&key), "not installed yet");

        let keys = [key];
        let mut removal = std::pin::pin!(inner.drop_from_l1(&keys, &[]));
        let first = std::future::poll_fn(|cx| Poll::Ready(removal.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the removal waits for the key's lock");
        insert_tx.send(()).unwrap();
        removal.await;
        installer.await.unwrap();
        assert!(!inner.l1.contains_key(&key), "the install's value went");

        // A key neither in L1 nor held costs no lock: the removal is done at once.
        let idle = [k.by_id.key(8)];
        let mut removal = std::pin::pin!(inner.drop_from_l1(&idle, &[]));
        let first = std::future::poll_fn(|cx| Poll::Ready(removal.as_mut().poll(cx))).await;
        assert!(first.is_ready());
    }
}
