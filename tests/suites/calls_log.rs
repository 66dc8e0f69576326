//! The call log's way in: events published through Redis outages (killed and restarted
//! empty, frozen), without Redis at all, and applied to sessions out of order and twice.
//! Each test has its own database; Redis faults happen on a throwaway `redis-server`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Duration as TimeDelta, SubsecRound, Utc};
use futures_util::FutureExt;
use sqlx::postgres::PgListener;
use tiercache_calls::{
    Applied, CallEvent, CallLog, CallLogConfig, NOTIFY_CHANNEL, PostedEvent, SessionStatus,
    SessionStore,
};
use tiercache_tests::calls::{BOUND, Counts, call, config, event_rows, eventually, session_events};
use tiercache_tests::db::TestDb;
use tiercache_tests::{RedisServer, command_count, unique_namespace};

fn ns(tag: &str) -> String {
    format!("{}:", unique_namespace(tag))
}

fn client(url: &str) -> redis::Client {
    redis::Client::open(url).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_while_redis_is_down_all_land_once_after_its_restart() {
    let db = TestDb::migrated("callsrestart").await;
    let pool = db.pool().await;
    let mut redis = RedisServer::start().await;
    let counts = Arc::new(Counts::default());
    let (log, _tasks) = CallLog::start(
        config("restart"),
        Some(client(&redis.url())),
        &ns("callsrestart"),
        SessionStore::new(pool.clone()),
        counts.clone(),
    );
    // One call through a working Redis first, so the outage hits a running log.
    for event in call("CA-before", 1, 3.0) {
        log.publish(event);
    }
    eventually("the first call is applied", || async {
        event_rows(&pool).await == 2
    })
    .await;

    redis.stop().await;
    const CALLS: usize = 15;
    for i in 0..CALLS {
        for event in call(&format!("CA-{i}"), 1 + (i as i64 % 3), 1.0) {
            log.publish(event);
        }
    }
    // Nothing can leave the queue while Redis is down.
    assert_eq!(log.status().queue_depth, 2 * CALLS);
    redis.restart().await;

    tokio::time::timeout(BOUND, log.flush()).await.unwrap();
    // The restarted server saw the whole queue go in one batch: one script run holding an
    // XADD per event and a SET (call → organization) per call_started only.
    let mut admin = redis.client().await;
    assert_eq!(command_count(&mut admin, "xadd").await, 2 * CALLS as u64);
    assert_eq!(command_count(&mut admin, "set").await, CALLS as u64);
    // Each of the three streams' expiry and registry entry once in the batch, not per event
    // (and the registry's own expiry).
    assert_eq!(command_count(&mut admin, "pexpire").await, 3 + 1);
    assert_eq!(command_count(&mut admin, "zadd").await, 3);
    // Two EVALSHAs: the first finds the empty server without the script (NOSCRIPT), the
    // client loads it and sends the same one again.
    assert_eq!(command_count(&mut admin, "evalsha").await, 2);
    let total = 2 + 2 * CALLS as i64;
    eventually("every event is applied", || async {
        event_rows(&pool).await == total
    })
    .await;
    assert_eq!(session_events(&pool).await, total, "each event folded once");
    let ended: i64 =
        sqlx::query_scalar("SELECT count(*) FROM call_sessions WHERE status = 'ended'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(ended, 1 + CALLS as i64);
    assert_eq!(Counts::get(&counts.dropped_full), 0, "none dropped");
    assert_eq!(Counts::get(&counts.published), total as u64);
    assert_eq!(Counts::get(&counts.applied), total as u64);
    assert_eq!(Counts::get(&counts.duplicates), 0);
    assert!(
        Counts::get(&counts.append_failed) > 0,
        "the outage was seen"
    );
    let status = log.status();
    assert_eq!((status.queue_depth, status.dropped), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_queue_bound_drops_are_counted_and_the_rest_land() {
    let db = TestDb::migrated("callsoverflow").await;
    let pool = db.pool().await;
    let mut redis = RedisServer::start().await;
    let counts = Arc::new(Counts::default());
    const CAPACITY: usize = 8;
    let (log, _tasks) = CallLog::start(
        tiercache_calls::CallLogConfig {
            queue_capacity: CAPACITY,
            ..config("overflow")
        },
        Some(client(&redis.url())),
        &ns("callsoverflow"),
        SessionStore::new(pool.clone()),
        counts.clone(),
    );
    redis.stop().await;
    const PUBLISHED: usize = 13;
    for i in 0..PUBLISHED {
        let [started, _] = call(&format!("CA-{i}"), 5, 1.0);
        log.publish(started);
    }
    let overflow = (PUBLISHED - CAPACITY) as u64;
    assert_eq!(Counts::get(&counts.dropped_full), overflow);
    assert_eq!(log.status().dropped, overflow);
    assert_eq!(log.status().queue_depth, CAPACITY);

    redis.restart().await;
    tokio::time::timeout(BOUND, log.flush()).await.unwrap();
    eventually("the queued events are applied", || async {
        event_rows(&pool).await == CAPACITY as i64
    })
    .await;
    // The first ones queued are the ones kept: the overflow was the newest.
    let kept: Vec<String> =
        sqlx::query_scalar("SELECT call_sid FROM call_sessions ORDER BY call_sid")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut expected: Vec<String> = (0..CAPACITY).map(|i| format!("CA-{i}")).collect();
    expected.sort();
    assert_eq!(kept, expected);
    assert_eq!(
        Counts::get(&counts.dropped_full),
        overflow,
        "no more dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_still_queued_at_shutdown_are_counted_as_dropped() {
    let db = TestDb::migrated("callsshutdown").await;
    let mut redis = RedisServer::start().await;
    let counts = Arc::new(Counts::default());
    let (log, tasks) = CallLog::start(
        config("shutdown"),
        Some(client(&redis.url())),
        &ns("callsshutdown"),
        SessionStore::new(db.pool().await),
        counts.clone(),
    );
    redis.stop().await;
    for event in call("CA-late", 1, 1.0) {
        log.publish(event);
    }
    drop(tasks);
    assert_eq!(Counts::get(&counts.dropped_shutdown), 2);
    // A clone still held somewhere publishes into a closed log: dropped too, not queued.
    let [started, _] = call("CA-later", 1, 1.0);
    log.publish(started);
    assert_eq!(Counts::get(&counts.dropped_shutdown), 3);
    assert_eq!(log.status().queue_depth, 0);
    assert_eq!(Counts::get(&counts.dropped_full), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_does_not_wait_for_a_frozen_redis() {
    let db = TestDb::migrated("callspaused").await;
    let pool = db.pool().await;
    let redis = RedisServer::start().await;
    let counts = Arc::new(Counts::default());
    let (log, _tasks) = CallLog::start(
        config("paused"),
        Some(client(&redis.url())),
        &ns("callspaused"),
        SessionStore::new(pool.clone()),
        counts.clone(),
    );
    redis.pause();
    const EVENTS: usize = 40;
    for i in 0..EVENTS / 2 {
        for event in call(&format!("CA-{i}"), 2, 1.0) {
            log.publish(event);
        }
    }
    // Every publish returned with Redis answering nothing: all of them are still queued,
    // none written, none dropped.
    assert_eq!(log.status().queue_depth, EVENTS);
    assert_eq!(Counts::get(&counts.published), 0);
    assert_eq!(Counts::get(&counts.dropped_full), 0);
    redis.resume();
    tokio::time::timeout(BOUND, log.flush()).await.unwrap();
    eventually("every event is applied", || async {
        event_rows(&pool).await == EVENTS as i64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_events_go_straight_to_the_sessions() {
    let db = TestDb::migrated("callsdirect").await;
    let pool = db.pool().await;
    let store = SessionStore::new(pool.clone());
    let counts = Arc::new(Counts::default());
    let (log, _tasks) = CallLog::start(
        config("direct"),
        None,
        "unused:",
        store.clone(),
        counts.clone(),
    );
    for event in call("CA-direct", 9, 12.5) {
        log.publish(event);
    }
    tokio::time::timeout(BOUND, log.flush()).await.unwrap();
    // flush returns once the batch is applied: no waiting on a consumer.
    let (sessions, cursor) = store
        .sessions(9, Utc::now() - TimeDelta::hours(1), 10)
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].status, SessionStatus::Ended);
    assert_eq!(sessions[0].duration_seconds, Some(12.5));
    assert_eq!(sessions[0].caller.as_deref(), Some("•••0123"));
    assert_eq!(cursor, sessions[0].cursor);
    let status = log.status();
    assert!(!status.redis);
    assert!(status.consumer.is_none());
    assert_eq!((status.published, status.applied), (2, 2));
    assert_eq!(log.streams().await.unwrap().len(), 0);
    assert_eq!(log.dead_letters().await.unwrap(), 0);

    // Another instance knows the call only through the sessions.
    let (other, _other_tasks) = CallLog::start(
        config("direct2"),
        None,
        "unused:",
        store,
        Arc::new(Counts::default()),
    );
    assert_eq!(other.org_of("CA-direct").await.unwrap(), Some(9));
    assert_eq!(other.org_of("CA-nobody").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_of_asks_this_instance_then_redis_then_the_sessions() {
    let db = TestDb::migrated("callsorgof").await;
    let empty_db = TestDb::migrated("callsorgofempty").await;
    let mut redis = RedisServer::start().await;
    let ns = ns("callsorgof");
    let (a, _a_tasks) = CallLog::start(
        config("orgof-a"),
        Some(client(&redis.url())),
        &ns,
        SessionStore::new(db.pool().await),
        Arc::new(Counts::default()),
    );
    let [started, _] = call("CA-org", 4, 1.0);
    a.publish(started);
    // Known at once to the instance that published it, before any write.
    assert_eq!(a.org_of("CA-org").await.unwrap(), Some(4));
    tokio::time::timeout(BOUND, a.flush()).await.unwrap();
    // Applied by A's consumer before B joins the group (B's consumer would apply into its
    // own, empty, database).
    let c_pool = db.pool().await;
    eventually("the call is applied", || async {
        event_rows(&c_pool).await == 1
    })
    .await;

    // An instance on an empty database can only have learnt it from Redis.
    let (b, _b_tasks) = CallLog::start(
        config("orgof-b"),
        Some(client(&redis.url())),
        &ns,
        SessionStore::new(empty_db.pool().await),
        Arc::new(Counts::default()),
    );
    assert_eq!(b.org_of("CA-org").await.unwrap(), Some(4));
    assert_eq!(b.org_of("CA-unknown").await.unwrap(), None);

    // Redis down: the sessions answer when they know; when they do not, no one can tell.
    redis.stop().await;
    let (c, _c_tasks) = CallLog::start(
        config("orgof-c"),
        Some(client(&redis.url())),
        &ns,
        SessionStore::new(c_pool),
        Arc::new(Counts::default()),
    );
    assert_eq!(c.org_of("CA-org").await.unwrap(), Some(4));
    assert!(c.org_of("CA-unknown").await.is_err());
    // And with PostgreSQL unreachable too: unavailable, never "unknown".
    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let (d, _d_tasks) = CallLog::start(
        config("orgof-d"),
        Some(client(&redis.url())),
        &ns,
        SessionStore::new(unreachable),
        Arc::new(Counts::default()),
    );
    assert!(d.org_of("CA-org").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_events_fold_right_and_a_replay_changes_nothing() {
    let db = TestDb::migrated("callsorder").await;
    let pool = db.pool().await;
    let store = SessionStore::new(pool.clone());
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen(NOTIFY_CHANNEL).await.unwrap();

    // PostgreSQL keeps microseconds; a time it can hold exactly compares equal afterwards.
    let t0 = Utc::now().trunc_subsecs(3) - TimeDelta::minutes(10);
    let posted = |kind: &str, secs: i64, data: serde_json::Value| {
        let at = (t0 + TimeDelta::seconds(secs)).to_rfc3339();
        let event = PostedEvent::check(kind, Some(&at), Some(data), Utc::now()).unwrap();
        CallEvent::new("CA-order".into(), 3, event)
    };
    let started = CallEvent::started("CA-order".into(), 3, Some(77), "+1", "lead", t0);
    let ended = posted(
        "call_ended",
        90,
        serde_json::json!({"duration_seconds": 90}),
    );
    let intent = posted(
        "intent_detected",
        20,
        serde_json::json!({"intent": "billing"}),
    );
    let transfer = posted("transfer_initiated", 30, serde_json::json!({}));
    // The end first, the start last.
    for event in [&ended, &intent, &transfer, &started] {
        let outcome = store.apply(std::slice::from_ref(event)).await;
        assert!(matches!(outcome[0], Ok(Applied::New(_))), "{outcome:?}");
    }
    let (changes, cursor) = store
        .changes(3, tiercache_calls::Cursor(0), 10)
        .await
        .unwrap();
    assert_eq!(changes.len(), 1);
    let session = &changes[0];
    assert_eq!(
        session.status,
        SessionStatus::Ended,
        "ended beats transferring"
    );
    assert_eq!(session.started_at, t0);
    assert_eq!(session.lead_id, Some(77));
    assert_eq!(session.greeting_source.as_deref(), Some("lead"));
    assert_eq!(session.intent.as_deref(), Some("billing"));
    assert_eq!(
        session.transfer_initiated_at,
        Some(t0 + TimeDelta::seconds(30))
    );
    assert_eq!(session.duration_seconds, Some(90.0));
    assert_eq!(session.last_event, "call_ended");
    assert_eq!(session.events, 4);
    assert_eq!(
        cursor,
        tiercache_calls::Cursor(4),
        "one change per new event"
    );
    for _ in 0..4 {
        let note = tokio::time::timeout(BOUND, listener.recv())
            .await
            .unwrap()
            .unwrap();
        let announced: tiercache_calls::CallSession = serde_json::from_str(note.payload()).unwrap();
        assert_eq!(announced.call_sid, "CA-order");
    }

    // The same events again: duplicates, no change, no cursor, no announcement.
    let again = store.apply(&[ended.clone(), started.clone()]).await;
    assert!(
        again.iter().all(|o| matches!(o, Ok(Applied::Duplicate))),
        "{again:?}"
    );
    let (after, cursor_after) = store
        .changes(3, tiercache_calls::Cursor(0), 10)
        .await
        .unwrap();
    assert_eq!(&after[0], session);
    assert_eq!(cursor_after, cursor);
    assert_eq!(event_rows(&pool).await, 4);
    // The next announcement is a marker applied after the duplicates: they sent none.
    let [marker, _] = call("CA-marker", 3, 1.0);
    store.apply(&[marker]).await;
    let note = tokio::time::timeout(BOUND, listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(note.payload().contains("CA-marker"), "{}", note.payload());
    assert!(listener.recv().now_or_never().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_list_holds_recent_calls_newest_first_and_old_ones_in_progress() {
    let db = TestDb::migrated("callslist").await;
    let store = SessionStore::new(db.pool().await);
    let now = Utc::now();
    let old_open = CallEvent::started(
        "CA-old-open".into(),
        6,
        None,
        "+1",
        "new_caller",
        now - TimeDelta::hours(2),
    );
    let old_closed = call("CA-old-closed", 6, 1.0).map(|mut e| {
        e.at = now - TimeDelta::hours(3);
        e
    });
    let [recent, _] = call("CA-recent", 6, 1.0);
    let [other_org, _] = call("CA-other", 8, 1.0);
    store.apply(&[old_open, recent, other_org]).await;
    store.apply(&old_closed).await;
    let (sessions, _) = store
        .sessions(6, now - TimeDelta::minutes(5), 10)
        .await
        .unwrap();
    let sids: Vec<&str> = sessions.iter().map(|s| s.call_sid.as_str()).collect();
    assert_eq!(sids, ["CA-recent", "CA-old-open"]);
    assert!(sessions.iter().all(|s| s.in_progress));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_folds_each_call_once_and_a_bad_event_fails_alone() {
    let db = TestDb::migrated("callsbatch").await;
    let pool = db.pool().await;
    let store = SessionStore::new(pool.clone());

    // One batch: two calls (one started and ended), and a replay of an event in it.
    let [a_started, a_ended] = call("CA-batch-a", 4, 30.0);
    let [b_started, _] = call("CA-batch-b", 4, 5.0);
    let batch = [a_started.clone(), a_ended, b_started, a_started.clone()];
    let outcomes = store.apply(&batch).await;
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Ok(Applied::New(_)) => "new",
            Ok(Applied::Duplicate) => "duplicate",
            Err(_) => "error",
        })
        .collect();
    assert_eq!(kinds, ["new", "new", "new", "duplicate"]);
    let (changes, cursor) = store
        .changes(4, tiercache_calls::Cursor(0), 10)
        .await
        .unwrap();
    // One change per call, not one per event: the batch folded each call once.
    assert_eq!(cursor, tiercache_calls::Cursor(2), "{changes:?}");
    let a = changes.iter().find(|s| s.call_sid == "CA-batch-a").unwrap();
    assert_eq!((a.status, a.events), (SessionStatus::Ended, 2));
    assert_eq!(event_rows(&pool).await, 3);

    // An event PostgreSQL refuses (a NUL in its data, which `PostedEvent::check` refuses at
    // the door; built by hand here) fails alone: the others of its batch are applied.
    let [c_started, c_ended] = call("CA-batch-c", 4, 1.0);
    let mut bad = CallEvent::new(
        "CA-batch-d".into(),
        4,
        PostedEvent::check("intent_detected", None, None, Utc::now()).unwrap(),
    );
    bad.data
        .insert("x".into(), serde_json::Value::from("a\u{0}b"));
    let outcomes = store.apply(&[c_started, bad, c_ended]).await;
    assert!(matches!(outcomes[0], Ok(Applied::New(_))), "{outcomes:?}");
    assert!(outcomes[1].is_err(), "{outcomes:?}");
    assert!(matches!(outcomes[2], Ok(Applied::New(_))), "{outcomes:?}");
    assert_eq!(event_rows(&pool).await, 5);
    assert_eq!(store.org_of("CA-batch-d").await.unwrap(), None);
    assert_eq!(store.org_of("CA-batch-c").await.unwrap(), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_does_not_consume_publishes_for_one_that_does() {
    let db = TestDb::migrated("callspublishonly").await;
    let pool = db.pool().await;
    let redis = RedisServer::start().await;
    let namespace = ns("callspublishonly");
    // Short blocks: were it consuming, it would read the group many times below.
    let publisher = CallLogConfig {
        consume: false,
        block: Duration::from_millis(20),
        ..config("publisher")
    };
    let (log, _tasks) = CallLog::start(
        publisher,
        Some(client(&redis.url())),
        &namespace,
        SessionStore::new(pool.clone()),
        Arc::new(Counts::default()),
    );
    for event in call("CA-published", 5, 2.0) {
        log.publish(event);
    }
    tokio::time::timeout(BOUND, log.flush()).await.unwrap();
    assert!(log.status().consumer.is_none(), "it runs no consumer");
    let mut admin = redis.client().await;
    let key = tiercache_tests::calls::stream_key(&namespace, 5, Utc::now());
    let length: u64 = redis::cmd("XLEN")
        .arg(&key)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(length, 2, "appended");
    assert_eq!(
        command_count(&mut admin, "xreadgroup").await,
        0,
        "never read"
    );
    assert_eq!(event_rows(&pool).await, 0);

    // A consuming instance elsewhere applies them.
    let (_consumer, _consumer_tasks) = CallLog::start(
        config("consumer"),
        Some(client(&redis.url())),
        &namespace,
        SessionStore::new(pool.clone()),
        Arc::new(Counts::default()),
    );
    eventually("the consumer applies both events", || async {
        event_rows(&pool).await == 2
    })
    .await;
    // More calls through the publisher, each applied by the other: the publisher, started
    // first, would have joined the group (a consumer joins by reading) many times over.
    for round in 0..3 {
        for event in call(&format!("CA-published-{round}"), 5, 2.0) {
            log.publish(event);
        }
        eventually("the consumer applies them", || async {
            event_rows(&pool).await == 4 + 2 * round
        })
        .await;
    }
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&key)
        .arg("calls")
        .query_async(&mut admin)
        .await
        .unwrap();
    let names: Vec<String> = consumers
        .iter()
        .map(|c| {
            let fields: std::collections::HashMap<String, redis::Value> =
                redis::FromRedisValue::from_redis_value(c.clone()).unwrap();
            redis::FromRedisValue::from_redis_value(fields["name"].clone()).unwrap()
        })
        .collect();
    assert_eq!(
        names,
        ["consumer"],
        "only the consuming instance reads the group"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_calls_events_never_forks_parallel_workers() {
    let db = TestDb::migrated("callsserial").await;
    let pool = db.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    // Costs that make any parallel plan the cheapest, as lagging statistics on a large
    // table did in the webhook bench (a worker forked for every batch).
    for setting in [
        "SET parallel_setup_cost = 0",
        "SET parallel_tuple_cost = 0",
        "SET min_parallel_table_scan_size = 0",
        "SET min_parallel_index_scan_size = 0",
        "SET enable_indexscan = off",
        "SET enable_bitmapscan = off",
    ] {
        sqlx::query(setting).execute(&mut *conn).await.unwrap();
    }
    for table in ["call_events", "call_sessions"] {
        let plan: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN SELECT * FROM {table} WHERE call_sid = ANY(ARRAY['a', 'b'])"
        ))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(
            !plan.contains("Gather") && !plan.contains("Parallel"),
            "{table}: {plan}"
        );
    }
}
