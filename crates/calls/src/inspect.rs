//! What an operator sees of the streams (`XINFO`).

use serde::Serialize;

/// One organization's stream of one day.
#[derive(Clone, Debug, Serialize)]
pub struct StreamStats {
    /// Its Redis key.
    pub key: String,
    /// The organization.
    pub org_id: i64,
    /// The day (UTC, `YYYY-MM-DD`).
    pub day: String,
    /// Entries in it.
    pub length: u64,
    /// Its first entry's id.
    pub first_entry: Option<String>,
    /// Its last entry's id.
    pub last_entry: Option<String>,
    /// Its consumer groups.
    pub groups: Vec<GroupStats>,
}

/// A consumer group on one stream.
#[derive(Clone, Debug, Serialize)]
pub struct GroupStats {
    /// Its name.
    pub name: String,
    /// Entries delivered and not acknowledged.
    pub pending: u64,
    /// Entries not yet delivered (`None` when Redis cannot tell).
    pub lag: Option<u64>,
    /// The last entry delivered.
    pub last_delivered: String,
    /// Its consumers.
    pub consumers: Vec<ConsumerStats>,
}

/// One consumer in a group.
#[derive(Clone, Debug, Serialize)]
pub struct ConsumerStats {
    /// Its name.
    pub name: String,
    /// Entries it holds unacknowledged.
    pub pending: u64,
    /// Milliseconds since it last read.
    pub idle_ms: u64,
}
