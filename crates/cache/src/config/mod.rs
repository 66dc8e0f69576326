//! Typed, validated configuration for [`TwoTierCache`](crate::TwoTierCache), and its builder.

use std::fmt;
use std::time::Duration;

mod builder;

pub use builder::CacheConfigBuilder;

use crate::policy::{EntityPolicy, Policies};
use crate::schema::{Entity, Schema};
use crate::seal::EncryptionKey;

/// Everything the cache needs to start; built by [`CacheConfig::builder`], always valid.
#[derive(Clone)]
pub struct CacheConfig {
    pub(crate) prefix: String,
    pub(crate) env: String,
    pub(crate) version: u32,
    pub(crate) schema: Schema,
    pub(crate) key_secret: Vec<u8>,
    pub(crate) encryption_key: Option<EncryptionKey>,
    pub(crate) l1_enabled: bool,
    pub(crate) l1_max_bytes: u64,
    pub(crate) policies: Policies,
    pub(crate) redis: Option<RedisConfig>,
    pub(crate) load_timeout: Duration,
    pub(crate) soft_timeout: Duration,
    pub(crate) staleness_bound: Duration,
    pub(crate) recovery: Duration,
    pub(crate) breaker: BreakerConfig,
}

impl CacheConfig {
    /// Default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "tc";
    /// Default environment name in keys.
    pub const DEFAULT_ENV: &'static str = "dev";
    /// Default schema version in keys.
    pub const DEFAULT_SCHEMA: u32 = 1;
    /// Default L1 bound: 64 MiB of encoded values plus per-entry overhead.
    pub const DEFAULT_L1_MAX_BYTES: u64 = 64 * 1024 * 1024;
    /// Default hard bound on one read that misses (waiting for another instance's load,
    /// then loading).
    pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default soft timeout: past it, a read with a stale value in grace serves that value
    /// and lets the load finish in the background.
    pub const DEFAULT_SOFT_TIMEOUT: Duration = Duration::from_millis(50);
    /// Default staleness bound: after a write commits on any instance, no instance serves
    /// the old value (as fresh) for longer than this.
    pub const DEFAULT_STALENESS_BOUND: Duration = Duration::from_secs(2);
    /// Default time after an invalidation feed comes back during which values stay capped
    /// by age (other instances may still be replaying what they owe).
    pub const DEFAULT_RECOVERY: Duration = Duration::from_secs(5);
    /// Shortest HMAC secret accepted.
    pub const MIN_SECRET_LEN: usize = 16;

    /// A builder with the defaults: L1 only, an empty schema.
    pub fn builder() -> CacheConfigBuilder {
        CacheConfigBuilder::default()
    }

    /// Whether values are kept in process (L1).
    pub fn l1_enabled(&self) -> bool {
        self.l1_enabled
    }

    /// Whether an L2 (Redis) tier is configured.
    pub fn redis_enabled(&self) -> bool {
        self.redis.is_some()
    }

    /// The policy for `entity`.
    pub fn policy(&self, entity: Entity) -> &EntityPolicy {
        self.policies.get(entity)
    }

    /// The declared schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The Redis settings, when L2 is enabled.
    pub fn redis(&self) -> Option<&RedisConfig> {
        self.redis.as_ref()
    }

    /// The staleness bound this cache promises (see [`CacheConfigBuilder::staleness_bound`]).
    pub fn staleness_bound(&self) -> Duration {
        self.staleness_bound
    }

    /// Whether values are sealed in Redis (see [`CacheConfigBuilder::encryption_key`]).
    pub fn seals_values(&self) -> bool {
        self.encryption_key.is_some()
    }
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be forgotten here.
        let CacheConfig {
            prefix,
            env,
            version,
            schema,
            key_secret: _,
            encryption_key,
            l1_enabled,
            l1_max_bytes,
            policies,
            redis,
            load_timeout,
            soft_timeout,
            staleness_bound,
            recovery,
            breaker,
        } = self;
        f.debug_struct("CacheConfig")
            .field("prefix", prefix)
            .field("env", env)
            .field("version", version)
            .field("schema", schema)
            .field("key_secret", &"set")
            .field("encryption_key", &set_or_not(encryption_key.is_some()))
            .field("l1_enabled", l1_enabled)
            .field("l1_max_bytes", l1_max_bytes)
            .field("policies", policies)
            .field("redis", redis)
            .field("load_timeout", load_timeout)
            .field("soft_timeout", soft_timeout)
            .field("staleness_bound", staleness_bound)
            .field("recovery", recovery)
            .field("breaker", breaker)
            .finish()
    }
}

fn set_or_not(set: bool) -> &'static str {
    if set { "set" } else { "not set" }
}

/// How to reach Redis, and how long to wait for it.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host:port/db`, or `rediss://…` for TLS.
    pub url: String,
    /// PEM certificates of the CA(s) a `rediss://` server's certificate must chain to,
    /// instead of the public roots built in (webpki-roots); `None` for those roots.
    pub ca_cert: Option<Vec<u8>>,
    /// Connections in the pool.
    pub pool_size: u32,
    /// Bound on each L2 command, pool checkout included.
    pub command_timeout: Duration,
    /// Bound on opening a connection.
    pub connect_timeout: Duration,
}

impl RedisConfig {
    /// Default pool size: one connection, which multiplexes every command (Redis runs them
    /// one at a time anyway); more connections spread the commands thinner and cost Redis
    /// more reads and writes for the same work (see `benches/README.md`).
    pub const DEFAULT_POOL_SIZE: u32 = 1;
    /// Default per-command timeout: tens of milliseconds, well inside a 100 ms budget.
    pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(50);
    /// Default connect timeout.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let RedisConfig {
            url,
            ca_cert,
            pool_size,
            command_timeout,
            connect_timeout,
        } = self;
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(url))
            .field("ca_cert", &set_or_not(ca_cert.is_some()))
            .field("pool_size", pool_size)
            .field("command_timeout", command_timeout)
            .field("connect_timeout", connect_timeout)
            .finish()
    }
}

/// Hides the user and password of a URL (`redis://***@host:6379/`).
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// When the circuit breaker in front of L2 opens, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive L2 failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe is let through.
    pub open_for: Duration,
}

impl BreakerConfig {
    /// Default failures before opening.
    pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
    /// Default open period.
    pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(2);
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: Self::DEFAULT_FAILURE_THRESHOLD,
            open_for: Self::DEFAULT_OPEN_FOR,
        }
    }
}
