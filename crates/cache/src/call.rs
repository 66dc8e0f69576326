//! The voice agent's call lookup: the organization by the number called, the lead by the
//! caller, and the lead's context and greeting, in at most one Redis round trip.
//!
//! Each entry's key depends on the one before (the lead's key holds the organization's id;
//! the context's, the lead's), so a plain `MGET` cannot fetch them together. L1 is walked
//! first; whatever it lacks is fetched by one Lua script that follows the ids inside Redis.
//! The script reads an id from the head of a payload: the envelope's header, then the
//! value's first field as postcard writes an `i64` (a zigzag varint). Types used as the
//! organization or the lead must therefore have their id as their first field; they say so
//! by implementing [`Identified`], and [`envelope::leading_id`] is the same reading in Rust,
//! for tests to pin the contract. The script builds keys from arguments, so it needs all
//! of a namespace on one Redis node (no cluster). A sealed value (see `seal.rs`) at the
//! organization's or the lead's phone key keeps that id in the clear ahead of its nonce,
//! where the script reads it the same way; the script never needs the encryption key.

use std::sync::Arc;

use moka::ops::compute::{CompResult, Op};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::{L1Entry, TwoTierCache};
use crate::envelope::{self, ENVELOPE_VERSION};
use crate::epoch::Snapshot;
use crate::key::{CacheKey, Channel, PhoneDigest};
use crate::observer::{CorruptKind, Entity, Outcome, StaleReason, Tier};
use crate::write_behind::Unsent;

/// A value other keys are built from; its id must be its first serialized field.
pub trait Identified {
    /// The id.
    fn id(&self) -> i64;
}

/// What the tiers held for one part of a call.
#[derive(Debug)]
pub enum Slot<T> {
    /// A value.
    Found(Arc<T>),
    /// A cached "not found".
    NotFound,
    /// Nothing usable: load it (then [`TwoTierCache::install`] it).
    Missing,
}

impl<T> Slot<T> {
    /// Whether the tiers had an answer (a value or a "not found").
    pub fn is_known(&self) -> bool {
        !matches!(self, Slot::Missing)
    }
}

/// What the tiers held for a call, and what a later install needs.
#[derive(Debug)]
pub struct CallSlots<O, L, C, G> {
    /// The organization reached on the number called.
    pub org: Slot<O>,
    /// The caller, as a lead of that organization.
    pub lead: Slot<L>,
    /// The lead's context.
    pub context: Slot<C>,
    /// The lead's greeting on the call's channel.
    pub greeting: Slot<G>,
    /// The epochs seen before anything was read.
    pub(crate) snapshot: Snapshot,
    /// The Redis epochs (global, called, caller) the call script saw, with their keys;
    /// `None` when it did not run. Values are written to L2 only under them.
    pub(crate) l2_snapshot: Option<Vec<(String, Option<String>)>>,
    /// What L1 held past its freshness (within grace), with when each left the source:
    /// the answer if loading fails (see [`TwoTierCache::fall_back_to_stale`]).
    pub(crate) stale: StaleParts<O, L, C, G>,
}

type StalePart<T> = Option<(Arc<T>, u64)>;

pub(crate) struct StaleParts<O, L, C, G> {
    org: StalePart<O>,
    lead: StalePart<L>,
    context: StalePart<C>,
    greeting: StalePart<G>,
}

impl<O, L, C, G> Default for StaleParts<O, L, C, G> {
    fn default() -> Self {
        StaleParts {
            org: None,
            lead: None,
            context: None,
            greeting: None,
        }
    }
}

impl<O, L, C, G> Clone for StaleParts<O, L, C, G> {
    fn clone(&self) -> Self {
        StaleParts {
            org: self.org.clone(),
            lead: self.lead.clone(),
            context: self.context.clone(),
            greeting: self.greeting.clone(),
        }
    }
}

impl<O, L, C, G> std::fmt::Debug for StaleParts<O, L, C, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaleParts")
            .field("org", &self.org.is_some())
            .field("lead", &self.lead.is_some())
            .field("context", &self.context.is_some())
            .field("greeting", &self.greeting.is_some())
            .finish()
    }
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        match self {
            Slot::Found(v) => Slot::Found(Arc::clone(v)),
            Slot::NotFound => Slot::NotFound,
            Slot::Missing => Slot::Missing,
        }
    }
}

impl<O, L, C, G> Clone for CallSlots<O, L, C, G> {
    fn clone(&self) -> Self {
        CallSlots {
            org: self.org.clone(),
            lead: self.lead.clone(),
            context: self.context.clone(),
            greeting: self.greeting.clone(),
            snapshot: self.snapshot,
            l2_snapshot: self.l2_snapshot.clone(),
            stale: self.stale.clone(),
        }
    }
}

impl<O, L, C, G> CallSlots<O, L, C, G> {
    /// Whether nothing needs loading: an unknown organization, a new caller, or all four.
    pub fn is_complete(&self) -> bool {
        match (&self.org, &self.lead) {
            (Slot::NotFound, _) | (Slot::Found(_), Slot::NotFound) => true,
            (Slot::Found(_), Slot::Found(_)) => self.context.is_known() && self.greeting.is_known(),
            _ => false,
        }
    }
}

/// Follows the ids from the organization to the lead to its context and greeting.
const CALL_SCRIPT: &str = r#"
local ns, called, caller, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- The id starts after a plain envelope's header (version, kind 0: a value, load time), or
-- after a sealed one's version and flag 1 (its id in the clear).
local function leading_id(v)
  if not v or string.len(v) < 3 then return nil end
  local at
  if string.byte(v, 1) == VERSION and string.byte(v, 2) == 0 then
    at = 11
  elseif string.byte(v, 1) == SEALED and string.byte(v, 2) == WITH_ID then
    at = 3
  else
    return nil
  end
  local n, mult = 0, 1
  for i = at, math.min(string.len(v), at + 9) do
    local b = string.byte(v, i)
    n = n + (b % 128) * mult
    if b < 128 then
      if n % 2 == 0 then return string.format('%d', n / 2) end
      return string.format('%d', -(n + 1) / 2)
    end
    mult = mult * 128
  end
  return nil
end
-- A load's lease marker is no value.
local function value(key)
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, string.len('LEASE_PREFIX')) == 'LEASE_PREFIX' then return false end
  return v
end
local org, lead, context, greeting = false, false, false, false
local epochs = {
  redis.call('GET', ns .. 'epoch:all') or '',
  redis.call('GET', ns .. 'epoch:' .. called) or '',
  redis.call('GET', ns .. 'epoch:' .. caller) or '',
}
local function done() return {org, lead, context, greeting, epochs[1], epochs[2], epochs[3]} end
local org_id = ARGV[5]
if org_id == '' then
  org = value(ns .. 'org:phone:' .. called)
  org_id = leading_id(org)
  if not org_id then return done() end
end
local lead_id = ARGV[6]
if lead_id == '' then
  lead = value(ns .. 'lead:phone:' .. caller .. ':' .. org_id)
  lead_id = leading_id(lead)
  if not lead_id then return done() end
end
context = value(ns .. 'context:' .. lead_id)
greeting = value(ns .. 'greeting:' .. lead_id .. ':' .. channel)
return done()
"#;

impl TwoTierCache {
    /// What the tiers hold for a call from `caller` to `called` (both E.164), greeting on
    /// `channel`: from L1, then one Redis round trip for whatever L1 lacked. Values found in
    /// Redis are installed in L1. Fill the [`Slot::Missing`] parts from the source of truth
    /// and [`install`](Self::install) them.
    ///
    /// # When Redis fails
    /// The parts L1 lacks come back [`Slot::Missing`]; the failure is counted as any L2 error.
    pub async fn get_call<O, L, C, G>(
        &self,
        called: &str,
        caller: &str,
        channel: Channel,
    ) -> CallSlots<O, L, C, G>
    where
        O: Identified + Serialize + DeserializeOwned + Send + Sync + 'static,
        L: Identified + Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Serialize + DeserializeOwned + Send + Sync + 'static,
        G: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let keys = self.keys();
        let (called_digest, caller_digest) = (keys.phone_digest(called), keys.phone_digest(caller));
        let mut slots = CallSlots::<O, L, C, G> {
            org: Slot::Missing,
            lead: Slot::Missing,
            context: Slot::Missing,
            greeting: Slot::Missing,
            snapshot: self.epochs().snapshot(&called_digest, &caller_digest),
            l2_snapshot: None,
            stale: StaleParts::default(),
        };
        // Stale parts are followed too (their ids lead to the next keys), so a full stale
        // answer is at hand if loading fails.
        let org;
        (slots.org, slots.stale.org, org) = self.peek(keys.org_by_phone(called)).await;
        if let Some(org) = org {
            let lead;
            (slots.lead, slots.stale.lead, lead) =
                self.peek(keys.lead_by_phone(caller, org.id())).await;
            if let Some(lead) = lead {
                (slots.context, slots.stale.context, _) = self.peek(keys.context(lead.id())).await;
                (slots.greeting, slots.stale.greeting, _) =
                    self.peek(keys.greeting(lead.id(), channel)).await;
            }
        }
        if slots.is_complete() || !self.has_l2() {
            return slots;
        }
        self.fill_call_from_l2(&mut slots, called_digest, caller_digest, caller, channel)
            .await;
        slots
    }

    async fn fill_call_from_l2<O, L, C, G>(
        &self,
        slots: &mut CallSlots<O, L, C, G>,
        called: PhoneDigest,
        caller_digest: PhoneDigest,
        caller: &str,
        channel: Channel,
    ) where
        O: Identified + Serialize + DeserializeOwned + Send + Sync + 'static,
        L: Identified + Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Serialize + DeserializeOwned + Send + Sync + 'static,
        G: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let Some(l2) = self.l2() else { return };
        let keys = self.keys();
        let known_org = match &slots.org {
            Slot::Found(org) => org.id().to_string(),
            _ => String::new(),
        };
        let known_lead = match &slots.lead {
            Slot::Found(lead) => lead.id().to_string(),
            _ => String::new(),
        };
        let script = call_script();
        let mut invocation = script.prepare_invoke();
        invocation
            .arg(keys.namespace())
            .arg(called.to_hex())
            .arg(caller_digest.to_hex())
            .arg(channel.as_str())
            .arg(known_org)
            .arg(known_lead);
        let started = std::time::Instant::now();
        let Ok(found) = l2.invoke::<Vec<Option<Vec<u8>>>>("call", &invocation).await else {
            return;
        };
        let took = started.elapsed();
        let mut found = found.into_iter();
        let (org_bytes, lead_bytes, context_bytes, greeting_bytes) = (
            found.next().flatten(),
            found.next().flatten(),
            found.next().flatten(),
            found.next().flatten(),
        );
        let epoch_keys = [
            keys.epoch_key(None),
            keys.epoch_key(Some(&called)),
            keys.epoch_key(Some(&caller_digest)),
        ];
        slots.l2_snapshot = Some(
            epoch_keys
                .into_iter()
                .map(|key| {
                    let seen = found
                        .next()
                        .flatten()
                        .filter(|v| !v.is_empty())
                        .map(|v| String::from_utf8_lossy(&v).into_owned());
                    (key, seen)
                })
                .collect(),
        );
        if !slots.org.is_known() {
            slots.org = self
                .adopt(
                    keys.org_by_phone_digest(called),
                    org_bytes,
                    &slots.snapshot,
                    took,
                )
                .await;
        }
        let Slot::Found(org) = &slots.org else { return };
        let org_id = org.id();
        if !slots.lead.is_known() {
            let key = keys.lead_by_phone(caller, org_id);
            slots.lead = self.adopt(key, lead_bytes, &slots.snapshot, took).await;
        }
        let Slot::Found(lead) = &slots.lead else {
            return;
        };
        let lead_id = lead.id();
        if !slots.context.is_known() {
            slots.context = self
                .adopt(keys.context(lead_id), context_bytes, &slots.snapshot, took)
                .await;
        }
        if !slots.greeting.is_known() {
            slots.greeting = self
                .adopt(
                    keys.greeting(lead_id, channel),
                    greeting_bytes,
                    &slots.snapshot,
                    took,
                )
                .await;
        }
    }

    /// L1 only: a hit, a cached "not found", or missing; a value past its freshness (within
    /// grace) is missing, and also returned as stale; the third part is the value either way.
    async fn peek<T: Send + Sync + 'static>(
        &self,
        key: CacheKey,
    ) -> (Slot<T>, StalePart<T>, Option<Arc<T>>) {
        let entity = key.entity();
        let now = std::time::Instant::now();
        let Some(entry) = self.l1().get(&key).await else {
            self.observer()
                .lookup(entity, Tier::L1, Outcome::Miss, std::time::Duration::ZERO);
            return (Slot::Missing, None, None);
        };
        let fresh = entry.fresh(now, self.coherence());
        let loaded_at_ms = entry.loaded_at_ms;
        let age = crate::cache::age_since(loaded_at_ms);
        let (outcome, slot, stale, value) = match (fresh, entry.downcast::<T>()) {
            (true, Ok(Some(value))) => {
                self.observer().served(entity, Tier::L1, age);
                (
                    Outcome::Hit,
                    Slot::Found(Arc::clone(&value)),
                    None,
                    Some(value),
                )
            }
            (true, Ok(None)) => {
                self.observer().served(entity, Tier::L1, age);
                (Outcome::NegativeHit, Slot::NotFound, None, None)
            }
            (false, Ok(value)) => (
                Outcome::Miss,
                Slot::Missing,
                value.clone().map(|v| (v, loaded_at_ms)),
                value,
            ),
            (_, Err(())) => {
                self.observer().corrupt(entity, Tier::L1, CorruptKind::Type);
                (Outcome::Miss, Slot::Missing, None, None)
            }
        };
        self.observer()
            .lookup(entity, Tier::L1, outcome, std::time::Duration::ZERO);
        (slot, stale, value)
    }

    /// When loading a call's missing parts failed: fills them with the stale values L1 held
    /// (within grace) and says whether that makes the call complete; if so, each stale part
    /// is counted and reported to [`crate::stale::track`].
    pub fn fall_back_to_stale<O, L, C, G>(&self, slots: &mut CallSlots<O, L, C, G>) -> bool {
        fn fill<T>(
            slot: &mut Slot<T>,
            stale: &StalePart<T>,
            entity: Entity,
            used: &mut Vec<(Entity, u64)>,
        ) {
            if let (Slot::Missing, Some((value, loaded_at_ms))) = (&*slot, stale) {
                *slot = Slot::Found(Arc::clone(value));
                used.push((entity, *loaded_at_ms));
            }
        }
        let mut used = Vec::new();
        let mut filled = slots.clone();
        fill(&mut filled.org, &slots.stale.org, Entity::Org, &mut used);
        fill(&mut filled.lead, &slots.stale.lead, Entity::Lead, &mut used);
        fill(
            &mut filled.context,
            &slots.stale.context,
            Entity::Context,
            &mut used,
        );
        fill(
            &mut filled.greeting,
            &slots.stale.greeting,
            Entity::Greeting,
            &mut used,
        );
        if used.is_empty() || !filled.is_complete() {
            return false;
        }
        for (entity, loaded_at_ms) in used {
            let age = crate::cache::age_since(loaded_at_ms);
            self.observer()
                .stale_served(entity, StaleReason::LoadFailed);
            self.observer().served(entity, Tier::L1, age);
            crate::stale::record(age);
        }
        *slots = filled;
        true
    }

    /// Decodes a payload the script brought back and installs it in L1.
    async fn adopt<T>(
        &self,
        key: CacheKey,
        bytes: Option<Vec<u8>>,
        snapshot: &Snapshot,
        took: std::time::Duration,
    ) -> Slot<T>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let entity = key.entity();
        // A key whose invalidation is still owed to Redis may be stale there.
        let bytes = bytes.filter(|_| !self.owes(&key));
        let Some(mut bytes) = bytes else {
            self.observer()
                .lookup(entity, Tier::L2, Outcome::Miss, took);
            return Slot::Missing;
        };
        // A sealed value opens only under the key it was sealed for: this one.
        let redis_key = self.sealing().is_on().then(|| self.keys().render(&key));
        let decoded = self
            .sealing()
            .plain(redis_key.as_deref(), &mut bytes)
            .and_then(|plain| Ok((envelope::decode::<T>(plain)?, plain.len())));
        match decoded {
            // Older than this instance can vouch for right now (see `coherence.rs`).
            Ok((decoded, _))
                if !self
                    .coherence()
                    .serveable(std::time::Instant::now(), decoded.loaded_at_ms) =>
            {
                self.observer()
                    .lookup(entity, Tier::L2, Outcome::Miss, took);
                Slot::Missing
            }
            Ok((decoded, size)) => {
                let negative = decoded.value.is_none();
                let outcome = if negative {
                    Outcome::NegativeHit
                } else {
                    Outcome::Hit
                };
                self.observer().lookup(entity, Tier::L2, outcome, took);
                let value = decoded.value.map(Arc::new);
                self.observer().served(
                    entity,
                    Tier::L2,
                    crate::cache::age_since(decoded.loaded_at_ms),
                );
                let entry = L1Entry::new(
                    value.clone(),
                    size,
                    self.l1_life_for(entity, negative),
                    decoded.loaded_at_ms,
                );
                self.install_l1(key, entry, snapshot).await;
                match value {
                    Some(value) => Slot::Found(value),
                    None => Slot::NotFound,
                }
            }
            Err(kind) => {
                self.observer().corrupt(entity, Tier::L2, kind);
                self.observer()
                    .lookup(entity, Tier::L2, Outcome::Miss, took);
                Slot::Missing
            }
        }
    }

    /// Reports a load done outside [`get_or_load`](Self::get_or_load) (a batched query).
    pub fn observe_load(&self, entity: crate::Entity, found: bool, took: std::time::Duration) {
        let outcome = if found {
            crate::LoadOutcome::Found
        } else {
            crate::LoadOutcome::NotFound
        };
        self.observer().load(entity, outcome, took);
    }

    /// Caches a value loaded for a [`get_call`](Self::get_call) in both tiers, unless an
    /// invalidation of its phone numbers ran since that lookup began (then it is only
    /// returned). `None` caches "not found".
    ///
    /// # Errors
    /// [`crate::Error::Encode`] when the value's `Serialize` fails.
    pub async fn install<T, O, L, C, G>(
        &self,
        slots: &CallSlots<O, L, C, G>,
        key: CacheKey,
        value: Option<T>,
    ) -> Result<Option<Arc<T>>, crate::Error>
    where
        T: Serialize + Send + Sync + 'static,
    {
        let entity = key.entity();
        let loaded_at_ms = crate::cache::unix_millis();
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
        let snapshot = slots.snapshot;
        let installed = {
            // Held around the epoch check and the insert (see `Inner::drop_from_l1`); no
            // Redis command runs under the key's lock, so its readers never wait on one.
            let _installing = self.installing().hold(&key);
            let computed = self
                .l1()
                .entry(key)
                .and_compute_with(|_| async {
                    if self.epochs().unchanged(&snapshot) {
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
        // Redis's copy goes behind the answer, under the Redis epochs the call script saw:
        // an invalidation on any instance since then bumped one, and the write does not land.
        if let (true, Some(_), Some(epochs)) = (installed, self.l2(), slots.l2_snapshot.clone()) {
            let unsent = Unsent::new(self.shared());
            let redis_key = self.keys().render(&key);
            tokio::spawn(async move {
                let cache = unsent.cache();
                let Some(l2) = &cache.l2 else { return };
                // Sealed here, behind the answer, when values are.
                let Ok(bytes) = cache.sealing.store(&key, &redis_key, bytes) else {
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
        self.inner()
            .install_unless_moved(key, entry, || self.epochs().unchanged(snapshot))
            .await;
    }
}

fn call_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            &CALL_SCRIPT
                .replace("SEALED", &crate::seal::SEALED_VERSION.to_string())
                .replace("WITH_ID", &crate::seal::WITH_ID.to_string())
                .replace("VERSION", &ENVELOPE_VERSION.to_string())
                .replace("LEASE_PREFIX", &crate::l2::lua_lease_marker_prefix()),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{CacheConfig, Invalidation, InvalidationSource, NoopObserver};

    const ORG: &str = "+18005550001";
    const CALLER: &str = "+16462000000";

    /// A value the call script read from Redis is served, and installed in L1 only if no
    /// invalidation of the org's or the caller's phone (or of everything) reached this
    /// instance since the lookup began: the lookup holds no key lock while Redis answers, so
    /// the epochs are all that tell it was passed by.
    #[tokio::test]
    async fn a_value_read_before_an_invalidation_of_either_phone_is_served_but_not_installed() {
        let cache =
            TwoTierCache::new(CacheConfig::builder().build().unwrap(), NoopObserver).unwrap();
        let keys = cache.keys().clone();
        let (called, caller) = (keys.phone_digest(ORG), keys.phone_digest(CALLER));
        let key = keys.context(42);
        let bytes = envelope::encode(Some(&10u32), crate::cache::unix_millis()).unwrap();
        let invalidations = [
            Invalidation::lead_activity(&keys, 42, CALLER),
            Invalidation::org(&keys, ORG, &[42]),
            Invalidation::key(keys.lead_by_id(42)),
        ];
        for invalidation in invalidations {
            let entity = invalidation.entity();
            let before = cache.epochs().snapshot(&called, &caller);
            cache
                .invalidate(invalidation, InvalidationSource::Write)
                .await;
            let served: Slot<u32> = cache
                .adopt(key, Some(bytes.clone()), &before, Duration::ZERO)
                .await;
            assert!(
                matches!(served, Slot::Found(ref v) if **v == 10),
                "{entity:?}: served"
            );
            assert!(
                !cache.l1().contains_key(&key),
                "{entity:?}: a value read before the invalidation stays out of L1"
            );

            // Read after it, the same value is installed.
            let after = cache.epochs().snapshot(&called, &caller);
            let _: Slot<u32> = cache
                .adopt(key, Some(bytes.clone()), &after, Duration::ZERO)
                .await;
            assert!(cache.l1().contains_key(&key), "{entity:?}: installed");
            cache.l1().invalidate(&key).await;
        }
    }
}
