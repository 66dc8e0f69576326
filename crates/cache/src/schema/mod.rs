//! The key schema a service declares: its entities (each with a TTL policy), the shapes of
//! their keys, and the tags that group derived keys for invalidation.
//!
//! ```
//! use std::time::Duration;
//! use tiercache::{Digest, EntityPolicy, KeyDef, Schema, TagDef};
//!
//! let mut schema = Schema::builder();
//! let product = schema.entity("product", EntityPolicy::with_l2_ttl(Duration::from_secs(900)));
//! let by_id: KeyDef<i64> = schema.key(product, "product:id:{}");
//! let by_sku: KeyDef<Digest> = schema.key(product, "product:sku:{}");
//! let listing = schema.entity("listing", EntityPolicy::with_l2_ttl(Duration::from_secs(300)));
//! let page: KeyDef<(i64, u32)> = schema.key(listing, "listing:{}:{}");
//! let category: TagDef<i64> = schema.tag("category");
//! schema.tagged(page, category);
//! let schema = schema.build()?;
//! assert_eq!(schema.entities().count(), 2);
//! # Ok::<(), tiercache::SchemaError>(())
//! ```
//!
//! A template is `:`-separated segments, each a literal name or `{}` for the next part.
//! Keys are small `Copy` values; only their Redis form, `{namespace}{template with the
//! parts}`, is text. Text enters a key only as a [`Digest`].

mod entity;
mod key;
mod keyspace;
mod part;
mod tag;

use std::sync::Arc;

pub use entity::Entity;
pub use key::{CacheKey, KeyDef};
pub use keyspace::KeySchema;
pub use part::{Digest, KeyPart, KeyParts, KeyWord, PartKind};
pub use tag::{Group, Tag, TagDef};

use crate::error::SchemaError;
use crate::policy::EntityPolicy;
use part::SLOTS;

/// First segments the engine's own keys use.
const RESERVED: [&str; 3] = ["tag", "epoch", "bus"];

/// The declared entities, key shapes and tags; cheap to clone (shared).
#[derive(Clone)]
pub struct Schema {
    inner: Arc<Declared>,
}

struct Declared {
    entities: Vec<(Entity, EntityPolicy)>,
    forms: Vec<Form>,
    tags: Vec<TagInfo>,
}

/// One key shape as the engine uses it.
pub(crate) struct Form {
    entity: Entity,
    segments: Vec<Segment>,
    kinds: Vec<PartKind>,
    /// Where each part's slots start.
    offsets: Vec<usize>,
    /// The tags it joined, with how many slots the tag's parts take.
    tags: Vec<(u16, usize)>,
    /// Its first part is written in braces (a Redis Cluster hash tag), so its keys share a
    /// slot with the index of a tag they are listed in.
    braced: bool,
    /// A batched read may follow its values (see `batch.rs`): sealed, they show their id.
    followable: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Segment {
    Literal(&'static str),
    Part(usize),
}

/// One tag as the engine uses it.
pub(crate) struct TagInfo {
    name: &'static str,
    kinds: Vec<PartKind>,
    /// Keys of the tag whose other parts are all words: enumerated on invalidation.
    enumerated: Vec<u16>,
    /// Keys of the tag with other parts: listed in an index as they are loaded.
    indexed: Vec<u16>,
}

impl Schema {
    /// A builder with nothing declared.
    pub fn builder() -> SchemaBuilder {
        SchemaBuilder::default()
    }

    /// A schema with nothing declared (a cache for keys made elsewhere has no use for one).
    pub fn empty() -> Self {
        Schema {
            inner: Arc::new(Declared {
                entities: Vec::new(),
                forms: Vec::new(),
                tags: Vec::new(),
            }),
        }
    }

    /// Every declared entity, in declaration order (the order of [`Entity::index`]).
    pub fn entities(&self) -> impl ExactSizeIterator<Item = Entity> + '_ {
        self.inner.entities.iter().map(|(e, _)| *e)
    }

    /// The entity declared as `name`.
    pub fn entity(&self, name: &str) -> Option<Entity> {
        self.entities().find(|e| e.as_str() == name)
    }

    /// The policy `entity` was declared with.
    pub fn policy(&self, entity: Entity) -> Option<&EntityPolicy> {
        self.inner.entities.get(entity.index()).map(|(_, p)| p)
    }

    pub(crate) fn form(&self, form: u16) -> Option<&Form> {
        self.inner.forms.get(usize::from(form))
    }

    fn forms(&self) -> impl Iterator<Item = (u16, &Form)> {
        (0u16..).zip(&self.inner.forms)
    }

    pub(crate) fn tag_info(&self, id: u16) -> Option<&TagInfo> {
        self.inner.tags.get(usize::from(id))
    }

    fn tag_named(&self, name: &str) -> Option<(u16, &TagInfo)> {
        (0u16..).zip(&self.inner.tags).find(|(_, t)| t.name == name)
    }

    /// The tags `key` is listed in an index of (its shape's tags that do not enumerate it).
    pub(crate) fn indexed_tags(&self, key: &CacheKey) -> impl Iterator<Item = Tag> + '_ {
        let key = *key;
        let form = self.form(key.form);
        form.into_iter().flat_map(move |form| {
            form.tags.iter().filter_map(move |&(id, slots)| {
                let info = self.tag_info(id)?;
                info.indexed.contains(&key.form).then(|| {
                    let mut parts = [0; SLOTS];
                    parts[..slots].copy_from_slice(&key.parts[..slots]);
                    Tag { id, parts }
                })
            })
        })
    }

    /// The keys of `tag` that need no index: its shapes whose other parts are words, with
    /// every word.
    pub(crate) fn enumerate(&self, tag: &Tag, out: &mut Vec<CacheKey>) {
        let Some(info) = self.tag_info(tag.id) else {
            return;
        };
        let tag_slots: usize = info.kinds.iter().map(|k| k.slots()).sum();
        for &id in &info.enumerated {
            let Some(form) = self.form(id) else { continue };
            let mut parts = [0; SLOTS];
            parts[..tag_slots].copy_from_slice(&tag.parts[..tag_slots]);
            // Every combination of the remaining parts' words, as an odometer.
            let rest: Vec<(usize, usize)> = form
                .kinds
                .iter()
                .zip(&form.offsets)
                .skip(info.kinds.len())
                .map(|(kind, &at)| match kind {
                    PartKind::Word(words) => (at, words.len()),
                    _ => (at, 1),
                })
                .collect();
            if rest.iter().any(|&(_, n)| n == 0) {
                continue;
            }
            let mut digits = vec![0usize; rest.len()];
            loop {
                for (&(at, _), &d) in rest.iter().zip(&digits) {
                    parts[at] = d as u64;
                }
                out.push(CacheKey::new(id, form.entity, parts));
                let mut i = 0;
                while i < digits.len() {
                    digits[i] += 1;
                    if digits[i] < rest[i].1 {
                        break;
                    }
                    digits[i] = 0;
                    i += 1;
                }
                if i == digits.len() {
                    break;
                }
            }
        }
    }

    /// Whether a batched read may follow the values at `key` (see `batch.rs`).
    pub(crate) fn followable(&self, key: &CacheKey) -> bool {
        self.form(key.form).is_some_and(|f| f.followable)
    }

    /// Whether `tag` has keys that only an index can find.
    pub(crate) fn has_index(&self, tag: &Tag) -> bool {
        self.tag_info(tag.id).is_some_and(|t| !t.indexed.is_empty())
    }
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("entities", &self.entities().collect::<Vec<_>>())
            .field("keys", &self.inner.forms.len())
            .field("tags", &self.inner.tags.len())
            .finish()
    }
}

/// Declares a [`Schema`]; problems are collected and reported together by
/// [`build`](Self::build).
#[derive(Default)]
pub struct SchemaBuilder {
    entities: Vec<(Entity, EntityPolicy)>,
    forms: Vec<(Entity, &'static str, &'static [PartKind])>,
    tags: Vec<(&'static str, &'static [PartKind])>,
    joins: Vec<(u16, u16)>,
    followed: Vec<u16>,
    problems: Vec<String>,
}

impl SchemaBuilder {
    /// Declares an entity: `name` (letters, digits, `_`) labels its metrics, and `policy`
    /// sets its TTLs (a service's configuration may override it).
    pub fn entity(&mut self, name: &'static str, policy: EntityPolicy) -> Entity {
        if !is_name(name, false) {
            self.problems.push(format!(
                "entity {name:?}: use lowercase letters, digits and _"
            ));
        }
        if self.entities.iter().any(|(e, _)| e.as_str() == name) {
            self.problems
                .push(format!("entity {name:?}: declared twice"));
        }
        let index = u16::try_from(self.entities.len()).unwrap_or(u16::MAX);
        let entity = Entity::new(index, name);
        self.entities.push((entity, policy));
        entity
    }

    /// Declares a shape of `entity`'s keys: `template` is `:`-separated segments, each a
    /// literal (letters, digits, `_`, `-`) or `{}` for the next of the parts `P`.
    pub fn key<P: KeyParts>(&mut self, entity: Entity, template: &'static str) -> KeyDef<P> {
        let index = u16::try_from(self.forms.len()).unwrap_or(u16::MAX);
        self.forms.push((entity, template, P::KINDS));
        KeyDef::new(index, entity)
    }

    /// Declares a tag with parts `P`: `name` (letters, digits, `_`) appears in its index's
    /// Redis key.
    pub fn tag<P: KeyParts>(&mut self, name: &'static str) -> TagDef<P> {
        if !is_name(name, false) {
            self.problems
                .push(format!("tag {name:?}: use lowercase letters, digits and _"));
        }
        if self.tags.iter().any(|(n, _)| *n == name) {
            self.problems.push(format!("tag {name:?}: declared twice"));
        }
        let id = u16::try_from(self.tags.len()).unwrap_or(u16::MAX);
        self.tags.push((name, P::KINDS));
        TagDef::new(id)
    }

    /// Puts every key of `key`'s shape in `tag`: the tag's parts must be the key's first
    /// parts. An invalidation of the tag then reaches these keys, enumerated when their
    /// other parts are words, else through an index kept as they are loaded.
    pub fn tagged<P: KeyParts, Q: KeyParts>(&mut self, key: KeyDef<P>, tag: TagDef<Q>) {
        if !P::KINDS.starts_with(Q::KINDS) {
            self.problems.push(format!(
                "tag #{} on key #{}: the tag's parts must be the key's first parts",
                tag.id, key.form
            ));
        }
        self.joins.push((key.form, tag.id));
    }

    /// Lets a batched read follow the values at `key`'s keys to build its next keys: their
    /// type's id must be its first field (see [`Identified`](crate::Identified)), and when
    /// values are sealed this id stays readable (the value itself does not).
    pub fn followable<P: KeyParts>(&mut self, key: KeyDef<P>) {
        self.followed.push(key.form);
    }

    /// The schema, or every problem found.
    ///
    /// # Errors
    /// [`SchemaError`] listing each bad name, template or tag.
    pub fn build(self) -> Result<Schema, SchemaError> {
        let SchemaBuilder {
            entities,
            forms,
            tags,
            joins,
            followed,
            mut problems,
        } = self;
        let mut built: Vec<Form> = Vec::with_capacity(forms.len());
        for (entity, template, kinds) in forms {
            match form_of(entity, template, kinds) {
                Ok(form) => {
                    if built.iter().any(|f| f.segments == form.segments) {
                        problems.push(format!("key {template:?}: declared twice"));
                    } else if built.iter().any(|f| ambiguous(f, &form)) {
                        problems.push(format!(
                            "key {template:?}: reads the same as another key's shape"
                        ));
                    }
                    built.push(form);
                }
                Err(problem) => problems.push(format!("key {template:?}: {problem}")),
            }
        }
        let mut infos: Vec<TagInfo> = tags
            .iter()
            .map(|(name, kinds)| TagInfo {
                name,
                kinds: kinds.to_vec(),
                enumerated: Vec::new(),
                indexed: Vec::new(),
            })
            .collect();
        for (form_id, tag_id) in joins {
            let (Some(form), Some(info)) = (
                built.get_mut(usize::from(form_id)),
                infos.get_mut(usize::from(tag_id)),
            ) else {
                continue;
            };
            let slots: usize = info.kinds.iter().map(|k| k.slots()).sum();
            let words_only = form.kinds[info.kinds.len().min(form.kinds.len())..]
                .iter()
                .all(|k| matches!(k, PartKind::Word(_)));
            if words_only {
                info.enumerated.push(form_id);
            } else {
                info.indexed.push(form_id);
                form.braced = true;
            }
            form.tags.push((tag_id, slots));
        }
        for id in followed {
            if let Some(form) = built.get_mut(usize::from(id)) {
                form.followable = true;
            }
        }
        if !problems.is_empty() {
            return Err(SchemaError { problems });
        }
        Ok(Schema {
            inner: Arc::new(Declared {
                entities,
                forms: built,
                tags: infos,
            }),
        })
    }
}

/// A shape from its template, or why the template is refused.
fn form_of(entity: Entity, template: &'static str, kinds: &[PartKind]) -> Result<Form, String> {
    let mut segments = Vec::new();
    let mut next = 0;
    for (i, segment) in template.split(':').enumerate() {
        if segment == "{}" {
            if i == 0 {
                return Err("must start with a literal name".to_owned());
            }
            segments.push(Segment::Part(next));
            next += 1;
        } else if is_name(segment, true) {
            if i == 0 && RESERVED.contains(&segment) {
                return Err(format!("{segment:?} is the engine's own"));
            }
            segments.push(Segment::Literal(segment));
        } else {
            return Err(format!("segment {segment:?} is neither a name nor {{}}"));
        }
    }
    if next != kinds.len() {
        return Err(format!("has {next} {{}} for {} typed parts", kinds.len()));
    }
    let mut offsets = Vec::with_capacity(kinds.len());
    let mut at = 0;
    for kind in kinds {
        offsets.push(at);
        at += kind.slots();
        if let PartKind::Word(words) = kind
            && (words.is_empty() || words.iter().any(|w| !is_name(w, true)))
        {
            return Err(format!("bad words {words:?}"));
        }
    }
    if at > SLOTS {
        return Err(format!(
            "its parts take {at} slots; at most {SLOTS} (a digest takes two)"
        ));
    }
    Ok(Form {
        entity,
        segments,
        kinds: kinds.to_vec(),
        offsets,
        tags: Vec::new(),
        braced: false,
        followable: false,
    })
}

/// Whether some text could parse as a key of both shapes.
fn ambiguous(a: &Form, b: &Form) -> bool {
    a.segments.len() == b.segments.len()
        && a.segments.iter().zip(&b.segments).all(|pair| match pair {
            (Segment::Literal(x), Segment::Literal(y)) => x == y,
            _ => true,
        })
}

/// Lowercase letters, digits and `_` (and `-` in key segments); not empty.
fn is_name(text: &str, dash: bool) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || (dash && b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::KeyError;
    use crate::test_schema::{Size, keys};

    fn namespaced() -> KeySchema {
        KeySchema::new("tc", "t", 1, b"0123456789abcdef", keys().schema.clone()).unwrap()
    }

    #[test]
    fn keys_render_under_the_namespace_and_parse_back() {
        let (k, s) = (keys(), namespaced());
        let name = s.digest("+16462000042");
        assert_eq!(s.render(&k.by_id.key(-42)), "tc:t:v1:item:id:-42");
        assert_eq!(
            s.render(&k.sized.key((7, Size::Large))),
            "tc:t:v1:view:7:large"
        );
        // Indexed by its tag: the tag's part is a hash tag, as in the tag's index.
        assert_eq!(s.render(&k.page.key((7, 20))), "tc:t:v1:page:{7}:20");
        assert_eq!(s.tag_index(&k.owner.of(7)), "tc:t:v1:tag:item:{7}");
        let by_name = s.render(&k.by_name.key((name, 3)));
        assert_eq!(by_name, format!("tc:t:v1:item:name:{}:3", name.to_hex()));
        assert!(
            !by_name.contains("6462000042"),
            "text enters a key as a digest"
        );
        for key in [
            k.by_id.key(1),
            k.by_name.key((name, 9)),
            k.sized.key((3, Size::Small)),
            k.page.key((4, 100)),
        ] {
            assert_eq!(s.parse(&s.render(&key)).unwrap(), key);
        }
        assert_eq!(
            s.parse_tag_index(&s.tag_index(&k.owner.of(7))),
            Some(k.owner.of(7))
        );
        assert_eq!(s.parse_tag_index("tc:t:v1:tag:item:7"), None);
        assert_eq!(k.page.parts(&k.page.key((4, 100))), Some((4, 100)));
        assert_eq!(k.by_id.parts(&k.page.key((4, 100))), None);
    }

    #[test]
    fn the_cache_owns_its_values_tag_indexes_and_epochs_and_nothing_else() {
        let (k, s) = (keys(), namespaced());
        for owned in [
            s.render(&k.by_id.key(1)),
            s.render(&k.page.key((7, 20))),
            s.tag_index(&k.owner.of(7)),
            s.epoch_key(None),
            s.epoch_key(Some(&s.group("one"))),
        ] {
            assert!(s.owns(&owned), "{owned}");
        }
        for other in [
            "tc:t:v1:bus:stream",
            "tc:t:v1:calls:42:20261207",
            "tc:t:v1:item:id:x",
            "other:t:v1:item:id:1",
            "other:t:v1:epoch:all",
        ] {
            assert!(!s.owns(other), "{other}");
        }
    }

    #[test]
    fn bad_keys_are_typed_errors() {
        let s = namespaced();
        assert_eq!(
            s.parse("other:ns:v1:item:id:1").unwrap_err(),
            KeyError::Namespace
        );
        assert_eq!(
            s.parse("tc:t:v1:item:id:x").unwrap_err(),
            KeyError::Malformed
        );
        assert_eq!(
            s.parse("tc:t:v1:view:1:medium").unwrap_err(),
            KeyError::Malformed
        );
        assert_eq!(
            s.parse("tc:t:v1:item:name:zz:1").unwrap_err(),
            KeyError::Malformed
        );
        assert_eq!(
            s.parse("tc:t:v1:page:7:20").unwrap_err(),
            KeyError::Malformed
        );
        assert!(KeySchema::new("t c", "x", 1, b"secret", Schema::empty()).is_err());
        assert!(KeySchema::new("tc", "", 1, b"secret", Schema::empty()).is_err());
    }

    #[test]
    fn a_tag_enumerates_its_word_keys_and_indexes_the_others() {
        let (k, s) = (keys(), namespaced());
        let tag = k.owner.of(7);
        let mut out = Vec::new();
        s.schema().enumerate(&tag, &mut out);
        assert_eq!(
            out,
            [k.sized.key((7, Size::Small)), k.sized.key((7, Size::Large))]
        );
        assert!(s.schema().has_index(&tag));
        let indexed: Vec<Tag> = s.schema().indexed_tags(&k.page.key((7, 20))).collect();
        assert_eq!(indexed, [tag]);
        assert_eq!(
            s.schema()
                .indexed_tags(&k.sized.key((7, Size::Small)))
                .count(),
            0
        );
    }

    #[test]
    fn every_bad_declaration_is_reported_at_once() {
        let mut b = Schema::builder();
        let ttl = EntityPolicy::with_l2_ttl(Duration::from_secs(60));
        let e = b.entity("Bad Name", ttl);
        b.entity("ok", ttl);
        b.entity("ok", ttl);
        b.key::<i64>(e, "x:{}:{}");
        b.key::<i64>(e, "{}");
        b.key::<i64>(e, "epoch:{}");
        b.key::<(Digest, Digest, i64)>(e, "big:{}:{}:{}");
        b.key::<i64>(e, "same:{}");
        b.key::<u32>(e, "same:{}");
        b.key::<i64>(e, "amb:{}:x");
        b.key::<i64>(e, "amb:y:{}");
        let key = b.key::<(i64, u32)>(e, "page:{}:{}");
        let tag = b.tag::<u32>("t");
        b.tagged(key, tag);
        let problems = b.build().unwrap_err().problems;
        for expected in [
            "entity \"Bad Name\"",
            "entity \"ok\": declared twice",
            "key \"x:{}:{}\": has 2 {} for 1 typed parts",
            "key \"{}\": must start",
            "key \"epoch:{}\": \"epoch\" is the engine's own",
            "key \"big:{}:{}:{}\": its parts take 5 slots",
            "key \"same:{}\": declared twice",
            "key \"amb:y:{}\": reads the same",
            "the tag's parts must be the key's first parts",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected}: {problems:?}"
            );
        }
    }
}
