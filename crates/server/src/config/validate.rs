//! The third layer: the raw values checked against their bounds and each other, the cache's
//! own builder run over its part, and the [`Config`] built, or every problem reported.

use tiercache::{BreakerConfig, CacheConfig, EntityPolicy};

use super::database_url::tls_problems;
use super::problems::Problems;
use super::raw::RawConfig;
use super::vars::{Decl, VARS, declared_entities};
use super::{Config, ConfigError, DatabaseConfig, HttpConfig};
use crate::auth::WebhookSecret;
use crate::calls::CallsConfig;

impl RawConfig {
    /// Checks the values against their bounds and each other, builds the cache config, and
    /// returns the config or every problem found, the parsing ones included.
    pub(super) fn validate(self, mut problems: Problems) -> Result<Config, ConfigError> {
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
            policies,
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
            for problem in tls_problems(&database_url) {
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
        for (entity, policy) in policies {
            builder = builder.policy(
                entity,
                EntityPolicy {
                    jitter: ttl_jitter,
                    ..policy
                },
            );
        }
        let cache = match builder.build() {
            Ok(cache) => Some(cache),
            Err(error) => {
                for problem in error.problems {
                    // A field no variable sets is still reported, by its name.
                    let var = cache_field_var(&problem.field)
                        .unwrap_or_else(|| format!("cache.{}", problem.field));
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

/// The variable behind a field the cache's builder rejected (`policy.lead.l1_ttl` is
/// `CACHE_TTL_LEAD_L1_SECS`), or `None` for a field no variable sets.
pub(super) fn cache_field_var(field: &str) -> Option<String> {
    if let Some(rest) = field.strip_prefix("policy.") {
        let (entity, policy_field) = rest.split_once('.')?;
        let (entity, _) = declared_entities()
            .into_iter()
            .find(|(e, _)| e.as_str() == entity)?;
        if policy_field == "jitter" {
            return Some("CACHE_TTL_JITTER".to_owned());
        }
        return VARS.iter().find_map(|decl| match decl {
            Decl::EachEntity(vars) => vars
                .iter()
                .find(|var| var.field == policy_field)
                .map(|var| var.name_for(entity)),
            Decl::One(_) => None,
        });
    }
    let var = match field {
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
    };
    Some(var.to_owned())
}
