//! The call log's Redis layout: its keys, the append script and how an event becomes a
//! stream entry and back. Every key the Rust code or the script touches is built here.

use chrono::{DateTime, Utc};
use redis::Value;
use serde_json::{Map, Value as Json};
use std::collections::HashMap;
use uuid::Uuid;

use crate::event::{CallEvent, EventKind};

/// Longest the dead-letter stream grows (`MAXLEN ~`).
pub(crate) const DEAD_MAXLEN: u64 = 10_000;

/// The call log's keys under one namespace (the cache's, like `tiercache:dev:v1:`).
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    ns: String,
}

impl Keys {
    pub(crate) fn new(namespace: &str) -> Keys {
        Keys {
            ns: namespace.to_owned(),
        }
    }

    /// `{ns}calls:{org}:{YYYYMMDD}`: an organization's stream of the event's UTC day.
    pub(crate) fn stream(&self, org_id: i64, at: DateTime<Utc>) -> String {
        format!("{}calls:{org_id}:{}", self.ns, at.format("%Y%m%d"))
    }

    /// The organization and day (`YYYY-MM-DD`) of one of [`stream`](Self::stream)'s keys.
    pub(crate) fn parse_stream(&self, key: &str) -> Option<(i64, String)> {
        let rest = key.strip_prefix(&self.ns)?.strip_prefix("calls:")?;
        let (org, day) = rest.split_once(':')?;
        let day = chrono::NaiveDate::parse_from_str(day, "%Y%m%d").ok()?;
        Some((org.parse().ok()?, day.format("%Y-%m-%d").to_string()))
    }

    /// `{ns}calls:streams`: every stream, scored by its last append (ms since the epoch).
    pub(crate) fn registry(&self) -> String {
        format!("{}calls:streams", self.ns)
    }

    /// `{ns}calls:sid:{call_sid}`: the organization of a started call. A call sid is the
    /// voice platform's id, not personal data.
    pub(crate) fn sid(&self, call_sid: &str) -> String {
        format!("{}calls:sid:{call_sid}", self.ns)
    }

    /// `{ns}calls:dead`: entries that kept failing, with where they came from.
    pub(crate) fn dead(&self) -> String {
        format!("{}calls:dead", self.ns)
    }
}

/// Appends a batch in one round trip.
///
/// KEYS: `[registry, stream_1, sid_1, stream_2, sid_2, …]` (every key it touches is
/// declared, but they hash to different slots: on Redis Cluster a batch would have to be
/// split per slot first). ARGV: `[maxlen, ttl_ms, now_ms, group]`, then per event
/// `[org_or_empty, id, sid, type, at, data]`; a non-empty org (call_started only) sets the
/// sid key. The group is created with the stream (`MKSTREAM`, from id 0), so a Redis that
/// lost everything gets it back before the first entry and the consumer misses nothing.
/// Returns how many entries were added.
pub(crate) const APPEND_SCRIPT: &str = r"
local maxlen, ttl, now, group = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local n = (#KEYS - 1) / 2
-- A stream's group, expiry and registry entry once per batch, however many of its events.
local seen = {}
for j = 0, n - 1 do
  local stream, sidkey = KEYS[2 + 2 * j], KEYS[3 + 2 * j]
  local a = 4 + 6 * j
  if not seen[stream] then
    seen[stream] = true
    if redis.call('EXISTS', stream) == 0 then
      redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    end
  end
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
    'id', ARGV[a + 2], 'sid', ARGV[a + 3], 'type', ARGV[a + 4], 'at', ARGV[a + 5],
    'data', ARGV[a + 6])
  if ARGV[a + 1] ~= '' then
    redis.call('SET', sidkey, ARGV[a + 1], 'PX', ttl)
  end
end
for stream in pairs(seen) do
  redis.call('PEXPIRE', stream, ttl)
  redis.call('ZADD', KEYS[1], now, stream)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ttl)))
redis.call('PEXPIRE', KEYS[1], ttl)
return n
";

/// The script's invocation for `events`.
pub(crate) fn append_invocation<'a>(
    script: &'a redis::Script,
    keys: &Keys,
    events: &[CallEvent],
    maxlen: u64,
    ttl_ms: u64,
    group: &str,
    now: DateTime<Utc>,
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(keys.registry())
        .arg(maxlen)
        .arg(ttl_ms)
        .arg(now.timestamp_millis())
        .arg(group);
    for event in events {
        let org = if event.kind == EventKind::CallStarted {
            event.org_id.to_string()
        } else {
            String::new()
        };
        // A map of JSON values always serializes.
        let data = serde_json::to_string(&event.data).unwrap_or_else(|_| "{}".to_owned());
        invocation
            .key(keys.stream(event.org_id, event.at))
            .key(keys.sid(&event.call_sid))
            .arg(org)
            .arg(event.id.to_string())
            .arg(&event.call_sid)
            .arg(event.kind.as_str())
            .arg(event.at_text())
            .arg(data);
    }
    invocation
}

/// Why an entry is not an event; its name is what the dead-letter stream records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The key is not one of the namespace's streams.
    #[error("bad_stream_key")]
    StreamKey,
    /// A field is missing or not text.
    #[error("missing_field")]
    MissingField,
    /// The id is not a UUID.
    #[error("bad_id")]
    Id,
    /// The type is unknown.
    #[error("bad_type")]
    Type,
    /// The time is not RFC 3339.
    #[error("bad_time")]
    Time,
    /// The data is not a JSON object.
    #[error("bad_data")]
    Data,
}

/// The event an entry of stream `key` holds.
pub(crate) fn decode(
    keys: &Keys,
    key: &str,
    fields: &HashMap<String, Value>,
) -> Result<CallEvent, DecodeError> {
    let (org_id, _) = keys.parse_stream(key).ok_or(DecodeError::StreamKey)?;
    let field = |name: &str| -> Result<String, DecodeError> {
        match fields.get(name) {
            Some(Value::BulkString(bytes)) => {
                String::from_utf8(bytes.clone()).map_err(|_| DecodeError::MissingField)
            }
            Some(Value::SimpleString(text)) => Ok(text.clone()),
            _ => Err(DecodeError::MissingField),
        }
    };
    let id: Uuid = field("id")?.parse().map_err(|_| DecodeError::Id)?;
    let kind = EventKind::parse(&field("type")?).ok_or(DecodeError::Type)?;
    let at = DateTime::parse_from_rfc3339(&field("at")?)
        .map_err(|_| DecodeError::Time)?
        .with_timezone(&Utc);
    let data: Map<String, Json> =
        serde_json::from_str(&field("data")?).map_err(|_| DecodeError::Data)?;
    Ok(CallEvent {
        id,
        call_sid: field("sid")?,
        org_id,
        kind,
        at,
        data,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn stream_keys_name_org_and_day() {
        let keys = Keys::new("tc:test:v1:");
        let at = Utc.with_ymd_and_hms(2026, 12, 7, 23, 59, 59).unwrap();
        let key = keys.stream(42, at);
        assert_eq!(key, "tc:test:v1:calls:42:20261207");
        assert_eq!(keys.parse_stream(&key), Some((42, "2026-12-07".into())));
        assert_eq!(keys.parse_stream("tc:test:v1:calls:dead"), None);
        assert_eq!(keys.parse_stream("other:calls:42:20261207"), None);
    }

    #[test]
    fn bad_entries_say_why() {
        let keys = Keys::new("n:");
        let good = |f: &[(&str, &str)]| -> HashMap<String, Value> {
            let mut map: HashMap<String, Value> = [
                ("id", Uuid::now_v7().to_string()),
                ("sid", "CA1".into()),
                ("type", "call_ended".into()),
                ("at", "2026-12-07T12:00:00.000Z".into()),
                ("data", r#"{"duration_seconds":3}"#.into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::BulkString(v.into_bytes())))
            .collect();
            for (k, v) in f {
                map.insert((*k).to_owned(), Value::BulkString(v.as_bytes().to_vec()));
            }
            map
        };
        let key = "n:calls:3:20261207";
        let event = decode(&keys, key, &good(&[])).unwrap();
        assert_eq!((event.org_id, event.kind), (3, EventKind::CallEnded));
        let err = |f: &[(&str, &str)]| decode(&keys, key, &good(f)).unwrap_err();
        assert_eq!(err(&[("id", "x")]), DecodeError::Id);
        assert_eq!(err(&[("type", "call_exploded")]), DecodeError::Type);
        assert_eq!(err(&[("at", "noon")]), DecodeError::Time);
        assert_eq!(err(&[("data", "[1]")]), DecodeError::Data);
        let mut missing = good(&[]);
        missing.remove("sid");
        assert_eq!(decode(&keys, key, &missing), Err(DecodeError::MissingField));
        assert_eq!(
            decode(&keys, "n:x", &good(&[])),
            Err(DecodeError::StreamKey)
        );
    }
}
