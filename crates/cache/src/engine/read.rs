//! The read path: L1, then L2 under a load lease (see `lease.rs`), then the loader, filling
//! the tiers on the way back; a stale value within grace answers when the loader fails or
//! is slow.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::{CompResult, Op};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Engine;
use super::write_behind::{self, QueuedSet};
use crate::clock::{age_since, unix_millis};
use crate::envelope;
use crate::error::{BoxError, Error};
use crate::l1::L1Entry;
use crate::l2::{GetOrLease, IndexEntry};
use crate::observer::{CorruptKind, LoadOutcome, Outcome, StaleReason, Tier};
use crate::schema::{CacheKey, Entity, Tag};

/// How a miss left the compute closure without installing anything.
enum Exit {
    Failed(Error),
    /// A value to serve that must not be cached.
    Uncached(L1Entry),
}

impl Engine {
    /// Reads `key` through the tiers, calling `loader` on a miss in both.
    ///
    /// `Ok(None)` is "not found", from the loader or from a cached "not found". Every
    /// loader of one key should return the same `T`; an entry of another type is a miss.
    ///
    /// # Stale values
    /// When L1 holds the key past its freshness but within its entity's grace window, the
    /// load runs in a task of its own: if it fails, or is still running after the soft
    /// timeout, the stale value is served (counted through [`CacheObserver::stale_served`]
    /// and reported to [`crate::stale::track`]) and the load goes on to refresh the key.
    /// This is why the loader must be `Send + 'static`.
    ///
    /// # Errors
    /// Only the loader's: [`Error::Load`], [`Error::LoadTimeout`] when the whole read passes
    /// the load timeout (the hard bound on every call), or [`Error::Encode`] for a value
    /// whose `Serialize` fails. Never a Redis error.
    ///
    /// # Cancel safety
    /// Dropping the future mid-load releases the key for the next caller and installs
    /// nothing (a background refresh of a stale value goes on); an L2 write already sent may
    /// still land, which is harmless (it holds what the loader returned, under its lease).
    pub(crate) async fn get_or_load<T, E, F, Fut>(
        self: &Arc<Self>,
        key: CacheKey,
        loader: F,
    ) -> Result<Option<Arc<T>>, Error>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        E: Into<BoxError> + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let inner = &**self;
        let entity = key.entity();
        // L1 lookups are not timed: they take a fraction of a microsecond, and two clock
        // reads would cost a hit more than the lookup's own work (see `CacheObserver::lookup`).
        let mut stale = None;
        if let Some(entry) = inner.l1.get(&key).await {
            if !entry.holds::<T>() {
                inner.observer.corrupt(entity, Tier::L1, CorruptKind::Type);
            } else if entry.fresh(Instant::now(), &inner.coherence) {
                let outcome = if entry.value.is_some() {
                    Outcome::Hit
                } else {
                    Outcome::NegativeHit
                };
                inner
                    .observer
                    .lookup(entity, Tier::L1, outcome, Duration::ZERO);
                inner
                    .observer
                    .served(entity, Tier::L1, age_since(entry.loaded_at_ms));
                return Ok(entry.downcast::<T>().unwrap_or(None));
            } else {
                stale = Some(entry);
            }
        }
        inner
            .observer
            .lookup(entity, Tier::L1, Outcome::Miss, Duration::ZERO);
        match stale {
            None => inner.load_bounded(key, Instant::now(), loader).await,
            Some(stale) => self.refresh_or_stale(key, stale, loader).await,
        }
    }

    /// The read of a key whose L1 entry is past its freshness: load it in a task of its own,
    /// and serve the stale value if that fails or outlasts the soft timeout.
    async fn refresh_or_stale<T, E, F, Fut>(
        self: &Arc<Self>,
        key: CacheKey,
        stale: L1Entry,
        loader: F,
    ) -> Result<Option<Arc<T>>, Error>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        E: Into<BoxError> + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let inner = Arc::clone(self);
        let entity = key.entity();
        let requested_at = Instant::now();
        let mut refresh =
            tokio::spawn(async move { inner.load_bounded(key, requested_at, loader).await });
        let inner = &**self;
        let outcome = tokio::select! {
            joined = &mut refresh => match joined.unwrap_or_else(|e| Err(task_failed(entity, &e))) {
                Ok(value) => return Ok(value),
                Err(error) => Err(error),
            },
            () = tokio::time::sleep(inner.soft_timeout) => Ok(()),
        };
        let reason = match &outcome {
            Ok(()) => StaleReason::SoftTimeout,
            Err(_) => StaleReason::LoadFailed,
        };
        let age = age_since(stale.loaded_at_ms);
        // Past the grace window (L1 is about to drop it) the load's own answer stands.
        if Instant::now() >= stale.stale_until() {
            return match outcome {
                Err(error) => Err(error),
                Ok(()) => refresh
                    .await
                    .unwrap_or_else(|e| Err(task_failed(entity, &e))),
            };
        }
        let Ok(value) = stale.downcast::<T>() else {
            return outcome.map(|()| None);
        };
        inner.observer.stale_served(entity, reason);
        inner.observer.served(entity, Tier::L1, age);
        crate::stale::record(age);
        Ok(value)
    }

    /// A miss under the load timeout (the hard bound on it): the key's compute lock, then
    /// [`fill`](Self::fill) unless another caller's load or failure answers it.
    async fn load_bounded<T, E, F, Fut>(
        &self,
        key: CacheKey,
        requested_at: Instant,
        loader: F,
    ) -> Result<Option<Arc<T>>, Error>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        E: Into<BoxError>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        // Before anything is read, so an invalidation that misses this hold began after it
        // (see `drop_from_l1`).
        let _installing = self.installing.hold(&key);
        let load = async {
            let entity = key.entity();
            let computed = self
                .l1
                .entry(key)
                .and_try_compute_with(|existing| async move {
                    // Another caller's load finished while this one waited for the key.
                    if let Some(existing) = existing {
                        let entry = existing.into_value();
                        if entry.holds::<T>() && entry.fresh(Instant::now(), &self.coherence) {
                            self.observer.coalesced(entity);
                            return Ok(Op::Nop);
                        }
                    }
                    if let Some(error) = self.failures.since(&key, requested_at) {
                        self.observer.coalesced(entity);
                        return Err(Exit::Failed(error));
                    }
                    self.fill::<T, E, F, Fut>(key, loader).await.map(Op::Put)
                })
                .await;
            let entry = match computed {
                Ok(
                    CompResult::Inserted(e)
                    | CompResult::ReplacedWith(e)
                    | CompResult::Unchanged(e),
                ) => e.into_value(),
                // Nop on an absent entry: cannot happen (a Nop is returned only for an existing one).
                Ok(CompResult::StillNone(_) | CompResult::Removed(_)) => return Ok(None),
                Err(Exit::Uncached(entry)) => entry,
                Err(Exit::Failed(error)) => {
                    if !matches!(error, Error::Encode { .. }) {
                        self.failures.record(key, error.clone());
                    }
                    return Err(error);
                }
            };
            // The entry was just checked or built for a `T`.
            Ok(entry.downcast::<T>().unwrap_or(None))
        };
        tokio::time::timeout(self.load_timeout, load)
            .await
            .unwrap_or(Err(Error::LoadTimeout {
                entity: key.entity(),
                after: self.load_timeout,
            }))
    }

    /// The miss path under the key's lock: L2, then the loader, filling L2 on the way back.
    async fn fill<T, E, F, Fut>(&self, key: CacheKey, loader: F) -> Result<L1Entry, Exit>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        E: Into<BoxError>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let entity = key.entity();
        let policy = self.policies.get(entity);
        // Recorded in its tags' indexes before anything is read, so an invalidation racing
        // this load finds it.
        let tags: Vec<Tag> = self.keys.schema().indexed_tags(&key).collect();
        let mut cacheable = true;
        for tag in &tags {
            cacheable &= self.tag_index.add(*tag, key);
        }

        let redis_key = self.l2.as_ref().map(|_| self.keys.render(&key));
        // A key whose invalidation has not reached Redis yet may be stale there: its value
        // is not read, and the lease is taken over it, so the fresh value replaces it.
        let owed = self.l2.is_some() && self.pending.blocks(&key);
        // The marker of the load lease this caller holds, if it won one (see `# Reading` on
        // the type). The value is written to L2 only over it: an invalidation deletes the
        // key, marker included, so a load that an invalidation overtook does not land.
        let mut lease: Option<String> = None;
        // A value Redis holds that is too old to serve as fresh here but within its grace:
        // served stale if the loader fails or is slow (see `stale_from_l2`).
        let mut fallback: Option<(envelope::Decoded<T>, usize)> = None;
        if let (Some(l2), Some(redis_key)) = (&self.l2, &redis_key) {
            let started = Instant::now();
            // An indexed key joins its tags' indexes in Redis when its load takes the lease.
            let index: Vec<IndexEntry> = tags
                .iter()
                .map(|tag| IndexEntry {
                    index_key: self.keys.tag_index(tag),
                    ttl: policy.max_ttl(policy.l2_ttl),
                })
                .collect();
            let index = index.as_slice();
            let marker = self.lease_marker();
            let found = if owed {
                l2.take_lease(redis_key, &marker, self.load_timeout, index)
                    .await
            } else {
                l2.get_or_lease(redis_key, &marker, self.load_timeout, index)
                    .await
            };
            let found = match found {
                Ok(GetOrLease::Value(bytes)) => Some(bytes),
                Ok(GetOrLease::Leased) => {
                    lease = Some(marker);
                    None
                }
                // Another instance is loading this key: wait (bounded) for its value.
                Ok(GetOrLease::Busy) if !owed => {
                    match self.await_value(l2, redis_key, &marker, index).await {
                        GetOrLease::Value(bytes) => {
                            self.observer.coalesced(entity);
                            Some(bytes)
                        }
                        GetOrLease::Leased => {
                            lease = Some(marker);
                            None
                        }
                        GetOrLease::Busy => None,
                    }
                }
                // Absorbed: counted by L2 itself, then on to the loader.
                Ok(GetOrLease::Busy) | Err(_) => None,
            };
            let sealed = self.sealing.is_on().then_some(redis_key.as_str());
            match found {
                // Opened in place when sealed; L1 weighs the plain envelope either way.
                Some(mut bytes) => match self
                    .sealing
                    .plain(sealed, &mut bytes)
                    .and_then(|plain| Ok((envelope::decode::<T>(plain)?, plain.len())))
                {
                    // Older than this instance can vouch for right now (see `coherence.rs`):
                    // loaded again, under a lease taken now.
                    Ok((decoded, size))
                        if !self
                            .coherence
                            .serveable(Instant::now(), decoded.loaded_at_ms) =>
                    {
                        self.observer
                            .lookup(entity, Tier::L2, Outcome::Miss, started.elapsed());
                        let negative = decoded.value.is_none();
                        let ttl = policy.max_ttl(policy.base_ttl(false, negative));
                        if age_since(decoded.loaded_at_ms) <= ttl + policy.grace {
                            // Left in Redis, not leased over: should the load fail, it is
                            // what every instance falls back on. A fresh load stays in L1.
                            fallback = Some((decoded, size));
                        } else {
                            lease = self.take_lease(l2, redis_key, index).await;
                        }
                    }
                    Ok((decoded, size)) => {
                        let negative = decoded.value.is_none();
                        let outcome = if negative {
                            Outcome::NegativeHit
                        } else {
                            Outcome::Hit
                        };
                        self.observer
                            .lookup(entity, Tier::L2, outcome, started.elapsed());
                        self.observer
                            .served(entity, Tier::L2, age_since(decoded.loaded_at_ms));
                        let entry = L1Entry::new(
                            decoded.value.map(Arc::new),
                            size,
                            self.l1_life(policy, negative),
                            decoded.loaded_at_ms,
                        );
                        return if cacheable {
                            Ok(entry)
                        } else {
                            Err(Exit::Uncached(entry))
                        };
                    }
                    Err(kind) => {
                        self.observer.corrupt(entity, Tier::L2, kind);
                        self.observer
                            .lookup(entity, Tier::L2, Outcome::Miss, started.elapsed());
                        // The load below overwrites it, under a lease taken now over it (so
                        // a failing loader, releasing the lease, leaves nothing behind).
                        lease = self.take_lease(l2, redis_key, index).await;
                    }
                },
                None => self
                    .observer
                    .lookup(entity, Tier::L2, Outcome::Miss, started.elapsed()),
            }
        }

        let started = Instant::now();
        // With a stale value to fall back on, a slow loader is cut at the soft timeout, as
        // a read of a stale L1 value would be (that one refreshes in the background; this
        // one leaves the refresh to the next read, which finds the value in L1).
        let limit = if fallback.is_some() {
            self.soft_timeout
        } else {
            self.load_timeout
        };
        let loaded = match tokio::time::timeout(limit, loader()).await {
            Ok(Ok(value)) => {
                let outcome = if value.is_some() {
                    LoadOutcome::Found
                } else {
                    LoadOutcome::NotFound
                };
                self.observer.load(entity, outcome, started.elapsed());
                value
            }
            Ok(Err(e)) => {
                self.release_lease(redis_key.as_deref(), lease.as_deref())
                    .await;
                self.observer
                    .load(entity, LoadOutcome::Error, started.elapsed());
                if let Some(stale) = fallback {
                    return self.stale_from_l2(entity, stale, StaleReason::LoadFailed, cacheable);
                }
                return Err(Exit::Failed(Error::Load {
                    entity,
                    source: Arc::from(e.into()),
                }));
            }
            Err(_elapsed) => {
                self.release_lease(redis_key.as_deref(), lease.as_deref())
                    .await;
                self.observer
                    .load(entity, LoadOutcome::Timeout, started.elapsed());
                if let Some(stale) = fallback {
                    return self.stale_from_l2(entity, stale, StaleReason::SoftTimeout, cacheable);
                }
                return Err(Exit::Failed(Error::LoadTimeout {
                    entity,
                    after: self.load_timeout,
                }));
            }
        };
        let negative = loaded.is_none();
        let loaded_at_ms = unix_millis();
        let bytes = envelope::encode(loaded.as_ref(), loaded_at_ms)
            .map_err(|source| Exit::Failed(Error::Encode { entity, source }))?;
        let size = bytes.len();
        // Without a lease (another instance's load outlived the wait, or Redis failed)
        // nothing is written: the lease holder writes it. With one, the write goes behind
        // (see `write_behind.rs`), or here when its queue is full.
        if let (Some(redis_key), Some(lease)) = (redis_key, lease) {
            match self
                .sealing
                .store(&redis_key, bytes, self.keys.schema().followable(&key))
            {
                Ok(bytes) => {
                    let set = QueuedSet {
                        key,
                        owed,
                        redis_key,
                        bytes,
                        ttl: policy.ttl(false, negative),
                        lease,
                    };
                    if let Some(set) = self.write_behind.queue(set) {
                        write_behind::send(self, std::slice::from_ref(&set)).await;
                    }
                }
                // Nothing to write (never in practice: over 256 GiB): others load it.
                Err(_) => self.release_lease(Some(&redis_key), Some(&lease)).await,
            }
        }
        let entry = L1Entry::new(
            loaded.map(Arc::new),
            size,
            self.l1_life(policy, negative),
            loaded_at_ms,
        );
        if cacheable {
            Ok(entry)
        } else {
            Err(Exit::Uncached(entry))
        }
    }

    /// Serves `stale`, a value read from Redis past what this instance vouches for but
    /// within its grace, because the load failed or was slow (`reason`): counted and
    /// reported as a stale L1 value is, and kept in L1 (still stale), so the next read is
    /// answered from there while it refreshes.
    fn stale_from_l2<T: Send + Sync + 'static>(
        &self,
        entity: Entity,
        (stale, size): (envelope::Decoded<T>, usize),
        reason: StaleReason,
        cacheable: bool,
    ) -> Result<L1Entry, Exit> {
        let age = age_since(stale.loaded_at_ms);
        self.observer.stale_served(entity, reason);
        self.observer.served(entity, Tier::L2, age);
        crate::stale::record(age);
        let negative = stale.value.is_none();
        let entry = L1Entry::new(
            stale.value.map(Arc::new),
            size,
            self.l1_life(self.policies.get(entity), negative),
            stale.loaded_at_ms,
        );
        if cacheable {
            Ok(entry)
        } else {
            Err(Exit::Uncached(entry))
        }
    }
}

/// A load task that panicked (or was cancelled by a runtime shutting down), as a load error.
fn task_failed(entity: Entity, e: &tokio::task::JoinError) -> Error {
    Error::Load {
        entity,
        source: Arc::from(BoxError::from(e.to_string())),
    }
}
