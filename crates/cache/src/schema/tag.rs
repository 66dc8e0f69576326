//! Tags (the keys derived from one value, invalidated with it) and groups (what a batched
//! read and an invalidation both name up front).

use std::fmt;
use std::marker::PhantomData;

use super::part::{Digest, KeyParts, SLOTS};

/// A declared tag with typed parts `P`: keys that [join it](crate::SchemaBuilder::tagged)
/// carry its parts first (`listing:{category}:{page}` in `category`),
/// and [`Invalidation::tag`](crate::Invalidation::tag) drops all of them for one value.
pub struct TagDef<P> {
    pub(crate) id: u16,
    parts: PhantomData<fn(P) -> P>,
}

impl<P> Clone for TagDef<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for TagDef<P> {}

impl<P> fmt::Debug for TagDef<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TagDef(#{})", self.id)
    }
}

impl<P: KeyParts> TagDef<P> {
    pub(crate) fn new(id: u16) -> Self {
        TagDef {
            id,
            parts: PhantomData,
        }
    }

    /// The tag of `parts`: every key of the tag whose leading parts are these.
    pub fn of(&self, parts: P) -> Tag {
        Tag {
            id: self.id,
            parts: parts.pack(),
        }
    }
}

/// One value of a tag (see [`TagDef::of`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag {
    pub(crate) id: u16,
    pub(crate) parts: [u64; SLOTS],
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tag#{}({:x})", self.id, self.parts[0] >> 32)
    }
}

/// What a batched read depends on before it reads anything, and what an invalidation
/// names when it changes that: a value read in the batch is installed only if no
/// invalidation of one of its groups (or of no group at all) ran since the read began.
/// A read that starts from two people's numbers, say, names both.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Group(pub(crate) Digest);

impl Group {
    /// The group as it appears in keys and bus messages (32 hex digits).
    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }

    /// Parses [`to_hex`](Self::to_hex)'s output.
    pub fn from_hex(text: &str) -> Option<Self> {
        Digest::from_hex(text).map(Group)
    }
}

impl From<Digest> for Group {
    fn from(digest: Digest) -> Self {
        Group(digest)
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group:{:?}", self.0)
    }
}
