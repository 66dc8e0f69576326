//! What one write invalidates: exact keys, tags (every key derived from a value), and the
//! groups whose batched reads it must keep from installing what they read before it.

use crate::schema::{CacheKey, Entity, Group, Tag};

/// A set of keys to drop from both tiers, built for one changed entity.
///
/// ```
/// # use std::time::Duration;
/// # use tiercache::{EntityPolicy, Invalidation, Schema};
/// # let mut b = Schema::builder();
/// # let product = b.entity("product", EntityPolicy::with_l2_ttl(Duration::from_secs(60)));
/// # let by_id = b.key::<i64>(product, "product:id:{}");
/// # let category = b.tag::<i64>("category");
/// // Product 7 of category 3 changed: its key, and every key tagged with its category.
/// let invalidation = Invalidation::new(product)
///     .with_key(by_id.key(7))
///     .with_tag(category.of(3));
/// assert_eq!(invalidation.keys(), [by_id.key(7)]);
/// ```
#[derive(Clone, Debug)]
pub struct Invalidation {
    pub(crate) entity: Entity,
    pub(crate) keys: Vec<CacheKey>,
    pub(crate) tags: Vec<Tag>,
    /// The groups whose epochs this bumps (see `epoch.rs`); none bumps the global one.
    pub(crate) groups: Vec<Group>,
}

impl Invalidation {
    /// An invalidation counted under `entity`, dropping nothing yet.
    pub fn new(entity: Entity) -> Self {
        Invalidation {
            entity,
            keys: Vec::new(),
            tags: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// Exactly one key (counted under its entity).
    pub fn key(key: CacheKey) -> Self {
        Invalidation::new(key.entity()).with_key(key)
    }

    /// Drops `key` too.
    pub fn with_key(mut self, key: CacheKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Drops every key of `tag` too: those whose other parts are words by enumeration,
    /// the others through the tag's index (in this instance and in Redis).
    pub fn with_tag(mut self, tag: Tag) -> Self {
        self.tags.push(tag);
        self
    }

    /// Bumps `group`'s epoch: a batched read of that group that began before this does
    /// not install what it read. Without any group, the global epoch moves instead, which
    /// every batched read checks.
    pub fn with_group(mut self, group: Group) -> Self {
        self.groups.push(group);
        self
    }

    /// The entity this invalidation is counted under.
    pub fn entity(&self) -> Entity {
        self.entity
    }

    /// The exact keys (a tag's keys are found when it runs).
    pub fn keys(&self) -> &[CacheKey] {
        &self.keys
    }

    /// The tags.
    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }
}
