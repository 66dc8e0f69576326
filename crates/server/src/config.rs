//! The service's configuration: environment variables in, a checked [`Config`] out.
//!
//! Three layers, as in ripgrep's flags: the environment's strings become a `RawConfig`
//! of plain values (noting every variable that does not parse), which is then checked as
//! a whole and turned into a [`Config`]; the cache's own builder checks its part. Every
//! problem names the variable to fix, and all of them are reported together, so one
//! failed start shows everything that is wrong.
//!
//! The defaults serve a development machine as it is: Postgres with trust auth on
//! 127.0.0.1:5432 as `postgres`, Redis on 127.0.0.1:6379, and a built-in key secret that
//! production (`APP_ENV=prod`) refuses.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use axum::http::HeaderName;
use tiercache::{BreakerConfig, CacheConfig, EncryptionKey, Entity, EntityPolicy, RedisConfig};

use crate::auth::WebhookSecret;
use crate::calls::CallsConfig;

/// Every variable read, in the order their problems are reported.
pub const VARS: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_POOL_SIZE",
    "DATABASE_ACQUIRE_TIMEOUT_MS",
    "DATABASE_STATEMENT_TIMEOUT_MS",
    "DB_NOTIFY_ENABLED",
    "REDIS_ENABLED",
    "REDIS_URL",
    "REDIS_CA_CERT",
    "REDIS_POOL_SIZE",
    "REDIS_COMMAND_TIMEOUT_MS",
    "REDIS_CONNECT_TIMEOUT_MS",
    "BIND_ADDR",
    "MONITORING_BIND_ADDR",
    "HTTP_HEADER_TIMEOUT_MS",
    "HTTP_BODY_TIMEOUT_MS",
    "CACHE_KEY_SECRET",
    "CACHE_ENCRYPTION_KEY",
    "APP_ENV",
    "CACHE_PREFIX",
    "CACHE_SCHEMA_VERSION",
    "L1_ENABLED",
    "L1_MAX_BYTES",
    "LOAD_TIMEOUT_MS",
    "BREAKER_FAILURE_THRESHOLD",
    "BREAKER_OPEN_MS",
    "CACHE_TTL_LEAD_L2_SECS",
    "CACHE_TTL_LEAD_L1_SECS",
    "CACHE_TTL_LEAD_NEGATIVE_SECS",
    "CACHE_TTL_ORG_L2_SECS",
    "CACHE_TTL_ORG_L1_SECS",
    "CACHE_TTL_ORG_NEGATIVE_SECS",
    "CACHE_TTL_CONTEXT_L2_SECS",
    "CACHE_TTL_CONTEXT_L1_SECS",
    "CACHE_TTL_CONTEXT_NEGATIVE_SECS",
    "CACHE_TTL_SUMMARY_L2_SECS",
    "CACHE_TTL_SUMMARY_L1_SECS",
    "CACHE_TTL_SUMMARY_NEGATIVE_SECS",
    "CACHE_TTL_GREETING_L2_SECS",
    "CACHE_TTL_GREETING_L1_SECS",
    "CACHE_TTL_GREETING_NEGATIVE_SECS",
    "CACHE_TTL_HISTORY_L2_SECS",
    "CACHE_TTL_HISTORY_L1_SECS",
    "CACHE_TTL_HISTORY_NEGATIVE_SECS",
    "CACHE_TTL_JITTER",
    "WEBHOOK_BUDGET_MS",
    "WEBHOOK_SECRET",
    "WEBHOOK_SECRET_HEADER",
    "ADMIN_TOKEN",
    "CALL_EVENTS_QUEUE",
    "CALL_EVENTS_STREAM_MAXLEN",
    "CALL_EVENTS_CLAIM_IDLE_MS",
    "CALL_EVENTS_MAX_DELIVERIES",
    "CALL_EVENTS_CONSUMER",
    "CALL_FEED_HEARTBEAT_MS",
    "INSTANCE_NAME",
];

/// The TTL overrides of each entity as (L2, L1, negative), indexed by [`Entity::index`].
///
/// Spelled out rather than built with `format!`, so that searching for a variable's name
/// finds where it is read.
const TTL_VARS: [[&str; 3]; 6] = [
    [
        "CACHE_TTL_LEAD_L2_SECS",
        "CACHE_TTL_LEAD_L1_SECS",
        "CACHE_TTL_LEAD_NEGATIVE_SECS",
    ],
    [
        "CACHE_TTL_ORG_L2_SECS",
        "CACHE_TTL_ORG_L1_SECS",
        "CACHE_TTL_ORG_NEGATIVE_SECS",
    ],
    [
        "CACHE_TTL_CONTEXT_L2_SECS",
        "CACHE_TTL_CONTEXT_L1_SECS",
        "CACHE_TTL_CONTEXT_NEGATIVE_SECS",
    ],
    [
        "CACHE_TTL_SUMMARY_L2_SECS",
        "CACHE_TTL_SUMMARY_L1_SECS",
        "CACHE_TTL_SUMMARY_NEGATIVE_SECS",
    ],
    [
        "CACHE_TTL_GREETING_L2_SECS",
        "CACHE_TTL_GREETING_L1_SECS",
        "CACHE_TTL_GREETING_NEGATIVE_SECS",
    ],
    [
        "CACHE_TTL_HISTORY_L2_SECS",
        "CACHE_TTL_HISTORY_L1_SECS",
        "CACHE_TTL_HISTORY_NEGATIVE_SECS",
    ],
];

/// Longest duration accepted in a `*_MS` variable: one day. Anything longer is a typo, and
/// huge values would overflow `Instant + Duration` in the breaker and the engine (a panic).
const MAX_MILLIS: u64 = 24 * 60 * 60 * 1000;

/// Longest TTL accepted in a `CACHE_TTL_*_SECS` variable: 365 days. Jitter multiplies TTLs,
/// and near `u64::MAX` seconds that multiplication panics on the request path.
const MAX_TTL_SECS: u64 = 365 * 24 * 60 * 60;

/// The whole service's configuration, checked; build it with [`Config::from_env`].
#[derive(Clone)]
pub struct Config {
    /// How to reach Postgres.
    pub database: DatabaseConfig,
    /// The cache engine's configuration (L2 only when `redis_enabled`).
    pub cache: CacheConfig,
    /// Where the HTTP server listens (`BIND_ADDR`).
    pub bind_addr: SocketAddr,
    /// How long a client may take to send a request's headers and body.
    pub http: HttpConfig,
    /// Time a webhook handler may take before it answers with what it has (`WEBHOOK_BUDGET_MS`).
    pub webhook_budget: Duration,
    /// Bearer token for the admin API (`ADMIN_TOKEN`); without one the admin API is off.
    pub admin_token: Option<String>,
    /// Whether the built-in development key secret is in use, so startup can warn.
    pub key_secret_is_default: bool,
    /// Whether the cache has a Redis tier (`REDIS_ENABLED`).
    pub redis_enabled: bool,
    /// Where the monitoring routes listen on their own (`MONITORING_BIND_ADDR`); `None`:
    /// on `bind_addr`, beside the API.
    pub monitoring_bind_addr: Option<SocketAddr>,
    /// The webhook's shared secret and the header it comes in (`WEBHOOK_SECRET`,
    /// `WEBHOOK_SECRET_HEADER`); `None` leaves the webhook open (refused in production).
    pub webhook_secret: Option<WebhookSecret>,
    /// Whether `APP_ENV` is production: development secrets and the demo API key refused.
    pub production: bool,
    /// The live call log.
    pub calls: CallsConfig,
}

impl Config {
    /// Default listen address.
    pub const DEFAULT_BIND_ADDR: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
    /// Default webhook budget: the voice platform's 100 ms less a margin for the network.
    pub const DEFAULT_WEBHOOK_BUDGET: Duration = Duration::from_millis(90);
    /// Webhook budgets must be shorter than this.
    pub const MAX_WEBHOOK_BUDGET: Duration = Duration::from_secs(10);
    /// Shortest admin token accepted.
    pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
    /// Whether Redis is used unless `REDIS_ENABLED` says otherwise.
    pub const DEFAULT_REDIS_ENABLED: bool = true;
    /// Default Redis URL.
    pub const DEFAULT_REDIS_URL: &'static str = "redis://127.0.0.1:6379/";
    /// Key secret used when `CACHE_KEY_SECRET` is unset. It is public, so keys built with it
    /// reveal phone numbers to anyone who can read Redis: development only.
    pub const DEV_KEY_SECRET: &'static str = "tiercache-development-key-secret";
    /// `APP_ENV` values (any case) that refuse the development key secret.
    pub const PRODUCTION_ENVS: [&'static str; 2] = ["prod", "production"];
    /// Shortest webhook secret accepted.
    pub const MIN_WEBHOOK_SECRET_LEN: usize = 16;
    /// Headers that cannot carry the webhook's secret (HTTP itself reads them).
    pub const RESERVED_HEADERS: [&'static str; 7] = [
        "host",
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
    ];

    /// Reads the process environment; see [`VARS`] for the variables.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut vars = Vec::new();
        let mut not_unicode = Vec::new();
        // `std::env::vars` panics on a value that is not UTF-8; those are reported instead.
        for (name, value) in std::env::vars_os() {
            let Ok(name) = name.into_string() else {
                continue; // None of ours.
            };
            match value.into_string() {
                Ok(value) => vars.push((name, value)),
                Err(_) => not_unicode.push(name),
            }
        }
        Self::load(vars, &not_unicode)
    }

    /// Builds the config from these variables alone, ignoring the process environment.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::load(vars, &[])
    }

    fn load(
        vars: impl IntoIterator<Item = (String, String)>,
        not_unicode: &[String],
    ) -> Result<Config, ConfigError> {
        let mut env = Env {
            vars: vars.into_iter().collect(),
            problems: Problems::default(),
        };
        for name in not_unicode {
            if let Some(var) = VARS.iter().find(|v| **v == name.as_str()) {
                env.problems.add(var, "not valid UTF-8".to_owned());
            }
        }
        let raw = RawConfig::parse(&mut env);
        raw.validate(env.problems)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be forgotten here.
        let Config {
            database,
            cache,
            bind_addr,
            http,
            webhook_budget,
            admin_token,
            key_secret_is_default,
            redis_enabled,
            monitoring_bind_addr,
            webhook_secret,
            production,
            calls,
        } = self;
        f.debug_struct("Config")
            .field("database", database)
            .field("cache", cache)
            .field("bind_addr", bind_addr)
            .field("http", http)
            .field("webhook_budget", webhook_budget)
            .field("admin_token", &set_or_not(admin_token.is_some()))
            .field("key_secret_is_default", key_secret_is_default)
            .field("redis_enabled", redis_enabled)
            .field("monitoring_bind_addr", monitoring_bind_addr)
            // The header's name, and "***" for the secret.
            .field("webhook_secret", webhook_secret)
            .field("production", production)
            .field("calls", calls)
            .finish()
    }
}

/// How to reach Postgres, and how long to wait for it.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// `postgres://user[:password]@host:port/db` (`DATABASE_URL`).
    pub url: String,
    /// Connections in the pool (`DATABASE_POOL_SIZE`).
    pub pool_size: u32,
    /// Bound on waiting for a pooled connection (`DATABASE_ACQUIRE_TIMEOUT_MS`).
    pub acquire_timeout: Duration,
    /// Postgres `statement_timeout` for every connection (`DATABASE_STATEMENT_TIMEOUT_MS`).
    pub statement_timeout: Duration,
    /// Whether to listen for the change triggers' notifications, so writes that bypass the
    /// service invalidate the cache (`DB_NOTIFY_ENABLED`).
    pub notify_enabled: bool,
}

impl DatabaseConfig {
    /// Default URL: trust auth as `postgres` on the local server.
    pub const DEFAULT_URL: &'static str = "postgres://postgres@127.0.0.1:5432/tiercache";
    /// Default pool size.
    pub const DEFAULT_POOL_SIZE: u32 = 16;
    /// Largest pool size accepted.
    pub const MAX_POOL_SIZE: u32 = 1000;
    /// Default acquire timeout: a cache miss must still fit a webhook's budget most times.
    pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);
    /// Default statement timeout.
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_millis(2000);
    /// Whether the change listener runs unless `DB_NOTIFY_ENABLED` says otherwise.
    pub const DEFAULT_NOTIFY_ENABLED: bool = true;

    /// `url` with its password hidden, for messages and logs.
    pub fn redacted_url(&self) -> String {
        redact_database_url(&self.url)
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let DatabaseConfig {
            url,
            pool_size,
            acquire_timeout,
            statement_timeout,
            notify_enabled,
        } = self;
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_database_url(url))
            .field("pool_size", pool_size)
            .field("acquire_timeout", acquire_timeout)
            .field("statement_timeout", statement_timeout)
            .field("notify_enabled", notify_enabled)
            .finish()
    }
}

/// How long a client may take to send a request, so a slow or silent one cannot hold a
/// connection: the headers within `header_read_timeout` of the connection opening or of the
/// previous response (an idle keep-alive connection is closed after it too), and the whole
/// body within `body_read_timeout` of the headers (a 408).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Bound on reading a request's headers (`HTTP_HEADER_TIMEOUT_MS`).
    pub header_read_timeout: Duration,
    /// Bound on reading a request's whole body (`HTTP_BODY_TIMEOUT_MS`).
    pub body_read_timeout: Duration,
}

impl HttpConfig {
    /// Default header bound: far more than any client on a working network needs.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default body bound: bodies are at most 64 KiB, so the same suffices.
    pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: Self::DEFAULT_BODY_READ_TIMEOUT,
        }
    }
}

/// A rejected configuration, listing every problem at once.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Every problem found, in the order of [`VARS`].
    pub problems: Vec<EnvProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration: ")?;
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// One environment variable that was rejected, and why; displays as `VAR: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvProblem {
    /// The variable to fix, e.g. `REDIS_COMMAND_TIMEOUT_MS`.
    pub var: String,
    /// What is wrong with it; never quotes a secret.
    pub message: String,
}

impl fmt::Display for EnvProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.message)
    }
}

/// The variables as plain values, defaults filled in, not yet checked against each other.
///
/// A variable that does not parse has been reported and left at its default, so that the
/// checks that follow see a sane value and report nothing further about it.
struct RawConfig {
    database_url: String,
    database_pool_size: u32,
    database_acquire_timeout: Duration,
    database_statement_timeout: Duration,
    db_notify_enabled: bool,
    redis_enabled: bool,
    redis_url: String,
    /// A path, read in [`validate`](Self::validate) when Redis is enabled.
    redis_ca_cert: Option<String>,
    redis_pool_size: u32,
    redis_command_timeout: Duration,
    redis_connect_timeout: Duration,
    bind_addr: SocketAddr,
    http_header_timeout: Duration,
    http_body_timeout: Duration,
    key_secret: Option<String>,
    /// Seals values in Redis (`CACHE_ENCRYPTION_KEY`).
    encryption_key: Option<EncryptionKey>,
    app_env: String,
    cache_prefix: String,
    cache_schema_version: u32,
    l1_enabled: bool,
    l1_max_bytes: u64,
    load_timeout: Duration,
    breaker_failure_threshold: u32,
    breaker_open: Duration,
    /// Per entity, indexed by [`Entity::index`]; `None` keeps the seed value.
    ttl_overrides: [TtlOverrides; 6],
    ttl_jitter: f64,
    webhook_budget: Duration,
    admin_token: Option<String>,
    monitoring_bind_addr: Option<SocketAddr>,
    webhook_secret: Option<String>,
    webhook_secret_header: HeaderName,
    call_queue: usize,
    call_stream_maxlen: u64,
    call_claim_idle: Duration,
    call_max_deliveries: u32,
    call_consumer: bool,
    call_heartbeat: Duration,
    instance_name: Option<String>,
}

/// One entity's TTL overrides; `None` keeps [`EntityPolicy::seed`]'s value.
#[derive(Clone, Copy, Default)]
struct TtlOverrides {
    l2: Option<Duration>,
    l1: Option<Duration>,
    negative: Option<Duration>,
}

impl RawConfig {
    /// Parses each variable on its own, noting those that do not parse.
    fn parse(env: &mut Env) -> RawConfig {
        let mut ttl_overrides = [TtlOverrides::default(); 6];
        for (entity, _) in declared_entities() {
            let [l2_var, l1_var, negative_var] = TTL_VARS[entity.index()];
            let (l2, l1, negative) = (env.secs(l2_var), env.secs(l1_var), env.secs(negative_var));
            // With one of them unreadable the entity keeps its whole seed policy, so the
            // others are not checked against a default they were never meant to meet.
            if ![l2_var, l1_var, negative_var]
                .iter()
                .any(|var| env.problems.has(var))
            {
                ttl_overrides[entity.index()] = TtlOverrides { l2, l1, negative };
            }
        }
        RawConfig {
            database_url: env.string("DATABASE_URL", DatabaseConfig::DEFAULT_URL),
            database_pool_size: env
                .count("DATABASE_POOL_SIZE")
                .unwrap_or(DatabaseConfig::DEFAULT_POOL_SIZE),
            database_acquire_timeout: env
                .millis("DATABASE_ACQUIRE_TIMEOUT_MS")
                .unwrap_or(DatabaseConfig::DEFAULT_ACQUIRE_TIMEOUT),
            database_statement_timeout: env
                .millis("DATABASE_STATEMENT_TIMEOUT_MS")
                .unwrap_or(DatabaseConfig::DEFAULT_STATEMENT_TIMEOUT),
            db_notify_enabled: env
                .flag("DB_NOTIFY_ENABLED")
                .unwrap_or(DatabaseConfig::DEFAULT_NOTIFY_ENABLED),
            redis_enabled: env
                .flag("REDIS_ENABLED")
                .unwrap_or(Config::DEFAULT_REDIS_ENABLED),
            redis_url: env.string("REDIS_URL", Config::DEFAULT_REDIS_URL),
            redis_ca_cert: env.get("REDIS_CA_CERT").map(str::to_owned),
            redis_pool_size: env
                .count("REDIS_POOL_SIZE")
                .unwrap_or(RedisConfig::DEFAULT_POOL_SIZE),
            redis_command_timeout: env
                .millis("REDIS_COMMAND_TIMEOUT_MS")
                .unwrap_or(RedisConfig::DEFAULT_COMMAND_TIMEOUT),
            redis_connect_timeout: env
                .millis("REDIS_CONNECT_TIMEOUT_MS")
                .unwrap_or(RedisConfig::DEFAULT_CONNECT_TIMEOUT),
            bind_addr: env
                .parse("BIND_ADDR", "host:port such as 127.0.0.1:8080", |s| {
                    s.parse().ok()
                })
                .unwrap_or(Config::DEFAULT_BIND_ADDR),
            http_header_timeout: env
                .millis("HTTP_HEADER_TIMEOUT_MS")
                .unwrap_or(HttpConfig::DEFAULT_HEADER_READ_TIMEOUT),
            http_body_timeout: env
                .millis("HTTP_BODY_TIMEOUT_MS")
                .unwrap_or(HttpConfig::DEFAULT_BODY_READ_TIMEOUT),
            key_secret: env.get("CACHE_KEY_SECRET").map(str::to_owned),
            encryption_key: env.encryption_key("CACHE_ENCRYPTION_KEY"),
            app_env: env.string("APP_ENV", CacheConfig::DEFAULT_ENV),
            cache_prefix: env.string("CACHE_PREFIX", CacheConfig::DEFAULT_PREFIX),
            cache_schema_version: env
                .count("CACHE_SCHEMA_VERSION")
                .unwrap_or(CacheConfig::DEFAULT_SCHEMA),
            l1_enabled: env.flag("L1_ENABLED").unwrap_or(true),
            l1_max_bytes: env
                .bytes("L1_MAX_BYTES")
                .unwrap_or(CacheConfig::DEFAULT_L1_MAX_BYTES),
            load_timeout: env
                .millis("LOAD_TIMEOUT_MS")
                .unwrap_or(CacheConfig::DEFAULT_LOAD_TIMEOUT),
            breaker_failure_threshold: env
                .count("BREAKER_FAILURE_THRESHOLD")
                .unwrap_or(BreakerConfig::DEFAULT_FAILURE_THRESHOLD),
            breaker_open: env
                .millis("BREAKER_OPEN_MS")
                .unwrap_or(BreakerConfig::DEFAULT_OPEN_FOR),
            ttl_overrides,
            ttl_jitter: env
                .parse("CACHE_TTL_JITTER", "a fraction such as 0.1", |s| {
                    s.parse().ok()
                })
                .unwrap_or(EntityPolicy::DEFAULT_JITTER),
            webhook_budget: env
                .millis("WEBHOOK_BUDGET_MS")
                .unwrap_or(Config::DEFAULT_WEBHOOK_BUDGET),
            admin_token: env.get("ADMIN_TOKEN").map(str::to_owned),
            monitoring_bind_addr: env.parse(
                "MONITORING_BIND_ADDR",
                "host:port such as 127.0.0.1:9100",
                |s| s.parse().ok(),
            ),
            webhook_secret: env.get("WEBHOOK_SECRET").map(str::to_owned),
            webhook_secret_header: env
                .parse(
                    "WEBHOOK_SECRET_HEADER",
                    "a header name of letters, digits and '-' that HTTP does not reserve",
                    webhook_secret_header,
                )
                .unwrap_or(HeaderName::from_static(WebhookSecret::DEFAULT_HEADER)),
            call_queue: env
                .parse("CALL_EVENTS_QUEUE", "a whole number", |s| s.parse().ok())
                .unwrap_or(CallsConfig::DEFAULT_QUEUE_CAPACITY),
            call_stream_maxlen: env
                .parse("CALL_EVENTS_STREAM_MAXLEN", "a whole number", |s| {
                    s.parse().ok()
                })
                .unwrap_or(CallsConfig::DEFAULT_STREAM_MAXLEN),
            call_claim_idle: env
                .millis("CALL_EVENTS_CLAIM_IDLE_MS")
                .unwrap_or(CallsConfig::DEFAULT_CLAIM_IDLE),
            call_max_deliveries: env
                .count("CALL_EVENTS_MAX_DELIVERIES")
                .unwrap_or(CallsConfig::DEFAULT_MAX_DELIVERIES),
            call_consumer: env.flag("CALL_EVENTS_CONSUMER").unwrap_or(true),
            call_heartbeat: env
                .millis("CALL_FEED_HEARTBEAT_MS")
                .unwrap_or(CallsConfig::DEFAULT_HEARTBEAT),
            instance_name: env.parse(
                "INSTANCE_NAME",
                "1 to 64 letters, digits, '.', '_' or '-'",
                instance_name,
            ),
        }
    }

    /// Checks the values against their bounds and each other, builds the cache config, and
    /// returns the config or every problem found, the parsing ones included.
    fn validate(self, mut problems: Problems) -> Result<Config, ConfigError> {
        let RawConfig {
            database_url,
            database_pool_size,
            database_acquire_timeout,
            database_statement_timeout,
            db_notify_enabled,
            redis_enabled,
            redis_url,
            redis_ca_cert,
            redis_pool_size,
            redis_command_timeout,
            redis_connect_timeout,
            bind_addr,
            http_header_timeout,
            http_body_timeout,
            key_secret,
            encryption_key,
            app_env,
            cache_prefix,
            cache_schema_version,
            l1_enabled,
            l1_max_bytes,
            load_timeout,
            breaker_failure_threshold,
            breaker_open,
            ttl_overrides,
            ttl_jitter,
            webhook_budget,
            admin_token,
            monitoring_bind_addr,
            webhook_secret,
            webhook_secret_header,
            call_queue,
            call_stream_maxlen,
            call_claim_idle,
            call_max_deliveries,
            call_consumer,
            call_heartbeat,
            instance_name,
        } = self;

        // Only the scheme is checked here. sqlx's own parser reads PG* variables and
        // ~/.pgpass, which would make `from_vars` depend on more than its input; a URL it
        // rejects fails the first connect at startup, which names Postgres.
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            // The URL may hold a password, so it is not quoted.
            problems.add(
                "DATABASE_URL",
                "expected postgres://user[:password]@host:port/db".to_owned(),
            );
        } else {
            for problem in database_tls_problems(&database_url) {
                problems.add("DATABASE_URL", problem);
            }
        }
        if !(1..=DatabaseConfig::MAX_POOL_SIZE).contains(&database_pool_size) {
            problems.add(
                "DATABASE_POOL_SIZE",
                format!(
                    "must be between 1 and {}, got {database_pool_size}",
                    DatabaseConfig::MAX_POOL_SIZE
                ),
            );
        }
        for (var, value) in [
            ("DATABASE_ACQUIRE_TIMEOUT_MS", database_acquire_timeout),
            ("DATABASE_STATEMENT_TIMEOUT_MS", database_statement_timeout),
            ("HTTP_HEADER_TIMEOUT_MS", http_header_timeout),
            ("HTTP_BODY_TIMEOUT_MS", http_body_timeout),
            // The cache checks its other durations itself, but not this one.
            ("BREAKER_OPEN_MS", breaker_open),
        ] {
            if value.is_zero() {
                problems.add(var, "must be greater than zero".to_owned());
            }
        }
        if webhook_budget.is_zero() || webhook_budget >= Config::MAX_WEBHOOK_BUDGET {
            problems.add(
                "WEBHOOK_BUDGET_MS",
                format!(
                    "must be at least 1 and less than {} milliseconds, got {}",
                    Config::MAX_WEBHOOK_BUDGET.as_millis(),
                    webhook_budget.as_millis()
                ),
            );
        }
        if let Some(token) = &admin_token {
            let len = token.chars().count();
            if len < Config::MIN_ADMIN_TOKEN_LEN {
                problems.add(
                    "ADMIN_TOKEN",
                    format!(
                        "must be at least {} characters, got {len}",
                        Config::MIN_ADMIN_TOKEN_LEN
                    ),
                );
            }
        }
        let production = Config::PRODUCTION_ENVS
            .iter()
            .any(|env| app_env.eq_ignore_ascii_case(env));
        if let Some(monitoring) = monitoring_bind_addr
            && monitoring == bind_addr
            && monitoring.port() != 0
        {
            problems.add(
                "MONITORING_BIND_ADDR",
                format!("must differ from BIND_ADDR ({bind_addr})"),
            );
        }
        match &webhook_secret {
            Some(secret) => {
                let len = secret.chars().count();
                // A header value; spaces could be trimmed on the way, so none at all.
                if len < Config::MIN_WEBHOOK_SECRET_LEN
                    || !secret.bytes().all(|b| b.is_ascii_graphic())
                {
                    problems.add(
                        "WEBHOOK_SECRET",
                        format!(
                            "must be at least {} visible ASCII characters without spaces, got {len} characters",
                            Config::MIN_WEBHOOK_SECRET_LEN
                        ),
                    );
                }
            }
            None if production => problems.add(
                "WEBHOOK_SECRET",
                format!("must be set when APP_ENV is {app_env:?}: the webhook would answer anyone"),
            ),
            None => {}
        }
        let webhook_secret =
            webhook_secret.map(|secret| WebhookSecret::new(webhook_secret_header, &secret));
        if !(1..=CallsConfig::MAX_QUEUE_CAPACITY).contains(&call_queue) {
            problems.add(
                "CALL_EVENTS_QUEUE",
                format!(
                    "must be between 1 and {}, got {call_queue}",
                    CallsConfig::MAX_QUEUE_CAPACITY
                ),
            );
        }
        if call_stream_maxlen == 0 {
            problems.add(
                "CALL_EVENTS_STREAM_MAXLEN",
                "must be greater than zero".to_owned(),
            );
        }
        if call_max_deliveries == 0 {
            problems.add(
                "CALL_EVENTS_MAX_DELIVERIES",
                "must be greater than zero".to_owned(),
            );
        }
        for (var, value) in [
            ("CALL_EVENTS_CLAIM_IDLE_MS", call_claim_idle),
            ("CALL_FEED_HEARTBEAT_MS", call_heartbeat),
        ] {
            if value.is_zero() {
                problems.add(var, "must be greater than zero".to_owned());
            }
        }
        let key_secret = key_secret.unwrap_or_else(|| Config::DEV_KEY_SECRET.to_owned());
        let calls = CallsConfig {
            queue_capacity: call_queue,
            stream_maxlen: call_stream_maxlen,
            claim_idle: call_claim_idle,
            max_deliveries: call_max_deliveries,
            consume: call_consumer,
            instance_name,
            heartbeat: call_heartbeat,
            ..CallsConfig::new(key_secret.as_bytes())
        };
        // Setting the public secret by hand is no better than leaving it unset.
        let key_secret_is_default = key_secret == Config::DEV_KEY_SECRET;
        if key_secret_is_default
            && Config::PRODUCTION_ENVS
                .iter()
                .any(|env| app_env.eq_ignore_ascii_case(env))
        {
            problems.add(
                "CACHE_KEY_SECRET",
                format!(
                    "must be set when APP_ENV is {app_env:?}: the development secret is public"
                ),
            );
        }

        // The library takes the CA's bytes, never a path; a CA for a Redis that is off is
        // not read.
        let redis_ca_cert = match redis_ca_cert {
            Some(path) if redis_enabled => match std::fs::read(&path) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    problems.add("REDIS_CA_CERT", format!("cannot read {path}: {e}"));
                    None
                }
            },
            _ => None,
        };

        let mut builder = CacheConfig::builder()
            .prefix(cache_prefix)
            .env(app_env)
            .schema_version(cache_schema_version)
            .schema(tiercache_repository::schema().schema.clone())
            .key_secret(key_secret.into_bytes())
            .encryption_key(encryption_key)
            .l1_enabled(l1_enabled)
            .l1_max_bytes(l1_max_bytes)
            .load_timeout(load_timeout)
            .breaker(BreakerConfig {
                failure_threshold: breaker_failure_threshold,
                open_for: breaker_open,
            })
            // Without Redis the engine runs L1 only, through the same code path.
            .redis_url(redis_enabled.then_some(redis_url))
            .redis_ca_cert(redis_ca_cert)
            .pool_size(redis_pool_size)
            .l2_timeout(redis_command_timeout)
            .connect_timeout(redis_connect_timeout);
        for (entity, seed) in declared_entities() {
            let overrides = ttl_overrides[entity.index()];
            builder = builder.policy(
                entity,
                EntityPolicy {
                    l2_ttl: overrides.l2.unwrap_or(seed.l2_ttl),
                    l1_ttl: overrides.l1.unwrap_or(seed.l1_ttl),
                    negative_ttl: overrides.negative.unwrap_or(seed.negative_ttl),
                    jitter: ttl_jitter,
                    grace: seed.grace,
                },
            );
        }
        let cache = match builder.build() {
            Ok(cache) => Some(cache),
            Err(error) => {
                for problem in error.problems {
                    let var = match cache_field_var(&problem.field) {
                        Some(var) => var.to_owned(),
                        // A field this module does not set; still reported, by its name.
                        None => format!("cache.{}", problem.field),
                    };
                    problems.add(&var, problem.message);
                }
                None
            }
        };

        match cache {
            Some(cache) if problems.is_empty() => Ok(Config {
                database: DatabaseConfig {
                    url: database_url,
                    pool_size: database_pool_size,
                    acquire_timeout: database_acquire_timeout,
                    statement_timeout: database_statement_timeout,
                    notify_enabled: db_notify_enabled,
                },
                cache,
                bind_addr,
                http: HttpConfig {
                    header_read_timeout: http_header_timeout,
                    body_read_timeout: http_body_timeout,
                },
                webhook_budget,
                admin_token,
                key_secret_is_default,
                redis_enabled,
                monitoring_bind_addr,
                webhook_secret,
                production,
                calls,
            }),
            _ => Err(problems.into_error()),
        }
    }
}

/// The cached entities and their declared policies (what the TTL variables override).
fn declared_entities() -> Vec<(Entity, EntityPolicy)> {
    let schema = &tiercache_repository::schema().schema;
    schema
        .entities()
        .filter_map(|e| Some((e, *schema.policy(e)?)))
        .collect()
}

/// The variable behind a field the cache's builder rejected (`policy.lead.l1_ttl` is
/// `CACHE_TTL_LEAD_L1_SECS`), or `None` for a field no variable sets.
fn cache_field_var(field: &str) -> Option<&'static str> {
    if let Some(rest) = field.strip_prefix("policy.") {
        let (entity, policy_field) = rest.split_once('.')?;
        let (entity, _) = declared_entities()
            .into_iter()
            .find(|(e, _)| e.as_str() == entity)?;
        let [l2, l1, negative] = TTL_VARS[entity.index()];
        return match policy_field {
            "l2_ttl" => Some(l2),
            "l1_ttl" => Some(l1),
            "negative_ttl" => Some(negative),
            "jitter" => Some("CACHE_TTL_JITTER"),
            _ => None,
        };
    }
    Some(match field {
        "prefix" => "CACHE_PREFIX",
        "env" => "APP_ENV",
        "schema" => "CACHE_SCHEMA_VERSION",
        "key_secret" => "CACHE_KEY_SECRET",
        "l1_enabled" => "L1_ENABLED",
        "l1_max_bytes" => "L1_MAX_BYTES",
        "load_timeout" => "LOAD_TIMEOUT_MS",
        "breaker.failure_threshold" => "BREAKER_FAILURE_THRESHOLD",
        "breaker.open_for" => "BREAKER_OPEN_MS",
        "redis_url" => "REDIS_URL",
        "redis_ca_cert" => "REDIS_CA_CERT",
        "pool_size" => "REDIS_POOL_SIZE",
        "l2_timeout" => "REDIS_COMMAND_TIMEOUT_MS",
        "connect_timeout" => "REDIS_CONNECT_TIMEOUT_MS",
        _ => return None,
    })
}

/// The variables, and the problems found so far.
struct Env {
    vars: HashMap<String, String>,
    problems: Problems,
}

impl Env {
    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    /// The value of `name` through `parse`; `None` when unset, or when it does not parse,
    /// which is noted as "expected {expected}, got {value:?}". Only for non-secret values.
    fn parse<T>(
        &mut self,
        name: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let value = self.vars.get(name)?;
        let parsed = parse(value);
        if parsed.is_none() {
            self.problems
                .add(name, format!("expected {expected}, got {value:?}"));
        }
        parsed
    }

    fn count(&mut self, name: &str) -> Option<u32> {
        self.parse(name, "a whole number", |s| s.parse().ok())
    }

    fn flag(&mut self, name: &str) -> Option<bool> {
        self.parse(name, "true/false/1/0/yes/no", |s| {
            match s.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Some(true),
                "false" | "0" | "no" => Some(false),
                _ => None,
            }
        })
    }

    /// A 32-byte key as 64 hex digits; a bad one is noted without quoting it (a secret).
    fn encryption_key(&mut self, name: &str) -> Option<EncryptionKey> {
        let parsed = EncryptionKey::from_hex(self.vars.get(name)?);
        if let Err(error) = &parsed {
            self.problems.add(
                name,
                format!("{error} (make one with `openssl rand -hex 32`)"),
            );
        }
        parsed.ok()
    }

    /// A size in bytes: a whole number, or one with a `KiB`, `MiB` or `GiB` suffix.
    fn bytes(&mut self, name: &str) -> Option<u64> {
        self.parse(
            name,
            "a number of bytes, or one with KiB, MiB or GiB (such as 64MiB)",
            parse_bytes,
        )
    }

    fn millis(&mut self, name: &str) -> Option<Duration> {
        let millis: u64 = self.parse(name, "milliseconds", |s| s.parse().ok())?;
        self.at_most(name, millis, MAX_MILLIS, "milliseconds (one day)")
            .map(Duration::from_millis)
    }

    fn secs(&mut self, name: &str) -> Option<Duration> {
        let secs: u64 = self.parse(name, "seconds", |s| s.parse().ok())?;
        self.at_most(name, secs, MAX_TTL_SECS, "seconds (365 days)")
            .map(Duration::from_secs)
    }

    fn at_most(&mut self, name: &str, value: u64, max: u64, unit: &str) -> Option<u64> {
        if value > max {
            self.problems
                .add(name, format!("must be at most {max} {unit}, got {value}"));
            return None;
        }
        Some(value)
    }
}

/// Problems found so far; each (variable, message) pair once.
#[derive(Default)]
struct Problems(Vec<EnvProblem>);

impl Problems {
    fn add(&mut self, var: &str, message: String) {
        // The cache reports a bad jitter once per entity; the variable is one.
        if !self.0.iter().any(|p| p.var == var && p.message == message) {
            self.0.push(EnvProblem {
                var: var.to_owned(),
                message,
            });
        }
    }

    fn has(&self, var: &str) -> bool {
        self.0.iter().any(|p| p.var == var)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The error, problems in the order of [`VARS`] (stable within one variable).
    fn into_error(self) -> ConfigError {
        let mut problems = self.0;
        problems.sort_by_key(|p| VARS.iter().position(|v| *v == p.var).unwrap_or(VARS.len()));
        ConfigError { problems }
    }
}

/// `WEBHOOK_SECRET_HEADER` as a header name: letters, digits and `-` (no token
/// punctuation a proxy might mangle), not one HTTP reads itself.
fn webhook_secret_header(value: &str) -> Option<HeaderName> {
    let plain = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let name = HeaderName::from_bytes(value.as_bytes())
        .ok()
        .filter(|_| plain)?;
    (!Config::RESERVED_HEADERS.contains(&name.as_str())).then_some(name)
}

/// `67108864`, `65536KiB`, `64MiB`, `64 MiB` or `1GiB` (units in any case, as binary
/// multiples; `MB` is refused, as it could mean 10^6 or 2^20); `None` for anything else or
/// a size past `u64`.
fn parse_bytes(value: &str) -> Option<u64> {
    let value = value.trim();
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let multiple: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiple)
}

/// `INSTANCE_NAME`: a consumer's name in Redis, so plain (no spaces, no quotes).
fn instance_name(value: &str) -> Option<String> {
    let plain = (1..=CallsConfig::MAX_INSTANCE_NAME_LEN).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    plain.then(|| value.to_owned())
}

fn set_or_not(set: bool) -> &'static str {
    if set { "set" } else { "not set" }
}

/// `sslmode` values sqlx takes (in any case), as libpq names them.
const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The TLS parameters of a `postgres://` URL, as sqlx reads them (the keys its URL parser
/// takes, values percent-decoded as it decodes them).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DatabaseTls {
    /// `sslmode`, lowercased; `None` when absent (sqlx then uses `prefer`).
    pub mode: Option<String>,
    /// `sslrootcert`: the CA's path.
    pub root_cert: Option<String>,
}

impl DatabaseTls {
    /// The parameters in `url`'s query.
    pub(crate) fn of(url: &str) -> DatabaseTls {
        let mut tls = DatabaseTls::default();
        let query = url.split_once('?').map_or("", |(_, query)| query);
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" | "ssl-mode" => {
                    tls.mode = Some(percent_decode(value).to_ascii_lowercase())
                }
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" => {
                    tls.root_cert = Some(percent_decode(value));
                }
                _ => {}
            }
        }
        tls
    }

    /// Whether the server's certificate is checked against a CA (`verify-ca`, `verify-full`).
    pub(crate) fn verifies(&self) -> bool {
        matches!(self.mode.as_deref(), Some("verify-ca" | "verify-full"))
    }
}

/// What is wrong with the TLS parameters of a `postgres://` URL, checked before anything
/// connects: an `sslmode` sqlx does not know, an `sslrootcert` that cannot be read, or one
/// that would be ignored. sqlx checks the CA only under `verify-ca` and `verify-full`
/// (libpq also checks it under `require` when the file exists), so a CA with any other
/// mode would leave the server unverified while the URL reads as if it were not.
fn database_tls_problems(url: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let tls = DatabaseTls::of(url);
    if let Some(mode) = &tls.mode
        && !SSL_MODES.contains(&mode.as_str())
    {
        problems.push(format!(
            "sslmode must be one of {}, got {mode:?}",
            SSL_MODES.join(", ")
        ));
    }
    if let Some(path) = &tls.root_cert {
        if let Err(e) = std::fs::read(path) {
            problems.push(format!("sslrootcert: cannot read {path}: {e}"));
        }
        if !tls.verifies() {
            problems.push(
                "sslrootcert is checked only with sslmode=verify-ca or verify-full; without \
                 one the server's certificate would not be verified"
                    .to_owned(),
            );
        }
    }
    problems
}

/// Decodes `%XX` escapes and `+` (a space) in a URL query value, as form decoding does;
/// a malformed escape is kept as written.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL with its password, if any, replaced by `***` (`postgres://user:***@host/db`),
/// in the authority and in a `password` query parameter alike.
fn redact_database_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // Not a URL we accepted; it could be anything, a password included.
        return "***".to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    // The last '@' ends the user info: a password may hold an unescaped '@', and erring
    // the other way (an '@' in the query) hides too much rather than too little.
    let (authority, tail) = match rest.rfind('@') {
        Some(at) => {
            let (user_info, tail) = rest.split_at(at);
            let user_info = match user_info.split_once(':') {
                Some((user, _password)) => format!("{user}:***"),
                None => user_info.to_owned(),
            };
            (user_info, tail)
        }
        None => (String::new(), rest),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().ends_with("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    fn problem_vars(err: &ConfigError) -> Vec<&str> {
        err.problems.iter().map(|p| p.var.as_str()).collect()
    }

    #[test]
    fn defaults_build_a_valid_config_with_redis() {
        let config = load(&[]).unwrap();
        assert!(config.redis_enabled);
        assert!(config.key_secret_is_default);
        assert_eq!(config.admin_token, None);
        assert_eq!(config.bind_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.webhook_budget, Duration::from_millis(90));
        assert_eq!(
            config.http,
            HttpConfig {
                header_read_timeout: Duration::from_secs(10),
                body_read_timeout: Duration::from_secs(10),
            }
        );
        let DatabaseConfig {
            url,
            pool_size,
            acquire_timeout,
            statement_timeout,
            notify_enabled,
        } = &config.database;
        assert_eq!(url, "postgres://postgres@127.0.0.1:5432/tiercache");
        assert_eq!(*pool_size, 16);
        assert_eq!(*acquire_timeout, Duration::from_millis(500));
        assert_eq!(*statement_timeout, Duration::from_secs(2));
        assert!(*notify_enabled);
        let redis = config.cache.redis().unwrap();
        assert_eq!(redis.url, "redis://127.0.0.1:6379/");
        assert_eq!(redis.pool_size, 1);
        assert_eq!(redis.command_timeout, Duration::from_millis(50));
        assert_eq!(redis.connect_timeout, Duration::from_millis(250));
        assert!(config.cache.l1_enabled());
        for entity in Entity::ALL {
            assert_eq!(*config.cache.policy(entity), EntityPolicy::seed(entity));
        }
    }

    #[test]
    fn http_read_bounds_are_read_and_must_be_positive() {
        let config = load(&[
            ("HTTP_HEADER_TIMEOUT_MS", "300"),
            ("HTTP_BODY_TIMEOUT_MS", "400"),
        ])
        .unwrap();
        assert_eq!(config.http.header_read_timeout, Duration::from_millis(300));
        assert_eq!(config.http.body_read_timeout, Duration::from_millis(400));
        let err = load(&[
            ("HTTP_HEADER_TIMEOUT_MS", "0"),
            ("HTTP_BODY_TIMEOUT_MS", "0"),
        ])
        .unwrap_err();
        assert_eq!(
            problem_vars(&err),
            ["HTTP_HEADER_TIMEOUT_MS", "HTTP_BODY_TIMEOUT_MS"]
        );
    }

    #[test]
    fn the_change_listener_can_be_turned_off() {
        let config = load(&[("DB_NOTIFY_ENABLED", "false")]).unwrap();
        assert!(!config.database.notify_enabled);
        let err = load(&[("DB_NOTIFY_ENABLED", "sometimes")]).unwrap_err();
        assert_eq!(problem_vars(&err), ["DB_NOTIFY_ENABLED"]);
    }

    #[test]
    fn redis_disabled_gives_an_l1_only_cache() {
        let config = load(&[("REDIS_ENABLED", "false")]).unwrap();
        assert!(!config.redis_enabled);
        assert!(!config.cache.redis_enabled());
        assert!(config.cache.l1_enabled());
    }

    #[test]
    fn bool_variants_are_accepted_and_others_named() {
        for (value, expected) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("Yes", true),
            ("false", false),
            ("False", false),
            ("0", false),
            ("no", false),
            ("NO", false),
        ] {
            let config = load(&[("REDIS_ENABLED", value)]).unwrap();
            assert_eq!(config.redis_enabled, expected, "{value}");
        }
        for value in ["maybe", "", "on", " true"] {
            let err = load(&[("REDIS_ENABLED", value)]).unwrap_err();
            assert_eq!(problem_vars(&err), ["REDIS_ENABLED"], "{value:?}");
            assert_eq!(
                err.problems[0].message,
                format!("expected true/false/1/0/yes/no, got {value:?}")
            );
        }
    }

    #[test]
    fn every_bad_variable_is_reported_at_once_in_order() {
        // Given out of order on purpose: the report follows `VARS`.
        let err = load(&[
            ("WEBHOOK_BUDGET_MS", "10000"),
            ("REDIS_COMMAND_TIMEOUT_MS", "fast"),
            ("BIND_ADDR", "localhost"),
            ("DATABASE_POOL_SIZE", "0"),
        ])
        .unwrap_err();
        assert_eq!(
            problem_vars(&err),
            [
                "DATABASE_POOL_SIZE",
                "REDIS_COMMAND_TIMEOUT_MS",
                "BIND_ADDR",
                "WEBHOOK_BUDGET_MS"
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains(r#"REDIS_COMMAND_TIMEOUT_MS: expected milliseconds, got "fast""#),
            "{text}"
        );
        // Ranges in words, not Rust's `1..=1000`.
        assert!(
            text.starts_with(
                "invalid configuration: DATABASE_POOL_SIZE: must be between 1 and 1000, got 0"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "WEBHOOK_BUDGET_MS: must be at least 1 and less than 10000 milliseconds, got 10000"
            ),
            "{text}"
        );
        let err = load(&[("CACHE_TTL_JITTER", "0.9")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("CACHE_TTL_JITTER: must be between 0.0 and 0.5, got 0.9"),
            "{err}"
        );
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        // The README writes the default as 64 MiB; every spelling of it is taken.
        for value in [
            "67108864",
            "64MiB",
            "64 MiB",
            "64mib",
            "65536KiB",
            "65536 kib",
        ] {
            let config = load(&[("L1_MAX_BYTES", value)]).unwrap();
            let text = format!("{:?}", config.cache);
            assert!(text.contains("l1_max_bytes: 67108864,"), "{value}: {text}");
        }
        assert_eq!(parse_bytes("1GiB"), Some(1 << 30));
        assert_eq!(parse_bytes("512B"), Some(512));
        for value in [
            "",
            "MiB",
            "64MB",
            "64 M",
            "-1",
            "1.5GiB",
            "64MiB!",
            "99999999999999GiB",
        ] {
            assert_eq!(parse_bytes(value), None, "{value:?}");
        }
        let err = load(&[("L1_MAX_BYTES", "64MB")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: L1_MAX_BYTES: expected a number of bytes, or one with KiB, \
             MiB or GiB (such as 64MiB), got \"64MB\""
        );
    }

    #[test]
    fn every_variable_is_read_and_named_once() {
        // "!!" is wrong for every variable, so each must be reported, by its own name, once;
        // a misspelt name where a variable is read would show up here.
        let pairs: Vec<(&str, &str)> = VARS.iter().map(|v| (*v, "!!")).collect();
        let err = load(&pairs).unwrap_err();
        assert_eq!(problem_vars(&err), VARS, "{err}");
    }

    #[test]
    fn the_call_log_takes_its_variables_and_checks_them() {
        let config = load(&[]).unwrap();
        assert_eq!(
            config.calls.queue_capacity,
            CallsConfig::DEFAULT_QUEUE_CAPACITY
        );
        assert_eq!(config.calls.instance_name, None);
        let config = load(&[
            ("CALL_EVENTS_QUEUE", "50"),
            ("CALL_EVENTS_STREAM_MAXLEN", "1000"),
            ("CALL_EVENTS_CLAIM_IDLE_MS", "2000"),
            ("CALL_EVENTS_MAX_DELIVERIES", "3"),
            ("CALL_FEED_HEARTBEAT_MS", "250"),
            ("INSTANCE_NAME", "api-1.eu"),
            ("CALL_EVENTS_CONSUMER", "false"),
        ])
        .unwrap();
        let calls = &config.calls;
        assert!(!calls.consume);
        assert!(!calls.log_config().consume);
        assert_eq!(
            (
                calls.queue_capacity,
                calls.stream_maxlen,
                calls.claim_idle,
                calls.max_deliveries,
                calls.heartbeat,
            ),
            (
                50,
                1000,
                Duration::from_secs(2),
                3,
                Duration::from_millis(250)
            )
        );
        let log = calls.log_config();
        assert_eq!(
            (log.consumer.as_str(), log.claim_every),
            ("api-1.eu", Duration::from_millis(500))
        );
        let err = load(&[
            ("CALL_EVENTS_QUEUE", "0"),
            ("CALL_EVENTS_STREAM_MAXLEN", "0"),
            ("CALL_EVENTS_CLAIM_IDLE_MS", "0"),
            ("CALL_EVENTS_MAX_DELIVERIES", "0"),
            ("CALL_FEED_HEARTBEAT_MS", "0"),
            ("INSTANCE_NAME", "two words"),
        ])
        .unwrap_err();
        assert_eq!(
            problem_vars(&err),
            [
                "CALL_EVENTS_QUEUE",
                "CALL_EVENTS_STREAM_MAXLEN",
                "CALL_EVENTS_CLAIM_IDLE_MS",
                "CALL_EVENTS_MAX_DELIVERIES",
                "CALL_FEED_HEARTBEAT_MS",
                "INSTANCE_NAME",
            ],
            "{err}"
        );
        // The default consumer name tells the process apart on its host.
        let name = CallsConfig::new(b"0123456789abcdef").consumer_name();
        assert!(
            name.ends_with(&format!("-{}", std::process::id())),
            "{name}"
        );
    }

    #[test]
    fn ttl_overrides_are_applied() {
        let config = load(&[
            ("CACHE_TTL_GREETING_L2_SECS", "120"),
            ("CACHE_TTL_GREETING_L1_SECS", "30"),
            ("CACHE_TTL_GREETING_NEGATIVE_SECS", "5"),
            ("CACHE_TTL_JITTER", "0.2"),
        ])
        .unwrap();
        assert_eq!(
            *config.cache.policy(Entity::Greeting),
            EntityPolicy {
                l2_ttl: Duration::from_secs(120),
                l1_ttl: Duration::from_secs(30),
                negative_ttl: Duration::from_secs(5),
                jitter: 0.2,
                grace: EntityPolicy::DEFAULT_GRACE,
            }
        );
        assert_eq!(
            *config.cache.policy(Entity::Lead),
            EntityPolicy {
                jitter: 0.2,
                ..EntityPolicy::seed(Entity::Lead)
            }
        );
    }

    #[test]
    fn an_l1_ttl_over_l2_is_reported_by_variable() {
        let err = load(&[("CACHE_TTL_LEAD_L1_SECS", "1000")]).unwrap_err();
        assert_eq!(problem_vars(&err), ["CACHE_TTL_LEAD_L1_SECS"]);
        assert!(err.problems[0].message.contains("must not exceed"), "{err}");
    }

    #[test]
    fn an_unreadable_ttl_keeps_the_entity_on_its_seed() {
        // Against the seed L2 TTL (900 s) this L1 TTL would conflict; only the typo is reported.
        let err = load(&[
            ("CACHE_TTL_LEAD_L2_SECS", "2h"),
            ("CACHE_TTL_LEAD_L1_SECS", "1000"),
        ])
        .unwrap_err();
        assert_eq!(problem_vars(&err), ["CACHE_TTL_LEAD_L2_SECS"]);
        assert_eq!(err.problems[0].message, r#"expected seconds, got "2h""#);
    }

    #[test]
    fn a_bad_jitter_is_reported_once() {
        let err = load(&[("CACHE_TTL_JITTER", "0.9")]).unwrap_err();
        assert_eq!(problem_vars(&err), ["CACHE_TTL_JITTER"]);
    }

    #[test]
    fn huge_durations_are_refused() {
        let err = load(&[
            ("BREAKER_OPEN_MS", &u64::MAX.to_string()),
            ("CACHE_TTL_ORG_L2_SECS", "31536001"),
        ])
        .unwrap_err();
        assert_eq!(
            problem_vars(&err),
            ["BREAKER_OPEN_MS", "CACHE_TTL_ORG_L2_SECS"]
        );
    }

    #[test]
    fn cache_fields_map_to_their_variables() {
        for (field, var) in [
            ("prefix", "CACHE_PREFIX"),
            ("env", "APP_ENV"),
            ("schema", "CACHE_SCHEMA_VERSION"),
            ("key_secret", "CACHE_KEY_SECRET"),
            ("l1_max_bytes", "L1_MAX_BYTES"),
            ("load_timeout", "LOAD_TIMEOUT_MS"),
            ("breaker.failure_threshold", "BREAKER_FAILURE_THRESHOLD"),
            ("breaker.open_for", "BREAKER_OPEN_MS"),
            ("redis_url", "REDIS_URL"),
            ("redis_ca_cert", "REDIS_CA_CERT"),
            ("pool_size", "REDIS_POOL_SIZE"),
            ("l2_timeout", "REDIS_COMMAND_TIMEOUT_MS"),
            ("connect_timeout", "REDIS_CONNECT_TIMEOUT_MS"),
            ("policy.lead.l1_ttl", "CACHE_TTL_LEAD_L1_SECS"),
            ("policy.greeting.l2_ttl", "CACHE_TTL_GREETING_L2_SECS"),
            (
                "policy.history.negative_ttl",
                "CACHE_TTL_HISTORY_NEGATIVE_SECS",
            ),
            ("policy.org.jitter", "CACHE_TTL_JITTER"),
        ] {
            assert_eq!(cache_field_var(field), Some(var), "{field}");
        }
        assert_eq!(cache_field_var("l1_enabled"), Some("L1_ENABLED"));
        for field in ["policy.nope.l1_ttl", "policy.lead.nope", "nope"] {
            assert_eq!(cache_field_var(field), None, "{field}");
        }
        // Every policy field of every entity maps to a variable that is read.
        for entity in Entity::ALL {
            for field in ["l2_ttl", "l1_ttl", "negative_ttl", "jitter"] {
                let var = cache_field_var(&format!("policy.{entity}.{field}")).unwrap();
                assert!(VARS.contains(&var), "{var}");
            }
        }
    }

    #[test]
    fn ttl_variables_follow_the_entity_names() {
        for entity in Entity::ALL {
            let upper = entity.as_str().to_ascii_uppercase();
            assert_eq!(
                TTL_VARS[entity.index()],
                [
                    format!("CACHE_TTL_{upper}_L2_SECS"),
                    format!("CACHE_TTL_{upper}_L1_SECS"),
                    format!("CACHE_TTL_{upper}_NEGATIVE_SECS"),
                ]
            );
        }
    }

    /// A file holding `text` in a directory of its own, removed when the guard drops.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> TempFile {
            let dir = std::env::temp_dir().join(format!(
                "tiercache-config-{}-{name}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    #[test]
    fn rediss_urls_with_credentials_and_a_ca_are_taken() {
        // Before TLS was built in, the first was refused: "not a Redis URL (expected redis://...)".
        let config = load(&[("REDIS_URL", "rediss://app:s3cret@cache.internal:6380/0")]).unwrap();
        let redis = config.cache.redis().unwrap();
        assert_eq!(redis.url, "rediss://app:s3cret@cache.internal:6380/0");
        assert_eq!(redis.ca_cert, None);
        // The CA is read here and handed over as bytes (the cache never sees the path).
        let file = TempFile::new("ca.pem", TEST_CA_PEM);
        let config = load(&[
            ("REDIS_URL", "rediss://:s3cret@127.0.0.1:6380/"),
            ("REDIS_CA_CERT", file.path()),
        ])
        .unwrap();
        assert_eq!(
            config.cache.redis().unwrap().ca_cert.as_deref(),
            Some(TEST_CA_PEM.as_bytes())
        );
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains(r#"ca_cert: "set""#), "{text}");
        // With Redis off the CA is not read at all.
        let config = load(&[
            ("REDIS_ENABLED", "false"),
            ("REDIS_CA_CERT", "/nonexistent/ca.pem"),
        ])
        .unwrap();
        assert!(config.cache.redis().is_none());
    }

    /// A self-signed CA certificate (P-256, valid to 2126), made once with the openssl CLI
    /// for these tests; nothing connects with it here.
    const TEST_CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIBnTCCAUOgAwIBAgIUD2GVKpSjsPk9trbtVkk4L3zTvhYwCgYIKoZIzj0EAwIw
IzEhMB8GA1UEAwwYdGllcmNhY2hlIGNvbmZpZyB0ZXN0IENBMCAXDTI2MTIwNzE4
MjIwMFoYDzIxMjYxMTEzMTgyMjAwWjAjMSEwHwYDVQQDDBh0aWVyY2FjaGUgY29u
ZmlnIHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARA1jOJlAiKM3+W
etcSxJJAcHmCP83beJxBCCwCR7Taj7ho8PbPD3x08UNY6XV0DroSjt1bS0Dm5JkC
I5yn0qDyo1MwUTAdBgNVHQ4EFgQUgXZdXr6mCLlx8hFiC3cINcZhTYcwHwYDVR0j
BBgwFoAUgXZdXr6mCLlx8hFiC3cINcZhTYcwDwYDVR0TAQH/BAUwAwEB/zAKBggq
hkjOPQQDAgNIADBFAiEA/wg97Hyp8a8RjXhlZ+wHX9jr/GcFPcqAC9gwox57y9wC
IGuM6glUEFs+GgckIp+6SUqKs7fuIczUt0Qs/5rGrkkV
-----END CERTIFICATE-----
";

    #[test]
    fn a_bad_redis_ca_is_named_with_its_path_or_its_fault() {
        let err = load(&[
            ("REDIS_URL", "rediss://127.0.0.1:6380/"),
            ("REDIS_CA_CERT", "/nonexistent/ca.pem"),
        ])
        .unwrap_err();
        assert_eq!(problem_vars(&err), ["REDIS_CA_CERT"]);
        assert!(
            err.problems[0]
                .message
                .starts_with("cannot read /nonexistent/ca.pem: No such file"),
            "{err}"
        );
        let not_pem = TempFile::new("key.txt", "not a certificate");
        let ca = TempFile::new("ca.pem", TEST_CA_PEM);
        // Not PEM; and a CA with a plain redis:// URL; both at once with other problems.
        let err = load(&[
            ("REDIS_URL", "rediss://127.0.0.1:6380/"),
            ("REDIS_CA_CERT", not_pem.path()),
        ])
        .unwrap_err();
        assert_eq!(problem_vars(&err), ["REDIS_CA_CERT"]);
        assert!(
            err.problems[0].message.contains("no PEM certificate"),
            "{err}"
        );
        let err = load(&[
            ("REDIS_URL", "redis://127.0.0.1:6379/"),
            ("REDIS_CA_CERT", ca.path()),
            ("REDIS_POOL_SIZE", "many"),
        ])
        .unwrap_err();
        assert_eq!(problem_vars(&err), ["REDIS_CA_CERT", "REDIS_POOL_SIZE"]);
        assert!(err.problems[0].message.contains("rediss://"), "{err}");
    }

    #[test]
    fn database_tls_parameters_are_checked_before_connecting() {
        let ca = TempFile::new("root.pem", TEST_CA_PEM);
        for url in [
            "postgres://u@h/db?sslmode=require".to_owned(),
            "postgres://u@h/db?sslmode=VERIFY-FULL".to_owned(),
            format!(
                "postgres://u@h/db?sslmode=verify-full&sslrootcert={}",
                ca.path()
            ),
            format!(
                "postgres://u@h/db?sslrootcert={}&sslmode=verify-ca",
                ca.path().replace('/', "%2F")
            ),
        ] {
            let config = load(&[("DATABASE_URL", &url)]).unwrap();
            assert_eq!(config.database.url, url);
        }
        let err = load(&[(
            "DATABASE_URL",
            "postgres://u:pw@h/db?sslmode=verify-full&sslrootcert=/nonexistent/root.pem",
        )])
        .unwrap_err();
        assert_eq!(problem_vars(&err), ["DATABASE_URL"]);
        assert!(
            err.problems[0]
                .message
                .starts_with("sslrootcert: cannot read /nonexistent/root.pem: No such file"),
            "{err}"
        );
        let err = load(&[("DATABASE_URL", "postgres://u@h/db?sslmode=always")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: DATABASE_URL: sslmode must be one of disable, allow, \
             prefer, require, verify-ca, verify-full, got \"always\""
        );
        // A CA that sqlx would ignore (it verifies only under verify-ca and verify-full).
        let err = load(&[(
            "DATABASE_URL",
            &format!(
                "postgres://u@h/db?sslmode=require&sslrootcert={}",
                ca.path()
            ),
        )])
        .unwrap_err();
        assert_eq!(problem_vars(&err), ["DATABASE_URL"]);
        assert!(err.problems[0].message.contains("verify-ca"), "{err}");
    }

    #[test]
    fn debug_hides_secrets() {
        let config = load(&[
            (
                "DATABASE_URL",
                "postgres://app:hunter2@db.internal:5432/tiercache",
            ),
            ("REDIS_URL", "redis://:redispass@cache.internal:6379/"),
            ("CACHE_KEY_SECRET", "a very secret key secret"),
            ("ADMIN_TOKEN", "an admin token, long enough"),
        ])
        .unwrap();
        let text = format!("{config:?}");
        for secret in ["hunter2", "redispass", "very secret", "admin token"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(
            text.contains("postgres://app:***@db.internal:5432/tiercache"),
            "{text}"
        );
        assert!(text.contains(r#"admin_token: "set""#), "{text}");
        assert!(!config.key_secret_is_default);
        let text = format!("{:?}", load(&[]).unwrap());
        assert!(text.contains(r#"admin_token: "not set""#), "{text}");
    }

    #[test]
    fn percent_decoding_follows_form_decoding() {
        assert_eq!(percent_decode("%2Ftmp%2Fa+b.pem"), "/tmp/a b.pem");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn database_urls_are_redacted() {
        for (url, shown) in [
            (
                "postgres://postgres@127.0.0.1:5432/tiercache",
                "postgres://postgres@127.0.0.1:5432/tiercache",
            ),
            ("postgres://u:p@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?sslmode=require&password=p",
                "postgres://u@h/db?sslmode=require&password=***",
            ),
            ("postgres://h/db", "postgres://h/db"),
            ("host=h password=p", "***"),
        ] {
            assert_eq!(redact_database_url(url), shown, "{url}");
        }
    }

    #[test]
    fn problems_never_quote_secrets() {
        let err = load(&[
            ("DATABASE_URL", "mysql://u:hunter2@h/db"),
            ("CACHE_KEY_SECRET", "short-sekrit"),
            ("ADMIN_TOKEN", "tiny-tok"),
            ("REDIS_URL", "http://:redispass@h/"),
        ])
        .unwrap_err();
        assert_eq!(
            problem_vars(&err),
            [
                "DATABASE_URL",
                "REDIS_URL",
                "CACHE_KEY_SECRET",
                "ADMIN_TOKEN"
            ]
        );
        let text = err.to_string();
        for secret in ["hunter2", "sekrit", "tiny-tok", "redispass"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn production_refuses_the_default_secret() {
        for app_env in ["prod", "production", "PROD"] {
            let err = load(&[("APP_ENV", app_env), WEBHOOK_SECRET]).unwrap_err();
            assert_eq!(problem_vars(&err), ["CACHE_KEY_SECRET"], "{app_env}");
            // Setting the public secret by hand is refused too.
            let err = load(&[
                ("APP_ENV", app_env),
                ("CACHE_KEY_SECRET", Config::DEV_KEY_SECRET),
                WEBHOOK_SECRET,
            ])
            .unwrap_err();
            assert_eq!(problem_vars(&err), ["CACHE_KEY_SECRET"], "{app_env}");
        }
        let config = load(&[
            ("APP_ENV", "prod"),
            ("CACHE_KEY_SECRET", "0123456789abcdef"),
            WEBHOOK_SECRET,
        ])
        .unwrap();
        assert!(!config.key_secret_is_default);
        assert!(
            load(&[("APP_ENV", "staging")])
                .unwrap()
                .key_secret_is_default
        );
    }

    /// A webhook secret production accepts.
    const WEBHOOK_SECRET: (&str, &str) = ("WEBHOOK_SECRET", "a-webhook-secret-long-enough");

    #[test]
    fn the_webhook_secret_is_checked_and_production_requires_it() {
        let config = load(&[]).unwrap();
        assert!(config.webhook_secret.is_none() && !config.production);
        let config = load(&[WEBHOOK_SECRET]).unwrap();
        let secret = config.webhook_secret.as_ref().unwrap();
        assert_eq!(secret.header(), "x-webhook-secret");
        let config = load(&[
            WEBHOOK_SECRET,
            ("WEBHOOK_SECRET_HEADER", "X-Platform-Token"),
        ])
        .unwrap();
        assert_eq!(config.webhook_secret.unwrap().header(), "x-platform-token");

        let err = load(&[
            ("APP_ENV", "prod"),
            ("CACHE_KEY_SECRET", "0123456789abcdef"),
        ])
        .unwrap_err();
        assert_eq!(problem_vars(&err), ["WEBHOOK_SECRET"]);
        assert!(err.to_string().contains("would answer anyone"), "{err}");
        let config = load(&[
            ("APP_ENV", "Production"),
            ("CACHE_KEY_SECRET", "0123456789abcdef"),
            WEBHOOK_SECRET,
        ])
        .unwrap();
        assert!(config.production);

        for (bad, shown) in [("tiny-secret", "11"), ("a secret with spaces in it", "26")] {
            let err = load(&[("WEBHOOK_SECRET", bad)]).unwrap_err();
            assert_eq!(problem_vars(&err), ["WEBHOOK_SECRET"]);
            let text = err.to_string();
            assert!(!text.contains(bad) && text.contains(shown), "{text}");
        }
        for bad in [
            "",
            "x_secret",
            "x secret",
            "content-type",
            "Host",
            &"x".repeat(65),
        ] {
            let err = load(&[WEBHOOK_SECRET, ("WEBHOOK_SECRET_HEADER", bad)]).unwrap_err();
            assert_eq!(problem_vars(&err), ["WEBHOOK_SECRET_HEADER"], "{bad:?}");
        }
        let text = format!("{:?}", load(&[WEBHOOK_SECRET]).unwrap());
        assert!(!text.contains("long-enough"), "{text}");
        assert!(text.contains("x-webhook-secret"), "{text}");
    }

    #[test]
    fn monitoring_can_listen_apart_from_the_api() {
        assert_eq!(load(&[]).unwrap().monitoring_bind_addr, None);
        let config = load(&[("MONITORING_BIND_ADDR", "127.0.0.1:9100")]).unwrap();
        assert_eq!(
            config.monitoring_bind_addr,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        let err = load(&[
            ("BIND_ADDR", "127.0.0.1:9100"),
            ("MONITORING_BIND_ADDR", "127.0.0.1:9100"),
        ])
        .unwrap_err();
        assert_eq!(problem_vars(&err), ["MONITORING_BIND_ADDR"]);
        // Two ephemeral ports are two listeners.
        assert!(
            load(&[
                ("BIND_ADDR", "127.0.0.1:0"),
                ("MONITORING_BIND_ADDR", "127.0.0.1:0")
            ])
            .is_ok()
        );
        let err = load(&[("MONITORING_BIND_ADDR", "localhost")]).unwrap_err();
        assert_eq!(problem_vars(&err), ["MONITORING_BIND_ADDR"]);
    }

    #[test]
    fn admin_tokens_must_be_long_enough() {
        let err = load(&[("ADMIN_TOKEN", "short")]).unwrap_err();
        assert_eq!(problem_vars(&err), ["ADMIN_TOKEN"]);
        let config = load(&[("ADMIN_TOKEN", "0123456789abcdef")]).unwrap();
        assert_eq!(config.admin_token.as_deref(), Some("0123456789abcdef"));
    }

    #[test]
    fn non_unicode_values_are_reported_for_our_variables_only() {
        let err = Config::load(
            Vec::new(),
            &["REDIS_URL".to_owned(), "SOMEONE_ELSES".to_owned()],
        )
        .unwrap_err();
        assert_eq!(problem_vars(&err), ["REDIS_URL"]);
        assert_eq!(err.problems[0].message, "not valid UTF-8");
    }

    #[test]
    fn the_encryption_key_is_64_hex_digits_and_never_quoted() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let config = load(&[("CACHE_ENCRYPTION_KEY", hex)]).unwrap();
        assert!(config.cache.seals_values());
        let text = format!("{config:?}");
        assert!(text.contains(r#"encryption_key: "set""#), "{text}");
        assert!(!text.contains("00112233"), "{text}");
        assert!(!load(&[]).unwrap().cache.seals_values());
        for bad in [
            "",
            &hex[..32],
            &hex.replace('a', "z"),
            "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=",
        ] {
            let err = load(&[("CACHE_ENCRYPTION_KEY", bad)]).unwrap_err();
            assert_eq!(problem_vars(&err), ["CACHE_ENCRYPTION_KEY"], "{bad:?}");
            let text = err.to_string();
            assert!(text.contains("expected 64 hex digits"), "{text}");
            if !bad.is_empty() {
                assert!(!text.contains(&bad[..16]), "{text}");
            }
        }
    }
}
