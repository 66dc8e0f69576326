//! A call session: everything known of one call, folded from its events.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a call stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Under way with the agent.
    InProgress,
    /// Being handed to a person.
    Transferring,
    /// Handed to a person (and not yet ended).
    Transferred,
    /// Over.
    Ended,
}

/// A position in an organization's feed of session changes: every change to one of its
/// sessions takes the next one. Opaque to clients (a decimal string).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor(pub i64);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Cursor {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n: i64 = s.parse()?;
        // A negative cursor is no position; `-1`.parse::<u32>() gives the same error kind.
        if n < 0 {
            return "-".parse::<i64>().map(Cursor);
        }
        Ok(Cursor(n))
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One call as the portal sees it. Holds no phone number in clear: a new caller's number is
/// masked to its last four digits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallSession {
    /// The voice platform's id for the call.
    pub call_sid: String,
    /// The organization called.
    pub org_id: i64,
    /// The caller's lead, when the caller was known.
    pub lead_id: Option<i64>,
    /// A new caller's number, masked (`•••4567`).
    pub caller: Option<String>,
    /// Where the first message came from (`lead`, `new_caller`, `deadline_default`).
    pub greeting_source: Option<String>,
    /// Where the call stands.
    pub status: SessionStatus,
    /// Whether it has not ended.
    pub in_progress: bool,
    /// When it started (its earliest event, when `call_started` has not arrived).
    pub started_at: DateTime<Utc>,
    /// When the caller authenticated.
    pub authenticated_at: Option<DateTime<Utc>>,
    /// When authentication last failed.
    pub authentication_failed_at: Option<DateTime<Utc>>,
    /// The last intent detected (`data.intent`).
    pub intent: Option<String>,
    /// When a transfer began.
    pub transfer_initiated_at: Option<DateTime<Utc>>,
    /// When it completed.
    pub transferred_at: Option<DateTime<Utc>>,
    /// When the call ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// How long it lasted, in seconds, as `call_ended` said.
    pub duration_seconds: Option<f64>,
    /// The latest event's type (by event time).
    pub last_event: String,
    /// The latest event's time.
    pub last_event_at: DateTime<Utc>,
    /// How many distinct events it is folded from.
    pub events: i32,
    /// The change that made it what it is.
    pub cursor: Cursor,
}
