//! `ApiKeys`: every active API key's digest, held in process and re-read from PostgreSQL
//! in the background, so that checking a key never waits for the database.
//!
//! Why a whole snapshot rather than a cache of the keys seen: a check never costs a round
//! trip, warm or cold, and a flood of made-up keys costs PostgreSQL nothing (a per-key
//! cache would send each one to the database). The table is small (keys are handed out
//! by an operator, one per integration), so reading every active key is a small read.
//!
//! Why polling rather than an invalidation feed (the Redis bus, the database listener):
//! a revocation then reaches every instance within one refresh interval whatever Redis
//! does and whether or not `DB_NOTIFY_ENABLED` is on, with no message to lose. The
//! interval is a quarter of the staleness bound, so a revoked key is refused everywhere
//! within the bound with room for a slow query.
//!
//! # When PostgreSQL fails
//! - A refresh that fails keeps the last snapshot (logged once per failure spell). Like a
//!   cached value, it is used for up to [`ApiKeys::GRACE`] past the staleness bound, as
//!   the data those keys read is served stale then too; past it, and before any snapshot
//!   was read, a presented key cannot be checked: a 503, never a 200.
//! - A revocation committed while this instance cannot reach PostgreSQL is therefore seen
//!   when it can again (or the grace ends), not within the bound.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tiercache::EntityPolicy;
use tiercache_repository::api_key::{self, ActiveKey, ApiKeySecret, KeyDigest, Scope};
use tiercache_repository::seed::DEMO_API_KEY;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The active keys, shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    staleness_bound: Duration,
    /// A digest never accepted: the public demo key, in production.
    refused: Option<KeyDigest>,
    snapshot: watch::Sender<Snapshot>,
}

/// The keys as last read.
#[derive(Default)]
pub struct Snapshot {
    /// Keys by the first bytes of their digest; the whole digest is compared in constant
    /// time. The bucket a lookup reads depends only on the digest of what the client sent,
    /// which tells it nothing about any stored key.
    by_prefix: HashMap<[u8; 8], Vec<ActiveKey>>,
    /// When the read that made it began (`None`: never read).
    read_at: Option<Instant>,
    len: usize,
}

impl Snapshot {
    /// When the read that made this snapshot began; `None` before the first.
    pub fn read_at(&self) -> Option<Instant> {
        self.read_at
    }

    /// Active keys in it.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn find(&self, digest: &KeyDigest) -> Option<&ActiveKey> {
        let bucket = self.by_prefix.get(&prefix(digest))?;
        bucket
            .iter()
            .find(|key| bool::from(key.digest.bytes().ct_eq(digest.bytes())))
    }
}

fn prefix(digest: &KeyDigest) -> [u8; 8] {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest.bytes()[..8]);
    prefix
}

/// What a presented key turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An active key: its id and scope.
    Valid {
        /// The key's id.
        id: i64,
        /// Who it speaks for.
        scope: Scope,
    },
    /// Unknown or revoked (a 401).
    Invalid,
    /// No snapshot recent enough to tell (a 503).
    Unverifiable,
}

/// The refresh task; stops when dropped.
pub struct KeyRefreshTask(JoinHandle<()>);

impl Drop for KeyRefreshTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ApiKeys {
    /// How long past the staleness bound the last snapshot is used while refreshes fail:
    /// the grace of cached values, so keys work as long as cached data is served.
    pub const GRACE: Duration = EntityPolicy::DEFAULT_GRACE;

    /// Longest key checked; a longer one is invalid without being hashed.
    pub const MAX_KEY_LEN: usize = 256;

    /// No keys yet (every key is unverifiable until [`refresh`](Self::refresh) succeeds),
    /// read from `pool`, revocations seen within `staleness_bound`. In `production` the
    /// public demo key is refused even if the database holds it.
    pub fn new(pool: PgPool, staleness_bound: Duration, production: bool) -> ApiKeys {
        let (snapshot, _) = watch::channel(Snapshot::default());
        ApiKeys {
            inner: Arc::new(Inner {
                pool,
                staleness_bound,
                refused: production.then(|| ApiKeySecret::from_text(DEMO_API_KEY).digest()),
                snapshot,
            }),
        }
    }

    /// How often the refresh task re-reads the keys: a quarter of the staleness bound.
    pub fn refresh_interval(&self) -> Duration {
        self.inner.staleness_bound / 4
    }

    /// Reads the active keys and replaces the snapshot; how many keys it holds.
    ///
    /// # Cancel safety
    /// Dropped mid-read, the snapshot is left as it was.
    pub async fn refresh(&self) -> Result<usize, tiercache_repository::Error> {
        let started = Instant::now();
        let keys = api_key::active(&self.inner.pool).await?;
        let mut by_prefix: HashMap<[u8; 8], Vec<ActiveKey>> = HashMap::new();
        let mut len = 0;
        for key in keys {
            if let Some(refused) = &self.inner.refused
                && bool::from(refused.bytes().ct_eq(key.digest.bytes()))
            {
                continue;
            }
            by_prefix.entry(prefix(&key.digest)).or_default().push(key);
            len += 1;
        }
        // Two reads can overlap (start-up's and the task's): the one begun later wins.
        self.inner.snapshot.send_if_modified(|snapshot| {
            if snapshot.read_at.is_some_and(|at| at > started) {
                return false;
            }
            *snapshot = Snapshot {
                by_prefix,
                read_at: Some(started),
                len,
            };
            true
        });
        Ok(len)
    }

    /// Checks `presented`, a key as the client sent it. No I/O.
    pub fn check(&self, presented: &str) -> Verdict {
        self.check_at(presented, Instant::now())
    }

    fn check_at(&self, presented: &str, now: Instant) -> Verdict {
        if presented.is_empty() || presented.len() > Self::MAX_KEY_LEN {
            return Verdict::Invalid;
        }
        let snapshot = self.inner.snapshot.borrow();
        let usable = snapshot.read_at.is_some_and(|at| {
            now.saturating_duration_since(at) <= self.inner.staleness_bound + Self::GRACE
        });
        if !usable {
            return Verdict::Unverifiable;
        }
        match snapshot.find(&KeyDigest::of(presented)) {
            Some(key) => Verdict::Valid {
                id: key.id,
                scope: key.scope,
            },
            None => Verdict::Invalid,
        }
    }

    /// Follows the snapshot (tests wait on it for a refresh begun after a revocation).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.inner.snapshot.subscribe()
    }

    /// Re-reads the keys every [`refresh_interval`](Self::refresh_interval) until the
    /// returned task is dropped. A failure is logged once, and its end once.
    pub fn spawn_refresh(&self) -> KeyRefreshTask {
        let keys = self.clone();
        let every = self.refresh_interval();
        KeyRefreshTask(tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                interval.tick().await;
                match keys.refresh().await {
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!("API keys are read from PostgreSQL again");
                    }
                    Ok(_) => {}
                    Err(error) if !failing => {
                        failing = true;
                        tracing::warn!(
                            error = %error,
                            grace_secs = Self::GRACE.as_secs(),
                            "cannot read API keys; the last ones read are used within their grace"
                        );
                    }
                    Err(_) => {}
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring holding `keys`, read at `read_at`, over a pool that never connects.
    fn ring(keys: &[(i64, Scope, &str)], read_at: Instant, production: bool) -> ApiKeys {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let ring = ApiKeys::new(pool, Duration::from_secs(2), production);
        let mut by_prefix: HashMap<[u8; 8], Vec<ActiveKey>> = HashMap::new();
        for (id, scope, secret) in keys {
            let digest = KeyDigest::of(secret);
            by_prefix
                .entry(prefix(&digest))
                .or_default()
                .push(ActiveKey {
                    id: *id,
                    scope: *scope,
                    digest,
                });
        }
        ring.inner.snapshot.send_replace(Snapshot {
            len: keys.len(),
            by_prefix,
            read_at: Some(read_at),
        });
        ring
    }

    #[tokio::test]
    async fn keys_are_found_by_digest_and_others_are_invalid() {
        let now = Instant::now();
        let ring = ring(
            &[(1, Scope::Org(7), "tck_a"), (2, Scope::Operator, "tck_b")],
            now,
            false,
        );
        assert_eq!(
            ring.check_at("tck_a", now),
            Verdict::Valid {
                id: 1,
                scope: Scope::Org(7)
            }
        );
        assert_eq!(
            ring.check_at("tck_b", now),
            Verdict::Valid {
                id: 2,
                scope: Scope::Operator
            }
        );
        for other in ["tck_c", "tck_a ", "TCK_A", ""] {
            assert_eq!(ring.check_at(other, now), Verdict::Invalid, "{other:?}");
        }
        assert_eq!(ring.check_at(&"k".repeat(257), now), Verdict::Invalid);
    }

    #[tokio::test]
    async fn an_old_snapshot_serves_through_its_grace_then_nothing_can_be_checked() {
        let read = Instant::now();
        let ring = ring(&[(1, Scope::Operator, "tck_a")], read, false);
        let last_usable = read + Duration::from_secs(2) + ApiKeys::GRACE;
        assert!(matches!(
            ring.check_at("tck_a", last_usable),
            Verdict::Valid { .. }
        ));
        assert_eq!(ring.check_at("tck_z", last_usable), Verdict::Invalid);
        let past = last_usable + Duration::from_millis(1);
        assert_eq!(ring.check_at("tck_a", past), Verdict::Unverifiable);
        assert_eq!(ring.check_at("tck_z", past), Verdict::Unverifiable);
    }

    #[tokio::test]
    async fn before_the_first_read_every_key_is_unverifiable() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let ring = ApiKeys::new(pool, Duration::from_secs(2), false);
        assert_eq!(ring.check("tck_a"), Verdict::Unverifiable);
        assert_eq!(ring.refresh_interval(), Duration::from_millis(500));
    }
}
