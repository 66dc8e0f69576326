//! The service's configuration: environment variables in, a checked [`Config`] out.
//!
//! Three layers, as in ripgrep's flags: the environment's strings become a `RawConfig`
//! of plain values (noting every variable that does not parse), which is then checked as
//! a whole and turned into a [`Config`]; the cache's own builder checks its part. Every
//! problem names the variable to fix, and all of them are reported together, so one
//! failed start shows everything that is wrong.
//!
//! Each variable is declared once, in `vars.rs`: its name, a line of doc, its default as
//! the README shows it, and its parser (from `parse.rs`); [`variables`] lists them, and a
//! test holds the README's table to them. `raw.rs` reads the variables into a `RawConfig`,
//! `validate.rs` checks it, `problems.rs` gathers what is wrong, and `database_url.rs`
//! reads `DATABASE_URL`'s TLS parameters and hides its password. A new variable is a
//! declaration, a `RawConfig` field with its default, its checks and its place in
//! [`Config`] (for one the cache's builder takes, its builder field in
//! `cache_field_var`), and a README row.
//!
//! The defaults serve a development machine as it is: Postgres with trust auth on
//! 127.0.0.1:5432 as `postgres`, Redis on 127.0.0.1:6379, and a built-in key secret that
//! production (`APP_ENV=prod`) refuses.

mod database_url;
mod parse;
mod problems;
mod raw;
#[cfg(test)]
mod readme;
#[cfg(test)]
mod tests;
mod validate;
mod vars;

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tiercache::CacheConfig;

pub(crate) use self::database_url::DatabaseTls;
use self::database_url::redact_database_url;
use self::problems::Problems;
use self::raw::RawConfig;
pub use self::vars::{VarDefault, Variable, variables};
use crate::auth::WebhookSecret;
use crate::calls::CallsConfig;

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

    /// Reads the process environment; see [`variables`] for the variables.
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
        let vars: HashMap<String, String> = vars.into_iter().collect();
        let mut problems = Problems::default();
        let known = vars::names();
        for name in not_unicode.iter().filter(|name| known.contains(name)) {
            problems.add(name, "not valid UTF-8".to_owned());
        }
        let raw = RawConfig::read(&vars, &mut problems);
        raw.validate(problems)
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
    /// Every problem found, in the order of [`variables`].
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

fn set_or_not(set: bool) -> &'static str {
    if set { "set" } else { "not set" }
}
