//! The modes a team writes without Tiercache, each as plainly as such code is usually
//! written: no cache, a Redis read-through, moka glued in front of it, and a bare sharded
//! map (the bound). They run the repository's own statements (`queries::lead_by_phone`,
//! `queries::update_lead`) and count each one they send.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::MultiplexedConnection;
use sqlx::PgPool;
use tiercache_repository::model::{Lead, LeadPatch};
use tiercache_repository::queries;

use crate::modes::{LeadRef, QueryCounts};

/// How long a hand-written (or foreign) Redis entry lives: Tiercache's L2 TTL for leads.
pub const REDIS_TTL_SECS: u64 = 900;
/// moka's TTL in the moka-redis mode: Tiercache's L1 TTL for leads.
const MOKA_TTL: Duration = Duration::from_secs(60);
/// moka's bound in the moka-redis mode, in entries (a team bounds by count): room for
/// every demo lead, as Tiercache's 64 MiB L1 has; the foreign modes' L1s get the same.
pub const MOKA_MAX_ENTRIES: u64 = 100_000;
/// Shards of the bound's map: enough that 4 workers on 2 cores rarely meet on one lock.
const SHARDS: usize = 64;

/// PostgreSQL as the hand-written modes reach it: the statements, counted.
pub struct Db {
    pool: PgPool,
    counts: Arc<QueryCounts>,
}

impl Db {
    /// The statements on `pool`, counted in `counts`.
    pub fn new(pool: PgPool, counts: Arc<QueryCounts>) -> Db {
        Db { pool, counts }
    }

    /// The SELECT of a lead by (phone, org).
    async fn select(&self, lead: LeadRef<'_>) -> anyhow::Result<Option<Lead>> {
        self.counts.reads.fetch_add(1, Ordering::Relaxed);
        Ok(queries::lead_by_phone(&self.pool, lead.phone.as_str(), lead.org_id).await?)
    }

    /// The UPDATE of a lead's notes (autocommit: one round trip).
    async fn update(&self, lead: LeadRef<'_>, notes: String) -> anyhow::Result<()> {
        let patch = LeadPatch {
            notes: Some(Some(notes)),
            ..LeadPatch::default()
        };
        self.counts.writes.fetch_add(1, Ordering::Relaxed);
        queries::update_lead(&self.pool, lead.id, &patch, chrono::Utc::now())
            .await?
            .context("updating a lead that does not exist")?;
        Ok(())
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// No cache: the SELECT on every read; a write is the UPDATE alone.
pub struct PostgresOnly {
    /// The statements.
    pub db: Db,
}

impl PostgresOnly {
    /// The lead, from PostgreSQL.
    pub async fn read(&self, lead: LeadRef<'_>) -> anyhow::Result<Option<Arc<Lead>>> {
        Ok(self.db.select(lead).await?.map(Arc::new))
    }

    /// The UPDATE.
    pub async fn write(&self, lead: LeadRef<'_>, notes: String) -> anyhow::Result<()> {
        self.db.update(lead, notes).await
    }

    /// A read with `loader` in place of the SELECT: without a cache, every read loads.
    pub async fn read_with<F, Fut>(&self, loader: F) -> anyhow::Result<Option<Arc<Lead>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<Lead>>>,
    {
        Ok(loader().await?.map(Arc::new))
    }
}

/// The Redis read-through a team writes by hand: GET; on a miss the SELECT, then
/// `SET key json EX ttl`. A write is the UPDATE, then DEL. One multiplexed connection
/// (redis-rs's own default), no timeout of its own, no single-flight, no guard against a
/// load installing its value after a concurrent write's DEL.
pub struct RedisReadthrough {
    db: Db,
    redis: MultiplexedConnection,
    prefix: String,
}

impl RedisReadthrough {
    /// The read-through on `db` and `redis`, keys under `prefix`.
    pub fn new(db: Db, redis: MultiplexedConnection, prefix: &str) -> Self {
        RedisReadthrough {
            db,
            redis,
            prefix: prefix.to_owned(),
        }
    }

    /// The lead's key, phone in clear as such code usually has it.
    fn key(&self, lead: LeadRef<'_>) -> String {
        format!(
            "{}:lead:{}:{}",
            self.prefix,
            lead.phone.as_str(),
            lead.org_id
        )
    }

    /// The probe's key: no lead has it.
    pub fn probe_key(&self) -> String {
        format!("{}:lead:probe", self.prefix)
    }

    /// GET `key`; on a miss, `loader`, then SET EX of what it found.
    async fn through<F, Fut>(&self, key: &str, loader: F) -> anyhow::Result<Option<Arc<Lead>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<Lead>>>,
    {
        let mut con = self.redis.clone();
        let cached: Option<Vec<u8>> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut con)
            .await
            .context("GET")?;
        if let Some(bytes) = cached {
            let lead: Lead = serde_json::from_slice(&bytes).context("decoding a cached lead")?;
            return Ok(Some(Arc::new(lead)));
        }
        let loaded = loader().await?;
        if let Some(lead) = &loaded {
            let json = serde_json::to_vec(lead).context("encoding a lead")?;
            let () = redis::cmd("SET")
                .arg(key)
                .arg(json)
                .arg("EX")
                .arg(REDIS_TTL_SECS)
                .query_async(&mut con)
                .await
                .context("SET")?;
        }
        Ok(loaded.map(Arc::new))
    }

    /// The lead, through Redis.
    pub async fn read(&self, lead: LeadRef<'_>) -> anyhow::Result<Option<Arc<Lead>>> {
        let key = self.key(lead);
        self.through(&key, || self.db.select(lead)).await
    }

    /// The UPDATE, then DEL.
    pub async fn write(&self, lead: LeadRef<'_>, notes: String) -> anyhow::Result<()> {
        self.db.update(lead, notes).await?;
        let mut con = self.redis.clone();
        let _deleted: u64 = redis::cmd("DEL")
            .arg(self.key(lead))
            .query_async(&mut con)
            .await
            .context("DEL")?;
        Ok(())
    }

    /// A read of `key` with `loader` in place of the SELECT.
    pub async fn read_with<F, Fut>(&self, key: &str, loader: F) -> anyhow::Result<Option<Arc<Lead>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<Lead>>>,
    {
        self.through(key, loader).await
    }

    /// Closes the database pool (the Redis connection closes when dropped).
    pub async fn close(&self) {
        self.db.close().await;
    }
}

/// What a Rust team glues from the same crates: moka's `try_get_with` (TTL 60 s, bounded)
/// in front of the Redis read-through. A write is the UPDATE, DEL, then moka's `invalidate`.
/// moka merges concurrent loads of one key; nothing stops a load that read the old row
/// from installing it after the invalidation.
pub struct MokaRedis {
    redis: RedisReadthrough,
    l1: moka::future::Cache<String, Option<Arc<Lead>>>,
}

impl MokaRedis {
    /// moka in front of `redis`.
    pub fn new(redis: RedisReadthrough) -> Self {
        MokaRedis {
            redis,
            l1: moka::future::Cache::builder()
                .max_capacity(MOKA_MAX_ENTRIES)
                .time_to_live(MOKA_TTL)
                .build(),
        }
    }

    /// moka, else Redis, else `loader`.
    async fn through<F, Fut>(&self, key: String, loader: F) -> anyhow::Result<Option<Arc<Lead>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<Lead>>>,
    {
        self.l1
            .try_get_with(key.clone(), self.redis.through(&key, loader))
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))
    }

    /// The lead, through moka and Redis.
    pub async fn read(&self, lead: LeadRef<'_>) -> anyhow::Result<Option<Arc<Lead>>> {
        let key = self.redis.key(lead);
        self.through(key, || self.redis.db.select(lead)).await
    }

    /// The UPDATE, DEL, then moka's invalidate.
    pub async fn write(&self, lead: LeadRef<'_>, notes: String) -> anyhow::Result<()> {
        self.redis.write(lead, notes).await?;
        self.l1.invalidate(&self.redis.key(lead)).await;
        Ok(())
    }

    /// A read of the probe's key with `loader` in place of the SELECT.
    pub async fn read_with<F, Fut>(&self, loader: F) -> anyhow::Result<Option<Arc<Lead>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<Lead>>>,
    {
        self.through(self.redis.probe_key(), loader).await
    }

    /// Closes the database pool.
    pub async fn close(&self) {
        self.redis.close().await;
    }
}

/// One shard of the bound's map: organization → phone → lead (or "not found").
type Shard = RwLock<HashMap<i64, HashMap<String, Option<Arc<Lead>>>>>;

/// The machine's limit for this workload: a sharded in-process map in front of PostgreSQL,
/// with no TTL, eviction, Redis, metrics, key hashing or single-flight. A write is the
/// UPDATE, then a remove.
pub struct Bound {
    db: Db,
    shards: Vec<Shard>,
    hasher: RandomState,
}

impl Bound {
    /// An empty map in front of `db`.
    pub fn new(db: Db) -> Self {
        Bound {
            db,
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, org_id: i64, phone: &str) -> &Shard {
        let hash = self.hasher.hash_one((org_id, phone));
        &self.shards[(hash % SHARDS as u64) as usize]
    }

    /// The map's entry, else `loader`, inserted.
    async fn through<F, Fut>(
        &self,
        org_id: i64,
        phone: &str,
        loader: F,
    ) -> anyhow::Result<Option<Arc<Lead>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<Lead>>>,
    {
        let shard = self.shard(org_id, phone);
        let cached = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&org_id)
            .and_then(|by_phone| by_phone.get(phone).cloned());
        if let Some(cached) = cached {
            return Ok(cached);
        }
        let loaded = loader().await?.map(Arc::new);
        shard
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(org_id)
            .or_default()
            .insert(phone.to_owned(), loaded.clone());
        Ok(loaded)
    }

    /// The lead, from the map or PostgreSQL.
    pub async fn read(&self, lead: LeadRef<'_>) -> anyhow::Result<Option<Arc<Lead>>> {
        self.through(lead.org_id, lead.phone.as_str(), || self.db.select(lead))
            .await
    }

    /// The UPDATE, then the remove.
    pub async fn write(&self, lead: LeadRef<'_>, notes: String) -> anyhow::Result<()> {
        self.db.update(lead, notes).await?;
        let phone = lead.phone.as_str();
        if let Some(by_phone) = self
            .shard(lead.org_id, phone)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&lead.org_id)
        {
            by_phone.remove(phone);
        }
        Ok(())
    }

    /// A read of the probe's key (organization 0, which no lead has) with `loader`.
    pub async fn read_with<F, Fut>(&self, loader: F) -> anyhow::Result<Option<Arc<Lead>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<Lead>>>,
    {
        self.through(0, "probe", loader).await
    }

    /// Closes the database pool.
    pub async fn close(&self) {
        self.db.close().await;
    }
}
