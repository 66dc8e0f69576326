//! Fixtures for the call log's suites: an observer that counts, a fast configuration,
//! bounded waits, and entries written to a stream by hand (as another instance, an older
//! version or a consumer that died would leave them).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use sqlx::PgPool;
use tiercache_calls::{CallEvent, CallLogConfig, CallLogObserver, DropReason};
use tokio::time::Instant;

/// How long a test waits for the call log to get somewhere before it fails.
pub const BOUND: Duration = Duration::from_secs(20);

/// Gap between checks of a condition no event announces (rows in PostgreSQL, a stream).
const POLL: Duration = Duration::from_millis(20);

/// Everything the call log reported, counted.
#[derive(Debug, Default)]
pub struct Counts {
    /// Events appended (or handed to the store, without Redis).
    pub published: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped_full: AtomicU64,
    /// Events dropped at shutdown.
    pub dropped_shutdown: AtomicU64,
    /// Appends that failed.
    pub append_failed: AtomicU64,
    /// Events applied for the first time.
    pub applied: AtomicU64,
    /// Events delivered again, changing nothing.
    pub duplicates: AtomicU64,
    /// Entries claimed from another consumer.
    pub claimed: AtomicU64,
    /// Entries dead-lettered.
    pub dead_lettered: AtomicU64,
}

impl Counts {
    /// A counter's value now.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

impl CallLogObserver for Counts {
    fn published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::SeqCst);
    }
    fn dropped(&self, reason: DropReason, n: u64) {
        match reason {
            DropReason::QueueFull => &self.dropped_full,
            DropReason::Shutdown => &self.dropped_shutdown,
        }
        .fetch_add(n, Ordering::SeqCst);
    }
    fn append_failed(&self) {
        self.append_failed.fetch_add(1, Ordering::SeqCst);
    }
    fn applied(&self, n: u64) {
        self.applied.fetch_add(n, Ordering::SeqCst);
    }
    fn duplicates(&self, n: u64) {
        self.duplicates.fetch_add(n, Ordering::SeqCst);
    }
    fn claimed(&self, n: u64) {
        self.claimed.fetch_add(n, Ordering::SeqCst);
    }
    fn dead_lettered(&self, n: u64) {
        self.dead_lettered.fetch_add(n, Ordering::SeqCst);
    }
}

/// A configuration for tests: consumer `consumer`, short blocks and claim times, streams
/// kept ten minutes (so the shared Redis forgets them soon).
pub fn config(consumer: &str) -> CallLogConfig {
    CallLogConfig {
        queue_capacity: 1_000,
        batch_max: 64,
        stream_ttl: Duration::from_secs(600),
        consumer: consumer.to_owned(),
        block: Duration::from_millis(100),
        claim_idle: Duration::from_millis(300),
        claim_every: Duration::from_millis(100),
        max_deliveries: 3,
        command_timeout: Duration::from_millis(500),
        ..CallLogConfig::default()
    }
}

/// Waits until `check` holds, polling; panics naming `what` after [`BOUND`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + BOUND;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {BOUND:?}: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// How many events PostgreSQL holds.
pub async fn event_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM call_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// How many events each session says it is folded from, summed.
pub async fn session_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(sum(events), 0)::bigint FROM call_sessions")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A call's start and end, `secs` long, now.
pub fn call(sid: &str, org_id: i64, secs: f64) -> [CallEvent; 2] {
    let now = Utc::now();
    let started = CallEvent::started(sid.into(), org_id, None, "+14155550123", "new_caller", now);
    let ended = tiercache_calls::PostedEvent::check(
        "call_ended",
        None,
        Some(serde_json::json!({ "duration_seconds": secs })),
        now,
    )
    .unwrap();
    [started, CallEvent::new(sid.into(), org_id, ended)]
}

/// The stream key the call log uses for `org_id` on the day of `at` under `ns` (the
/// layout documented in crates/calls/src/streams.rs, spelled out again on purpose: a test
/// of the wire format).
pub fn stream_key(ns: &str, org_id: i64, at: DateTime<Utc>) -> String {
    format!("{ns}calls:{org_id}:{}", at.format("%Y%m%d"))
}

/// Appends entries with `fields` to `org_id`'s stream of today, creating the group and
/// registering the stream as the call log's script does; the stream and the entry ids.
pub async fn raw_append(
    conn: &mut MultiplexedConnection,
    ns: &str,
    org_id: i64,
    entries: &[Vec<(String, String)>],
) -> (String, Vec<String>) {
    let key = stream_key(ns, org_id, Utc::now());
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("calls")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    if let Err(e) = created {
        assert_eq!(e.code(), Some("BUSYGROUP"), "{e}");
    }
    let mut ids = Vec::new();
    for fields in entries {
        let id: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg(fields)
            .query_async(conn)
            .await
            .unwrap();
        ids.push(id);
    }
    let () = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(600_000)
        .query_async(conn)
        .await
        .unwrap();
    let () = redis::cmd("ZADD")
        .arg(format!("{ns}calls:streams"))
        .arg(Utc::now().timestamp_millis())
        .arg(&key)
        .query_async(conn)
        .await
        .map(|_: i64| ())
        .unwrap();
    (key, ids)
}

/// An event as the call log writes it into a stream entry.
pub fn entry(event: &CallEvent) -> Vec<(String, String)> {
    vec![
        ("id".into(), event.id.to_string()),
        ("sid".into(), event.call_sid.clone()),
        ("type".into(), event.kind.as_str().into()),
        ("at".into(), event.at_text()),
        ("data".into(), serde_json::to_string(&event.data).unwrap()),
    ]
}

/// The group's pending entries on `key` (the `XPENDING` summary's count).
pub async fn pending(conn: &mut MultiplexedConnection, key: &str) -> u64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(key)
        .arg("calls")
        .query_async(conn)
        .await
        .unwrap();
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap(),
            other => panic!("XPENDING count: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}
