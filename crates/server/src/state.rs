//! What every handler shares.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tiercache::CacheConfig;
use tiercache_monitoring::alerts::THRESHOLDS;
use tiercache_monitoring::{
    DatabaseProbe, DbPoolState, Metrics, Monitor, MonitorTask, MonitoringState,
};
use tiercache_repository::{PoolObserver, Repository};

use crate::auth::{ApiKeys, WebhookSecret};
use crate::calls::Calls;

/// Handler state: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The cached repositories.
    pub repo: Repository,
    /// How long the webhook may take before it answers with what it has.
    pub webhook_budget: Duration,
    /// The metrics registry (also the cache's observer).
    pub metrics: Arc<Metrics>,
    /// Window, alerts and live stream.
    pub monitor: Arc<Monitor>,
    /// The bearer token of the admin API; no token, no admin API.
    pub admin_token: Option<Arc<str>>,
    /// The API keys the domain routes take.
    pub api_keys: ApiKeys,
    /// The webhook's shared secret; `None` leaves the webhook open (development only).
    pub webhook_secret: Option<WebhookSecret>,
    /// The live call log (`None`: the webhook publishes nothing and its routes do not
    /// exist, as in benches measuring the webhook without it).
    pub calls: Option<Calls>,
}

/// How often the monitor samples, evaluates alerts and publishes a snapshot.
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(5);

impl AppState {
    /// State around `repo`, whose cache reports to `metrics`, as its pool's checkouts will.
    /// Its API keys are read from `repo`'s pool with the default staleness bound, none until
    /// they are refreshed ([`with_api_keys`](Self::with_api_keys) sets others); the webhook
    /// is open.
    pub fn new(repo: Repository, metrics: Arc<Metrics>, webhook_budget: Duration) -> Self {
        let repo = repo.with_pool_observer(Arc::new(PoolMetrics(Arc::clone(&metrics))));
        let monitor = Monitor::new(Arc::clone(&metrics), repo.cache().clone(), THRESHOLDS);
        let api_keys = ApiKeys::new(
            repo.pool().clone(),
            CacheConfig::DEFAULT_STALENESS_BOUND,
            false,
        );
        AppState {
            repo,
            webhook_budget,
            metrics,
            monitor,
            admin_token: None,
            api_keys,
            webhook_secret: None,
            calls: None,
        }
    }

    /// Runs the call log: the webhook publishes to it and its routes exist.
    pub fn with_calls(mut self, calls: Calls) -> Self {
        self.calls = Some(calls);
        self
    }

    /// Checks API keys with `keys`.
    pub fn with_api_keys(mut self, keys: ApiKeys) -> Self {
        self.api_keys = keys;
        self
    }

    /// Requires this secret on the webhook (`None`: open).
    pub fn with_webhook_secret(mut self, secret: Option<WebhookSecret>) -> Self {
        self.webhook_secret = secret;
        self
    }

    /// Turns the admin API on with this bearer token.
    pub fn with_admin_token(mut self, token: Option<String>) -> Self {
        self.admin_token = token.map(Arc::from);
        self
    }

    /// Starts the monitor's timer; it stops when the returned task is dropped.
    pub fn spawn_monitor(&self, every: Duration) -> MonitorTask {
        self.monitor.spawn(every)
    }

    /// The monitoring routes' state.
    pub fn monitoring(&self) -> MonitoringState {
        MonitoringState {
            metrics: Arc::clone(&self.metrics),
            cache: self.repo.cache().clone(),
            db: Arc::new(PgProbe(self.repo.clone())),
            monitor: Arc::clone(&self.monitor),
            calls: self.calls.as_ref().map(Calls::probe),
        }
    }
}

/// PostgreSQL's health probe: `SELECT 1` on the service's pool (run again once after a
/// connection a restart killed, as reads are).
struct PgProbe(Repository);

impl DatabaseProbe for PgProbe {
    fn ping(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.0.ping().await.map_err(|e| error_chain(&e)) })
    }

    fn pool(&self) -> Option<DbPoolState> {
        let pool = self.0.pool_state();
        Some(DbPoolState {
            size: pool.size,
            idle: pool.idle,
            max: pool.max,
            waiting: pool.waiting,
        })
    }
}

/// The pool's checkouts, timed into the metrics (monitoring knows no sqlx, the
/// repository no prometheus).
struct PoolMetrics(Arc<Metrics>);

impl PoolObserver for PoolMetrics {
    fn acquired(&self, took: Duration, ok: bool) {
        self.0.db_acquired(took, ok);
    }
}

/// An error and its sources, as `sqlx::Error`'s message alone said before.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
