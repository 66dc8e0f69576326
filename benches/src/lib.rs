//! Shared bench fixtures: the lead-sized value every bench caches.

use serde::{Deserialize, Serialize};

/// A lead shaped like the ones the service caches: sizes follow typical production rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    /// Lead id.
    pub id: i64,
    /// Owning organization.
    pub org_id: i64,
    /// E.164 phone number.
    pub phone: String,
    /// Display name.
    pub name: String,
    /// Pipeline status.
    pub status: String,
    /// Free-text notes.
    pub notes: Option<String>,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Last update, Unix milliseconds.
    pub updated_at_ms: i64,
    /// Short labels.
    pub tags: Vec<String>,
}

/// A typical lead (about 190 bytes in postcard).
pub fn sample_lead() -> Lead {
    Lead {
        id: 48_213_377,
        org_id: 1_042,
        phone: "+16462000042".to_owned(),
        name: "Maria Gonzalez".to_owned(),
        status: "qualified".to_owned(),
        // About 120 characters, the median length of a free-text note.
        notes: Some(
            "Called back about the premium plan; wants a demo next Tuesday afternoon \
             and a quote for twelve seats before end of month."
                .to_owned(),
        ),
        created_at_ms: 1_735_689_600_000,
        updated_at_ms: 1_738_368_000_000,
        tags: vec!["inbound".to_owned(), "vip".to_owned()],
    }
}
