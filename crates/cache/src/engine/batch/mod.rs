//! Batched reads: several keys in at most one Redis round trip, later keys built from the
//! ids of earlier values (a product by its SKU, then its reviews by the product's id).
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

use serde::Serialize;
use serde::de::DeserializeOwned;
use smallvec::SmallVec;

use crate::envelope;
use crate::epoch::Snapshot;
use crate::observer::CorruptKind;
use crate::schema::{CacheKey, Group, KeyDef, KeyParts};

mod read;

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

/// Steps and groups a plan holds without allocating (a plan may have more).
const INLINE: usize = 6;

/// Where a step's key comes from.
#[derive(Clone)]
enum Source {
    Known(CacheKey),
    /// Built from the id of step `from`'s value.
    Follow {
        from: usize,
        key: FollowedKey,
    },
}

/// How a followed step's key is built from an id.
#[derive(Clone)]
enum FollowedKey {
    /// The id fills slot `hole` of `template` as it is: built without allocating, and
    /// inside Redis too (see `read.rs`).
    Hole { template: CacheKey, hole: usize },
    /// Any other use of the id: built by the caller's function, in Rust only (the step is
    /// answered by L1 and the loader, never inside Redis).
    Built(Build),
}

impl FollowedKey {
    fn build(&self, id: i64) -> CacheKey {
        match self {
            FollowedKey::Hole { template, hole } => {
                let mut key = *template;
                key.parts[*hole] = id.cast_unsigned();
                key
            }
            FollowedKey::Built(build) => build(id),
        }
    }
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
    steps: SmallVec<[StepDef; INLINE]>,
    groups: SmallVec<[Group; INLINE]>,
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
    /// value. `parts` should put the id, as it is, in one integer part (else the step is
    /// read from L1 only, never inside Redis), and the keys `from` reads should be
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
        // The slot the id lands in: the only one that differs between two ids, holding
        // each id as it is (checked with a third).
        let template = def.key(parts(0));
        let one = def.key(parts(1));
        let mut differ = (0..template.parts.len()).filter(|&i| template.parts[i] != one.parts[i]);
        let hole = match (differ.next(), differ.next()) {
            (Some(hole), None) => Some(hole),
            _ => None,
        };
        const PROBE: i64 = 0x5eed_0001;
        let key = match hole {
            Some(hole)
                if one.parts[hole] == 1
                    && def.key(parts(PROBE)).parts[hole] == PROBE.cast_unsigned() =>
            {
                FollowedKey::Hole { template, hole }
            }
            _ => FollowedKey::Built(Arc::new(move |id| def.key(parts(id)))),
        };
        if let Some(source) = self.steps.get_mut(from.index) {
            source.id_of = Some(|value| value.downcast_ref::<S>().map(S::id));
        }
        self.push::<T>(Source::Follow {
            from: from.index,
            key,
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
    found: SmallVec<[Found; INLINE]>,
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
            Source::Follow { from, key } => ids[*from].map(|id| key.build(id)),
        }
    }
}
