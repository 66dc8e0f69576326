//! [`CacheConfigBuilder`]: every field with its default, checked as a whole by `build`.

use std::fmt;
use std::time::Duration;

use super::{BreakerConfig, CacheConfig, RedisConfig, redact_url, set_or_not};
use crate::error::{ConfigError, ConfigProblem};
use crate::policy::{EntityPolicy, Policies};
use crate::schema::{Entity, Schema};
use crate::seal::EncryptionKey;

/// Builds a [`CacheConfig`]; [`build`](Self::build) checks every field and reports all
/// problems at once. Its `Debug` hides the key secret and the Redis URL's credentials, as
/// [`CacheConfig`]'s does.
#[derive(Clone)]
pub struct CacheConfigBuilder {
    prefix: String,
    env: String,
    version: u32,
    schema: Schema,
    key_secret: Option<Vec<u8>>,
    encryption_key: Option<EncryptionKey>,
    l1_enabled: bool,
    l1_max_bytes: u64,
    policies: Vec<(Entity, EntityPolicy)>,
    redis_url: Option<String>,
    redis_ca_cert: Option<Vec<u8>>,
    pool_size: u32,
    command_timeout: Duration,
    connect_timeout: Duration,
    load_timeout: Duration,
    soft_timeout: Duration,
    staleness_bound: Duration,
    recovery: Duration,
    breaker: BreakerConfig,
}

impl fmt::Debug for CacheConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be forgotten here.
        let CacheConfigBuilder {
            prefix,
            env,
            version,
            schema,
            key_secret,
            encryption_key,
            l1_enabled,
            l1_max_bytes,
            policies,
            redis_url,
            redis_ca_cert,
            pool_size,
            command_timeout,
            connect_timeout,
            load_timeout,
            soft_timeout,
            staleness_bound,
            recovery,
            breaker,
        } = self;
        let set = set_or_not;
        f.debug_struct("CacheConfigBuilder")
            .field("prefix", prefix)
            .field("env", env)
            .field("version", version)
            .field("schema", schema)
            .field("key_secret", &set(key_secret.is_some()))
            .field("encryption_key", &set(encryption_key.is_some()))
            .field("l1_enabled", l1_enabled)
            .field("l1_max_bytes", l1_max_bytes)
            .field("policies", policies)
            .field("redis_url", &redis_url.as_deref().map(redact_url))
            .field("redis_ca_cert", &set(redis_ca_cert.is_some()))
            .field("pool_size", pool_size)
            .field("command_timeout", command_timeout)
            .field("connect_timeout", connect_timeout)
            .field("load_timeout", load_timeout)
            .field("soft_timeout", soft_timeout)
            .field("staleness_bound", staleness_bound)
            .field("recovery", recovery)
            .field("breaker", breaker)
            .finish()
    }
}

impl Default for CacheConfigBuilder {
    fn default() -> Self {
        CacheConfigBuilder {
            prefix: CacheConfig::DEFAULT_PREFIX.to_owned(),
            env: CacheConfig::DEFAULT_ENV.to_owned(),
            version: CacheConfig::DEFAULT_SCHEMA,
            schema: Schema::empty(),
            key_secret: None,
            encryption_key: None,
            l1_enabled: true,
            l1_max_bytes: CacheConfig::DEFAULT_L1_MAX_BYTES,
            policies: Vec::new(),
            redis_url: None,
            redis_ca_cert: None,
            pool_size: RedisConfig::DEFAULT_POOL_SIZE,
            command_timeout: RedisConfig::DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: RedisConfig::DEFAULT_CONNECT_TIMEOUT,
            load_timeout: CacheConfig::DEFAULT_LOAD_TIMEOUT,
            soft_timeout: CacheConfig::DEFAULT_SOFT_TIMEOUT,
            staleness_bound: CacheConfig::DEFAULT_STALENESS_BOUND,
            recovery: CacheConfig::DEFAULT_RECOVERY,
            breaker: BreakerConfig::default(),
        }
    }
}

impl CacheConfigBuilder {
    /// The first part of the key namespace (`{prefix}:{env}:v{schema}:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The environment part of the key namespace.
    pub fn env(mut self, env: impl Into<String>) -> Self {
        self.env = env.into();
        self
    }

    /// The schema version in the namespace; bump it when a cached type changes shape.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// The entities, key shapes and tags this cache serves (see [`Schema`]); their declared
    /// policies apply unless [`policy`](Self::policy) replaces one.
    pub fn schema(mut self, schema: Schema) -> Self {
        self.schema = schema;
        self
    }

    /// The HMAC secret for digests in keys (any text in a key). Required with Redis (every instance must
    /// agree on key names); without Redis a random per-process secret is used if unset.
    pub fn key_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.key_secret = Some(secret.into());
        self
    }

    /// Seals every value this cache writes to Redis with this key (XChaCha20-Poly1305, bound
    /// to the Redis key), and reads only values sealed so; `None` (the default) keeps them
    /// plain. L1 holds decoded values either way. Instances sharing a namespace must agree:
    /// a value one cannot open is a miss for it, reloaded and written again its own way.
    pub fn encryption_key(mut self, key: Option<EncryptionKey>) -> Self {
        self.encryption_key = key;
        self
    }

    /// Whether values are kept in process. Without L1 every read goes to Redis (loads of one
    /// key are still merged on this instance). With neither tier every read loads: a
    /// pass-through, as a no-cache baseline.
    pub fn l1_enabled(mut self, enabled: bool) -> Self {
        self.l1_enabled = enabled;
        self
    }

    /// The L1 bound in bytes (encoded value size plus a fixed per-entry overhead).
    pub fn l1_max_bytes(mut self, bytes: u64) -> Self {
        self.l1_max_bytes = bytes;
        self
    }

    /// Replaces the declared policy of one of the schema's entities.
    pub fn policy(mut self, entity: Entity, policy: EntityPolicy) -> Self {
        self.policies.retain(|(e, _)| *e != entity);
        self.policies.push((entity, policy));
        self
    }

    /// Enables L2 on this Redis URL; `None` keeps the cache L1 only. `rediss://` connects
    /// over TLS; a user and password in the URL (`redis://user:password@host/`, or
    /// `redis://:password@host/` for `requirepass`) authenticate each connection.
    pub fn redis_url(mut self, url: Option<String>) -> Self {
        self.redis_url = url;
        self
    }

    /// PEM certificates of the CA a `rediss://` server's certificate must chain to (a
    /// private CA), instead of the public roots built in; `None` for those roots. The
    /// caller reads the file: the library takes bytes and never a path.
    pub fn redis_ca_cert(mut self, pem: Option<Vec<u8>>) -> Self {
        self.redis_ca_cert = pem;
        self
    }

    /// Connections in the Redis pool.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size;
        self
    }

    /// Bound on each L2 command, pool checkout included.
    pub fn l2_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Bound on opening a Redis connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Hard bound on one loader call.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.load_timeout = timeout;
        self
    }

    /// Past this, a read whose key holds a stale value within its grace window serves it
    /// and the load finishes in the background.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = timeout;
        self
    }

    /// The promise: after a write commits and is invalidated on any instance, no instance
    /// serves the old value as fresh for longer than this (see `coherence.rs`).
    pub fn staleness_bound(mut self, bound: Duration) -> Self {
        self.staleness_bound = bound;
        self
    }

    /// After an invalidation feed comes back from an outage, values stay capped by age this
    /// long (other instances may still be replaying invalidations they owe).
    pub fn recovery(mut self, recovery: Duration) -> Self {
        self.recovery = recovery;
        self
    }

    /// The circuit breaker's thresholds.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Checks every field and returns the config, or every problem found.
    pub fn build(self) -> Result<CacheConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut problem =
            |field: String, message: String| problems.push(ConfigProblem { field, message });
        for (field, value) in [("prefix", &self.prefix), ("env", &self.env)] {
            if value.is_empty()
                || !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                problem(
                    field.to_owned(),
                    format!("expected [A-Za-z0-9_-]+, got {value:?}"),
                );
            }
        }
        if self.l1_max_bytes == 0 {
            problem(
                "l1_max_bytes".to_owned(),
                "must be greater than zero".to_owned(),
            );
        }
        let mut policies = Policies::declared(&self.schema);
        for (entity, policy) in &self.policies {
            if !policies.set(*entity, *policy) {
                problem(
                    format!("policy.{entity}"),
                    "the schema declares no such entity".to_owned(),
                );
            }
        }
        for (entity, policy) in policies.iter() {
            for (field, message) in policy.problems() {
                problem(format!("policy.{entity}.{field}"), message);
            }
        }
        if self.load_timeout.is_zero() {
            problem(
                "load_timeout".to_owned(),
                "must be greater than zero".to_owned(),
            );
        }
        if self.soft_timeout.is_zero() || self.soft_timeout > self.load_timeout {
            problem(
                "soft_timeout".to_owned(),
                format!(
                    "must be greater than zero and at most load_timeout ({:?}), got {:?}",
                    self.load_timeout, self.soft_timeout
                ),
            );
        }
        if self.staleness_bound < Duration::from_millis(20) {
            problem(
                "staleness_bound".to_owned(),
                format!("must be at least 20ms, got {:?}", self.staleness_bound),
            );
        }
        if self.breaker.failure_threshold == 0 {
            problem(
                "breaker.failure_threshold".to_owned(),
                "must be at least 1".to_owned(),
            );
        }
        if let Some(secret) = &self.key_secret
            && secret.len() < CacheConfig::MIN_SECRET_LEN
        {
            problem(
                "key_secret".to_owned(),
                format!(
                    "must be at least {} bytes, got {}",
                    CacheConfig::MIN_SECRET_LEN,
                    secret.len()
                ),
            );
        }
        let redis = match self.redis_url {
            None => None,
            Some(url) => {
                for (field, message) in
                    crate::l2::tls::problems(&url, self.redis_ca_cert.as_deref())
                {
                    problem(field.to_owned(), message);
                }
                if self.key_secret.is_none() {
                    problem(
                        "key_secret".to_owned(),
                        "required when Redis is enabled, so every instance digests text alike"
                            .to_owned(),
                    );
                }
                if self.pool_size == 0 {
                    problem("pool_size".to_owned(), "must be at least 1".to_owned());
                }
                if self.command_timeout.is_zero() {
                    problem(
                        "l2_timeout".to_owned(),
                        "must be greater than zero".to_owned(),
                    );
                }
                if self.connect_timeout.is_zero() {
                    problem(
                        "connect_timeout".to_owned(),
                        "must be greater than zero".to_owned(),
                    );
                }
                Some(RedisConfig {
                    url,
                    ca_cert: self.redis_ca_cert,
                    pool_size: self.pool_size,
                    command_timeout: self.command_timeout,
                    connect_timeout: self.connect_timeout,
                })
            }
        };
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let key_secret = self
            .key_secret
            .unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec());
        Ok(CacheConfig {
            prefix: self.prefix,
            env: self.env,
            version: self.version,
            schema: self.schema,
            key_secret,
            encryption_key: self.encryption_key,
            l1_enabled: self.l1_enabled,
            l1_max_bytes: self.l1_max_bytes,
            policies,
            redis,
            load_timeout: self.load_timeout,
            soft_timeout: self.soft_timeout,
            staleness_bound: self.staleness_bound,
            recovery: self.recovery,
            breaker: self.breaker,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build_an_l1_only_config() {
        let k = crate::test_schema::keys();
        let config = CacheConfig::builder()
            .schema(k.schema.clone())
            .build()
            .unwrap();
        assert!(!config.redis_enabled());
        assert_eq!(config.key_secret.len(), 32);
        assert_eq!(config.policy(k.item).l2_ttl, Duration::from_secs(900));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let k = crate::test_schema::keys();
        let undeclared =
            Schema::builder().entity("other", EntityPolicy::with_l2_ttl(Duration::from_secs(1)));
        let err = CacheConfig::builder()
            .prefix("bad prefix")
            .schema(k.schema.clone())
            .redis_url(Some("http://nope".to_owned()))
            .l2_timeout(Duration::ZERO)
            .policy(
                k.view,
                EntityPolicy {
                    l1_ttl: Duration::from_secs(999),
                    ..EntityPolicy::with_l2_ttl(Duration::from_secs(300))
                },
            )
            .policy(
                undeclared,
                EntityPolicy::with_l2_ttl(Duration::from_secs(1)),
            )
            .build()
            .unwrap_err();
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "prefix",
                "policy.other",
                "policy.view.l1_ttl",
                "redis_url",
                "key_secret",
                "l2_timeout"
            ]
        );
        let text = err.to_string();
        assert!(
            text.starts_with("invalid cache config: prefix: expected"),
            "{text}"
        );
    }

    #[test]
    fn either_tier_can_be_off() {
        let neither = CacheConfig::builder().l1_enabled(false).build().unwrap();
        assert!(!neither.l1_enabled() && !neither.redis_enabled());
        let redis_only = CacheConfig::builder()
            .l1_enabled(false)
            .key_secret(b"0123456789abcdef".to_vec())
            .redis_url(Some("redis://127.0.0.1:6379/".to_owned()))
            .build()
            .unwrap();
        assert!(!redis_only.l1_enabled() && redis_only.redis_enabled());
    }

    #[test]
    fn short_secrets_are_refused() {
        let err = CacheConfig::builder()
            .key_secret(b"short".to_vec())
            .build()
            .unwrap_err();
        assert_eq!(err.problems[0].field, "key_secret");
    }

    #[test]
    fn debug_hides_secrets_and_passwords() {
        let config = CacheConfig::builder()
            .key_secret(b"a very secret secret".to_vec())
            .redis_url(Some("redis://user:hunter2@127.0.0.1:6379/".to_owned()))
            .build()
            .unwrap();
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("very secret"), "{text}");
        assert!(text.contains("redis://***@127.0.0.1:6379/"), "{text}");
    }

    #[test]
    fn debug_says_whether_values_are_sealed_never_with_what() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let key = EncryptionKey::from_hex(hex).unwrap();
        let builder = CacheConfig::builder().encryption_key(Some(key));
        let text = format!("{builder:?}");
        assert!(text.contains("encryption_key: \"set\""), "{text}");
        let config = builder.build().unwrap();
        assert!(config.seals_values());
        let text = format!("{config:?}");
        assert!(text.contains("encryption_key: \"set\""), "{text}");
        assert!(!text.contains("0011") && !text.contains("[0, 17"), "{text}");
        let plain = CacheConfig::builder().build().unwrap();
        assert!(!plain.seals_values());
        assert!(format!("{plain:?}").contains("encryption_key: \"not set\""));
    }

    #[test]
    fn the_builders_debug_hides_secrets_and_passwords_too() {
        let builder = CacheConfig::builder()
            .key_secret(b"a very secret secret".to_vec())
            .redis_url(Some("redis://user:hunter2@127.0.0.1:6379/".to_owned()));
        let text = format!("{builder:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("very secret"), "{text}");
        assert!(!text.contains("97, 32, 118"), "the secret's bytes: {text}");
        assert!(text.contains("redis://***@127.0.0.1:6379/"), "{text}");
        assert!(text.contains("key_secret: \"set\""), "{text}");
    }
}
