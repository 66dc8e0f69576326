//! Start-up: the database (created if missing, migrated, seeded when empty), the cache,
//! the repositories, the API keys, the database change listener, the call log, and serving (one
//! listener, or two with `MONITORING_BIND_ADDR`) with graceful shutdown.

use std::future::Future;
use std::str::FromStr;

use anyhow::Context as _;
use axum::Router;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Postgres};
use std::sync::Arc;

use tiercache::TwoTierCache;
use tiercache_monitoring::{Metrics, MonitorTask};
use tiercache_repository::seed::{self, Seeded, seed_if_empty};
use tiercache_repository::{DbListener, DbPool, MIGRATOR, Repository};
use tokio::net::TcpListener;

use crate::auth::{ApiKeys, KeyRefreshTask};
use crate::calls::{self, CallsTasks};
use crate::config::{Config, DatabaseConfig, HttpConfig};
use crate::db_error;
use crate::routes::{api_router, monitoring_router, router};
use crate::state::{AppState, MONITOR_INTERVAL};

/// A service ready to serve.
pub struct Service {
    /// Handler state.
    pub state: AppState,
    /// What seeding did.
    pub seeded: Seeded,
    /// The monitor's timer (sampling, alerts, stream); stops when dropped.
    pub monitor: MonitorTask,
    /// The database change listener (`None` with `DB_NOTIFY_ENABLED=false`); stops when dropped.
    pub db_listener: Option<DbListener>,
    /// Re-reads the API keys; stops when dropped.
    pub key_refresh: KeyRefreshTask,
    /// The call log's tasks; stop when dropped (flush its queue first: `CallLog::flush`).
    pub calls: CallsTasks,
    /// Whether the public demo API key works here (development, the key not revoked).
    pub demo_api_key: bool,
}

/// Creates the database if missing, migrates, seeds when empty, builds cache and repositories.
pub async fn prepare(config: &Config) -> anyhow::Result<Service> {
    let pool = connect(&config.database).await?;
    MIGRATOR
        .run(pool.pool())
        .await
        .context("running database migrations")?;
    let seeded = seed_quietly(&config.database).await?;
    let demo_api_key = demo_api_key(config, pool.pool()).await?;
    let metrics = Arc::new(Metrics::new(
        tiercache_repository::schema().schema.entities(),
    ));
    let cache = TwoTierCache::with_observer(config.cache.clone(), metrics.clone())
        .context("building the cache")?;
    let db_listener = spawn_db_listener(&config.database, &cache)?;
    let api_keys = ApiKeys::new(
        pool.pool().clone(),
        config.cache.staleness_bound(),
        config.production,
    );
    api_keys.refresh().await.context("reading API keys")?;
    let key_refresh = api_keys.spawn_refresh();
    let (calls, calls_tasks) = calls::start(config, &cache, pool.pool().clone(), metrics.clone())?;
    let repo = Repository::new(pool, cache);
    let state = AppState::new(repo, metrics, config.webhook_budget)
        .with_calls(calls)
        .with_admin_token(config.admin_token.clone())
        .with_api_keys(api_keys)
        .with_webhook_secret(config.webhook_secret.clone());
    let monitor = state.spawn_monitor(MONITOR_INTERVAL);
    Ok(Service {
        state,
        seeded,
        monitor,
        db_listener,
        key_refresh,
        calls: calls_tasks,
        demo_api_key,
    })
}

/// In development, makes sure the demo API key exists (unless it was revoked) and says
/// whether it works; in production it never does, and one left in the database is named.
async fn demo_api_key(config: &Config, pool: &sqlx::PgPool) -> anyhow::Result<bool> {
    if config.production {
        if seed::demo_api_key_active(pool)
            .await
            .context("looking for the demo API key")?
        {
            tracing::warn!(
                "the public demo API key is in the database; it is refused in production, \
                 revoke it with `api-key revoke`"
            );
        }
        return Ok(false);
    }
    seed::ensure_demo_api_key(pool)
        .await
        .context("adding the demo API key")?;
    seed::demo_api_key_active(pool)
        .await
        .context("looking for the demo API key")
}

/// Starts the listener that invalidates `cache` on writes that bypass the service, on a
/// connection of its own to `DATABASE_URL`; `None` when `DB_NOTIFY_ENABLED` is off.
pub fn spawn_db_listener(
    config: &DatabaseConfig,
    cache: &TwoTierCache,
) -> anyhow::Result<Option<DbListener>> {
    if !config.notify_enabled {
        tracing::info!("DB_NOTIFY_ENABLED is off: writes that bypass the service are not heard");
        return Ok(None);
    }
    let options = PgConnectOptions::from_str(&config.url).context("parsing DATABASE_URL")?;
    Ok(Some(DbListener::spawn(options, cache.clone())))
}

/// Opens the pool, creating the database first when it does not exist. Each step connects
/// with `DATABASE_URL`'s TLS parameters (`sslmode`, `sslrootcert`); a failure names the
/// variable, its password hidden, and what in it to check (see [`db_error`]).
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<DbPool> {
    let exists = Postgres::database_exists(&config.url)
        .await
        .map_err(|e| db_error::explain(e, config, "connecting to PostgreSQL"))?;
    if !exists {
        tracing::info!("creating the database");
        Postgres::create_database(&config.url)
            .await
            .map_err(|e| db_error::explain(e, config, "creating the database"))?;
    }
    let options = connect_options(config)?;
    let pool = PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(config.acquire_timeout)
        // The default pings every connection before handing it out: a second round trip per
        // query. A connection that died fails its statement instead; `DbPool` then discards
        // every connection opened before it at checkout, and a read runs once more.
        .test_before_acquire(false);
    DbPool::connect(pool, options)
        .await
        .map_err(|e| db_error::explain(e, config, "connecting to PostgreSQL"))
}

/// The pool's connection options: `DATABASE_URL` with the statement timeout.
fn connect_options(config: &DatabaseConfig) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(&config.url)
        .context("parsing DATABASE_URL")?
        .options([(
            "statement_timeout",
            config.statement_timeout.as_millis().to_string(),
        )]))
}

/// Loads the demo data when the database is empty, on a connection of its own whose
/// statements sqlx does not log: its bulk inserts take seconds, and would otherwise each be
/// a "slow statement" warning quoting its whole SQL on every first start. The service's
/// pool keeps sqlx's warning for a statement over a second.
async fn seed_quietly(config: &DatabaseConfig) -> anyhow::Result<Seeded> {
    let options = connect_options(config)?.disable_statement_logging();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await
        .map_err(|e| db_error::explain(e, config, "connecting to PostgreSQL"))?;
    let seeded = seed_if_empty(&pool).await.context("loading demo data");
    pool.close().await;
    seeded
}

/// Serves `router` on `listener` until `shutdown` resolves, letting in-flight requests finish,
/// with the default read bounds (`crate::http::serve` takes the configured ones).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::http::serve(listener, router, HttpConfig::default(), shutdown).await
}

/// The service's listeners, bound.
pub struct Listeners {
    /// The API's (`BIND_ADDR`); monitoring's too when it has none of its own.
    pub api: TcpListener,
    /// Monitoring's own (`MONITORING_BIND_ADDR`), when set.
    pub monitoring: Option<TcpListener>,
}

impl Listeners {
    /// Binds `BIND_ADDR`, and `MONITORING_BIND_ADDR` when set.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let api = TcpListener::bind(config.bind_addr)
            .await
            .with_context(|| format!("binding BIND_ADDR {}", config.bind_addr))?;
        let monitoring = match config.monitoring_bind_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding MONITORING_BIND_ADDR {addr}"))?,
            ),
            None => None,
        };
        Ok(Listeners { api, monitoring })
    }

    /// Serves `state` on them until `shutdown` resolves: the whole router on the API's
    /// listener, or the API there and monitoring on its own. Both let in-flight requests
    /// finish; a failure of either ends both.
    pub async fn serve(
        self,
        state: AppState,
        http: HttpConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Some(monitoring) = self.monitoring else {
            return crate::http::serve(self.api, router(state), http, shutdown).await;
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let until_stopped = || {
            let mut stopped = stopped.clone();
            async move {
                // An error means the sender is gone, which only the shutdown sends from.
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        tokio::try_join!(
            crate::http::serve(self.api, api_router(state.clone()), http, until_stopped()),
            crate::http::serve(monitoring, monitoring_router(state), http, until_stopped()),
        )?;
        Ok(())
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down; letting in-flight requests finish");
}
