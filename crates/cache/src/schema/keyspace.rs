//! [`KeySchema`]: a [`Schema`] under one namespace and one secret, writing and reading the
//! Redis form of keys, tag indexes and epochs.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::part::{Digest, PartKind, SLOTS};
use super::tag::{Group, Tag};
use super::{CacheKey, Form, Schema, Segment};
use crate::error::KeyError;

/// Renders and parses keys under one namespace (`{prefix}:{env}:v{version}:`), and makes
/// digests under one secret. Cloning is cheap.
#[derive(Clone)]
pub struct KeySchema {
    namespace: Arc<str>,
    // The MAC with the secret already absorbed: each digest costs two SHA-256 blocks.
    mac: Hmac<Sha256>,
    schema: Schema,
}

impl fmt::Debug for KeySchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySchema")
            .field("namespace", &self.namespace)
            .field("secret", &"set")
            .field("schema", &self.schema)
            .finish()
    }
}

impl KeySchema {
    /// `schema` under namespace `{prefix}:{env}:v{version}:`, digests keyed by `secret`.
    ///
    /// # Errors
    /// [`KeyError::Namespace`] when `prefix` or `env` is empty or holds anything but
    /// letters, digits, `-` and `_`.
    pub fn new(
        prefix: &str,
        env: &str,
        version: u32,
        secret: &[u8],
        schema: Schema,
    ) -> Result<Self, KeyError> {
        for part in [prefix, env] {
            if part.is_empty()
                || !part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(KeyError::Namespace);
            }
        }
        // HMAC takes a key of any length (a long one is hashed first): this cannot fail.
        #[allow(clippy::expect_used)]
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC keys may be any length");
        Ok(KeySchema {
            namespace: format!("{prefix}:{env}:v{version}:").into(),
            mac,
            schema,
        })
    }

    /// The namespace every key starts with, e.g. `tc:prod:v1:`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The declared schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The keyed digest of `text`: how text (a name, an address, a SKU) enters a key.
    pub fn digest(&self, text: &str) -> Digest {
        let mut mac = self.mac.clone();
        mac.update(text.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&tag[..16]);
        Digest(digest)
    }

    /// The group of `text` (its digest).
    pub fn group(&self, text: &str) -> Group {
        Group(self.digest(text))
    }

    /// The key as stored in Redis.
    pub fn render(&self, key: &CacheKey) -> String {
        let mut out = String::with_capacity(self.namespace.len() + 56);
        out.push_str(&self.namespace);
        match self.schema.form(key.form) {
            Some(form) => {
                write_parts(form, &key.parts, &mut out, None);
            }
            // A key of another schema: written so that it can be read, never parsed here.
            None => out.push_str(&format!("?{}", key.form)),
        }
        out
    }

    /// The key's Redis form cut around its part `hole`: what comes before and after it
    /// (a batched read builds the key in Redis with that part read from another value).
    pub(crate) fn render_around(&self, key: &CacheKey, hole: usize) -> (String, String) {
        let mut before = String::with_capacity(self.namespace.len() + 40);
        before.push_str(&self.namespace);
        let at = self
            .schema
            .form(key.form)
            .and_then(|form| write_parts(form, &key.parts, &mut before, Some(hole)));
        let after = at.map(|at| before.split_off(at)).unwrap_or_default();
        (before, after)
    }

    /// The part of `key` whose slot is `slot`, when it is an integer part.
    pub(crate) fn int_part_at(&self, key: &CacheKey, slot: usize) -> Option<usize> {
        let form = self.schema.form(key.form)?;
        let part = form.offsets.iter().position(|&at| at == slot)?;
        (form.kinds[part] == PartKind::Int).then_some(part)
    }

    /// Parses a key in its Redis form (as an operator would copy it from `redis-cli`).
    ///
    /// # Errors
    /// [`KeyError::Namespace`] for a key of another namespace, [`KeyError::Malformed`] for
    /// one no declared shape reads.
    pub fn parse(&self, text: &str) -> Result<CacheKey, KeyError> {
        let rest = text
            .strip_prefix(&*self.namespace)
            .ok_or(KeyError::Namespace)?;
        let segments: Vec<&str> = rest.split(':').collect();
        self.schema
            .forms()
            .find_map(|(id, form)| {
                read_parts(form, &segments).map(|parts| CacheKey::new(id, form.entity, parts))
            })
            .ok_or(KeyError::Malformed)
    }

    /// The Redis set listing the keys of `tag` that only an index can find:
    /// `{ns}tag:{name}:{parts}`, its first part braced as those keys' is (one slot).
    pub(crate) fn tag_index(&self, tag: &Tag) -> String {
        let mut out = String::with_capacity(self.namespace.len() + 40);
        out.push_str(&self.namespace);
        out.push_str("tag:");
        if let Some(info) = self.schema.tag_info(tag.id) {
            out.push_str(info.name);
            let mut at = 0;
            for (i, kind) in info.kinds.iter().enumerate() {
                out.push(':');
                if i == 0 {
                    out.push('{');
                }
                kind.render(&tag.parts[at..], &mut out);
                if i == 0 {
                    out.push('}');
                }
                at += kind.slots();
            }
        }
        out
    }

    /// The tag whose index `text` is, if it is one of this schema's.
    pub(crate) fn parse_tag_index(&self, text: &str) -> Option<Tag> {
        let rest = text.strip_prefix(&*self.namespace)?.strip_prefix("tag:")?;
        let mut segments = rest.split(':');
        let (id, info) = self.schema.tag_named(segments.next()?)?;
        let mut parts = [0; SLOTS];
        let mut at = 0;
        for (i, kind) in info.kinds.iter().enumerate() {
            let segment = segments.next()?;
            let segment = if i == 0 {
                segment.strip_prefix('{')?.strip_suffix('}')?
            } else {
                segment
            };
            kind.parse(segment, &mut parts[at..])?;
            at += kind.slots();
        }
        segments.next().is_none().then_some(Tag { id, parts })
    }

    /// The Redis invalidation epoch of `group` (`None`: of everything), which invalidations
    /// bump and batched installs check (see `epoch.rs`).
    pub(crate) fn epoch_key(&self, group: Option<&Group>) -> String {
        match group {
            Some(group) => format!("{}{EPOCH}{}", self.namespace, group.to_hex()),
            None => format!("{}{EPOCH}all", self.namespace),
        }
    }

    /// Whether `key` is one this cache writes to Redis: a value of a declared shape, a tag's
    /// index, or an epoch (not the bus stream, nor what other parts of a service keep under
    /// the namespace).
    pub(crate) fn owns(&self, key: &str) -> bool {
        self.parse(key).is_ok()
            || self.parse_tag_index(key).is_some()
            || key
                .strip_prefix(&*self.namespace)
                .is_some_and(|rest| rest.starts_with(EPOCH))
    }
}

/// What an epoch key starts with after the namespace.
const EPOCH: &str = "epoch:";

/// Writes `form`'s segments with `parts`; with a `hole`, that part is left out and its
/// place in `out` returned.
fn write_parts(
    form: &Form,
    parts: &[u64; SLOTS],
    out: &mut String,
    hole: Option<usize>,
) -> Option<usize> {
    let mut at = None;
    for (i, segment) in form.segments.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        match *segment {
            Segment::Literal(text) => out.push_str(text),
            Segment::Part(p) => {
                let braced = form.braced && p == 0;
                if braced {
                    out.push('{');
                }
                if hole == Some(p) {
                    at = Some(out.len());
                } else {
                    form.kinds[p].render(&parts[form.offsets[p]..], out);
                }
                if braced {
                    out.push('}');
                }
            }
        }
    }
    at
}

/// The parts of a key of `form` written as `segments`, if it is one.
fn read_parts(form: &Form, segments: &[&str]) -> Option<[u64; SLOTS]> {
    if segments.len() != form.segments.len() {
        return None;
    }
    let mut parts = [0; SLOTS];
    for (segment, text) in form.segments.iter().zip(segments) {
        match *segment {
            Segment::Literal(literal) => {
                if literal != *text {
                    return None;
                }
            }
            Segment::Part(p) => {
                let text = if form.braced && p == 0 {
                    text.strip_prefix('{')?.strip_suffix('}')?
                } else {
                    text
                };
                form.kinds[p].parse(text, &mut parts[form.offsets[p]..])?;
            }
        }
    }
    Some(parts)
}
