//! The rows and views the repositories serve, as cached and as returned by the API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An organization's settings (the `settings` jsonb column); unknown keys are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrgSettings {
    /// The name the voice agent introduces itself with.
    pub agent_name: Option<String>,
    /// Greeting for callers the organization does not know yet.
    pub new_caller_greeting: Option<String>,
}

/// An organization, reached on one phone number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Org {
    /// Id.
    pub id: i64,
    /// The number callers dial, E.164.
    pub phone: String,
    /// Display name.
    pub name: String,
    /// Settings.
    #[sqlx(json)]
    pub settings: OrgSettings,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update.
    pub updated_at: DateTime<Utc>,
}

impl tiercache::Identified for Org {
    fn id(&self) -> i64 {
        self.id
    }
}

/// A lead's pipeline status.
pub const LEAD_STATUSES: [&str; 5] = ["new", "contacted", "qualified", "customer", "lost"];

/// A lead: one caller known to one organization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Lead {
    /// Id.
    pub id: i64,
    /// The organization.
    pub org_id: i64,
    /// The lead's number, E.164.
    pub phone: String,
    /// Display name.
    pub name: String,
    /// One of [`LEAD_STATUSES`].
    pub status: String,
    /// Free-text notes.
    pub notes: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update.
    pub updated_at: DateTime<Utc>,
}

impl tiercache::Identified for Lead {
    fn id(&self) -> i64 {
        self.id
    }
}

/// A message in a lead's conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Message {
    /// Id.
    pub id: i64,
    /// The lead.
    pub lead_id: i64,
    /// `voice`, `sms` or `web`.
    pub channel: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// Text.
    pub body: String,
    /// When it was sent.
    pub created_at: DateTime<Utc>,
}

/// What the voice agent needs to know about a caller: its dynamic variables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Context {
    /// The lead.
    pub lead_id: i64,
    /// The organization.
    pub org_id: i64,
    /// The organization's name.
    pub org_name: String,
    /// The agent's name, from the organization's settings.
    pub agent_name: Option<String>,
    /// The lead's name.
    pub name: String,
    /// The lead's status.
    pub status: String,
    /// The lead's notes.
    pub notes: Option<String>,
    /// Messages exchanged so far.
    pub message_count: i64,
    /// When the last message was sent.
    pub last_contact_at: Option<DateTime<Utc>>,
    /// What the lead wrote or said most recently, newest first (up to three, shortened).
    pub last_topics: Vec<String>,
}

/// Counts over a lead's conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Summary {
    /// The lead.
    pub lead_id: i64,
    /// Messages in all.
    pub message_count: i64,
    /// Messages from the lead.
    pub inbound_count: i64,
    /// Messages to the lead.
    pub outbound_count: i64,
    /// Channels used, alphabetically.
    pub channels: Vec<String>,
    /// The first message's time.
    pub first_contact_at: Option<DateTime<Utc>>,
    /// The last message's time.
    pub last_contact_at: Option<DateTime<Utc>>,
    /// The last message, shortened.
    pub last_message: Option<String>,
}

/// A greeting for a lead on one channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Greeting {
    /// The lead.
    pub lead_id: i64,
    /// `voice`, `sms` or `web`.
    pub channel: String,
    /// What to say or send first.
    pub text: String,
}

/// One page of a lead's messages, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The lead.
    pub lead_id: i64,
    /// Page size asked for.
    pub limit: u32,
    /// Messages skipped.
    pub offset: u32,
    /// Messages in all.
    pub total: i64,
    /// This page.
    pub messages: Vec<Message>,
}

/// Changes to a lead; absent fields are left as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadPatch {
    /// New name. A lead always has one, so `"name": null` is refused rather than read as
    /// "leave as is".
    #[serde(default, deserialize_with = "not_null")]
    pub name: Option<String>,
    /// New status, one of [`LEAD_STATUSES`]; `"status": null` is refused, as for `name`.
    #[serde(default, deserialize_with = "not_null")]
    pub status: Option<String>,
    /// New notes; `Some(None)` (`"notes": null`) clears them.
    #[serde(default, deserialize_with = "double_option")]
    pub notes: Option<Option<String>>,
}

/// A message to add.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// `voice`, `sms` or `web`.
    pub channel: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// Text.
    pub body: String,
}

/// A field that, when present, must be a string: `null` is an error ("invalid type: null,
/// expected a string"), not the same as leaving the field out.
fn not_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// Tells `"notes": null` (clear) from an absent `notes` (leave as is).
fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_patch_refuses_a_null_name_or_status_and_clears_notes_on_null() {
        let patch: LeadPatch = serde_json::from_str(r#"{"notes":null}"#).unwrap();
        assert_eq!(
            patch,
            LeadPatch {
                notes: Some(None),
                ..LeadPatch::default()
            }
        );
        let patch: LeadPatch = serde_json::from_str("{}").unwrap();
        assert_eq!(patch, LeadPatch::default());
        for body in [r#"{"name":null}"#, r#"{"status":null}"#] {
            let error = serde_json::from_str::<LeadPatch>(body).unwrap_err();
            assert!(error.to_string().contains("invalid type: null"), "{error}");
        }
    }

    #[test]
    fn orgs_and_leads_lead_with_their_id_for_the_call_script() {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let org = Org {
            id: 1234,
            phone: "+18005550001".to_owned(),
            name: "Acme".to_owned(),
            settings: OrgSettings::default(),
            created_at: at,
            updated_at: at,
        };
        let lead = Lead {
            id: 99_999,
            org_id: 1234,
            phone: "+16462000042".to_owned(),
            name: "Maria".to_owned(),
            status: "new".to_owned(),
            notes: None,
            created_at: at,
            updated_at: at,
        };
        let org_bytes = tiercache::envelope::encode(Some(&org), 0).unwrap();
        let lead_bytes = tiercache::envelope::encode(Some(&lead), 0).unwrap();
        assert_eq!(tiercache::envelope::leading_id(&org_bytes), Some(1234));
        assert_eq!(tiercache::envelope::leading_id(&lead_bytes), Some(99_999));
    }
}
