//! Running a [`Plan`]: L1 first, then one Redis script for whatever L1 lacks, and
//! installing what the caller loads for it.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::{CompResult, Op};
use serde::Serialize;

use smallvec::SmallVec;

use super::{Batch, Erased, FollowedKey, Found, INLINE, Plan, Slot, Source};
use crate::clock::{age_since, unix_millis};
use crate::engine::Engine;
use crate::engine::write_behind::Unsent;
use crate::envelope;
use crate::epoch::Snapshot;
use crate::l1::L1Entry;
use crate::observer::{CorruptKind, Outcome, StaleReason, Tier};
use crate::schema::CacheKey;

impl Engine {
    /// See [`TwoTierCache::read`](crate::TwoTierCache::read).
    pub(crate) async fn read(&self, plan: Plan) -> Batch {
        let steps = plan.steps.len();
        let mut batch = Batch {
            snapshot: self.epochs.snapshot(&plan.groups),
            plan,
            found: smallvec::smallvec![
                Found {
                    slot: Slot::Missing,
                    key: None,
                    stale: None,
                };
                steps
            ],
            l2_snapshot: None,
        };
        // Stale values are followed too (their ids lead to the next keys), so a full stale
        // answer is at hand if loading fails.
        let mut ids: SmallVec<[Option<i64>; INLINE]> = smallvec::smallvec![None; steps];
        for i in 0..steps {
            let Some(key) = batch.key_of(i, &ids) else {
                continue;
            };
            let def = &batch.plan.steps[i];
            let (slot, stale, value) = self.peek(key, def.holds).await;
            if let (Some(id_of), Some(value)) = (def.id_of, value) {
                ids[i] = id_of(&*value);
            }
            batch.found[i] = Found {
                slot,
                key: Some(key),
                stale,
            };
        }
        if batch.is_complete() || self.l2.is_none() {
            return batch;
        }
        self.fill_from_l2(&mut batch).await;
        batch
    }

    async fn fill_from_l2(&self, batch: &mut Batch) {
        let Some(l2) = self.l2() else { return };
        let keys = self.keys();
        let steps = batch.plan.steps.len();
        let epoch_keys: Vec<String> = std::iter::once(keys.epoch_key(None))
            .chain(batch.plan.groups.iter().map(|g| keys.epoch_key(Some(g))))
            .collect();
        let mut args: Vec<[String; 5]> = Vec::with_capacity(steps);
        for (i, def) in batch.plan.steps.iter().enumerate() {
            let found = &batch.found[i];
            // A value found in L1 is not read again: its id, when followed, is passed on.
            let known_id = match (&found.slot, def.id_of) {
                (Slot::Found(value), Some(id_of)) => id_of(&**value),
                _ => None,
            };
            let read = match (&found.slot, &def.source, found.key) {
                (Slot::Missing, _, Some(key)) => Some((0, keys.render(&key), String::new())),
                (
                    Slot::Missing,
                    Source::Follow {
                        from,
                        key: FollowedKey::Hole { template, hole },
                    },
                    None,
                ) => keys.int_part_at(template, *hole).map(|part| {
                    let (before, after) = keys.render_around(template, part);
                    (from + 1, before, after)
                }),
                _ => None,
            };
            let id = known_id.map(|id| id.to_string()).unwrap_or_default();
            args.push(match read {
                Some((from, before, after)) => ["g".into(), id, from.to_string(), before, after],
                None => [String::new(), id, "0".into(), String::new(), String::new()],
            });
        }
        let started = Instant::now();
        let Ok(values) = l2.batch_read(&epoch_keys, &args).await else {
            return;
        };
        let took = started.elapsed();
        let mut values = values.into_iter();
        let read: Vec<Option<Vec<u8>>> = values.by_ref().take(steps).collect();
        batch.l2_snapshot = Some(
            epoch_keys
                .into_iter()
                .map(|key| {
                    let seen = values
                        .next()
                        .flatten()
                        .filter(|v| !v.is_empty())
                        .map(|v| String::from_utf8_lossy(&v).into_owned());
                    (key, seen)
                })
                .collect(),
        );
        // In order, so a followed step's key is built from what Rust found before it.
        let mut ids: SmallVec<[Option<i64>; INLINE]> = smallvec::smallvec![None; steps];
        for (i, bytes) in read.into_iter().enumerate() {
            let def = batch.plan.steps[i].clone();
            if !batch.found[i].slot.is_known() {
                let reachable = batch.reachable(i);
                let key = batch.found[i]
                    .key
                    .or_else(|| reachable.then(|| batch.key_of(i, &ids)).flatten());
                if let Some(key) = key {
                    batch.found[i].key = Some(key);
                    batch.found[i].slot = self
                        .adopt(key, bytes, &batch.snapshot, took, def.decode)
                        .await;
                }
            }
            if let (Slot::Found(value), Some(id_of)) = (&batch.found[i].slot, def.id_of) {
                ids[i] = id_of(&**value);
            }
        }
    }

    /// L1 only: a hit, a cached "not found", or missing; a value past its freshness (within
    /// grace) is missing, and also returned as stale; the third part is the value either way.
    async fn peek(
        &self,
        key: CacheKey,
        holds: fn(&(dyn Any + Send + Sync)) -> bool,
    ) -> (
        Slot<dyn Any + Send + Sync>,
        Option<(Erased, u64)>,
        Option<Erased>,
    ) {
        let entity = key.entity();
        let now = Instant::now();
        let Some(entry) = self.l1.get(&key).await else {
            self.observer
                .lookup(entity, Tier::L1, Outcome::Miss, Duration::ZERO);
            return (Slot::Missing, None, None);
        };
        let fresh = entry.fresh(now, &self.coherence);
        let loaded_at_ms = entry.loaded_at_ms;
        let age = age_since(loaded_at_ms);
        let value = entry.value;
        let (outcome, slot, stale, value) = match (fresh, value) {
            (_, Some(value)) if !holds(&*value) => {
                self.observer.corrupt(entity, Tier::L1, CorruptKind::Type);
                (Outcome::Miss, Slot::Missing, None, None)
            }
            (true, Some(value)) => {
                self.observer.served(entity, Tier::L1, age);
                (
                    Outcome::Hit,
                    Slot::Found(Arc::clone(&value)),
                    None,
                    Some(value),
                )
            }
            (true, None) => {
                self.observer.served(entity, Tier::L1, age);
                (Outcome::NegativeHit, Slot::NotFound, None, None)
            }
            (false, value) => (
                Outcome::Miss,
                Slot::Missing,
                value.clone().map(|v| (v, loaded_at_ms)),
                value,
            ),
        };
        self.observer
            .lookup(entity, Tier::L1, outcome, Duration::ZERO);
        (slot, stale, value)
    }

    /// See [`TwoTierCache::fall_back_to_stale`](crate::TwoTierCache::fall_back_to_stale).
    pub(crate) fn fall_back_to_stale(&self, batch: &mut Batch) -> bool {
        let mut filled = batch.clone();
        let mut used = Vec::new();
        for found in &mut filled.found {
            if let (Slot::Missing, Some((value, loaded_at_ms)), Some(key)) =
                (&found.slot, &found.stale, found.key)
            {
                found.slot = Slot::Found(Arc::clone(value));
                used.push((key.entity(), *loaded_at_ms));
            }
        }
        if used.is_empty() || !filled.is_complete() {
            return false;
        }
        for (entity, loaded_at_ms) in used {
            let age = age_since(loaded_at_ms);
            self.observer.stale_served(entity, StaleReason::LoadFailed);
            self.observer.served(entity, Tier::L1, age);
            crate::stale::record(age);
        }
        *batch = filled;
        true
    }

    /// Decodes a payload the script brought back and installs it in L1.
    async fn adopt(
        &self,
        key: CacheKey,
        bytes: Option<Vec<u8>>,
        snapshot: &Snapshot,
        took: Duration,
        decode: fn(&[u8]) -> Result<envelope::Decoded<Erased>, CorruptKind>,
    ) -> Slot<dyn Any + Send + Sync> {
        let entity = key.entity();
        // A key whose invalidation is still owed to Redis may be stale there.
        let bytes = bytes.filter(|_| !self.owes(&key));
        let Some(mut bytes) = bytes else {
            self.observer.lookup(entity, Tier::L2, Outcome::Miss, took);
            return Slot::Missing;
        };
        // A sealed value opens only under the key it was sealed for: this one.
        let redis_key = self.sealing.is_on().then(|| self.keys().render(&key));
        let decoded = self
            .sealing
            .plain(redis_key.as_deref(), &mut bytes)
            .and_then(|plain| Ok((decode(plain)?, plain.len())));
        match decoded {
            // Older than this instance can vouch for right now (see `coherence.rs`).
            Ok((decoded, _))
                if !self
                    .coherence
                    .serveable(Instant::now(), decoded.loaded_at_ms) =>
            {
                self.observer.lookup(entity, Tier::L2, Outcome::Miss, took);
                Slot::Missing
            }
            Ok((decoded, size)) => {
                let negative = decoded.value.is_none();
                let outcome = if negative {
                    Outcome::NegativeHit
                } else {
                    Outcome::Hit
                };
                self.observer.lookup(entity, Tier::L2, outcome, took);
                self.observer
                    .served(entity, Tier::L2, age_since(decoded.loaded_at_ms));
                let entry = L1Entry::erased(
                    decoded.value.clone(),
                    size,
                    self.l1_life_for(entity, negative),
                    decoded.loaded_at_ms,
                );
                self.install_l1(key, entry, snapshot).await;
                match decoded.value {
                    Some(value) => Slot::Found(value),
                    None => Slot::NotFound,
                }
            }
            Err(kind) => {
                self.observer.corrupt(entity, Tier::L2, kind);
                self.observer.lookup(entity, Tier::L2, Outcome::Miss, took);
                Slot::Missing
            }
        }
    }

    /// See [`TwoTierCache::observe_load`](crate::TwoTierCache::observe_load).
    pub(crate) fn observe_load(&self, entity: crate::Entity, found: bool, took: Duration) {
        let outcome = if found {
            crate::LoadOutcome::Found
        } else {
            crate::LoadOutcome::NotFound
        };
        self.observer.load(entity, outcome, took);
    }

    /// See [`TwoTierCache::install`](crate::TwoTierCache::install).
    pub(crate) async fn install<T>(
        self: &Arc<Self>,
        batch: &Batch,
        key: CacheKey,
        value: Option<T>,
    ) -> Result<Option<Arc<T>>, crate::Error>
    where
        T: Serialize + Send + Sync + 'static,
    {
        let entity = key.entity();
        let loaded_at_ms = unix_millis();
        let bytes = envelope::encode(value.as_ref(), loaded_at_ms)
            .map_err(|source| crate::Error::Encode { entity, source })?;
        let negative = value.is_none();
        let value = value.map(Arc::new);
        let entry = L1Entry::new(
            value.clone(),
            bytes.len(),
            self.l1_life_for(entity, negative),
            loaded_at_ms,
        );
        let l2_ttl = self.l2_ttl_for(entity, negative);
        let snapshot = batch.snapshot.clone();
        let installed = {
            // Held around the epoch check and the insert (see `Engine::drop_from_l1`); no
            // Redis command runs under the key's lock, so its readers never wait on one.
            let _installing = self.installing.hold(&key);
            let computed = self
                .l1
                .entry(key)
                .and_compute_with(|_| async {
                    if self.epochs.unchanged(&snapshot) {
                        Op::Put(entry)
                    } else {
                        Op::Nop
                    }
                })
                .await;
            !matches!(
                computed,
                CompResult::StillNone(_) | CompResult::Unchanged(_)
            )
        };
        // Redis's copy goes behind the answer, under the Redis epochs the script saw: an
        // invalidation on any instance since then bumped one, and the write does not land.
        if let (true, Some(_), Some(epochs)) = (installed, self.l2(), batch.l2_snapshot.clone()) {
            let unsent = Unsent::new(self);
            let redis_key = self.keys().render(&key);
            let show_id = self.keys().schema().followable(&key);
            tokio::spawn(async move {
                let cache = unsent.cache();
                let Some(l2) = &cache.l2 else { return };
                // Sealed here, behind the answer, when values are.
                let Ok(bytes) = cache.sealing.store(&redis_key, bytes, show_id) else {
                    return;
                };
                let stored = l2.set_guarded(&redis_key, &bytes, l2_ttl, &epochs).await;
                // An invalidation here since the snapshot may still owe its delete to
                // Redis (its own script failed): only an untouched key is settled.
                if matches!(stored, Ok(true)) && cache.epochs.unchanged(&snapshot) {
                    cache.pending.resolve(&key);
                }
            });
        }
        Ok(value)
    }

    async fn install_l1(&self, key: CacheKey, entry: L1Entry, snapshot: &Snapshot) {
        self.install_unless_moved(key, entry, || self.epochs.unchanged(snapshot))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::batch::Identified;
    use crate::test_schema::{Size, keys};
    use crate::{CacheConfig, Invalidation, InvalidationSource, NoopObserver, TwoTierCache};

    const ONE: &str = "first group";
    const TWO: &str = "second group";

    /// A value the batch script read from Redis is served, and installed in L1 only if no
    /// invalidation of either group (or of everything) reached this instance since the read
    /// began: the read holds no key lock while Redis answers, so the epochs are all that
    /// tell it was passed by.
    #[tokio::test]
    async fn a_value_read_before_an_invalidation_of_either_group_is_served_but_not_installed() {
        let k = keys();
        let config = CacheConfig::builder()
            .schema(k.schema.clone())
            .build()
            .unwrap();
        let cache = TwoTierCache::new(config, NoopObserver).unwrap();
        let groups = [cache.keys().group(ONE), cache.keys().group(TWO)];
        let key = k.sized.key((42, Size::Small));
        let bytes = envelope::encode(Some(&10u32), unix_millis()).unwrap();
        let decode: fn(&[u8]) -> Result<envelope::Decoded<Erased>, CorruptKind> = |b| {
            envelope::decode::<u32>(b).map(|d| envelope::Decoded {
                value: d.value.map(|v| Arc::new(v) as Erased),
                loaded_at_ms: d.loaded_at_ms,
            })
        };
        let invalidations = [
            Invalidation::new(k.view)
                .with_tag(k.owner.of(42))
                .with_group(groups[1]),
            Invalidation::new(k.item)
                .with_key(k.by_id.key(7))
                .with_group(groups[0]),
            Invalidation::key(k.by_id.key(42)),
        ];
        for invalidation in invalidations {
            let entity = invalidation.entity();
            let before = cache.engine().epochs.snapshot(&groups);
            cache
                .invalidate(invalidation, InvalidationSource::Write)
                .await;
            let served = cache
                .engine()
                .adopt(key, Some(bytes.clone()), &before, Duration::ZERO, decode)
                .await;
            assert!(
                matches!(&served, Slot::Found(v) if v.downcast_ref::<u32>() == Some(&10)),
                "{entity:?}: served"
            );
            assert!(
                !cache.engine().l1.contains_key(&key),
                "{entity:?}: a value read before the invalidation stays out of L1"
            );

            // Read after it, the same value is installed.
            let after = cache.engine().epochs.snapshot(&groups);
            cache
                .engine()
                .adopt(key, Some(bytes.clone()), &after, Duration::ZERO, decode)
                .await;
            assert!(
                cache.engine().l1.contains_key(&key),
                "{entity:?}: installed"
            );
            cache.engine().l1.invalidate(&key).await;
        }
    }

    /// A followed step's key is built from the id of the value it follows, in L1 as the
    /// script builds it in Redis; a step after a "not found" is out of reach, and the
    /// batch is complete without it.
    #[tokio::test]
    async fn followed_steps_are_built_from_ids_and_skipped_after_not_found() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Item {
            id: i64,
        }
        impl Identified for Item {
            fn id(&self) -> i64 {
                self.id
            }
        }
        let k = keys();
        let config = CacheConfig::builder()
            .schema(k.schema.clone())
            .build()
            .unwrap();
        let cache = TwoTierCache::new(config, NoopObserver).unwrap();
        let plan = |name: &str| {
            let mut plan = Plan::new();
            let item = plan.key::<Item>(k.by_name.key((cache.keys().digest(name), 1)));
            let view = plan.follow::<_, u32, _>(item, k.sized, |id| (id, Size::Large));
            (plan, item, view)
        };
        let found = k.by_name.key((cache.keys().digest("found"), 1));
        cache
            .get_or_load(found, || async {
                Ok::<_, std::io::Error>(Some(Item { id: 5 }))
            })
            .await
            .unwrap();
        let view = k.sized.key((5, Size::Large));
        cache
            .get_or_load(view, || async { Ok::<_, std::io::Error>(Some(9u32)) })
            .await
            .unwrap();
        let (p, item, step) = plan("found");
        let batch = cache.read(p).await;
        assert!(matches!(batch.get(item), Slot::Found(ref i) if i.id == 5));
        assert!(matches!(batch.get(step), Slot::Found(ref v) if **v == 9));
        assert_eq!(batch.key(step), Some(view));
        assert!(batch.is_complete());

        let gone = k.by_name.key((cache.keys().digest("gone"), 1));
        cache
            .get_or_load(gone, || async { Ok::<Option<Item>, std::io::Error>(None) })
            .await
            .unwrap();
        let (p, item, step) = plan("gone");
        let batch = cache.read(p).await;
        assert!(matches!(batch.get(item), Slot::NotFound));
        assert!(matches!(batch.get(step), Slot::Missing));
        assert!(
            batch.is_complete(),
            "nothing follows a value that is not there"
        );

        let (p, _, _) = plan("unknown");
        assert!(!cache.read(p).await.is_complete());
    }

    /// The part the id fills is found from the key definition, and the script's key text
    /// around it is the Rust rendering of the same definition.
    #[test]
    fn the_script_builds_the_key_the_rust_definition_renders() {
        let k = keys();
        let schema =
            crate::KeySchema::new("tc", "t", 1, b"0123456789abcdef", k.schema.clone()).unwrap();
        let mut plan = Plan::new();
        let item = plan.key::<u32>(k.by_id.key(1));
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Id(i64);
        impl Identified for Id {
            fn id(&self) -> i64 {
                self.0
            }
        }
        let _ = item;
        let source = plan.key::<Id>(k.by_id.key(2));
        let _page = plan.follow::<_, u32, _>(source, k.page, |id| (id, 20));
        let Source::Follow { key, .. } = &plan.steps[2].source else {
            panic!("a followed step");
        };
        let FollowedKey::Hole { template, hole } = key else {
            panic!("the id fills one integer part as it is");
        };
        let part = schema.int_part_at(template, *hole).unwrap();
        let (before, after) = schema.render_around(template, part);
        assert_eq!(format!("{before}77{after}"), schema.render(&key.build(77)));
        assert_eq!(before, "tc:t:v1:page:{");
        assert_eq!(after, "}:20");
        assert_eq!(key.build(77), k.page.key((77, 20)));

        // An id used any other way is built by the caller's function, in Rust only.
        let doubled = plan.follow::<_, u32, _>(source, k.page, |id| (id * 2, 20));
        let Source::Follow { key, .. } = &plan.steps[doubled.index].source else {
            panic!("a followed step");
        };
        assert!(matches!(key, FollowedKey::Built(_)));
        assert_eq!(key.build(5), k.page.key((10, 20)));
    }
}
