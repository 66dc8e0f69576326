//! Building caches for tests: each under its own namespace, on the shared or a throwaway Redis.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tiercache::{BreakerConfig, CacheConfig, CacheConfigBuilder, EntityPolicy, TwoTierCache};

use crate::Recorder;

/// The HMAC secret every test cache shares, so two caches on one namespace agree on keys.
pub const TEST_SECRET: &[u8] = b"tiercache-test-secret-0123456789";

/// A lead-shaped value for cache tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestLead {
    /// Lead id.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Bumped by every write, so a stale read is visible.
    pub version: u32,
}

impl tiercache::Identified for TestLead {
    fn id(&self) -> i64 {
        self.id
    }
}

impl TestLead {
    /// Lead `id` at `version`.
    pub fn new(id: i64, version: u32) -> Self {
        TestLead {
            id,
            name: format!("Lead {id}"),
            version,
        }
    }
}

/// A config builder for the voice agent's schema under namespace `ns`, with L2 on
/// `redis_url` when given.
pub fn config(ns: &str, redis_url: Option<&str>) -> CacheConfigBuilder {
    CacheConfig::builder()
        .schema(tiercache_repository::schema().schema.clone())
        .prefix(ns)
        .env("test")
        .key_secret(TEST_SECRET.to_vec())
        .redis_url(redis_url.map(str::to_owned))
        .breaker(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_millis(300),
        })
}

/// [`config`] on a Redis the test will freeze (SIGSTOP): its commands wait far past the
/// test's own bounds instead of timing out, and no feed goes silent long enough in such a
/// test to make L1 untrusted.
pub fn frozen_redis_config(ns: &str, redis_url: &str) -> CacheConfigBuilder {
    config(ns, Some(redis_url))
        .l2_timeout(Duration::from_secs(30))
        .load_timeout(Duration::from_secs(60))
        .staleness_bound(Duration::from_secs(120))
}

/// A config with every entity on the same TTLs and no jitter.
pub fn with_ttls(
    mut builder: CacheConfigBuilder,
    l1: Duration,
    l2: Duration,
    negative: Duration,
) -> CacheConfigBuilder {
    for entity in tiercache_repository::schema().schema.entities() {
        builder = builder.policy(
            entity,
            EntityPolicy {
                l2_ttl: l2,
                l1_ttl: l1,
                negative_ttl: negative,
                jitter: 0.0,
                grace: EntityPolicy::DEFAULT_GRACE,
            },
        );
    }
    builder
}

/// A cache from `builder` with a fresh [`Recorder`].
pub fn build(builder: CacheConfigBuilder) -> (TwoTierCache, Arc<Recorder>) {
    let (recorder, _circuit) = Recorder::new();
    let recorder = Arc::new(recorder);
    let cache = TwoTierCache::with_observer(builder.build().unwrap(), recorder.clone()).unwrap();
    (cache, recorder)
}
