//! `tiercache-server`: reads its configuration from the environment, prepares the database
//! and the cache, prints where to look, and serves until ctrl-c or SIGTERM; or, with
//! `api-key create|list|revoke`, manages API keys (`tiercache_server::cli`).

use std::process::ExitCode;

use anyhow::Context as _;
use tiercache_repository::seed::{DEMO_API_KEY, Seeded, demo_lead_phone, demo_org_phone};
use tiercache_server::Config;
use tiercache_server::cli::{self, Command, USAGE};
use tiercache_server::startup::{Listeners, prepare, shutdown_signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("{e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if command == Command::Help {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if matches!(command, Command::ApiKey(_)) {
        // Standard output carries the new key alone, for scripts.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::ApiKey(command) => {
            cli::run(
                command,
                &config,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )
            .await
        }
        Command::Serve | Command::Help => run(config).await,
    };
    match result {
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
    match &config.webhook_secret {
        Some(secret) => {
            tracing::info!(header = %secret.header(), "the webhook requires its secret")
        }
        None => tracing::warn!(
            "WEBHOOK_SECRET is not set: the webhook answers anyone (development only; \
             production refuses to start without it)"
        ),
    }
    let listeners = Listeners::bind(&config).await?;
    let base = format!(
        "http://{}",
        listeners
            .api
            .local_addr()
            .context("reading the bound address")?
    );
    let monitoring_base = match &listeners.monitoring {
        Some(listener) => format!(
            "http://{}",
            listener
                .local_addr()
                .context("reading the monitoring address")?
        ),
        None => base.clone(),
    };
    print_where_to_look(&Where {
        base: &base,
        monitoring: &monitoring_base,
        redis_enabled: config.redis_enabled,
        admin: service.state.admin_token.is_some(),
        demo_api_key: service.demo_api_key,
        webhook_secret_header: config.webhook_secret.as_ref().map(|s| s.header().as_str()),
    });
    let cache = service.state.repo.cache().clone();
    listeners
        .serve(service.state, config.http, shutdown_signal())
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

/// What start-up prints.
struct Where<'a> {
    base: &'a str,
    monitoring: &'a str,
    redis_enabled: bool,
    admin: bool,
    demo_api_key: bool,
    webhook_secret_header: Option<&'a str>,
}

fn print_where_to_look(at: &Where<'_>) {
    let (org, lead) = (demo_org_phone(1), demo_lead_phone(0));
    let (base, monitoring) = (at.base, at.monitoring);
    let key = if at.demo_api_key {
        DEMO_API_KEY
    } else {
        "$API_KEY"
    };
    let key_note = if at.demo_api_key {
        "the demo operator key, development only".to_owned()
    } else {
        "create one: tiercache-server api-key create --org 1 --name portal".to_owned()
    };
    let secret = match at.webhook_secret_header {
        Some(header) => format!("\n\x20              -H '{header}: $WEBHOOK_SECRET' \\"),
        None => String::new(),
    };
    println!(
        "\nTiercache is serving on {base} (Redis tier {}).\n\
         \n  API key:   {key}   ({key_note})\n\
         \n  API:       curl -H 'authorization: Bearer {key}' {base}/api/leads/1\n\
         \x20            (also {base}/api/orgs/by-phone/%2B18005550001)\n\
         \n  Webhook:   curl -s -X POST {base}/api/webhooks/conversation-initiation \\{secret}\n\
         \x20              -H 'content-type: application/json' \\\n\
         \x20              -d '{{\"caller_id\":\"{lead}\",\"called_number\":\"{org}\",\"call_sid\":\"CA123\"}}'\n\
         \n  Metrics:   {monitoring}/api/monitoring/metrics\n\
         \n  Health:    {monitoring}/api/monitoring/health   (and /live, /ready, /redis below it)\n\
         \n  Stats:     {monitoring}/api/monitoring/stats/cache   Alerts: {monitoring}/api/monitoring/alerts\n\
         \n  Stream:    curl -N {monitoring}/api/monitoring/stream\n\
         \n  Admin:     {admin}\n",
        if at.redis_enabled { "on" } else { "off" },
        admin = if at.admin {
            format!("POST {base}/api/admin/invalidate with 'authorization: Bearer $ADMIN_TOKEN'")
        } else {
            "off (set ADMIN_TOKEN to turn it on)".to_owned()
        }
    );
}
