//! [`TwoTierCache`]: the read-through cache's public handle, L1 (moka) in front of L2
//! (Redis) in front of a loader. Its work is done by the engine (`engine/`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::coherence::Feed;
use crate::config::CacheConfig;
use crate::engine::{Batch, Engine, InvalidationReport, Plan, WriteTicket};
use crate::error::{BoxError, Error};
use crate::invalidation::Invalidation;
use crate::l1::L1Stats;
use crate::l2::{L2, PoolState};
use crate::observer::{CacheObserver, CircuitState, InvalidationSource};
use crate::schema::{CacheKey, Entity, KeySchema};

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
/// keys in flight meanwhile. A write with no row to cache (a message added to a user's
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
/// counted through [`CacheObserver::corrupt`], and reloaded under a lease taken over it,
/// so the fresh value replaces it.
///
/// # Sealed values
///
/// With an encryption key ([`CacheConfigBuilder::encryption_key`](crate::CacheConfigBuilder::encryption_key)),
/// every value written to Redis is sealed (see [`crate::seal`]) and only values sealed under
/// that key at that Redis key are read; anything else there is corrupt, as above. L1 holds
/// decoded values, so an L1 hit costs the same either way.
#[derive(Clone)]
pub struct TwoTierCache {
    engine: Arc<Engine>,
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
        Ok(TwoTierCache {
            engine: Engine::start(config, observer)?,
        })
    }

    /// The key schema: build keys and invalidations with it.
    pub fn keys(&self) -> &KeySchema {
        self.engine.keys()
    }

    /// Whether values are kept in process.
    pub fn has_l1(&self) -> bool {
        self.engine.has_l1()
    }

    /// Whether an L2 tier is configured (it may still be failing; see [`Self::circuit`]).
    pub fn has_l2(&self) -> bool {
        self.engine.l2().is_some()
    }

    /// The L2 circuit breaker's state, when L2 is configured.
    pub fn circuit(&self) -> Option<CircuitState> {
        self.engine.circuit()
    }

    /// The L2 pool's state, when L2 is configured.
    pub fn pool_state(&self) -> Option<PoolState> {
        self.engine.pool_state()
    }

    /// Round trip of a `PING` to L2 (through the breaker and timeout like any command).
    pub async fn ping_l2(&self) -> Option<Result<Duration, crate::l2::L2Error>> {
        match self.engine.l2() {
            Some(l2) => Some(l2.ping().await),
            None => None,
        }
    }

    /// Registers a source of invalidations besides the Redis bus (e.g. a database
    /// listener): until it confirms, and whenever it stops confirming, values are served
    /// only while younger than half the staleness bound. `None` when every slot is taken.
    pub fn invalidation_feed(&self) -> Option<Feed> {
        self.engine.invalidation_feed()
    }

    /// Whether every invalidation feed is live right now, so L1 values are served until
    /// their TTL (otherwise values older than half the staleness bound are loaded again).
    pub fn l1_trusted(&self) -> bool {
        self.engine.l1_trusted()
    }

    /// Waits until every loaded value queued for Redis so far has been sent (see
    /// `# Reading`) and no invalidation is on its way to Redis (answered, or owed when
    /// Redis failed): for a graceful shutdown, and for tests that look into Redis.
    pub async fn flush_l2_writes(&self) {
        self.engine.flush_l2_writes().await;
    }

    /// What Redis says of itself, when L2 is configured.
    pub async fn l2_info(&self) -> Option<Result<crate::l2::RedisInfo, crate::l2::L2Error>> {
        match self.engine.l2() {
            Some(l2) => Some(l2.info().await),
            None => None,
        }
    }

    /// Why Redis does not take writes right now, when it does not (out of memory,
    /// read-only, …): from the bus heartbeat's write probe and from commands refused within
    /// the last 10 s. While the probe fails, L1 is not trusted (see [`Self::l1_trusted`]).
    pub fn l2_refusing_writes(&self) -> Option<String> {
        self.engine.l2().and_then(L2::refusing_writes)
    }

    /// The last L2 failure, when L2 is configured and has failed.
    pub fn last_l2_error(&self) -> Option<crate::l2::LastL2Error> {
        self.engine.l2().and_then(L2::last_error)
    }

    /// Drops everything: L1 at once, and from Redis, in a background task, every key under
    /// the namespace that this cache writes (values of its key shapes, tag indexes, epochs;
    /// `SCAN` and `UNLINK` in batches: Redis is never blocked, no `FLUSHDB`). Other keys
    /// under the namespace (the bus stream, what other parts of a service keep there) stay.
    /// Loads in flight are not installed afterwards (the global epoch moves).
    ///
    /// Returns the task deleting from Redis (its result is the number of keys removed), when
    /// L2 is configured.
    pub fn invalidate_all(
        &self,
        source: InvalidationSource,
    ) -> Option<JoinHandle<Result<u64, crate::l2::L2Error>>> {
        self.engine.invalidate_all(source)
    }

    /// Drops every L1 entry and leaves Redis alone: for an instance that may have missed
    /// invalidations others applied to Redis (a change listener that lost its connection).
    /// Loads in flight are not installed afterwards (the global epoch moves).
    pub fn flush_l1(&self) {
        self.engine.clear_l1();
    }

    /// Keys (and tags' indexed keys) whose invalidation has not reached Redis yet.
    pub fn owed_invalidations(&self) -> usize {
        self.engine.owed_invalidations()
    }

    /// L1's size right now.
    pub fn l1_stats(&self) -> L1Stats {
        self.engine.l1_stats()
    }

    /// Runs L1's pending housekeeping (evictions, expiries, exact counts) now.
    pub async fn run_pending_tasks(&self) {
        self.engine.run_pending_tasks().await;
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
        self.engine.get_or_load(key, loader).await
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
        self.engine.invalidate_in_task(invalidation, source).await
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
        self.engine
            .invalidate_here_first(invalidation, source, None)
            .await;
    }

    /// What the tiers hold for `plan`: from L1, then one Redis round trip for whatever L1
    /// lacked. Values found in Redis are installed in L1. Fill the [`Slot::Missing`] steps
    /// from the source of truth and [`install`](Self::install) them.
    ///
    /// # When Redis fails
    /// The steps L1 lacks come back [`Slot::Missing`]; the failure is counted as any L2
    /// error.
    pub async fn read(&self, plan: Plan) -> Batch {
        self.engine.read(plan).await
    }

    /// Caches a value loaded for a [`read`](Self::read) in both tiers, unless an
    /// invalidation of its plan's groups ran since that read began (then it is only
    /// returned). `None` caches "not found".
    ///
    /// # Errors
    /// [`crate::Error::Encode`] when the value's `Serialize` fails.
    pub async fn install<T>(
        &self,
        batch: &Batch,
        key: CacheKey,
        value: Option<T>,
    ) -> Result<Option<Arc<T>>, Error>
    where
        T: Serialize + Send + Sync + 'static,
    {
        self.engine.install(batch, key, value).await
    }

    /// When loading a batch's missing steps failed: fills them with the stale values L1
    /// held (within grace) and says whether that makes the batch complete; if so, each
    /// stale value is counted and reported to [`crate::stale::track`].
    pub fn fall_back_to_stale(&self, batch: &mut Batch) -> bool {
        self.engine.fall_back_to_stale(batch)
    }

    /// Reports a load done outside [`get_or_load`](Self::get_or_load) (a batched query).
    pub fn observe_load(&self, entity: Entity, found: bool, took: Duration) {
        self.engine.observe_load(entity, found, took);
    }

    /// Before a write to the row `key` caches (its id key: known before the write returns
    /// the row): the ticket [`invalidate_and_cache`](Self::invalidate_and_cache) checks.
    pub fn write_ticket(&self, key: &CacheKey) -> WriteTicket {
        self.engine.write_ticket(key)
    }

    /// [`invalidate`](Self::invalidate), then caches `row` (what the write returned) in this
    /// instance's L1 under each of `keys` (of one entity, whose L1 TTL applies; its age
    /// counts from the ticket), unless an invalidation other than this one
    /// removed the ticket's key, or L1 was flushed, since `ticket` was taken. A row that
    /// cannot be encoded (to weigh it) is not cached; the invalidation stands either way.
    ///
    /// Returns once this instance serves nothing older than `row`; Redis's part (deletes,
    /// epochs, the bus message) is then still on its way, and a failure there is owed and
    /// replayed as for [`invalidate`](Self::invalidate).
    /// [`flush_l2_writes`](Self::flush_l2_writes) waits for it.
    ///
    /// # Cancel safety
    /// The work runs in a task of its own, so a caller that goes away leaves nothing half
    /// done.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use tiercache::{CacheConfig, EntityPolicy, Invalidation, InvalidationSource, KeyDef, NoopObserver, Schema, TwoTierCache};
    ///
    /// let mut schema = Schema::builder();
    /// let user = schema.entity("user", EntityPolicy::with_l2_ttl(Duration::from_secs(600)));
    /// let user_by_id: KeyDef<i64> = schema.key(user, "user:{}");
    /// let config = CacheConfig::builder().schema(schema.build()?).build()?;
    /// let cache = TwoTierCache::new(config, NoopObserver)?;
    /// let key = user_by_id.key(42);
    /// let ticket = cache.write_ticket(&key);
    /// // … the write commits and returns the new row …
    /// let row = "Ada Lovelace".to_owned();
    /// cache
    ///     .invalidate_and_cache(Invalidation::key(key), InvalidationSource::Write, ticket, row, &[key])
    ///     .await;
    /// // The next read is a hit: the loader is not called.
    /// let name = cache.get_or_load(key, || async { Ok::<Option<String>, std::io::Error>(None) }).await?;
    /// assert_eq!(name.as_deref().map(String::as_str), Some("Ada Lovelace"));
    /// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
    /// ```
    pub async fn invalidate_and_cache<T>(
        &self,
        invalidation: Invalidation,
        source: InvalidationSource,
        ticket: WriteTicket,
        row: T,
        keys: &[CacheKey],
    ) where
        T: Serialize + Send + Sync + 'static,
    {
        let written = self.engine.written(ticket, row, keys);
        self.engine
            .invalidate_here_first(invalidation, source, written)
            .await;
    }

    /// The engine, for the crate's own tests.
    #[cfg(test)]
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}
