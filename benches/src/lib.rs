//! Shared bench fixtures: the lead-sized value every bench caches, and the Redis helpers
//! both load generators use.

pub mod cpu;

use anyhow::Context as _;
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

/// A multiplexed connection: one socket, any number of requests in flight.
pub async fn redis_connection(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)
        .context("parsing REDIS_URL")?
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")
}

/// Deletes every key under `prefix` with SCAN and UNLINK: a full scan of the keyspace,
/// fine in a bench tool, never on a request path. Bounded: at most `MAX_SCAN_STEPS` steps.
pub async fn delete_prefix(redis_url: &str, prefix: &str) -> anyhow::Result<u64> {
    const MAX_SCAN_STEPS: usize = 100_000;
    let mut con = redis_connection(redis_url).await?;
    let pattern = format!("{prefix}:*");
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    for _ in 0..MAX_SCAN_STEPS {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .context("scanning for the mode's keys")?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut con)
                .await
                .context("deleting the mode's keys")?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
    anyhow::bail!("the scan for {prefix}:* did not finish in {MAX_SCAN_STEPS} steps")
}
