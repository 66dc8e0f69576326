//! [`CacheKey`] and the typed [`KeyDef`] that builds it.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use super::entity::Entity;
use super::part::{KeyParts, SLOTS};

/// A cache key: which declared key shape, which parts. Cheap to copy and to hash; its
/// Redis form is rendered only on the way to L2 ([`KeySchema::render`](crate::KeySchema::render)).
#[derive(Clone, Copy)]
pub struct CacheKey {
    pub(crate) form: u16,
    entity: Entity,
    pub(crate) parts: [u64; SLOTS],
}

impl CacheKey {
    pub(crate) fn new(form: u16, entity: Entity, parts: [u64; SLOTS]) -> Self {
        CacheKey {
            form,
            entity,
            parts,
        }
    }

    /// The entity this key caches.
    pub fn entity(&self) -> Entity {
        self.entity
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.form == other.form && self.parts == other.parts
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The shape decides the entity: hashing it again would only cost a hit time.
        self.form.hash(state);
        self.parts.hash(state);
    }
}

impl fmt::Debug for CacheKey {
    /// The entity, the shape's number and the parts' first 32 bits each: never a whole
    /// digest, and the same for every run.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.entity, self.form)?;
        let mut list = f.debug_list();
        for slot in self.parts {
            list.entry(&format_args!("{:x}", slot >> 32));
        }
        list.finish()
    }
}

/// One declared shape of key (`"user:id:{}"`) with typed parts `P`: builds its
/// [`CacheKey`]s. Made by [`SchemaBuilder::key`](crate::SchemaBuilder::key).
pub struct KeyDef<P> {
    pub(crate) form: u16,
    entity: Entity,
    parts: PhantomData<fn(P) -> P>,
}

impl<P> Clone for KeyDef<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for KeyDef<P> {}

impl<P> fmt::Debug for KeyDef<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDef({}#{})", self.entity, self.form)
    }
}

impl<P: KeyParts> KeyDef<P> {
    pub(crate) fn new(form: u16, entity: Entity) -> Self {
        KeyDef {
            form,
            entity,
            parts: PhantomData,
        }
    }

    /// The key for `parts`.
    pub fn key(&self, parts: P) -> CacheKey {
        CacheKey::new(self.form, self.entity, parts.pack())
    }

    /// The entity its keys cache.
    pub fn entity(&self) -> Entity {
        self.entity
    }

    /// The parts of `key`, when it is one of this shape's.
    pub fn parts(&self, key: &CacheKey) -> Option<P> {
        (key.form == self.form)
            .then(|| P::unpack(&key.parts))
            .flatten()
    }
}
