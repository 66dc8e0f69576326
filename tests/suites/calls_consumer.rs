//! The call log's consumer group on the shared Redis (a namespace per test): entries a
//! consumer died holding are claimed and applied exactly once, an entry that keeps failing
//! ends in the dead-letter stream, two instances apply each event once between them, and
//! operators see lengths, groups, consumers and pending counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use redis::streams::{StreamPendingCountReply, StreamReadReply};
use tiercache_calls::{Applied, CallLog, SessionStore};
use tiercache_tests::calls::{
    BOUND, Counts, call, config, entry, event_rows, eventually, pending, raw_append,
    session_events, stream_key,
};
use tiercache_tests::db::TestDb;
use tiercache_tests::{PgServer, SHARED_REDIS_URL, shared_redis, unique_namespace};

fn ns(tag: &str) -> String {
    format!("{}:", unique_namespace(tag))
}

fn shared_client() -> redis::Client {
    redis::Client::open(SHARED_REDIS_URL).unwrap()
}

/// Reads every new entry of `key` as consumer `name`, which then never acknowledges them:
/// a consumer killed mid-batch.
async fn read_and_die(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    name: &str,
) -> usize {
    let reply: StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("calls")
        .arg(name)
        .arg("COUNT")
        .arg(1000)
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
    reply.keys.iter().map(|k| k.ids.len()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_consumer_killed_mid_batch_are_claimed_and_applied_once() {
    let db = TestDb::migrated("callsclaim").await;
    let pool = db.pool().await;
    let store = SessionStore::new(pool.clone());
    let ns = ns("callsclaim");
    let mut redis = shared_redis().await;

    // Ten calls' events in the stream; the dead consumer had committed the first three
    // (applied in PostgreSQL) but acknowledged none before it died.
    let events: Vec<_> = (0..10)
        .flat_map(|i| call(&format!("CA-{i}"), 11, 2.0))
        .collect();
    let entries: Vec<_> = events.iter().map(entry).collect();
    let (key, _) = raw_append(&mut redis, &ns, 11, &entries).await;
    assert_eq!(read_and_die(&mut redis, &key, "dead-1").await, events.len());
    const COMMITTED: usize = 3;
    for outcome in store.apply(&events[..COMMITTED]).await {
        assert!(matches!(outcome, Ok(Applied::New(_))));
    }
    assert_eq!(pending(&mut redis, &key).await, events.len() as u64);

    let counts = Arc::new(Counts::default());
    let (_log, _tasks) = CallLog::start(
        config("live-1"),
        Some(shared_client()),
        &ns,
        store,
        counts.clone(),
    );
    eventually("the dead consumer's entries are settled", || {
        let mut redis = redis.clone();
        let key = key.clone();
        async move { pending(&mut redis, &key).await == 0 }
    })
    .await;
    let n = events.len() as u64;
    assert_eq!(Counts::get(&counts.claimed), n, "all claimed");
    assert_eq!(
        Counts::get(&counts.applied),
        n - COMMITTED as u64,
        "the rest applied"
    );
    assert_eq!(
        Counts::get(&counts.duplicates),
        COMMITTED as u64,
        "the committed ones not again"
    );
    assert_eq!(event_rows(&pool).await, n as i64);
    assert_eq!(
        session_events(&pool).await,
        n as i64,
        "each event folded once"
    );
    assert_eq!(Counts::get(&counts.dead_lettered), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_keeps_failing_ends_in_the_dead_letters_acknowledged() {
    let db = TestDb::migrated("callsdead").await;
    let pool = db.pool().await;
    let ns = ns("callsdead");
    let mut redis = shared_redis().await;
    let [good, _] = call("CA-good", 12, 1.0);
    let mut bad = entry(&good);
    bad[0].1 = uuid_like();
    bad[2].1 = "call_exploded".into();
    let (key, ids) = raw_append(&mut redis, &ns, 12, &[bad, entry(&good)]).await;

    let counts = Arc::new(Counts::default());
    let (log, _tasks) = CallLog::start(
        config("live-dead"),
        Some(shared_client()),
        &ns,
        SessionStore::new(pool.clone()),
        counts.clone(),
    );
    let dead_key = format!("{ns}calls:dead");
    eventually(
        "the bad entry is dead-lettered and nothing is pending",
        || {
            let mut redis = redis.clone();
            let (key, dead_key) = (key.clone(), dead_key.clone());
            async move {
                let len: u64 = redis::cmd("XLEN")
                    .arg(&dead_key)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                len == 1 && pending(&mut redis, &key).await == 0
            }
        },
    )
    .await;
    let dead: StreamReadReply = redis::cmd("XREAD")
        .arg("STREAMS")
        .arg(&dead_key)
        .arg("0")
        .query_async(&mut redis)
        .await
        .unwrap();
    let fields: HashMap<String, String> = dead.keys[0].ids[0]
        .map
        .iter()
        .map(|(k, v)| (k.clone(), redis::from_redis_value(v.clone()).unwrap()))
        .collect();
    assert_eq!(fields["stream"], key);
    assert_eq!(fields["entry"], ids[0]);
    assert_eq!(fields["error"], "bad_type");
    assert_eq!(fields["deliveries"], "3", "after max_deliveries deliveries");
    assert_eq!(fields["field:type"], "call_exploded");
    assert_eq!(Counts::get(&counts.dead_lettered), 1);
    assert_eq!(log.dead_letters().await.unwrap(), 1);
    assert_eq!(log.status().dead_lettered, 1);
    // The good entry beside it was applied, once.
    assert_eq!(event_rows(&pool).await, 1);
    assert_eq!(Counts::get(&counts.applied), 1);
}

/// A valid event id (UUID text), so only the type is at fault.
fn uuid_like() -> String {
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        rand::random::<u32>(),
        rand::random::<u64>() >> 16
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_apply_each_event_once_between_them() {
    let db = TestDb::migrated("callstwo").await;
    let pool = db.pool().await;
    let ns = ns("callstwo");
    let (a_counts, b_counts) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    let (a, _a_tasks) = CallLog::start(
        config("instance-a"),
        Some(shared_client()),
        &ns,
        SessionStore::new(pool.clone()),
        a_counts.clone(),
    );
    let (b, _b_tasks) = CallLog::start(
        config("instance-b"),
        Some(shared_client()),
        &ns,
        SessionStore::new(db.pool().await),
        b_counts.clone(),
    );
    const CALLS: usize = 30;
    for i in 0..CALLS {
        // Started through one instance, ended through the other, across three orgs.
        let [started, ended] = call(&format!("CA-{i}"), 20 + (i as i64 % 3), 1.0);
        let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        first.publish(started);
        second.publish(ended);
    }
    tokio::time::timeout(BOUND, a.flush()).await.unwrap();
    tokio::time::timeout(BOUND, b.flush()).await.unwrap();
    let total = 2 * CALLS as u64;
    eventually("every event is applied", || async {
        Counts::get(&a_counts.applied) + Counts::get(&b_counts.applied) == total
    })
    .await;
    assert_eq!(event_rows(&pool).await, total as i64);
    assert_eq!(session_events(&pool).await, total as i64);
    assert_eq!(
        Counts::get(&a_counts.duplicates) + Counts::get(&b_counts.duplicates),
        0,
        "no entry delivered twice"
    );
    assert_eq!(
        Counts::get(&a_counts.published) + Counts::get(&b_counts.published),
        total
    );
    let ended: i64 =
        sqlx::query_scalar("SELECT count(*) FROM call_sessions WHERE status = 'ended'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(ended, CALLS as i64);

    // What an operator sees: three streams (one per org, today), each with the group, both
    // consumers known to it, nothing pending or undelivered.
    eventually("both consumers have nothing pending", || async {
        let streams = a.streams().await.unwrap();
        streams
            .iter()
            .all(|s| s.groups.iter().all(|g| g.pending == 0 && g.lag == Some(0)))
    })
    .await;
    let streams = a.streams().await.unwrap();
    assert_eq!(streams.len(), 3);
    let lengths: u64 = streams.iter().map(|s| s.length).sum();
    assert_eq!(lengths, total);
    for stream in &streams {
        assert!((20..23).contains(&stream.org_id), "{stream:?}");
        assert_eq!(stream.groups.len(), 1);
        assert_eq!(stream.groups[0].name, "calls");
        assert!(stream.first_entry.is_some() && stream.last_entry.is_some());
        let names: Vec<&str> = stream.groups[0]
            .consumers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            !names.is_empty() && names.iter().all(|n| n.starts_with("instance-")),
            "{names:?}"
        );
    }
    assert_eq!(a.dead_letters().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_keeps_entries_pending_not_dead_lettered() {
    let mut pg = PgServer::start().await;
    let url = pg.create_database("app").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        // A down server fails each apply at once instead of after sqlx's 30 s default.
        .acquire_timeout(Duration::from_millis(300))
        .connect(&url)
        .await
        .unwrap();
    tiercache_repository::MIGRATOR.run(&pool).await.unwrap();
    let ns = ns("callspgdown");
    let mut redis = shared_redis().await;
    let counts = Arc::new(Counts::default());
    let (log, _tasks) = CallLog::start(
        tiercache_calls::CallLogConfig {
            max_deliveries: 2,
            claim_idle: Duration::from_millis(200),
            ..config("pgdown")
        },
        Some(shared_client()),
        &ns,
        SessionStore::new(pool.clone()),
        counts.clone(),
    );
    pg.stop().await;
    for i in 0..2 {
        for event in call(&format!("CA-{i}"), 30, 1.0) {
            log.publish(event);
        }
    }
    tokio::time::timeout(BOUND, log.flush()).await.unwrap();
    let key = stream_key(&ns, 30, Utc::now());
    // Delivered past max_deliveries while PostgreSQL is down: failing to apply then is not
    // the entries' fault.
    eventually(
        "every entry is delivered more than max_deliveries times",
        || {
            let mut redis = redis.clone();
            let key = key.clone();
            async move {
                let pending: StreamPendingCountReply = redis::cmd("XPENDING")
                    .arg(&key)
                    .arg("calls")
                    .arg("-")
                    .arg("+")
                    .arg(100)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                pending.ids.len() == 4 && pending.ids.iter().all(|p| p.times_delivered > 2)
            }
        },
    )
    .await;
    let dead: u64 = redis::cmd("XLEN")
        .arg(format!("{ns}calls:dead"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(dead, 0, "nothing dead-lettered during the outage");

    pg.start_again().await;
    eventually("the entries are applied once PostgreSQL is back", || {
        let mut redis = redis.clone();
        let key = key.clone();
        let pool = pool.clone();
        async move { pending(&mut redis, &key).await == 0 && event_rows(&pool).await == 4 }
    })
    .await;
    assert_eq!(Counts::get(&counts.applied), 4);
    assert_eq!(Counts::get(&counts.dead_lettered), 0);
}
