//! [`DbListener`]: invalidates the cache when a write bypasses Tiercache (another service, a
//! migration, `psql`), from the notifications PostgreSQL triggers send on
//! [`CHANNEL`] (see `migrations/20261126000002_notify.sql`).

use std::time::Instant;

use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgListener};
use tiercache::{Feed, InvalidationSource, TwoTierCache};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::listen::{self, Backoff};

/// The channel the triggers notify on.
pub const CHANNEL: &str = "tiercache_invalidation";

/// The `application_name` of the listener's connection, to find it in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "tiercache-listener";

/// What the listener is doing, and what it has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStatus {
    /// Since when it has been listening without a break; `None` while it is not.
    pub listening_since: Option<Instant>,
    /// Times it listened again after losing its connection (each one flushed L1).
    pub reconnects: u64,
    /// Notifications turned into invalidations.
    pub applied: u64,
    /// Payloads that did not decode (logged and skipped).
    pub undecodable: u64,
}

/// Listens for the triggers' notifications and invalidates the cache; stops when dropped.
///
/// Each notification becomes the invalidation a write through the repository would have
/// made ([`InvalidationSource::Database`]): a lead's keys and derived views, a lead's
/// conversation views, an organization's key, or everything (a `TRUNCATE`). It is applied
/// to both tiers; it is not announced on the Redis bus, since every instance's listener
/// hears the same notification (a `TRUNCATE`'s flush is, as any `invalidate_all`).
///
/// # Failures
///
/// - The listener has a connection of its own (not one of the service's pool), named
///   [`APPLICATION_NAME`].
/// - A lost connection is noticed when reading fails, or by a `SELECT 1` after 10 s
///   without a notification. The listener connects again at once, then with a backoff
///   doubling from 50 ms to 2 s while attempts fail.
/// - Notifications sent while it was not listening are lost, so once it listens again it
///   flushes L1 ([`TwoTierCache::flush_l1`]): nothing this instance held can be older than
///   the reconnection. Redis is left alone: other instances that kept listening removed
///   what they heard of; what nobody heard lasts until its L2 TTL.
/// - A payload that does not decode is logged, counted in
///   [`ListenerStatus::undecodable`] and skipped.
///
/// [`status`](Self::status) tells whether it is listening and since when.
pub struct DbListener {
    task: JoinHandle<()>,
    status: watch::Receiver<ListenerStatus>,
}

impl DbListener {
    /// Starts listening on a connection made with `options` (its application name set to
    /// [`APPLICATION_NAME`]).
    ///
    /// # Panics
    /// Outside a Tokio runtime, as `tokio::spawn` does.
    pub fn spawn(options: PgConnectOptions, cache: TwoTierCache) -> DbListener {
        let (tx, rx) = watch::channel(ListenerStatus::default());
        let options = options.application_name(APPLICATION_NAME);
        let task = tokio::spawn(run(options, cache, tx));
        DbListener { task, status: rx }
    }

    /// The listener's status now.
    pub fn status(&self) -> ListenerStatus {
        *self.status.borrow()
    }

    /// Whether it is listening now.
    pub fn is_listening(&self) -> bool {
        self.status.borrow().listening_since.is_some()
    }

    /// A receiver of every status change (to await one, e.g. `wait_for`).
    pub fn subscribe(&self) -> watch::Receiver<ListenerStatus> {
        self.status.clone()
    }
}

impl Drop for DbListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A notification's payload, as the triggers write it.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Change {
    /// A lead row (inserted, updated, deleted; or its old keys).
    Lead { id: i64, org_id: i64, phone: String },
    /// A change to a lead's messages.
    Message { lead_id: i64, phone: String },
    /// An organization row: its phone key, and the views of its leads that show its name.
    Org { id: i64, phone: String },
    /// A table was truncated: everything goes.
    Flush,
}

/// Why a payload was skipped. It says where decoding failed, never what the payload held
/// (it may hold phone numbers).
#[derive(Debug, thiserror::Error)]
#[error("undecodable notification payload ({len} bytes): {category:?} error at column {column}")]
struct UndecodablePayload {
    len: usize,
    category: serde_json::error::Category,
    column: usize,
}

fn decode(payload: &str) -> Result<Change, UndecodablePayload> {
    serde_json::from_str(payload).map_err(|e| UndecodablePayload {
        len: payload.len(),
        category: e.classify(),
        column: e.column(),
    })
}

/// Connects, listens until the connection is lost, and again, until aborted.
async fn run(
    options: PgConnectOptions,
    cache: TwoTierCache,
    status: watch::Sender<ListenerStatus>,
) {
    let mut backoff = Backoff::default();
    let mut listened_before = false;
    // The cache trusts L1 fully only while this feed confirms (see `tiercache::Feed`).
    let feed = cache.invalidation_feed();
    loop {
        let mut listener = match listen::connect(&options, CHANNEL).await {
            Ok(listener) => listener,
            Err(e) => {
                let wait = backoff.wait();
                tracing::warn!(error = %e, retry_in = ?wait, "cannot listen for database changes");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff.reset();
        if listened_before {
            // What was notified while we were away is lost.
            cache.flush_l1();
            if let Some(feed) = &feed {
                feed.recovered();
            }
            tracing::info!("listening for database changes again; L1 flushed");
        } else {
            if let Some(feed) = &feed {
                feed.confirm();
            }
            tracing::info!("listening for database changes");
        }
        status.send_modify(|s| {
            s.listening_since = Some(Instant::now());
            s.reconnects += u64::from(listened_before);
        });
        listened_before = true;
        let lost = receive(&mut listener, &cache, &status, feed.as_ref()).await;
        status.send_modify(|s| s.listening_since = None);
        tracing::warn!(error = %lost, "lost the database change listener's connection");
    }
}

/// Applies notifications until the connection is lost; returns why it was. With a feed, a
/// `SELECT 1` every heartbeat proves the connection live; the notifications that arrived
/// before its answer are applied, then the feed is confirmed.
async fn receive(
    listener: &mut PgListener,
    cache: &TwoTierCache,
    status: &watch::Sender<ListenerStatus>,
    feed: Option<&Feed>,
) -> sqlx::Error {
    let every = feed.map_or(listen::IDLE_CHECK, Feed::heartbeat);
    let mut next_check = tokio::time::Instant::now() + every;
    loop {
        let notification = match listen::recv_until(listener, next_check).await {
            Ok(notification) => notification,
            Err(lost) => return lost,
        };
        if let Some(notification) = notification {
            handle(listener, cache, status, notification.payload()).await;
        }
        if tokio::time::Instant::now() < next_check {
            continue;
        }
        if let Err(lost) = listen::check(listener).await {
            return lost;
        }
        while let Some(notification) = listener.next_buffered() {
            handle(listener, cache, status, notification.payload()).await;
        }
        if let Some(feed) = feed {
            feed.confirm();
        }
        next_check = tokio::time::Instant::now() + every;
    }
}

async fn handle(
    listener: &mut PgListener,
    cache: &TwoTierCache,
    status: &watch::Sender<ListenerStatus>,
    payload: &str,
) {
    match decode(payload) {
        Ok(change) => {
            apply(listener, cache, change).await;
            status.send_modify(|s| s.applied += 1);
        }
        Err(e) => {
            tracing::warn!(error = %e, "skipped a database change notification");
            status.send_modify(|s| s.undecodable += 1);
        }
    }
}

async fn apply(listener: &mut PgListener, cache: &TwoTierCache, change: Change) {
    let keys = crate::cache_keys::keys(cache);
    let invalidation = match change {
        Change::Lead { id, org_id, phone } => keys.lead_changed(id, org_id, &phone),
        Change::Message { lead_id, phone } => keys.lead_activity(lead_id, &phone),
        Change::Org { id, phone } => {
            match crate::queries::org_invalidation(&mut *listener, keys, id, &phone).await {
                Ok(invalidation) => invalidation,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list an organization's leads; flushing L1");
                    cache.flush_l1();
                    keys.org_changed(&phone, &[])
                }
            }
        }
        Change::Flush => {
            tracing::warn!("a table was truncated: invalidating everything");
            if let Some(sweep) = cache.invalidate_all(InvalidationSource::Database) {
                // The Redis sweep runs on; what it removed is only worth a log line.
                tokio::spawn(async move {
                    match sweep.await {
                        Ok(Ok(keys)) => tracing::info!(keys, "swept the namespace from Redis"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "sweeping Redis failed"),
                        Err(e) => tracing::warn!(error = %e, "sweeping Redis failed"),
                    }
                });
            }
            return;
        }
    };
    cache
        .invalidate(invalidation, InvalidationSource::Database)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_triggers_payloads_decode() {
        assert_eq!(
            decode(r#"{"id": 7, "kind": "lead", "phone": "+16462000006", "org_id": 2}"#).unwrap(),
            Change::Lead {
                id: 7,
                org_id: 2,
                phone: "+16462000006".to_owned()
            }
        );
        assert_eq!(
            decode(r#"{"kind": "message", "phone": "+16462000006", "lead_id": 7}"#).unwrap(),
            Change::Message {
                lead_id: 7,
                phone: "+16462000006".to_owned()
            }
        );
        assert_eq!(
            decode(r#"{"id": 2, "kind": "org", "phone": "+18005550002"}"#).unwrap(),
            Change::Org {
                id: 2,
                phone: "+18005550002".to_owned()
            }
        );
        assert_eq!(decode(r#"{"kind": "flush"}"#).unwrap(), Change::Flush);
        // Fields a later migration may add are ignored.
        assert_eq!(
            decode(r#"{"kind": "flush", "table": "leads"}"#).unwrap(),
            Change::Flush
        );
    }

    #[test]
    fn anything_else_is_an_error_not_a_panic() {
        for payload in [
            "garbage",
            "",
            "{}",
            r#"{"kind": "lead", "id": 7}"#,
            r#"{"kind": "lead", "id": "+16462000006", "org_id": 2, "phone": "+1"}"#,
            r#"{"kind": "+16462000006"}"#,
            "[1, 2]",
        ] {
            let err = decode(payload).unwrap_err();
            assert_eq!(err.len, payload.len());
            // The message never quotes the payload (it may hold phone numbers).
            let text = err.to_string();
            assert!(
                !text.contains("6462") && !text.contains("garbage"),
                "{text}"
            );
        }
    }
}
