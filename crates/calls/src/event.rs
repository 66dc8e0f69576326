//! Call events: what a call's lifecycle is made of, checked as it comes in.

use chrono::{DateTime, Duration as TimeDelta, SecondsFormat, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::EventError;

/// Longest call sid accepted (the webhook's rule).
pub const MAX_CALL_SID_LEN: usize = 128;

/// Largest `data` accepted, as compact JSON.
pub const MAX_DATA_BYTES: usize = 4096;

/// How far ahead of this server's clock an event's time may be (clocks drift).
const MAX_AHEAD: TimeDelta = TimeDelta::minutes(5);

/// How far back an event's time may be: the streams keep a day.
const MAX_BEHIND: TimeDelta = TimeDelta::hours(24);

/// What happened in a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// The webhook answered the call (published by this service).
    CallStarted,
    /// The caller proved who they are.
    CallAuthenticated,
    /// The caller failed to.
    AuthenticationFailed,
    /// The agent recognised what the caller wants.
    IntentDetected,
    /// The agent began handing the call to a person.
    TransferInitiated,
    /// The hand-over completed.
    TransferCompleted,
    /// The call ended (`data.duration_seconds` says how long it lasted).
    CallEnded,
}

impl EventKind {
    /// Every kind, in lifecycle order.
    pub const ALL: [EventKind; 7] = [
        EventKind::CallStarted,
        EventKind::CallAuthenticated,
        EventKind::AuthenticationFailed,
        EventKind::IntentDetected,
        EventKind::TransferInitiated,
        EventKind::TransferCompleted,
        EventKind::CallEnded,
    ];

    /// Its wire name (`call_started`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::CallStarted => "call_started",
            EventKind::CallAuthenticated => "call_authenticated",
            EventKind::AuthenticationFailed => "authentication_failed",
            EventKind::IntentDetected => "intent_detected",
            EventKind::TransferInitiated => "transfer_initiated",
            EventKind::TransferCompleted => "transfer_completed",
            EventKind::CallEnded => "call_ended",
        }
    }

    /// The kind with this wire name.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether the agent may post it (`call_started` comes from the webhook only).
    pub const fn posted_by_agent(self) -> bool {
        !matches!(self, EventKind::CallStarted)
    }
}

/// One event of one call, as it travels through the stream to the sessions.
#[derive(Clone, Debug, PartialEq)]
pub struct CallEvent {
    /// Its id (UUID v7), given when it was taken in: applying it twice changes nothing.
    pub id: Uuid,
    /// The voice platform's id for the call.
    pub call_sid: String,
    /// The organization called.
    pub org_id: i64,
    /// What happened.
    pub kind: EventKind,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What the agent said about it (an object, at most [`MAX_DATA_BYTES`], phone numbers
    /// masked).
    pub data: Map<String, Value>,
}

impl CallEvent {
    /// A posted event, routed to its organization, with a new id.
    pub fn new(call_sid: String, org_id: i64, event: PostedEvent) -> CallEvent {
        CallEvent {
            id: Uuid::now_v7(),
            call_sid,
            org_id,
            kind: event.kind,
            at: event.at,
            data: event.data,
        }
    }

    /// `call_started`, as the webhook publishes it: the lead when the caller is known, else
    /// the caller's number masked, and where the greeting came from.
    pub fn started(
        call_sid: String,
        org_id: i64,
        lead_id: Option<i64>,
        caller_e164: &str,
        greeting_source: &str,
        at: DateTime<Utc>,
    ) -> CallEvent {
        let mut data = Map::new();
        match lead_id {
            Some(id) => {
                data.insert("lead_id".into(), Value::from(id));
            }
            None => {
                data.insert("caller".into(), Value::from(mask_phone(caller_e164)));
            }
        }
        data.insert("greeting_source".into(), Value::from(greeting_source));
        CallEvent {
            id: Uuid::now_v7(),
            call_sid,
            org_id,
            kind: EventKind::CallStarted,
            at,
            data,
        }
    }

    /// Its time as the stream and the API write it (RFC 3339, milliseconds, `Z`).
    pub fn at_text(&self) -> String {
        self.at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// An event the agent posted, checked: `{type, at?, data?}`.
#[derive(Clone, Debug, PartialEq)]
pub struct PostedEvent {
    /// What happened (never `call_started`).
    pub kind: EventKind,
    /// When (the time it was taken in, when the agent gave none).
    pub at: DateTime<Utc>,
    /// Its data, an object (empty when none was given), phone numbers masked.
    pub data: Map<String, Value>,
}

impl PostedEvent {
    /// Checks what the agent sent against `now`: a known type the agent may post, a time in
    /// RFC 3339 within the last day and at most minutes ahead, data an object of at most
    /// [`MAX_DATA_BYTES`]; `call_ended` carries a non-negative `data.duration_seconds`.
    /// Strings in `data` that look like phone numbers are masked.
    pub fn check(
        kind: &str,
        at: Option<&str>,
        data: Option<Value>,
        now: DateTime<Utc>,
    ) -> Result<PostedEvent, EventError> {
        let kind = EventKind::parse(kind)
            .filter(|k| k.posted_by_agent())
            .ok_or(EventError::UnknownType)?;
        let at = match at {
            None => now,
            Some(text) => {
                let at = DateTime::parse_from_rfc3339(text)
                    .map_err(|_| EventError::BadTime)?
                    .with_timezone(&Utc);
                if at > now + MAX_AHEAD || at < now - MAX_BEHIND {
                    return Err(EventError::TimeOutOfRange);
                }
                at
            }
        };
        let mut data = match data {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(EventError::DataNotObject),
        };
        // Serializing a map of JSON values cannot fail.
        let size = serde_json::to_vec(&data).map_or(usize::MAX, |b| b.len());
        if size > MAX_DATA_BYTES {
            return Err(EventError::DataTooLarge);
        }
        if holds_nul(&data) {
            return Err(EventError::DataNul);
        }
        if kind == EventKind::CallEnded {
            match data.get("duration_seconds").and_then(Value::as_f64) {
                Some(d) if d >= 0.0 && d.is_finite() => {}
                _ => return Err(EventError::Duration),
            }
        }
        for value in data.values_mut() {
            mask_phones_in(value);
        }
        Ok(PostedEvent { kind, at, data })
    }
}

/// Checks a call sid: 1 to [`MAX_CALL_SID_LEN`] visible ASCII characters.
pub fn validate_call_sid(sid: &str) -> Result<(), EventError> {
    if sid.is_empty() || sid.len() > MAX_CALL_SID_LEN || !sid.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(EventError::CallSid);
    }
    Ok(())
}

/// A phone number as the call log keeps it: its last four digits (`•••4567`).
pub fn mask_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    let tail: String = digits[digits.len().saturating_sub(4)..].iter().collect();
    format!("•••{tail}")
}

/// Masks every phone number in `text`: each run of digits, spaces, dashes, dots and
/// parentheses (after an optional `+`) holding 7 or more digits. Free text keeps its words;
/// an order number of seven digits is masked too, which costs less than a leaked number.
fn mask_phones_in_text(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let mut changed = false;
    let flush = |run: &mut String, out: &mut String, changed: &mut bool| {
        let trimmed = run.trim_end_matches([' ', '-', '.', '(']);
        let tail = &run[trimmed.len()..];
        if trimmed.chars().filter(char::is_ascii_digit).count() >= 7 {
            out.push_str(&mask_phone(trimmed));
            *changed = true;
        } else {
            out.push_str(trimmed);
        }
        out.push_str(tail);
        run.clear();
    };
    for c in text.chars() {
        let starts = c.is_ascii_digit() || c == '+' || c == '(';
        let continues = c.is_ascii_digit() || " -.()".contains(c);
        if (run.is_empty() && starts) || (!run.is_empty() && continues) {
            run.push(c);
        } else {
            if !run.is_empty() {
                flush(&mut run, &mut out, &mut changed);
            }
            if starts {
                run.push(c);
            } else {
                out.push(c);
            }
        }
    }
    if !run.is_empty() {
        flush(&mut run, &mut out, &mut changed);
    }
    changed.then_some(out)
}

/// Whether a key or string anywhere in `data` holds a NUL, which PostgreSQL's `jsonb`
/// cannot store: refused at the door rather than failing in the consumer.
fn holds_nul(data: &Map<String, Value>) -> bool {
    fn value(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(value),
            Value::Object(map) => holds_nul(map),
            _ => false,
        }
    }
    data.iter().any(|(k, v)| k.contains('\0') || value(v))
}

/// Masks every phone number in the strings of `value`, nested ones too.
fn mask_phones_in(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let Some(masked) = mask_phones_in_text(text) {
                *text = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_phones_in),
        Value::Object(map) => map.values_mut().for_each(mask_phones_in),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-07T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap()
    }

    #[test]
    fn every_kind_round_trips_its_name() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("call_exploded"), None);
    }

    #[test]
    fn bad_events_name_their_field() {
        let check = |kind, at, data| PostedEvent::check(kind, at, data, now()).map(|_| ());
        assert_eq!(check("nope", None, None).unwrap_err().field(), "type");
        assert_eq!(
            check("call_started", None, None).unwrap_err().field(),
            "type"
        );
        assert_eq!(
            check("intent_detected", Some("yesterday"), None)
                .unwrap_err()
                .field(),
            "at"
        );
        let old = Some("2026-12-05T12:00:00Z");
        assert_eq!(
            check("intent_detected", old, None).unwrap_err().field(),
            "at"
        );
        let big = json!({"text": "x".repeat(MAX_DATA_BYTES)});
        assert_eq!(
            check("intent_detected", None, Some(big))
                .unwrap_err()
                .field(),
            "data"
        );
        assert_eq!(
            check("intent_detected", None, Some(json!([1])))
                .unwrap_err()
                .field(),
            "data"
        );
        let nul = json!({"notes": {"a": ["x\u{0}y"]}});
        assert_eq!(
            check("intent_detected", None, Some(nul))
                .unwrap_err()
                .field(),
            "data"
        );
        let nul_key = json!({"a\u{0}": 1});
        assert_eq!(
            check("intent_detected", None, Some(nul_key))
                .unwrap_err()
                .field(),
            "data"
        );
        let no_duration = check("call_ended", None, Some(json!({})));
        assert_eq!(no_duration.unwrap_err().field(), "data.duration_seconds");
        assert!(check("call_ended", None, Some(json!({"duration_seconds": 12.5}))).is_ok());
    }

    #[test]
    fn phone_numbers_in_data_are_masked() {
        let data = json!({"to": "+1 (646) 200-0042", "notes": ["call +16462000042"], "n": "42"});
        let event = PostedEvent::check("transfer_initiated", None, Some(data), now()).unwrap();
        assert_eq!(event.data["to"], "•••0042");
        assert_eq!(event.data["notes"][0], "call •••0042");
        assert_eq!(event.data["n"], "42");
        let text = json!({"t": "ring (646) 200-0042 or 646.200.0043, room 12"});
        let event = PostedEvent::check("intent_detected", None, Some(text), now()).unwrap();
        assert_eq!(event.data["t"], "ring •••0042 or •••0043, room 12");
    }
}
