//! Start-up: the database (created if missing, migrated, seeded when empty), the cache,
//! the repositories, the database change listener, and serving with graceful shutdown.

use std::future::Future;
use std::str::FromStr;

use anyhow::Context as _;
use axum::Router;
use sqlx::Postgres;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::sync::Arc;

use tiercache::TwoTierCache;
use tiercache_monitoring::{Metrics, MonitorTask};
use tiercache_repository::seed::{Seeded, seed_if_empty};
use tiercache_repository::{DbListener, DbPool, MIGRATOR, Repository};
use tokio::net::TcpListener;

use crate::config::{Config, DatabaseConfig, HttpConfig};
use crate::db_error;
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
}

/// Creates the database if missing, migrates, seeds when empty, builds cache and repositories.
pub async fn prepare(config: &Config) -> anyhow::Result<Service> {
    let pool = connect(&config.database).await?;
    MIGRATOR
        .run(pool.pool())
        .await
        .context("running database migrations")?;
    let seeded = seed_if_empty(pool.pool())
        .await
        .context("loading demo data")?;
    let metrics = Arc::new(Metrics::new());
    let cache = TwoTierCache::with_observer(config.cache.clone(), metrics.clone())
        .context("building the cache")?;
    let db_listener = spawn_db_listener(&config.database, &cache)?;
    let repo = Repository::new(pool, cache);
    let state = AppState::new(repo, metrics, config.webhook_budget)
        .with_admin_token(config.admin_token.clone());
    let monitor = state.spawn_monitor(MONITOR_INTERVAL);
    Ok(Service {
        state,
        seeded,
        monitor,
        db_listener,
    })
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
    let options = PgConnectOptions::from_str(&config.url)
        .context("parsing DATABASE_URL")?
        .options([(
            "statement_timeout",
            config.statement_timeout.as_millis().to_string(),
        )]);
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

/// Serves `router` on `listener` until `shutdown` resolves, letting in-flight requests finish,
/// with the default read bounds (`crate::http::serve` takes the configured ones).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::http::serve(listener, router, HttpConfig::default(), shutdown).await
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
