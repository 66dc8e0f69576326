//! The Tiercache modes: `Repository` over `TwoTierCache`, built as the service's start-up
//! builds it (`startup::prepare`): configuration from variables, the pool from
//! `startup::connect`, the Prometheus metrics as the cache's observer, the database change
//! listener and the monitor running. One instance, or two sharing the Redis namespace.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use tiercache::{CacheObserver, Fanout, TwoTierCache};
use tiercache_monitoring::{Metrics, MonitorTask};
use tiercache_repository::model::{Lead, LeadPatch};
use tiercache_repository::{DbListener, Repository};
use tiercache_server::state::MONITOR_INTERVAL;
use tiercache_server::{AppState, Config, startup};

use crate::modes::{LeadRef, QueryCounts};
use crate::services::{Env, KEY_SECRET};

/// The id of the stampede probe's key: no lead has it.
const PROBE_LEAD_ID: i64 = -1;

/// The service's configuration as its environment variables would give it: defaults but
/// for where the services are, the key namespace, the key secret, and Redis on or off.
pub fn config(env: &Env, redis: bool, prefix: &str) -> anyhow::Result<Config> {
    let vars = [
        ("DATABASE_URL", env.database_url.as_str()),
        ("REDIS_URL", env.redis_url.as_str()),
        ("REDIS_ENABLED", if redis { "true" } else { "false" }),
        ("CACHE_PREFIX", prefix),
        ("CACHE_KEY_SECRET", KEY_SECRET),
        ("APP_ENV", "bench"),
    ];
    Config::from_vars(vars.map(|(k, v)| (k.to_owned(), v.to_owned())))
        .context("configuring Tiercache")
}

/// One service instance's data path.
struct Instance {
    repo: Repository,
    /// Sampling and alerts every 5 s, as in production; stops when dropped.
    _monitor: MonitorTask,
    /// The change listener (`DB_NOTIFY_ENABLED` is on by default); stops when dropped.
    _listener: Option<DbListener>,
}

impl Instance {
    async fn start(config: &Config, counts: &Arc<QueryCounts>) -> anyhow::Result<Instance> {
        let pool = startup::connect(&config.database).await?;
        let metrics = Arc::new(Metrics::new(
            tiercache_repository::schema().schema.entities(),
        ));
        // The metrics first, as production has them; the load counter beside them.
        let observers: Vec<Arc<dyn CacheObserver>> = vec![metrics.clone(), counts.clone()];
        let cache = TwoTierCache::with_observer(config.cache.clone(), Arc::new(Fanout(observers)))
            .context("building the cache")?;
        let listener = startup::spawn_db_listener(&config.database, &cache)?;
        let repo = Repository::new(pool, cache);
        let state = AppState::new(repo.clone(), metrics, config.webhook_budget);
        let monitor = state.spawn_monitor(MONITOR_INTERVAL);
        Ok(Instance {
            repo,
            _monitor: monitor,
            _listener: listener,
        })
    }
}

/// Tiercache: one instance, or two in one process that share Redis (and its bus) but
/// have their own L1 and pools; operation `i` goes to instance `i % n`.
pub struct Tiercache {
    instances: Vec<Instance>,
    counts: Arc<QueryCounts>,
}

impl Tiercache {
    /// `instances` instances configured by `config`; their loads are counted in `counts`.
    pub async fn start(
        config: &Config,
        instances: usize,
        counts: Arc<QueryCounts>,
    ) -> anyhow::Result<Tiercache> {
        let mut started = Vec::with_capacity(instances);
        for _ in 0..instances {
            started.push(Instance::start(config, &counts).await?);
        }
        Ok(Tiercache {
            instances: started,
            counts,
        })
    }

    fn instance(&self, index: u64) -> &Instance {
        &self.instances[(index % self.instances.len() as u64) as usize]
    }

    /// `Repository::lead_by_phone` on operation `index`'s instance.
    pub async fn read(&self, index: u64, lead: LeadRef<'_>) -> anyhow::Result<Option<Arc<Lead>>> {
        Ok(self
            .instance(index)
            .repo
            .lead_by_phone(lead.phone, lead.org_id)
            .await?)
    }

    /// `Repository::update_lead`: commits, then invalidates (and tells the other instance).
    pub async fn write(&self, index: u64, lead: LeadRef<'_>, notes: String) -> anyhow::Result<()> {
        let patch = LeadPatch {
            notes: Some(Some(notes)),
            ..LeadPatch::default()
        };
        self.counts.writes.fetch_add(1, Ordering::Relaxed);
        self.instance(index)
            .repo
            .update_lead(lead.id, &patch)
            .await?
            .context("updating a lead that does not exist")?;
        Ok(())
    }

    /// `TwoTierCache::get_or_load` of the probe's key on caller `caller`'s instance, with
    /// `loader`.
    pub async fn read_with<F, Fut>(
        &self,
        caller: u64,
        loader: F,
    ) -> anyhow::Result<Option<Arc<Lead>>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<Option<Lead>>> + Send + 'static,
    {
        let cache = self.instance(caller).repo.cache();
        let key = tiercache_repository::keys(cache).lead_by_id(PROBE_LEAD_ID);
        Ok(cache.get_or_load(key, loader).await?)
    }

    /// Closes the pools.
    pub async fn close(&self) {
        for instance in &self.instances {
            instance.repo.pool().close().await;
        }
    }
}
