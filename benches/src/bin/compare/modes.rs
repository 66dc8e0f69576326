//! The modes behind one interface: build one, read a lead, update a lead, and probe it
//! with a stampede on a cold key. Dispatch is a `match`, the same few nanoseconds for all.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tiercache::{CacheObserver, Entity, LoadOutcome};
use tiercache_repository::Phone;
use tiercache_repository::model::Lead;
use tiercache_repository::seed::{DEMO_ORGS, demo_lead_phone};

use crate::args::Mode;
use crate::handwritten::{Bound, Db, MokaRedis, PostgresOnly, RedisReadthrough};
use tiercache_benches::redis_connection;

use crate::services::{Env, handwritten_pool};
use crate::tiered::{self, Tiercache};

/// Statements sent to PostgreSQL for reads and for writes. The hand-written modes count
/// their own; Tiercache's loads are counted as the engine reports them (an observer beside
/// the metrics), its writes by the mode.
#[derive(Default)]
pub struct QueryCounts {
    /// SELECTs (loads) for reads.
    pub reads: AtomicU64,
    /// UPDATEs.
    pub writes: AtomicU64,
}

impl CacheObserver for QueryCounts {
    fn load(&self, entity: Entity, _outcome: LoadOutcome, _took: Duration) {
        if entity == tiercache_repository::schema().lead {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The leads' phone numbers, normalized once (`Phone::parse` is libphonenumber's full
/// check, tens of microseconds): every mode holds the same table, so it weighs the same
/// in each mode's memory.
pub struct Leads {
    phones: Vec<Phone>,
}

impl Leads {
    /// The first `leads` demo leads.
    pub fn new(leads: u32) -> anyhow::Result<Leads> {
        let phones = (0..i64::from(leads))
            .map(|j| {
                Phone::parse(&demo_lead_phone(j))
                    .with_context(|| format!("demo lead {j}'s phone does not parse"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Leads { phones })
    }

    /// Demo lead `j` (0-based).
    pub fn get(&self, j: u32) -> LeadRef<'_> {
        LeadRef {
            id: i64::from(j) + 1,
            org_id: i64::from(j) % DEMO_ORGS + 1,
            phone: &self.phones[j as usize],
        }
    }
}

/// What an operation knows of its lead.
#[derive(Clone, Copy)]
pub struct LeadRef<'a> {
    /// The lead's id.
    pub id: i64,
    /// Its organization.
    pub org_id: i64,
    /// Its phone, E.164.
    pub phone: &'a Phone,
}

/// The version a read returned: `n` for notes `v{n}` (the runs' writes), 0 for a lead
/// never written.
pub fn version(lead: &Lead) -> u32 {
    lead.notes
        .as_deref()
        .and_then(|notes| notes.strip_prefix('v'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A mode, built.
pub enum Backend {
    /// `postgres`.
    Postgres(PostgresOnly),
    /// `redis-readthrough`.
    RedisReadthrough(RedisReadthrough),
    /// `moka-redis`.
    MokaRedis(MokaRedis),
    /// `bound`.
    Bound(Bound),
    /// `tiercache`, `tiercache-l1`, `tiercache-x2`.
    Tiercache(Tiercache),
}

impl Backend {
    /// Builds `mode` with its keys under `prefix`, counting its statements in `counts`.
    /// Every mode gets the service's database pool settings.
    pub async fn build(
        mode: Mode,
        env: &Env,
        prefix: &str,
        counts: Arc<QueryCounts>,
    ) -> anyhow::Result<Backend> {
        let redis = !matches!(mode, Mode::TiercacheL1);
        let config = tiered::config(env, redis, prefix)?;
        let db = || async {
            let pool = handwritten_pool(&config.database).await?;
            anyhow::Ok(Db::new(pool, Arc::clone(&counts)))
        };
        Ok(match mode {
            Mode::Postgres => Backend::Postgres(PostgresOnly { db: db().await? }),
            Mode::RedisReadthrough => Backend::RedisReadthrough(RedisReadthrough::new(
                db().await?,
                redis_connection(&env.redis_url).await?,
                prefix,
            )),
            Mode::MokaRedis => Backend::MokaRedis(MokaRedis::new(RedisReadthrough::new(
                db().await?,
                redis_connection(&env.redis_url).await?,
                prefix,
            ))),
            Mode::Bound => Backend::Bound(Bound::new(db().await?)),
            Mode::Tiercache | Mode::TiercacheL1 => {
                Backend::Tiercache(Tiercache::start(&config, 1, counts).await?)
            }
            Mode::TiercacheX2 => Backend::Tiercache(Tiercache::start(&config, 2, counts).await?),
            Mode::Bentocache | Mode::Cashews => {
                anyhow::bail!("{} runs in another runtime (foreign.rs)", mode.name())
            }
        })
    }

    /// Reads `lead` (operation `index` of the replay).
    pub async fn read(&self, index: u64, lead: LeadRef<'_>) -> anyhow::Result<Option<Arc<Lead>>> {
        match self {
            Backend::Postgres(m) => m.read(lead).await,
            Backend::RedisReadthrough(m) => m.read(lead).await,
            Backend::MokaRedis(m) => m.read(lead).await,
            Backend::Bound(m) => m.read(lead).await,
            Backend::Tiercache(m) => m.read(index, lead).await,
        }
    }

    /// Sets `lead`'s notes to `notes` and invalidates as the mode does; returns once both
    /// are done.
    pub async fn write(&self, index: u64, lead: LeadRef<'_>, notes: String) -> anyhow::Result<()> {
        match self {
            Backend::Postgres(m) => m.write(lead, notes).await,
            Backend::RedisReadthrough(m) => m.write(lead, notes).await,
            Backend::MokaRedis(m) => m.write(lead, notes).await,
            Backend::Bound(m) => m.write(lead, notes).await,
            Backend::Tiercache(m) => m.write(index, lead, notes).await,
        }
    }

    /// `callers` concurrent reads of one cold key whose loader takes `delay`: how many
    /// times the loader ran. Bounded by `timeout`.
    pub async fn stampede(
        self: &Arc<Self>,
        callers: usize,
        delay: Duration,
        timeout: Duration,
        value: Lead,
    ) -> anyhow::Result<u64> {
        let runs = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for caller in 0..callers {
            let (backend, runs, value) = (Arc::clone(self), Arc::clone(&runs), value.clone());
            tasks.spawn(async move {
                let loader = move || async move {
                    runs.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    anyhow::Ok(Some(value))
                };
                backend.read_with(caller as u64, loader).await
            });
        }
        let all = async {
            while let Some(joined) = tasks.join_next().await {
                joined.context("joining a stampede caller")??;
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(timeout, all)
            .await
            .with_context(|| format!("the stampede probe passed {timeout:?}"))??;
        Ok(runs.load(Ordering::Relaxed))
    }

    /// A read of the mode's probe key with `loader` in place of the SELECT.
    async fn read_with<F, Fut>(&self, caller: u64, loader: F) -> anyhow::Result<Option<Arc<Lead>>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<Option<Lead>>> + Send + 'static,
    {
        match self {
            Backend::Postgres(m) => m.read_with(loader).await,
            Backend::RedisReadthrough(m) => m.read_with(&m.probe_key(), loader).await,
            Backend::MokaRedis(m) => m.read_with(loader).await,
            Backend::Bound(m) => m.read_with(loader).await,
            Backend::Tiercache(m) => m.read_with(caller, loader).await,
        }
    }

    /// Closes the mode's pools.
    pub async fn close(&self) {
        match self {
            Backend::Postgres(m) => m.db.close().await,
            Backend::RedisReadthrough(m) => m.close().await,
            Backend::MokaRedis(m) => m.close().await,
            Backend::Bound(m) => m.close().await,
            Backend::Tiercache(m) => m.close().await,
        }
    }
}
