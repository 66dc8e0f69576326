//! The shared PostgreSQL and Redis: where they are, the comparison's own database (created,
//! seeded, reset between runs), Redis's command counters and namespace clean-up, and this
//! process's memory.

use std::str::FromStr as _;

use anyhow::{Context as _, ensure};
use sqlx::migrate::MigrateDatabase as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tiercache_benches::redis_connection;
use tiercache_repository::MIGRATOR;
use tiercache_repository::seed::{DEMO_LEADS, DEMO_ORGS, seed_sized};
use tiercache_server::config::DatabaseConfig;

/// The database of the full-size comparison; other sizes append `_N`.
const DEFAULT_DATABASE: &str = "postgres://postgres@127.0.0.1:5432/tiercache_compare";
/// Not the built-in development secret, so keys look like production's; 32 characters.
pub const KEY_SECRET: &str = "compare-loadgen-key-secret-32chr";

/// Where the shared services are.
#[derive(Clone, Debug)]
pub struct Env {
    /// PostgreSQL: the comparison's own database.
    pub database_url: String,
    /// Redis.
    pub redis_url: String,
}

impl Env {
    /// From `COMPARE_DATABASE_URL` and `REDIS_URL`, with defaults for a data set of `leads`.
    ///
    /// Not `DATABASE_URL`: the comparison rewrites leads' notes, so pointing it at the
    /// service's database by a variable set for the service must not be possible.
    pub fn from_env(leads: u32) -> Env {
        let database_url = std::env::var("COMPARE_DATABASE_URL").unwrap_or_else(|_| {
            if i64::from(leads) == DEMO_LEADS {
                DEFAULT_DATABASE.to_owned()
            } else {
                format!("{DEFAULT_DATABASE}_{leads}")
            }
        });
        let redis_url = std::env::var("REDIS_URL")
            .unwrap_or_else(|_| tiercache_server::Config::DEFAULT_REDIS_URL.to_owned());
        Env {
            database_url,
            redis_url,
        }
    }
}

/// Creates the database when missing, migrates it, seeds the demo data at `leads` leads
/// when it is empty, and checks that it holds exactly those leads; returns a small pool on it
/// and PostgreSQL's version.
pub async fn prepare_database(env: &Env, leads: u32) -> anyhow::Result<(PgPool, String)> {
    let url = &env.database_url;
    if !Postgres::database_exists(url)
        .await
        .context("connecting to PostgreSQL")?
    {
        Postgres::create_database(url)
            .await
            .context("creating the comparison's database")?;
    }
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .context("connecting to the comparison's database")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("running database migrations")?;
    seed_sized(&pool, DEMO_ORGS, i64::from(leads))
        .await
        .context("loading the demo data")?;
    let (total, matching): (i64, i64) = sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE id BETWEEN 1 AND $1
                    AND phone = '+16462' || lpad((id - 1)::text, 6, '0')
                    AND org_id = (id - 1) % $2 + 1)
         FROM leads",
    )
    .bind(i64::from(leads))
    .bind(DEMO_ORGS)
    .fetch_one(&pool)
    .await
    .context("counting the demo leads")?;
    ensure!(
        total == i64::from(leads) && matching == total,
        "the database holds {total} leads, {matching} of them demo leads, where {leads} were \
         asked for; point COMPARE_DATABASE_URL at a database of its own (it is created and \
         seeded when missing)"
    );
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await
        .context("reading the PostgreSQL version")?;
    Ok((pool, version))
}

/// Puts back the notes and update times the previous runs' writes changed (notes `v{n}`), as
/// the seed wrote them, and vacuums the table, so that every run starts from the same rows
/// and the same table state. Marked as the service's own, so the change triggers stay quiet.
pub async fn reset_leads(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await.context("resetting the leads")?;
    tiercache_repository::queries::mark_service_origin(&mut *tx)
        .await
        .context("resetting the leads")?;
    sqlx::query(
        "UPDATE leads
         SET notes = CASE WHEN (id - 1) % 3 = 0 THEN 'Prefers calls after 5pm' END,
             updated_at = created_at
         WHERE notes LIKE 'v%'",
    )
    .execute(&mut *tx)
    .await
    .context("resetting the leads")?;
    tx.commit().await.context("resetting the leads")?;
    sqlx::query("VACUUM (ANALYZE) leads")
        .execute(pool)
        .await
        .context("vacuuming the leads")?;
    Ok(())
}

/// The pool of the hand-written modes: what `startup::connect` opens for the service (size,
/// timeouts, no ping before each query), plus `tiercache.origin` set for the session.
///
/// The change triggers are Tiercache's (its migrations install them), so a team without
/// Tiercache has none; the setting keeps them silent, and the hand-written modes' UPDATE
/// costs what it would cost such a team.
pub async fn handwritten_pool(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(&config.url)
        .context("parsing the database URL")?
        .options([
            (
                "statement_timeout",
                config.statement_timeout.as_millis().to_string(),
            ),
            ("tiercache.origin", "service".to_owned()),
        ]);
    PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")
}

/// One `INFO` section of Redis.
async fn redis_info(
    con: &mut redis::aio::MultiplexedConnection,
    section: &str,
) -> anyhow::Result<String> {
    redis::cmd("INFO")
        .arg(section)
        .query_async(con)
        .await
        .with_context(|| format!("reading Redis INFO {section}"))
}

/// Redis's version.
pub async fn redis_version(url: &str) -> anyhow::Result<String> {
    let mut con = redis_connection(url).await?;
    let info = redis_info(&mut con, "server").await?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("(unknown version)")
        .trim()
        .to_owned())
}

/// Commands Redis has run since it started, all clients together (`INFO commandstats`,
/// the sum of every command's `calls`).
pub async fn redis_command_calls(
    con: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<u64> {
    let info = redis_info(con, "commandstats").await?;
    // Lines read "cmdstat_get:calls=10,usec=35,usec_per_call=3.50,…".
    Ok(info
        .lines()
        .filter_map(|line| line.strip_prefix("cmdstat_"))
        .filter_map(|line| line.split_once(":calls="))
        .filter_map(|(_, rest)| rest.split(',').next()?.parse::<u64>().ok())
        .sum())
}

/// This process's resident memory (`VmRSS` in /proc/self/status), in bytes.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The CPU model from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
