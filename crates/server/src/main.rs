//! `tiercache-server`: reads its configuration from the environment, prepares the database
//! and the cache, prints where to look, and serves until ctrl-c or SIGTERM.

use std::process::ExitCode;

use anyhow::Context as _;
use tiercache_repository::seed::{Seeded, demo_lead_phone, demo_org_phone};
use tiercache_server::http::serve;
use tiercache_server::startup::{prepare, shutdown_signal};
use tiercache_server::{Config, router};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(config = ?config, "starting");
    if config.key_secret_is_default {
        tracing::warn!("CACHE_KEY_SECRET is not set: using the built-in development secret");
    }
    let service = prepare(&config).await?;
    match service.seeded {
        Seeded::Loaded {
            orgs,
            leads,
            messages,
        } => tracing::info!(orgs, leads, messages, "loaded demo data"),
        Seeded::AlreadyPopulated => {
            tracing::info!("database already populated; no demo data loaded")
        }
    }
    let listener = tokio::net::TcpListener::bind(config.bind_addr)
        .await
        .with_context(|| format!("binding {}", config.bind_addr))?;
    let base = format!(
        "http://{}",
        listener.local_addr().context("reading the bound address")?
    );
    let admin = service.state.admin_token.is_some();
    print_where_to_look(&base, config.redis_enabled, admin);
    let cache = service.state.repo.cache().clone();
    serve(
        listener,
        router(service.state),
        config.http,
        shutdown_signal(),
    )
    .await?;
    // Values loaded, and invalidations made, just before the signal still reach Redis
    // (bounded: a hung Redis does not hold the exit).
    if tokio::time::timeout(SHUTDOWN_FLUSH, cache.flush_l2_writes())
        .await
        .is_err()
    {
        tracing::warn!(
            "values and invalidations on their way to Redis were not all sent before exit"
        );
    }
    Ok(())
}

/// How long an exit waits for loaded values and invalidations on their way to Redis.
const SHUTDOWN_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

fn print_where_to_look(base: &str, redis_enabled: bool, admin: bool) {
    let (org, lead) = (demo_org_phone(1), demo_lead_phone(0));
    println!(
        "\nTiercache is serving on {base} (Redis tier {}).\n\
         \n  API:       {base}/api/leads/1   {base}/api/orgs/by-phone/%2B18005550001\n\
         \n  Webhook:   curl -s -X POST {base}/api/webhooks/conversation-initiation \\\n\
         \x20              -H 'content-type: application/json' \\\n\
         \x20              -d '{{\"caller_id\":\"{lead}\",\"called_number\":\"{org}\",\"call_sid\":\"CA123\"}}'\n\
         \n  Metrics:   {base}/api/monitoring/metrics\n\
         \n  Health:    {base}/api/monitoring/health   (and /live, /ready, /redis below it)\n\
         \n  Stats:     {base}/api/monitoring/stats/cache   Alerts: {base}/api/monitoring/alerts\n\
         \n  Stream:    curl -N {base}/api/monitoring/stream\n\
         \n  Admin:     {admin}\n",
        if redis_enabled { "on" } else { "off" },
        admin = if admin {
            format!("POST {base}/api/admin/invalidate with 'authorization: Bearer $ADMIN_TOKEN'")
        } else {
            "off (set ADMIN_TOKEN to turn it on)".to_owned()
        }
    );
}
