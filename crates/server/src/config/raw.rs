//! The second layer: the variables as plain values, each parsed on its own by its
//! declaration, defaults filled in, not yet checked against each other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::HeaderName;
use tiercache::{BreakerConfig, CacheConfig, EncryptionKey, Entity, EntityPolicy, RedisConfig};

use super::parse::secs;
use super::problems::Problems;
use super::vars::{Decl, VARS, declared_entities};
use super::{Config, DatabaseConfig, HttpConfig};
use crate::auth::WebhookSecret;
use crate::calls::CallsConfig;

/// The variables as plain values, defaults filled in.
///
/// A variable that does not parse has been reported and left at its default, so that the
/// checks that follow see a sane value and report nothing further about it.
pub(super) struct RawConfig {
    pub(super) database_url: String,
    pub(super) database_pool_size: u32,
    pub(super) database_acquire_timeout: Duration,
    pub(super) database_statement_timeout: Duration,
    pub(super) db_notify_enabled: bool,
    pub(super) redis_enabled: bool,
    pub(super) redis_url: String,
    /// A path, read in validation when Redis is enabled.
    pub(super) redis_ca_cert: Option<String>,
    pub(super) redis_pool_size: u32,
    pub(super) redis_command_timeout: Duration,
    pub(super) redis_connect_timeout: Duration,
    pub(super) bind_addr: SocketAddr,
    pub(super) monitoring_bind_addr: Option<SocketAddr>,
    pub(super) http_header_timeout: Duration,
    pub(super) http_body_timeout: Duration,
    pub(super) key_secret: Option<String>,
    pub(super) encryption_key: Option<EncryptionKey>,
    pub(super) app_env: String,
    pub(super) cache_prefix: String,
    pub(super) cache_schema_version: u32,
    pub(super) l1_enabled: bool,
    pub(super) l1_max_bytes: u64,
    pub(super) load_timeout: Duration,
    pub(super) breaker_failure_threshold: u32,
    pub(super) breaker_open: Duration,
    /// Each declared entity's policy, its TTL variables applied (jitter is applied later).
    pub(super) policies: Vec<(Entity, EntityPolicy)>,
    pub(super) ttl_jitter: f64,
    pub(super) webhook_budget: Duration,
    pub(super) webhook_secret: Option<String>,
    pub(super) webhook_secret_header: HeaderName,
    pub(super) admin_token: Option<String>,
    pub(super) call_queue: usize,
    pub(super) call_stream_maxlen: u64,
    pub(super) call_claim_idle: Duration,
    pub(super) call_max_deliveries: u32,
    pub(super) call_consumer: bool,
    pub(super) call_heartbeat: Duration,
    pub(super) instance_name: Option<String>,
}

impl Default for RawConfig {
    /// Every variable unset.
    fn default() -> Self {
        RawConfig {
            database_url: DatabaseConfig::DEFAULT_URL.to_owned(),
            database_pool_size: DatabaseConfig::DEFAULT_POOL_SIZE,
            database_acquire_timeout: DatabaseConfig::DEFAULT_ACQUIRE_TIMEOUT,
            database_statement_timeout: DatabaseConfig::DEFAULT_STATEMENT_TIMEOUT,
            db_notify_enabled: DatabaseConfig::DEFAULT_NOTIFY_ENABLED,
            redis_enabled: Config::DEFAULT_REDIS_ENABLED,
            redis_url: Config::DEFAULT_REDIS_URL.to_owned(),
            redis_ca_cert: None,
            redis_pool_size: RedisConfig::DEFAULT_POOL_SIZE,
            redis_command_timeout: RedisConfig::DEFAULT_COMMAND_TIMEOUT,
            redis_connect_timeout: RedisConfig::DEFAULT_CONNECT_TIMEOUT,
            bind_addr: Config::DEFAULT_BIND_ADDR,
            monitoring_bind_addr: None,
            http_header_timeout: HttpConfig::DEFAULT_HEADER_READ_TIMEOUT,
            http_body_timeout: HttpConfig::DEFAULT_BODY_READ_TIMEOUT,
            key_secret: None,
            encryption_key: None,
            app_env: CacheConfig::DEFAULT_ENV.to_owned(),
            cache_prefix: CacheConfig::DEFAULT_PREFIX.to_owned(),
            cache_schema_version: CacheConfig::DEFAULT_SCHEMA,
            l1_enabled: true,
            l1_max_bytes: CacheConfig::DEFAULT_L1_MAX_BYTES,
            load_timeout: CacheConfig::DEFAULT_LOAD_TIMEOUT,
            breaker_failure_threshold: BreakerConfig::DEFAULT_FAILURE_THRESHOLD,
            breaker_open: BreakerConfig::DEFAULT_OPEN_FOR,
            policies: declared_entities(),
            ttl_jitter: EntityPolicy::DEFAULT_JITTER,
            webhook_budget: Config::DEFAULT_WEBHOOK_BUDGET,
            webhook_secret: None,
            webhook_secret_header: HeaderName::from_static(WebhookSecret::DEFAULT_HEADER),
            admin_token: None,
            call_queue: CallsConfig::DEFAULT_QUEUE_CAPACITY,
            call_stream_maxlen: CallsConfig::DEFAULT_STREAM_MAXLEN,
            call_claim_idle: CallsConfig::DEFAULT_CLAIM_IDLE,
            call_max_deliveries: CallsConfig::DEFAULT_MAX_DELIVERIES,
            call_consumer: true,
            call_heartbeat: CallsConfig::DEFAULT_HEARTBEAT,
            instance_name: None,
        }
    }
}

impl RawConfig {
    /// Parses each declared variable that `vars` sets, noting in `problems` those that do
    /// not parse.
    pub(super) fn read(vars: &HashMap<String, String>, problems: &mut Problems) -> RawConfig {
        let mut raw = RawConfig::default();
        for decl in VARS {
            match decl {
                Decl::One(var) => {
                    if let Some(value) = vars.get(var.name)
                        && let Err(message) = (var.set)(&mut raw, value)
                    {
                        problems.add(var.name, message);
                    }
                }
                Decl::EachEntity(entity_vars) => {
                    for (entity, policy) in &mut raw.policies {
                        let mut read = *policy;
                        let mut readable = true;
                        for var in *entity_vars {
                            let name = var.name_for(*entity);
                            let Some(value) = vars.get(&name) else {
                                continue;
                            };
                            match secs(value) {
                                Ok(ttl) => *(var.ttl)(&mut read) = ttl,
                                Err(message) => {
                                    problems.add(&name, message);
                                    readable = false;
                                }
                            }
                        }
                        // With one of them unreadable the entity keeps its whole default
                        // policy, so the others are not checked against a default they were
                        // never meant to meet.
                        if readable {
                            *policy = read;
                        }
                    }
                }
            }
        }
        raw
    }
}
