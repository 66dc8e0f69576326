//! Batched reads: several keys in at most one Redis round trip, later keys built from the
//! ids of earlier values (the voice agent's organization → lead → context and greeting).
//!
//! A [`Plan`] lists the steps: a key known up front, or a key built from the id of an
//! earlier step's value ([`Plan::follow`]). L1 is walked first; whatever it lacks is
//! fetched by one script that runs the same plan inside Redis. The script gets each key
//! rendered by the Rust key definitions, the followed id's place left open (see
//! `KeySchema::render_around`), so the key formats exist once, in the schema. It reads
//! an id from the head of a payload: the envelope's header, then the value's first field
//! as postcard writes an `i64` (a zigzag varint). Types that are followed must therefore
//! have their id as their first field; they say so by implementing [`Identified`], and
//! [`envelope::leading_id`] is the same reading in Rust, for tests to pin the contract. A
//! sealed value (see `seal.rs`) at a [followable](crate::SchemaBuilder::followable) key
//! keeps that id in the clear ahead of its nonce, where the script reads it the same way;
//! the script never needs the encryption key. Keys built inside a script are not declared
//! to Redis, so on a Redis Cluster this read would need its steps in one slot (see
//! ARCHITECTURE.md).
//!
//! The read holds no key lock while Redis answers: values are installed only if no
//! invalidation of the plan's groups ran since it began (see `epoch.rs`), and written back
//! to Redis only under the Redis epochs the script saw.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::{CompResult, Op};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::{L1Entry, TwoTierCache};
use crate::envelope::{self, ENVELOPE_VERSION};
use crate::epoch::Snapshot;
use crate::observer::{CorruptKind, Outcome, StaleReason, Tier};
use crate::schema::{CacheKey, Group, KeyDef, KeyParts};
use crate::write_behind::Unsent;

/// A value other keys are built from; its id must be its first serialized field.
pub trait Identified {
    /// The id.
    fn id(&self) -> i64;
}

/// What the tiers held for one step of a batched read.
#[derive(Debug)]
pub enum Slot<T: ?Sized> {
    /// A value.
    Found(Arc<T>),
    /// A cached "not found".
    NotFound,
    /// Nothing usable: load it (then [`TwoTierCache::install`] it).
    Missing,
}

impl<T: ?Sized> Slot<T> {
    /// Whether the tiers had an answer (a value or a "not found").
    pub fn is_known(&self) -> bool {
        !matches!(self, Slot::Missing)
    }
}

impl<T: ?Sized> Clone for Slot<T> {
    fn clone(&self) -> Self {
        match self {
            Slot::Found(v) => Slot::Found(Arc::clone(v)),
            Slot::NotFound => Slot::NotFound,
            Slot::Missing => Slot::Missing,
        }
    }
}

/// A step of a [`Plan`], whose value is a `T`.
pub struct Step<T> {
    index: usize,
    value: PhantomData<fn() -> T>,
}

impl<T> Clone for Step<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Step<T> {}

impl<T> std::fmt::Debug for Step<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Step({})", self.index)
    }
}

type Erased = Arc<dyn Any + Send + Sync>;
type Build = Arc<dyn Fn(i64) -> CacheKey + Send + Sync>;

/// Where a step's key comes from.
#[derive(Clone)]
enum Source {
    Known(CacheKey),
    /// Built from the id of step `from`'s value; `hole` is the slot that id fills (`None`:
    /// the key cannot be built inside Redis, so only L1 and the loader answer it).
    Follow {
        from: usize,
        build: Build,
        hole: Option<usize>,
    },
}

/// How a step reads its type out of the tiers.
#[derive(Clone)]
struct StepDef {
    source: Source,
    decode: fn(&[u8]) -> Result<envelope::Decoded<Erased>, CorruptKind>,
    holds: fn(&(dyn Any + Send + Sync)) -> bool,
    /// Set when a later step follows this one.
    id_of: Option<fn(&(dyn Any + Send + Sync)) -> Option<i64>>,
}

/// What a batched read reads: keys known up front and keys built from earlier values,
/// and the groups whose invalidations it must not install past.
///
/// ```
/// # use std::time::Duration;
/// # use serde::{Deserialize, Serialize};
/// # use tiercache::{EntityPolicy, Identified, KeyDef, Plan, Schema};
/// #[derive(Serialize, Deserialize)]
/// struct Product { id: i64, category_id: i64 }
/// impl Identified for Product { fn id(&self) -> i64 { self.id } }
///
/// # let mut b = Schema::builder();
/// # let product = b.entity("product", EntityPolicy::with_l2_ttl(Duration::from_secs(60)));
/// # let by_sku: KeyDef<tiercache::Digest> = b.key(product, "product:sku:{}");
/// # let stock_entity = b.entity("stock", EntityPolicy::with_l2_ttl(Duration::from_secs(60)));
/// # let stock: KeyDef<i64> = b.key(stock_entity, "stock:{}");
/// # b.followable(by_sku);
/// # let keys = tiercache::KeySchema::new("tc", "dev", 1, b"0123456789abcdef", b.build()?)?;
/// let mut plan = Plan::new();
/// let item = plan.key::<Product>(by_sku.key(keys.digest("SKU-1")));
/// let level = plan.follow::<_, u32, _>(item, stock, |id| id);
/// # let _ = level;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct Plan {
    steps: Vec<StepDef>,
    groups: Vec<Group>,
}

impl Plan {
    /// An empty plan.
    pub fn new() -> Self {
        Plan::default()
    }

    /// Installs nothing this read found if an invalidation naming `group` ran since it
    /// began (an invalidation naming no group stops every batched install).
    pub fn group(&mut self, group: Group) -> &mut Self {
        self.groups.push(group);
        self
    }

    /// A step reading `key`.
    pub fn key<T: Value>(&mut self, key: CacheKey) -> Step<T> {
        self.push::<T>(Source::Known(key))
    }

    /// A step reading the key `def` builds from `parts(id)`, `id` being the id of `from`'s
    /// value. `parts` must put the id in exactly one integer part (else the step is read
    /// from L1 only, never inside Redis), and `def`'s keys should be
    /// [followable](crate::SchemaBuilder::followable) for the id to be read from sealed values.
    pub fn follow<S, T, P>(
        &mut self,
        from: Step<S>,
        def: KeyDef<P>,
        parts: impl Fn(i64) -> P + Send + Sync + 'static,
    ) -> Step<T>
    where
        S: Identified + Send + Sync + 'static,
        T: Value,
        P: KeyParts,
    {
        let build: Build = Arc::new(move |id| def.key(parts(id)));
        // The slot the id lands in: the one that differs between two ids.
        let (zero, one) = (build(0), build(1));
        let differ: Vec<usize> = (0..zero.parts.len())
            .filter(|&i| zero.parts[i] != one.parts[i])
            .collect();
        let hole = (differ.len() == 1).then(|| differ[0]);
        if let Some(source) = self.steps.get_mut(from.index) {
            source.id_of = Some(|value| value.downcast_ref::<S>().map(S::id));
        }
        self.push::<T>(Source::Follow {
            from: from.index,
            build,
            hole,
        })
    }

    fn push<T: Value>(&mut self, source: Source) -> Step<T> {
        self.steps.push(StepDef {
            source,
            decode: |bytes| {
                envelope::decode::<T>(bytes).map(|d| envelope::Decoded {
                    value: d.value.map(|v| Arc::new(v) as Erased),
                    loaded_at_ms: d.loaded_at_ms,
                })
            },
            holds: |value| value.is::<T>(),
            id_of: None,
        });
        Step {
            index: self.steps.len() - 1,
            value: PhantomData,
        }
    }
}

/// A type a batched read can return.
pub trait Value: Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Value for T {}

/// What one step found.
#[derive(Clone)]
struct Found {
    slot: Slot<dyn Any + Send + Sync>,
    key: Option<CacheKey>,
    /// A value L1 held past its freshness (within grace), with when it left the source.
    stale: Option<(Erased, u64)>,
}

/// What the tiers held for a [`Plan`], and what a later [`install`](TwoTierCache::install)
/// needs.
#[derive(Clone)]
pub struct Batch {
    plan: Plan,
    found: Vec<Found>,
    /// The epochs seen before anything was read.
    snapshot: Snapshot,
    /// The Redis epochs (global, then each group's) the script saw, with their keys;
    /// `None` when it did not run. Values are written to L2 only under them.
    l2_snapshot: Option<Vec<(String, Option<String>)>>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slots: Vec<&str> = self
            .found
            .iter()
            .map(|f| match f.slot {
                Slot::Found(_) => "found",
                Slot::NotFound => "not found",
                Slot::Missing if f.stale.is_some() => "missing (stale held)",
                Slot::Missing => "missing",
            })
            .collect();
        f.debug_struct("Batch").field("steps", &slots).finish()
    }
}

impl Batch {
    /// What the tiers held for `step`.
    pub fn get<T: Send + Sync + 'static>(&self, step: Step<T>) -> Slot<T> {
        match self.found.get(step.index).map(|f| &f.slot) {
            Some(Slot::Found(value)) => match Arc::clone(value).downcast::<T>() {
                Ok(value) => Slot::Found(value),
                Err(_) => Slot::Missing,
            },
            Some(Slot::NotFound) => Slot::NotFound,
            _ => Slot::Missing,
        }
    }

    /// The key `step` read, when it could be built (a followed step's, once the value it
    /// follows was found).
    pub fn key<T>(&self, step: Step<T>) -> Option<CacheKey> {
        self.found.get(step.index).and_then(|f| f.key)
    }

    /// Whether nothing needs loading: every step is known, or follows a step that is not
    /// found (or is itself out of reach).
    pub fn is_complete(&self) -> bool {
        (0..self.found.len()).all(|i| !self.reachable(i) || self.found[i].slot.is_known())
    }

    /// Whether step `i`'s key can exist: a known key, or one that follows a found value.
    fn reachable(&self, i: usize) -> bool {
        match &self.plan.steps[i].source {
            Source::Known(_) => true,
            Source::Follow { from, .. } => matches!(self.found[*from].slot, Slot::Found(_)),
        }
    }

    /// The key of step `i`, built from what the steps before it found.
    fn key_of(&self, i: usize, ids: &[Option<i64>]) -> Option<CacheKey> {
        match &self.plan.steps[i].source {
            Source::Known(key) => Some(*key),
            Source::Follow { from, build, .. } => ids[*from].map(|id| build(id)),
        }
    }
}

/// Runs a plan inside Redis. KEYS: the global epoch, then each group's. ARGV: the step
/// count, then per step: `g` to read it (else skip it), the id it is known to have (`''`:
/// none), the step it follows (1-based; 0: none), and its key as the text before and after
/// the followed id (the whole key, and `''`, for a key known up front). Returns each step's
/// value (`false`: none read) and then the epochs.
const BATCH_SCRIPT: &str = r#"
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
local steps = tonumber(ARGV[1])
local values, ids = {}, {}
for i = 1, steps do
  local at = 2 + (i - 1) * 5
  values[i] = false
  if ARGV[at + 1] ~= '' then ids[i] = ARGV[at + 1] end
  if ARGV[at] == 'g' then
    local from, key = tonumber(ARGV[at + 2]), ARGV[at + 3]
    if from > 0 then
      if ids[from] == nil then ids[from] = leading_id(values[from]) end
      if ids[from] then key = key .. ids[from] .. ARGV[at + 4] else key = nil end
    end
    if key then
      local v = redis.call('GET', key)
      -- A load's lease marker is no value.
      if v and string.sub(v, 1, string.len('LEASE_PREFIX')) ~= 'LEASE_PREFIX' then
        values[i] = v
      end
    end
  end
end
for i = 1, #KEYS do values[steps + i] = redis.call('GET', KEYS[i]) or '' end
return values
"#;

fn batch_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            &BATCH_SCRIPT
                .replace("SEALED", &crate::seal::SEALED_VERSION.to_string())
                .replace("WITH_ID", &crate::seal::WITH_ID.to_string())
                .replace("VERSION", &ENVELOPE_VERSION.to_string())
                .replace("LEASE_PREFIX", &crate::l2::lua_lease_marker_prefix()),
        )
    })
}

impl TwoTierCache {
    /// What the tiers hold for `plan`: from L1, then one Redis round trip for whatever L1
    /// lacked. Values found in Redis are installed in L1. Fill the [`Slot::Missing`] steps
    /// from the source of truth and [`install`](Self::install) them.
    ///
    /// # When Redis fails
    /// The steps L1 lacks come back [`Slot::Missing`]; the failure is counted as any L2
    /// error.
    pub async fn read(&self, plan: Plan) -> Batch {
        let steps = plan.steps.len();
        let mut batch = Batch {
            snapshot: self.epochs().snapshot(&plan.groups),
            plan,
            found: vec![
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
        let mut ids: Vec<Option<i64>> = vec![None; steps];
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
        if batch.is_complete() || !self.has_l2() {
            return batch;
        }
        self.fill_from_l2(&mut batch).await;
        batch
    }

    async fn fill_from_l2(&self, batch: &mut Batch) {
        let Some(l2) = self.l2() else { return };
        let keys = self.keys();
        let steps = batch.plan.steps.len();
        let script = batch_script();
        let mut invocation = script.prepare_invoke();
        let epoch_keys: Vec<String> = std::iter::once(keys.epoch_key(None))
            .chain(batch.plan.groups.iter().map(|g| keys.epoch_key(Some(g))))
            .collect();
        for key in &epoch_keys {
            invocation.key(key);
        }
        invocation.arg(steps);
        for (i, def) in batch.plan.steps.iter().enumerate() {
            let found = &batch.found[i];
            // A value found in L1 is not read again: its id, when followed, is passed on.
            let known_id = match (&found.slot, def.id_of) {
                (Slot::Found(value), Some(id_of)) => id_of(&**value),
                _ => None,
            };
            let read = match (&found.slot, &def.source, found.key) {
                (Slot::Missing, _, Some(key)) => Some((0, keys.render(&key), String::new())),
                (Slot::Missing, Source::Follow { from, build, hole }, None) => {
                    hole.and_then(|slot| {
                        let template = build(0);
                        let part = keys.int_part_at(&template, slot)?;
                        let (before, after) = keys.render_around(&template, part);
                        Some((from + 1, before, after))
                    })
                }
                _ => None,
            };
            let id = known_id.map(|id| id.to_string()).unwrap_or_default();
            match read {
                Some((from, before, after)) => {
                    invocation.arg("g").arg(id).arg(from).arg(before).arg(after)
                }
                None => invocation.arg("").arg(id).arg(0).arg("").arg(""),
            };
        }
        let started = Instant::now();
        let Ok(values) = l2
            .invoke::<Vec<Option<Vec<u8>>>>("batch", &invocation)
            .await
        else {
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
        let mut ids: Vec<Option<i64>> = vec![None; steps];
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
        let Some(entry) = self.l1().get(&key).await else {
            self.observer()
                .lookup(entity, Tier::L1, Outcome::Miss, Duration::ZERO);
            return (Slot::Missing, None, None);
        };
        let fresh = entry.fresh(now, self.coherence());
        let loaded_at_ms = entry.loaded_at_ms;
        let age = crate::cache::age_since(loaded_at_ms);
        let value = entry.value;
        let (outcome, slot, stale, value) = match (fresh, value) {
            (_, Some(value)) if !holds(&*value) => {
                self.observer().corrupt(entity, Tier::L1, CorruptKind::Type);
                (Outcome::Miss, Slot::Missing, None, None)
            }
            (true, Some(value)) => {
                self.observer().served(entity, Tier::L1, age);
                (
                    Outcome::Hit,
                    Slot::Found(Arc::clone(&value)),
                    None,
                    Some(value),
                )
            }
            (true, None) => {
                self.observer().served(entity, Tier::L1, age);
                (Outcome::NegativeHit, Slot::NotFound, None, None)
            }
            (false, value) => (
                Outcome::Miss,
                Slot::Missing,
                value.clone().map(|v| (v, loaded_at_ms)),
                value,
            ),
        };
        self.observer()
            .lookup(entity, Tier::L1, outcome, Duration::ZERO);
        (slot, stale, value)
    }

    /// When loading a batch's missing steps failed: fills them with the stale values L1
    /// held (within grace) and says whether that makes the batch complete; if so, each
    /// stale value is counted and reported to [`crate::stale::track`].
    pub fn fall_back_to_stale(&self, batch: &mut Batch) -> bool {
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
            let age = crate::cache::age_since(loaded_at_ms);
            self.observer()
                .stale_served(entity, StaleReason::LoadFailed);
            self.observer().served(entity, Tier::L1, age);
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
            self.observer()
                .lookup(entity, Tier::L2, Outcome::Miss, took);
            return Slot::Missing;
        };
        // A sealed value opens only under the key it was sealed for: this one.
        let redis_key = self.sealing().is_on().then(|| self.keys().render(&key));
        let decoded = self
            .sealing()
            .plain(redis_key.as_deref(), &mut bytes)
            .and_then(|plain| Ok((decode(plain)?, plain.len())));
        match decoded {
            // Older than this instance can vouch for right now (see `coherence.rs`).
            Ok((decoded, _))
                if !self
                    .coherence()
                    .serveable(Instant::now(), decoded.loaded_at_ms) =>
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
                self.observer().served(
                    entity,
                    Tier::L2,
                    crate::cache::age_since(decoded.loaded_at_ms),
                );
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
                self.observer().corrupt(entity, Tier::L2, kind);
                self.observer()
                    .lookup(entity, Tier::L2, Outcome::Miss, took);
                Slot::Missing
            }
        }
    }

    /// Reports a load done outside [`get_or_load`](Self::get_or_load) (a batched query).
    pub fn observe_load(&self, entity: crate::Entity, found: bool, took: Duration) {
        let outcome = if found {
            crate::LoadOutcome::Found
        } else {
            crate::LoadOutcome::NotFound
        };
        self.observer().load(entity, outcome, took);
    }

    /// Caches a value loaded for a [`read`](Self::read) in both tiers, unless an
    /// invalidation of its plan's groups ran since that read began (then it is only
    /// returned). `None` caches "not found".
    ///
    /// # Errors
    /// [`crate::Error::Encode`] when the value's `Serialize` fails.
    pub async fn install<T>(
        &self,
        batch: &Batch,
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
        let snapshot = batch.snapshot.clone();
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
        // Redis's copy goes behind the answer, under the Redis epochs the script saw: an
        // invalidation on any instance since then bumped one, and the write does not land.
        if let (true, Some(_), Some(epochs)) = (installed, self.l2(), batch.l2_snapshot.clone()) {
            let unsent = Unsent::new(self.shared());
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
        self.inner()
            .install_unless_moved(key, entry, || self.epochs().unchanged(snapshot))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_schema::{Size, keys};
    use crate::{CacheConfig, Invalidation, InvalidationSource, NoopObserver};

    const ORG: &str = "+18005550001";
    const CALLER: &str = "+16462000000";

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
        let groups = [cache.keys().group(ORG), cache.keys().group(CALLER)];
        let key = k.sized.key((42, Size::Small));
        let bytes = envelope::encode(Some(&10u32), crate::cache::unix_millis()).unwrap();
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
            let before = cache.epochs().snapshot(&groups);
            cache
                .invalidate(invalidation, InvalidationSource::Write)
                .await;
            let served = cache
                .adopt(key, Some(bytes.clone()), &before, Duration::ZERO, decode)
                .await;
            assert!(
                matches!(&served, Slot::Found(v) if v.downcast_ref::<u32>() == Some(&10)),
                "{entity:?}: served"
            );
            assert!(
                !cache.l1().contains_key(&key),
                "{entity:?}: a value read before the invalidation stays out of L1"
            );

            // Read after it, the same value is installed.
            let after = cache.epochs().snapshot(&groups);
            cache
                .adopt(key, Some(bytes.clone()), &after, Duration::ZERO, decode)
                .await;
            assert!(cache.l1().contains_key(&key), "{entity:?}: installed");
            cache.l1().invalidate(&key).await;
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
        let Source::Follow { build, hole, .. } = &plan.steps[2].source else {
            panic!("a followed step");
        };
        let template = build(0);
        let part = schema.int_part_at(&template, hole.unwrap()).unwrap();
        let (before, after) = schema.render_around(&template, part);
        assert_eq!(format!("{before}77{after}"), schema.render(&build(77)));
        assert_eq!(before, "tc:t:v1:page:{");
        assert_eq!(after, "}:20");
    }
}
