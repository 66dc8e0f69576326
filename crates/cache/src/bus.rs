//! The invalidation bus: how instances hear of each other's invalidations.
//!
//! Each invalidation is appended to a capped Redis stream (`XADD … MAXLEN ~`, which expires
//! a day after an instance last renewed it: [`STREAM_TTL_MS`], renewed by each instance's
//! first message and then at most hourly) and announced
//! on a pub/sub channel with its stream id, in one Lua call. Every instance subscribes on a
//! connection of its own (outside the pool), removes what it hears from its L1 (under each
//! key's lock, like a local invalidation), and ignores its own messages.
//!
//! # When Redis fails
//!
//! - A publish that fails is owed (kept, bounded) and published when Redis answers again;
//!   past the bound, one "flush everything" message is owed instead.
//! - A subscriber that was disconnected catches up from the stream from the last id it saw.
//!   When that id has been trimmed away, or the stream is gone (expired, or a Redis that
//!   restarted empty), it cannot know what it missed: it flushes its L1 and counts it.
//! - Until then, an instance's L1 TTL bounds how stale it can be.
//!
//! The bus is owned by the cache: the listener task holds only a `Weak` and is aborted when
//! the cache is dropped.

use std::time::Duration;

use crate::schema::{CacheKey, Entity, Group, KeySchema, Schema, Tag};

/// Stream entries kept (approximately: Redis trims whole nodes).
pub const STREAM_MAXLEN: u64 = 10_000;

/// How long, in ms, the stream outlives its last renewal (a day; instances that publish renew
/// it hourly): a namespace no longer in use
/// (an old schema version, a test's) leaves nothing behind, and a subscriber away for longer
/// finds the stream gone or restarted, which is a gap (it flushes its L1), as after a Redis
/// restart.
pub const STREAM_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// A stream entry id (`ms-seq`), ordered as Redis orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamId(u64, u64);

impl StreamId {
    /// The id before every id.
    pub const ZERO: StreamId = StreamId(0, 0);

    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }

    pub fn render(self) -> String {
        format!("{}-{}", self.0, self.1)
    }
}

/// What one invalidation tells the other instances.
///
/// Encoded as `{instance} {sent_ms} {groups or -} {entity=name} {keys…}`, or `… *` for
/// everything. Keys hold no spaces; a tag's index among them stands for every key of that
/// tag (each instance also drops the keys it indexed itself, see `tag_index.rs`). A token that is not a key of this schema is skipped, so an instance
/// running an older build reads what it knows of a newer message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BusMessage {
    /// Who sent it (a random id per cache).
    pub instance: u64,
    /// When, in Unix milliseconds (for the lag metric).
    pub sent_ms: u64,
    /// The entity that changed (what the receivers count it under).
    pub entity: Option<Entity>,
    /// Group epochs to bump.
    pub groups: Vec<Group>,
    /// Keys to drop, in their Redis form; empty with `all`.
    pub keys: Vec<String>,
    /// Drop everything.
    pub all: bool,
}

/// What the entity's token starts with among a message's keys.
const ENTITY_TOKEN: &str = "entity=";

impl BusMessage {
    /// "Drop everything", from `instance`, now.
    pub fn flush_all(instance: u64) -> Self {
        BusMessage {
            instance,
            sent_ms: crate::clock::unix_millis(),
            entity: None,
            groups: Vec::new(),
            keys: Vec::new(),
            all: true,
        }
    }

    /// `{instance} {sent_ms} {groups or -} {keys or *}`: keys hold no spaces.
    pub fn encode(&self) -> String {
        let groups = if self.groups.is_empty() {
            "-".to_owned()
        } else {
            self.groups
                .iter()
                .map(Group::to_hex)
                .collect::<Vec<_>>()
                .join(",")
        };
        let keys = if self.all {
            "*".to_owned()
        } else {
            let entity = self.entity.map(|e| format!("{ENTITY_TOKEN}{e}"));
            entity
                .iter()
                .chain(&self.keys)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!("{:x} {} {groups} {keys}", self.instance, self.sent_ms)
    }

    /// The instance that sent `text`, read without decoding the rest (an instance skips
    /// its own messages, every one it publishes, before paying for their keys).
    pub fn sender(text: &str) -> Option<u64> {
        u64::from_str_radix(text.split(' ').next()?, 16).ok()
    }

    /// Parses what [`encode`](Self::encode) wrote; `None` for anything else. An entity
    /// `schema` does not declare is left out (the keys still count).
    pub fn decode(text: &str, schema: &Schema) -> Option<Self> {
        let mut parts = text.splitn(4, ' ');
        let instance = u64::from_str_radix(parts.next()?, 16).ok()?;
        let sent_ms = parts.next()?.parse().ok()?;
        let groups = match parts.next()? {
            "-" => Vec::new(),
            list => list
                .split(',')
                .map(Group::from_hex)
                .collect::<Option<Vec<_>>>()?,
        };
        let rest = parts.next().unwrap_or("");
        let all = rest == "*";
        let mut entity = None;
        let mut keys = Vec::new();
        if !all {
            for token in rest.split(' ').filter(|k| !k.is_empty()) {
                match token.strip_prefix(ENTITY_TOKEN) {
                    Some(name) => entity = schema.entity(name),
                    None => keys.push(token.to_owned()),
                }
            }
        }
        Some(BusMessage {
            instance,
            sent_ms,
            entity,
            groups,
            keys,
            all,
        })
    }

    /// The keys this instance's schema recognizes.
    pub fn cache_keys(&self, schema: &KeySchema) -> Vec<CacheKey> {
        self.keys
            .iter()
            .filter_map(|k| schema.parse(k).ok())
            .collect()
    }

    /// The tags whose keys (every one) the message drops: those whose index is among its
    /// keys.
    pub fn tags<'a>(&'a self, schema: &'a KeySchema) -> impl Iterator<Item = Tag> + 'a {
        self.keys.iter().filter_map(|k| schema.parse_tag_index(k))
    }
}

/// Backoff between reconnection attempts of the subscriber.
pub(crate) const RECONNECT_MIN: Duration = Duration::from_millis(100);
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let k = crate::test_schema::keys();
        let schema = KeySchema::new("tc", "t", 1, b"0123456789abcdef", k.schema.clone()).unwrap();
        let name = schema.digest("+16462000001");
        let message = BusMessage {
            instance: 0xdead_beef,
            sent_ms: 1_700_000_000_000,
            entity: Some(k.item),
            groups: vec![Group::from(name), schema.group("+18005550001")],
            keys: vec![
                schema.render(&k.by_id.key(1)),
                schema.render(&k.by_name.key((name, 1))),
                schema.tag_index(&k.owner.of(1)),
            ],
            all: false,
        };
        let decoded = BusMessage::decode(&message.encode(), &k.schema).unwrap();
        assert_eq!(decoded, message);
        assert_eq!(BusMessage::sender(&message.encode()), Some(0xdead_beef));
        assert_eq!(BusMessage::sender("garbage"), None);
        assert_eq!(
            decoded.cache_keys(&schema),
            [k.by_id.key(1), k.by_name.key((name, 1))]
        );
        assert_eq!(decoded.tags(&schema).collect::<Vec<_>>(), [k.owner.of(1)]);
        // An older sender's message, with no entity token: the keys still count.
        let older = decoded.encode().replace(" entity=item", "");
        let older = BusMessage::decode(&older, &k.schema).unwrap();
        assert_eq!((older.entity, older.keys.len()), (None, 3));
        let all = BusMessage {
            entity: None,
            groups: Vec::new(),
            keys: Vec::new(),
            all: true,
            ..message
        };
        assert_eq!(BusMessage::decode(&all.encode(), &k.schema).unwrap(), all);
        assert_eq!(BusMessage::decode("garbage", &k.schema), None);
    }

    #[test]
    fn stream_ids_order_as_redis_does() {
        let a = StreamId::parse("1700000000000-0").unwrap();
        let b = StreamId::parse("1700000000000-1").unwrap();
        let c = StreamId::parse("1700000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.render(), "1700000000000-0");
        assert_eq!(StreamId::parse("x"), None);
    }
}
