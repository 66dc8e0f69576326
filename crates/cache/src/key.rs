//! The key schema: namespaced, typed cache keys, with phone numbers as keyed hashes.
//!
//! A [`CacheKey`] is a small `Copy` value (the L1 key, hashed without allocating); its
//! Redis form `{prefix}:{env}:v{schema}:{entity key}` is rendered only on the way to L2.
//! Phone numbers enter a key only as the first 128 bits of HMAC-SHA256 under a secret
//! from config, so neither Redis nor a log line holds a caller's number in clear.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::KeyError;
use crate::observer::Entity;

/// The channel a greeting is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A phone call.
    Voice,
    /// A text message.
    Sms,
    /// A web chat.
    Web,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Channel; 3] = [Channel::Voice, Channel::Sms, Channel::Web];

    /// The channel's name in keys and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Voice => "voice",
            Channel::Sms => "sms",
            Channel::Web => "web",
        }
    }
}

impl FromStr for Channel {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "voice" => Ok(Channel::Voice),
            "sms" => Ok(Channel::Sms),
            "web" => Ok(Channel::Web),
            _ => Err(KeyError::Channel),
        }
    }
}

/// A phone number's keyed hash (truncated HMAC-SHA256), the only form a phone takes in a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PhoneDigest([u8; 16]);

impl PhoneDigest {
    /// The digest as it appears in keys (32 hex digits).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`to_hex`](Self::to_hex)'s output.
    pub fn from_hex(text: &str) -> Option<Self> {
        parse_digest(text).ok()
    }
}

impl fmt::Debug for PhoneDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(&self.0[..4]))
    }
}

/// What a key points at; only [`KeySchema`] builds one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum KeyKind {
    LeadByPhone {
        phone: PhoneDigest,
        org_id: i64,
    },
    LeadById(i64),
    OrgByPhone(PhoneDigest),
    Context(i64),
    Summary(i64),
    Greeting(i64, Channel),
    History {
        lead_id: i64,
        limit: u32,
        offset: u32,
    },
}

/// A cache key: which entity, which instance of it. Cheap to copy and to hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(KeyKind);

impl CacheKey {
    /// The entity this key caches.
    pub fn entity(&self) -> Entity {
        match self.0 {
            KeyKind::LeadByPhone { .. } | KeyKind::LeadById(_) => Entity::Lead,
            KeyKind::OrgByPhone(_) => Entity::Org,
            KeyKind::Context(_) => Entity::Context,
            KeyKind::Summary(_) => Entity::Summary,
            KeyKind::Greeting(..) => Entity::Greeting,
            KeyKind::History { .. } => Entity::History,
        }
    }

    /// Whether the call script reads an id from this key's value to build the next key
    /// (see `call.rs`): a sealed value shows it in the clear.
    pub(crate) fn followed_by_call(&self) -> bool {
        matches!(self.0, KeyKind::OrgByPhone(_) | KeyKind::LeadByPhone { .. })
    }

    /// For a history page key, the lead and the page's (limit, offset).
    pub(crate) fn history_page(&self) -> Option<(i64, u32, u32)> {
        match self.0 {
            KeyKind::History {
                lead_id,
                limit,
                offset,
            } => Some((lead_id, limit, offset)),
            _ => None,
        }
    }

    /// The key's text after the namespace, e.g. `lead:id:42`.
    fn write_suffix(&self, out: &mut String) {
        use fmt::Write;
        // Writing into a String cannot fail.
        let _ = match self.0 {
            KeyKind::LeadByPhone { phone, org_id } => {
                write!(out, "lead:phone:{}:{org_id}", hex::encode(phone.0))
            }
            KeyKind::LeadById(id) => write!(out, "lead:id:{id}"),
            KeyKind::OrgByPhone(phone) => write!(out, "org:phone:{}", hex::encode(phone.0)),
            KeyKind::Context(id) => write!(out, "context:{id}"),
            KeyKind::Summary(id) => write!(out, "summary:{id}"),
            KeyKind::Greeting(id, channel) => write!(out, "greeting:{id}:{}", channel.as_str()),
            KeyKind::History {
                lead_id,
                limit,
                offset,
            } => write!(out, "history:{lead_id}:{limit}:{offset}"),
        };
    }
}

impl fmt::Debug for CacheKey {
    /// Prints the key without its namespace; phone digests are shortened to 8 hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            KeyKind::LeadByPhone { phone, org_id } => write!(f, "lead:phone:{phone:?}:{org_id}"),
            KeyKind::OrgByPhone(phone) => write!(f, "org:phone:{phone:?}"),
            _ => {
                let mut s = String::new();
                self.write_suffix(&mut s);
                f.write_str(&s)
            }
        }
    }
}

/// Builds and renders keys under one namespace with one HMAC secret.
///
/// Cloning is cheap (the namespace and the keyed MAC state are shared).
#[derive(Clone)]
pub struct KeySchema {
    namespace: Arc<str>,
    // The MAC with the secret already absorbed: each phone costs two SHA-256 blocks.
    mac: Hmac<Sha256>,
}

impl fmt::Debug for KeySchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySchema")
            .field("namespace", &self.namespace)
            .field("secret", &"set")
            .finish()
    }
}

impl KeySchema {
    /// A schema for namespace `{prefix}:{env}:v{schema}:` keyed by `secret`.
    pub fn new(prefix: &str, env: &str, schema: u32, secret: &[u8]) -> Result<Self, KeyError> {
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
            namespace: format!("{prefix}:{env}:v{schema}:").into(),
            mac,
        })
    }

    /// The namespace every key starts with, e.g. `tc:prod:v1:`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The keyed hash of a phone number (expected already normalized to E.164).
    pub fn phone_digest(&self, phone: &str) -> PhoneDigest {
        let mut mac = self.mac.clone();
        mac.update(phone.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&tag[..16]);
        PhoneDigest(digest)
    }

    /// `lead:phone:{phone}:{org_id}`.
    pub fn lead_by_phone(&self, phone: &str, org_id: i64) -> CacheKey {
        CacheKey(KeyKind::LeadByPhone {
            phone: self.phone_digest(phone),
            org_id,
        })
    }

    /// `lead:id:{lead_id}`.
    pub fn lead_by_id(&self, lead_id: i64) -> CacheKey {
        CacheKey(KeyKind::LeadById(lead_id))
    }

    /// `org:phone:{phone}`.
    pub fn org_by_phone(&self, phone: &str) -> CacheKey {
        CacheKey(KeyKind::OrgByPhone(self.phone_digest(phone)))
    }

    /// `org:phone:{phone}` from an already computed digest.
    pub fn org_by_phone_digest(&self, phone: PhoneDigest) -> CacheKey {
        CacheKey(KeyKind::OrgByPhone(phone))
    }

    /// `context:{lead_id}`.
    pub fn context(&self, lead_id: i64) -> CacheKey {
        CacheKey(KeyKind::Context(lead_id))
    }

    /// `summary:{lead_id}`.
    pub fn summary(&self, lead_id: i64) -> CacheKey {
        CacheKey(KeyKind::Summary(lead_id))
    }

    /// `greeting:{lead_id}:{channel}`.
    pub fn greeting(&self, lead_id: i64, channel: Channel) -> CacheKey {
        CacheKey(KeyKind::Greeting(lead_id, channel))
    }

    /// `history:{lead_id}:{limit}:{offset}`.
    pub fn history(&self, lead_id: i64, limit: u32, offset: u32) -> CacheKey {
        CacheKey(KeyKind::History {
            lead_id,
            limit,
            offset,
        })
    }

    /// The key as stored in Redis.
    pub fn render(&self, key: &CacheKey) -> String {
        let mut out = String::with_capacity(self.namespace.len() + 56);
        out.push_str(&self.namespace);
        key.write_suffix(&mut out);
        out
    }

    /// The Redis set that lists a lead's cached history pages, so invalidation can find
    /// them without `KEYS` or `SCAN`.
    pub(crate) fn history_index(&self, lead_id: i64) -> String {
        format!("{}history-pages:{lead_id}", self.namespace)
    }

    /// The lead whose history index `text` is, if it is one of this schema's.
    pub(crate) fn history_index_lead(&self, text: &str) -> Option<i64> {
        text.strip_prefix(&*self.namespace)?
            .strip_prefix("history-pages:")?
            .parse()
            .ok()
    }

    /// The Redis invalidation epoch of a phone number's views (`None`: of every view), which
    /// invalidations bump and batched installs check (see `epoch.rs`).
    pub(crate) fn epoch_key(&self, group: Option<&PhoneDigest>) -> String {
        match group {
            Some(group) => format!("{}epoch:{}", self.namespace, group.to_hex()),
            None => format!("{}epoch:all", self.namespace),
        }
    }

    /// How a page is listed in its lead's history index (`{limit}:{offset}`).
    pub(crate) fn history_member(limit: u32, offset: u32) -> String {
        format!("{limit}:{offset}")
    }

    /// What every history page key of `lead_id` starts with, in its Redis form: the page's
    /// index member ([`Self::history_member`]) follows.
    pub(crate) fn history_prefix(&self, lead_id: i64) -> String {
        format!("{}history:{lead_id}:", self.namespace)
    }

    /// The page a history index member names; `None` for a member of another shape.
    pub(crate) fn history_from_member(&self, lead_id: i64, member: &str) -> Option<CacheKey> {
        let (limit, offset) = member.split_once(':')?;
        Some(self.history(lead_id, limit.parse().ok()?, offset.parse().ok()?))
    }

    /// Parses a key in its Redis form (as an operator would copy it from `redis-cli`).
    pub fn parse(&self, text: &str) -> Result<CacheKey, KeyError> {
        let rest = text
            .strip_prefix(&*self.namespace)
            .ok_or(KeyError::Namespace)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let int = |s: &str| s.parse::<i64>().map_err(|_| KeyError::Malformed);
        let uint = |s: &str| s.parse::<u32>().map_err(|_| KeyError::Malformed);
        let kind = match parts.as_slice() {
            ["lead", "phone", digest, org] => KeyKind::LeadByPhone {
                phone: parse_digest(digest)?,
                org_id: int(org)?,
            },
            ["lead", "id", id] => KeyKind::LeadById(int(id)?),
            ["org", "phone", digest] => KeyKind::OrgByPhone(parse_digest(digest)?),
            ["context", id] => KeyKind::Context(int(id)?),
            ["summary", id] => KeyKind::Summary(int(id)?),
            ["greeting", id, channel] => KeyKind::Greeting(int(id)?, channel.parse()?),
            ["history", id, limit, offset] => KeyKind::History {
                lead_id: int(id)?,
                limit: uint(limit)?,
                offset: uint(offset)?,
            },
            _ => return Err(KeyError::Malformed),
        };
        Ok(CacheKey(kind))
    }
}

fn parse_digest(text: &str) -> Result<PhoneDigest, KeyError> {
    let mut digest = [0u8; 16];
    hex::decode_to_slice(text, &mut digest).map_err(|_| KeyError::Malformed)?;
    Ok(PhoneDigest(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> KeySchema {
        KeySchema::new("tc", "test", 1, b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn keys_render_under_the_namespace() {
        let s = schema();
        assert_eq!(s.render(&s.lead_by_id(42)), "tc:test:v1:lead:id:42");
        assert_eq!(s.render(&s.context(7)), "tc:test:v1:context:7");
        assert_eq!(s.render(&s.summary(7)), "tc:test:v1:summary:7");
        assert_eq!(
            s.render(&s.greeting(7, Channel::Sms)),
            "tc:test:v1:greeting:7:sms"
        );
        assert_eq!(
            s.render(&s.history(7, 20, 40)),
            "tc:test:v1:history:7:20:40"
        );
        let lead = s.render(&s.lead_by_phone("+16462000042", 3));
        assert!(lead.starts_with("tc:test:v1:lead:phone:"));
        assert!(lead.ends_with(":3"));
    }

    #[test]
    fn phones_never_appear_in_clear() {
        let s = schema();
        let phone = "+16462000042";
        for key in [s.lead_by_phone(phone, 1), s.org_by_phone(phone)] {
            let rendered = s.render(&key);
            assert!(!rendered.contains("6462000042"), "{rendered}");
            assert!(!format!("{key:?}").contains("6462000042"));
        }
    }

    #[test]
    fn digests_depend_on_the_secret_and_the_phone() {
        let a = schema();
        let b = KeySchema::new("tc", "test", 1, b"another secret, just as long!!!").unwrap();
        assert_eq!(a.phone_digest("+1"), a.phone_digest("+1"));
        assert_ne!(a.phone_digest("+1"), a.phone_digest("+2"));
        assert_ne!(a.phone_digest("+1"), b.phone_digest("+1"));
    }

    #[test]
    fn a_history_page_is_its_prefix_and_its_index_member() {
        let s = schema();
        let page = s.render(&s.history(4, 50, 100));
        let member = KeySchema::history_member(50, 100);
        let prefix = s.history_prefix(4);
        assert_eq!(page, format!("{prefix}{member}"));
    }

    #[test]
    fn rendered_keys_parse_back() {
        let s = schema();
        let keys = [
            s.lead_by_phone("+18005550001", 9),
            s.lead_by_id(-1),
            s.org_by_phone("+18005550001"),
            s.context(1),
            s.summary(2),
            s.greeting(3, Channel::Web),
            s.history(4, 50, 100),
        ];
        for key in keys {
            assert_eq!(s.parse(&s.render(&key)).unwrap(), key);
        }
    }

    #[test]
    fn bad_keys_are_typed_errors() {
        let s = schema();
        assert_eq!(
            s.parse("other:ns:v1:lead:id:1").unwrap_err(),
            KeyError::Namespace
        );
        assert_eq!(
            s.parse("tc:test:v1:lead:id:x").unwrap_err(),
            KeyError::Malformed
        );
        assert_eq!(
            s.parse("tc:test:v1:greeting:1:fax").unwrap_err(),
            KeyError::Channel
        );
        assert_eq!(
            s.parse("tc:test:v1:org:phone:zz").unwrap_err(),
            KeyError::Malformed
        );
        assert!(KeySchema::new("t c", "x", 1, b"secret").is_err());
        assert!(KeySchema::new("tc", "", 1, b"secret").is_err());
    }

    #[test]
    fn entities_follow_the_key() {
        let s = schema();
        assert_eq!(s.lead_by_phone("+1", 1).entity(), Entity::Lead);
        assert_eq!(s.org_by_phone("+1").entity(), Entity::Org);
        assert_eq!(s.history(1, 1, 0).entity(), Entity::History);
        assert_eq!(s.history(1, 10, 20).history_page(), Some((1, 10, 20)));
        assert_eq!(s.context(1).history_page(), None);
    }
}
