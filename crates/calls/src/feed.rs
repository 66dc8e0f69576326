//! Session changes as they happen, per organization, from every instance (`LISTEN`).
//!
//! The store announces each change at commit (`pg_notify` on [`NOTIFY_CHANNEL`], the
//! session as JSON), so every instance's feed hears every instance's changes. The feed
//! keeps one `broadcast` channel per organization that someone follows: made when the
//! first client subscribes, dropped once no receiver is left, so an organization nobody
//! watches costs nothing.
//!
//! # When PostgreSQL fails
//! - The feed listens on a connection of its own (never one of the service's pool),
//!   reconnecting at once, then with a backoff doubling from 50 ms to 2 s.
//! - Changes committed while it was not listening are never heard. So when the connection
//!   is lost every organization's channel is closed: receivers get `Closed`, which means
//!   "catch up with [`SessionStore::changes`](crate::SessionStore::changes) from your last
//!   cursor and subscribe again". Nothing is lost for a client that does so.
//! - A connection that died without a word is found by a `SELECT 1` after 10 s without a
//!   notification.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener};
use tiercache_repository::listen::{self, Backoff};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::session::CallSession;
use crate::store::NOTIFY_CHANNEL;

/// Changes held for a receiver that has not read them; past it, it gets `Lagged`.
pub const FEED_CAPACITY: usize = 256;

/// The `application_name` of the feed's connection, to find it in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "tiercache-call-feed";

/// The live feed of session changes; cheap to clone.
#[derive(Clone)]
pub struct LiveFeed {
    inner: Arc<Inner>,
}

struct Inner {
    /// One channel per organization someone follows.
    orgs: Mutex<HashMap<i64, broadcast::Sender<Arc<CallSession>>>>,
    listening: AtomicBool,
}

impl LiveFeed {
    /// Listens on [`NOTIFY_CHANNEL`](crate::NOTIFY_CHANNEL) over a connection of its own,
    /// reconnecting when it drops; stops when the returned task is aborted.
    pub fn start(pool: PgPool) -> (LiveFeed, JoinHandle<()>) {
        let feed = LiveFeed {
            inner: Arc::new(Inner {
                orgs: Mutex::new(HashMap::new()),
                listening: AtomicBool::new(false),
            }),
        };
        // Same server and credentials as the service's pool, on a connection of its own.
        let options = (*pool.connect_options()).clone();
        let options = options.application_name(APPLICATION_NAME);
        let task = tokio::spawn(run(options, feed.clone()));
        (feed, task)
    }

    /// Every change to `org_id`'s sessions from now on. A receiver that falls behind gets
    /// `Lagged` and should catch up with [`SessionStore::changes`](crate::SessionStore::changes);
    /// one that gets `Closed` (the feed lost its connection) should catch up the same way
    /// and subscribe again.
    pub fn subscribe(&self, org_id: i64) -> broadcast::Receiver<Arc<CallSession>> {
        let mut orgs = self.inner.lock();
        orgs.entry(org_id)
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe()
    }

    /// Whether it is listening now (else changes reach clients only by catching up).
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::Relaxed)
    }

    /// Organizations with a channel now (followed, or not yet swept).
    pub fn followed(&self) -> usize {
        self.inner.lock().len()
    }

    /// Hands a change to its organization's followers, dropping the channel if none is
    /// left.
    fn deliver(&self, session: CallSession) {
        let mut orgs = self.inner.lock();
        let org_id = session.org_id;
        if let Some(sender) = orgs.get(&org_id)
            && sender.send(Arc::new(session)).is_err()
        {
            // `send` fails only when no receiver is left.
            orgs.remove(&org_id);
        }
    }

    /// Drops the channels nobody follows any more.
    fn sweep(&self) {
        self.inner
            .lock()
            .retain(|_, sender| sender.receiver_count() > 0);
    }

    /// Closes every channel: their receivers must catch up (changes were missed).
    fn close_all(&self) {
        self.inner.lock().clear();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, broadcast::Sender<Arc<CallSession>>>> {
        // The map stays consistent whatever a panicking holder did (one insert or remove).
        self.orgs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Connects, listens until the connection is lost, and again, until aborted.
async fn run(options: PgConnectOptions, feed: LiveFeed) {
    let mut backoff = Backoff::default();
    loop {
        let mut listener = match listen::connect(&options, NOTIFY_CHANNEL).await {
            Ok(listener) => listener,
            Err(e) => {
                let wait = backoff.wait();
                tracing::warn!(error = %e, retry_in = ?wait, "the call feed cannot listen");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff.reset();
        feed.inner.listening.store(true, Ordering::Relaxed);
        tracing::info!("the call feed is listening");
        let lost = receive(&mut listener, &feed).await;
        feed.inner.listening.store(false, Ordering::Relaxed);
        // Whatever commits until it listens again is not heard: followers catch up.
        feed.close_all();
        tracing::warn!(error = %lost, "the call feed lost its connection");
    }
}

/// Delivers notifications until the connection is lost; returns why it was.
async fn receive(listener: &mut PgListener, feed: &LiveFeed) -> sqlx::Error {
    loop {
        match listen::recv_until(listener, Instant::now() + listen::IDLE_CHECK).await {
            Ok(Some(notification)) => {
                handle(feed, notification.payload());
                continue;
            }
            Ok(None) => {}
            Err(lost) => return lost,
        }
        if let Err(lost) = listen::check(listener).await {
            return lost;
        }
        while let Some(notification) = listener.next_buffered() {
            handle(feed, notification.payload());
        }
        feed.sweep();
    }
}

fn handle(feed: &LiveFeed, payload: &str) {
    match serde_json::from_str::<CallSession>(payload) {
        Ok(session) => feed.deliver(session),
        // Where decoding failed, never what the payload held.
        Err(e) => tracing::warn!(
            len = payload.len(),
            category = ?e.classify(),
            column = e.column(),
            "skipped an undecodable call session notification"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Cursor, SessionStatus};
    use chrono::Utc;
    use std::time::Duration;

    fn session(org_id: i64, call_sid: &str, cursor: i64) -> CallSession {
        let now = Utc::now();
        CallSession {
            call_sid: call_sid.to_owned(),
            org_id,
            lead_id: None,
            caller: Some("•••4567".to_owned()),
            greeting_source: Some("new_caller".to_owned()),
            status: SessionStatus::InProgress,
            in_progress: true,
            started_at: now,
            authenticated_at: None,
            authentication_failed_at: None,
            intent: None,
            transfer_initiated_at: None,
            transferred_at: None,
            ended_at: None,
            duration_seconds: None,
            last_event: "call_started".to_owned(),
            last_event_at: now,
            events: 1,
            cursor: Cursor(cursor),
        }
    }

    async fn notify(pool: &PgPool, session: &CallSession) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(serde_json::to_string(session).unwrap())
            .execute(pool)
            .await
            .unwrap();
    }

    async fn listening(feed: &LiveFeed) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !feed.is_listening() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the feed listens within 10 s");
    }

    #[sqlx::test(migrator = "tiercache_repository::MIGRATOR")]
    async fn a_change_reaches_its_organizations_followers_only(pool: PgPool) {
        let (feed, task) = LiveFeed::start(pool.clone());
        let mut org_a = feed.subscribe(1);
        let mut org_b = feed.subscribe(2);
        listening(&feed).await;
        notify(&pool, &session(1, "CA-a", 7)).await;
        // Garbage on the channel is skipped, not fatal: the next change still arrives.
        sqlx::query("SELECT pg_notify($1, 'not json')")
            .bind(NOTIFY_CHANNEL)
            .execute(&pool)
            .await
            .unwrap();
        notify(&pool, &session(1, "CA-a2", 8)).await;
        let first = tokio::time::timeout(Duration::from_secs(5), org_a.recv())
            .await
            .expect("org 1's change within 5 s")
            .unwrap();
        assert_eq!((first.call_sid.as_str(), first.cursor), ("CA-a", Cursor(7)));
        let second = tokio::time::timeout(Duration::from_secs(5), org_a.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.call_sid, "CA-a2");
        // Org 2's follower heard nothing: its change comes after org 1's, in commit order,
        // so once it arrives nothing of org 1's is queued ahead of it.
        notify(&pool, &session(2, "CA-b", 1)).await;
        let only = tokio::time::timeout(Duration::from_secs(5), org_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((only.org_id, only.call_sid.as_str()), (2, "CA-b"));
        assert!(org_b.try_recv().is_err());
        task.abort();
    }

    #[sqlx::test(migrator = "tiercache_repository::MIGRATOR")]
    async fn a_channel_nobody_follows_is_dropped(pool: PgPool) {
        let (feed, task) = LiveFeed::start(pool.clone());
        let gone = feed.subscribe(3);
        let mut kept = feed.subscribe(4);
        listening(&feed).await;
        assert_eq!(feed.followed(), 2);
        drop(gone);
        notify(&pool, &session(3, "CA-3", 1)).await;
        notify(&pool, &session(4, "CA-4", 1)).await;
        // Org 4's change is delivered after org 3's, which found no receiver.
        tokio::time::timeout(Duration::from_secs(5), kept.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(feed.followed(), 1);
        task.abort();
    }
}
