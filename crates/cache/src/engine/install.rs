//! Putting values in L1 from outside a load, and taking them out for an invalidation, each
//! under the key's compute lock when a load or install of it may be under way.

use std::time::Instant;

use moka::ops::compute::Op;

use super::Engine;
use crate::l1::L1Entry;
use crate::schema::{CacheKey, Group};

impl Engine {
    /// Drops `keys` from L1 for an invalidation of `groups` (none: every group).
    ///
    /// The local epochs move first (see `epoch.rs`), so a batched install that checks them
    /// after this skips its value. Then a key is removed under its compute lock, which
    /// waits for a load or install of it in flight, only if L1 holds it or an install may
    /// be under way (`installing`). Any other install is safe without the lock: it took its
    /// hold after the epochs moved (the holds and this check are fenced), so a load's reads
    /// come after the write committed and its keys were marked in flight to Redis, and a
    /// batched install finds the epochs moved.
    pub(crate) async fn drop_from_l1(&self, keys: &[CacheKey], groups: &[Group]) {
        if groups.is_empty() {
            self.epochs.bump(None);
        }
        for group in groups {
            self.epochs.bump(Some(group));
        }
        for key in keys {
            self.dropped.add(self.dropped.of(key));
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let locked = keys
            .iter()
            .filter(|key| self.l1.contains_key(*key) || self.installing.busy(*key))
            .map(|key| async move {
                self.l1
                    .entry(*key)
                    .and_compute_with(|_| async { Op::Remove })
                    .await;
            });
        futures_util::future::join_all(locked).await;
    }

    /// Puts `entry` in L1 at `key`, from outside a load, unless L1 holds a fresh entry
    /// there (a load that began later read the same or newer) or `unmoved` finds that an
    /// invalidation came since the value was read. `unmoved` is asked under the key's lock
    /// while the key is held in `installing`, so an invalidation either moved what it
    /// checks first or finds the key held and removes the entry after (see
    /// [`drop_from_l1`](Self::drop_from_l1)).
    pub(crate) async fn install_unless_moved(
        &self,
        key: CacheKey,
        entry: L1Entry,
        unmoved: impl Fn() -> bool,
    ) {
        let _installing = self.installing.hold(&key);
        self.l1
            .entry(key)
            .and_compute_with(|existing| async {
                let fresh =
                    existing.is_some_and(|e| e.value().fresh(Instant::now(), &self.coherence));
                if fresh || !unmoved() {
                    Op::Nop
                } else {
                    Op::Put(entry)
                }
            })
            .await;
    }

    /// Drops every L1 entry; loads and installs in flight do not land afterwards (the global
    /// epoch moves first).
    pub(crate) fn clear_l1(&self) {
        self.epochs.bump(None);
        self.l1.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;
    use std::sync::Arc;
    use std::task::Poll;
    use std::time::Duration;

    use moka::ops::compute::Op;

    use super::*;
    use crate::clock::unix_millis;
    use crate::error::Error;
    use crate::{CacheConfig, TwoTierCache};

    fn entry(version: u32) -> L1Entry {
        let ttl = (Duration::from_secs(60), Duration::from_secs(60));
        L1Entry::new(Some(Arc::new(version)), 4, ttl, unix_millis())
    }

    /// A namespace the key schema refuses is reported as such, not as the key secret.
    #[test]
    fn a_bad_namespace_is_reported_as_the_namespace() {
        let mut config = CacheConfig::builder().build().unwrap();
        config.prefix = "no spaces allowed".to_owned();
        let Err(Error::Config(error)) = TwoTierCache::new(config, crate::NoopObserver) else {
            panic!("a bad namespace is a config error");
        };
        assert_eq!(error.problems[0].field, "namespace");
    }

    /// An install that checked the epochs before an invalidation bumped them, and inserts
    /// after the invalidation looked at L1: the invalidation must wait for it and remove
    /// its value, though the key was not in L1 when it looked.
    #[tokio::test]
    async fn an_invalidation_waits_for_an_install_under_way_and_removes_its_value() {
        let k = crate::test_schema::keys();
        let config = CacheConfig::builder()
            .schema(k.schema.clone())
            .build()
            .unwrap();
        let cache = TwoTierCache::new(config, crate::NoopObserver).unwrap();
        let inner = Arc::clone(cache.engine());
        let key = k.by_id.key(7);
        let (checked_tx, checked_rx) = tokio::sync::oneshot::channel();
        let (insert_tx, insert_rx) = tokio::sync::oneshot::channel::<()>();
        let installer = {
            let inner = Arc::clone(&inner);
            tokio::spawn(async move {
                let _installing = inner.installing.hold(&key);
                inner
                    .l1
                    .entry(key)
                    .and_compute_with(|_| async {
                        // The epoch check passed here; the insert waits for the test.
                        let _ = checked_tx.send(());
                        let _ = insert_rx.await;
                        Op::Put(entry(1))
                    })
                    .await;
            })
        };
        checked_rx.await.unwrap();
        assert!(!inner.l1.contains_key(&key), "not installed yet");

        let keys = [key];
        let mut removal = std::pin::pin!(inner.drop_from_l1(&keys, &[]));
        let first = std::future::poll_fn(|cx| Poll::Ready(removal.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the removal waits for the key's lock");
        insert_tx.send(()).unwrap();
        removal.await;
        installer.await.unwrap();
        assert!(!inner.l1.contains_key(&key), "the install's value went");

        // A key neither in L1 nor held costs no lock: the removal is done at once.
        let idle = [k.by_id.key(8)];
        let mut removal = std::pin::pin!(inner.drop_from_l1(&idle, &[]));
        let first = std::future::poll_fn(|cx| Poll::Ready(removal.as_mut().poll(cx))).await;
        assert!(first.is_ready());
    }
}
