//! `tiercache-server`: reads its configuration from the environment, prepares the database
//! and the cache, prints where to look, and serves until ctrl-c or SIGTERM; or, with
//! `api-key create|list|revoke`, manages API keys (`tiercache_server::cli`).

use std::process::ExitCode;

use anyhow::Context as _;
use tiercache_repository::seed::{DEMO_API_KEY, Seeded, demo_lead_phone, demo_org_phone};
use tiercache_server::Config;
use tiercache_server::cli::{self, Command, USAGE};
use tiercache_server::logging::LogSettings;
use tiercache_server::startup::{Listeners, prepare, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("{e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("{}", cli::version());
            return ExitCode::SUCCESS;
        }
        Command::Serve | Command::ApiKey(_) => {}
    }
    let logs = match LogSettings::from_env() {
        Ok(logs) => logs,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // For api-key, standard output carries the new key alone, for scripts.
    if let Err(e) = logs.install(matches!(command, Command::ApiKey(_))) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
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
        Command::Serve => run(config).await,
        // Answered above, before any configuration was read.
        Command::Help | Command::Version => Ok(()),
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
    log_config(&config);
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
    let redis = redis_at_start(&service.state).await;
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
        redis: &redis,
        admin: service.state.admin_token.is_some(),
        demo_api_key: service.demo_api_key,
        webhook_secret_header: config.webhook_secret.as_ref().map(|s| s.header().as_str()),
    });
    let cache = service.state.repo.cache().clone();
    let calls = service.state.calls.clone();
    let call_log = calls.as_ref().map(|calls| calls.log.clone());
    let shutdown = async move {
        shutdown_signal().await;
        // Live feed streams never end on their own; the graceful shutdown waits for them.
        if let Some(calls) = calls {
            calls.close_feeds();
        }
    };
    listeners
        .serve(service.state, config.http, shutdown)
        .await?;
    // Call events the last requests published reach Redis (or the sessions) before exit,
    // within the same bound; what is left is dropped and counted by the log.
    if let Some(log) = call_log
        && tokio::time::timeout(SHUTDOWN_FLUSH, log.flush())
            .await
            .is_err()
    {
        tracing::warn!("call events still queued at exit were not all appended");
    }
    drop(service.calls);
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

/// Logs the effective configuration in a few lines, secrets as "set" or "not set".
fn log_config(config: &Config) {
    // Destructured so that a new field cannot be forgotten here.
    let Config {
        database,
        cache,
        bind_addr,
        http,
        webhook_budget,
        admin_token,
        key_secret_is_default: _, // Warned about on its own.
        redis_enabled,
        monitoring_bind_addr,
        webhook_secret,
        production,
        calls,
    } = config;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %bind_addr,
        ?monitoring_bind_addr,
        ?http,
        ?webhook_budget,
        admin_token = if admin_token.is_some() { "set" } else { "not set" },
        ?webhook_secret,
        production,
        redis_enabled,
        "starting"
    );
    tracing::info!(?database, "configuration: PostgreSQL");
    tracing::info!(?cache, "configuration: cache (TTL policies by entity)");
    tracing::info!(?calls, "configuration: call log");
}

/// Whether Redis answered at start-up.
enum RedisAtStart {
    /// `REDIS_ENABLED=false`.
    Off,
    /// It answered a `PING`.
    Answering,
    /// It did not, for this reason.
    Unreachable(String),
}

/// Pings Redis once, warning when it does not answer: the service starts anyway (it runs on
/// L1 and PostgreSQL meanwhile), but a first run should not look healthy when it is not.
async fn redis_at_start(state: &tiercache_server::AppState) -> RedisAtStart {
    match state.repo.cache().ping_l2().await {
        None => RedisAtStart::Off,
        Some(Ok(_)) => RedisAtStart::Answering,
        Some(Err(e)) => {
            let reason = match &e.source {
                Some(source) => format!("{e}: {source}"),
                None => e.to_string(),
            };
            tracing::warn!(
                error = %reason,
                "Redis does not answer at start-up: serving from L1 and PostgreSQL until it \
                 does (REDIS_URL, or REDIS_ENABLED=false to run without it)"
            );
            RedisAtStart::Unreachable(reason)
        }
    }
}

/// How long an exit waits for loaded values and invalidations on their way to Redis.
const SHUTDOWN_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// What start-up prints.
struct Where<'a> {
    base: &'a str,
    monitoring: &'a str,
    redis: &'a RedisAtStart,
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
        "\nTiercache is serving on {base} ({}).\n\
         \n  API key:   {key}   ({key_note})\n\
         \n  API:       curl -H 'authorization: Bearer {key}' {base}/api/leads/1\n\
         \x20            (also {base}/api/orgs/by-phone/%2B18005550001)\n\
         \n  Webhook:   curl -s -X POST {base}/api/webhooks/conversation-initiation \\{secret}\n\
         \x20              -H 'content-type: application/json' \\\n\
         \x20              -d '{{\"caller_id\":\"{lead}\",\"called_number\":\"{org}\",\"call_sid\":\"CA123\"}}'\n\
         \n  Calls:     {base}/calls#org=1&key={key}\n\
         \x20            (today's calls, live; the key after # stays in the browser)\n\
         \n  Metrics:   {monitoring}/api/monitoring/metrics\n\
         \n  Health:    {monitoring}/api/monitoring/health   (and /live, /ready, /redis below it)\n\
         \n  Stats:     {monitoring}/api/monitoring/stats/cache   Alerts: {monitoring}/api/monitoring/alerts\n\
         \n  Stream:    curl -N {monitoring}/api/monitoring/stream\n\
         \n  Admin:     {admin}\n",
        match at.redis {
            RedisAtStart::Off => "Redis tier off".to_owned(),
            RedisAtStart::Answering => "Redis tier on".to_owned(),
            RedisAtStart::Unreachable(reason) => format!(
                "Redis tier on, but Redis DOES NOT ANSWER ({reason}): serving from L1 and \
                 PostgreSQL until it does"
            ),
        },
        admin = if at.admin {
            format!("POST {base}/api/admin/invalidate with 'authorization: Bearer $ADMIN_TOKEN'")
        } else {
            "off (set ADMIN_TOKEN to turn it on)".to_owned()
        }
    );
}
