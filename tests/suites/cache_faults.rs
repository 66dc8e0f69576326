//! Redis failing under the cache, on a throwaway server: reads keep answering, the breaker
//! opens, and L2 is used again once Redis is back. Also: what a hit costs in commands.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tiercache::{CircuitState, TwoTierCache};
use tiercache_tests::cache::{TestLead, config};
use tiercache_tests::{
    Recorder, RedisServer, command_count, connections_received, unique_namespace,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{Notify, oneshot};

async fn read(cache: &TwoTierCache, id: i64, calls: &Arc<AtomicU32>) -> TestLead {
    let calls = calls.clone();
    let key = tiercache_repository::keys(cache).lead_by_id(id);
    let v = cache
        .get_or_load(key, move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, io::Error>(Some(TestLead::new(id, 1)))
        })
        .await
        .expect("a read whose loader answers never fails");
    (*v.unwrap()).clone()
}

/// A cache (no observer) on `server` under namespace `ns`.
fn cache_on(server: &RedisServer, ns: &str) -> TwoTierCache {
    TwoTierCache::new(
        config(ns, Some(&server.url())).build().unwrap(),
        tiercache::NoopObserver,
    )
    .unwrap()
}

async fn next_change(
    rx: &mut UnboundedReceiver<(CircuitState, CircuitState)>,
) -> (CircuitState, CircuitState) {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a circuit change within 5 s")
        .expect("the recorder lives")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_redis_dying_and_l2_returns_with_it() {
    let mut server = RedisServer::start().await;
    let ns = unique_namespace("fault");
    let (recorder, mut circuit) = Recorder::new();
    let rec = Arc::new(recorder);
    let config = config(&ns, Some(&server.url()))
        .l2_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let cache = TwoTierCache::with_observer(config, rec.clone()).unwrap();
    let calls = Arc::new(AtomicU32::new(0));

    for id in 0..10 {
        read(&cache, id, &calls).await;
    }
    assert_eq!(rec.count("lookup.lead.l2.miss"), 10);
    assert_eq!(rec.sum("l2_error"), 0);

    server.stop().await;
    // Cached values answer from L1; new keys from the loader; nothing fails.
    for id in 0..10 {
        assert_eq!(read(&cache, id, &calls).await, TestLead::new(id, 1));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10, "L1 served the warm keys");
    for id in 10..20 {
        assert_eq!(read(&cache, id, &calls).await, TestLead::new(id, 1));
    }
    assert_eq!(
        next_change(&mut circuit).await,
        (CircuitState::Closed, CircuitState::Open)
    );
    assert_eq!(cache.circuit(), Some(CircuitState::Open));
    assert!(rec.count("l2_error.connection") + rec.count("l2_error.timeout") >= 3);
    assert!(
        rec.count("l2_error.circuit_open") >= 1,
        "open circuit skips L2"
    );

    server.restart().await;
    // The breaker stays open for its period, then one read probes and closes it.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let before = calls.load(Ordering::SeqCst);
    read(&cache, 100, &calls).await;
    assert_eq!(
        next_change(&mut circuit).await,
        (CircuitState::Open, CircuitState::HalfOpen)
    );
    assert_eq!(
        next_change(&mut circuit).await,
        (CircuitState::HalfOpen, CircuitState::Closed),
        "the probe succeeded (L2 errors so far: timeout {}, connection {}, protocol {})",
        rec.count("l2_error.timeout"),
        rec.count("l2_error.connection"),
        rec.count("l2_error.protocol"),
    );
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);

    // L2 is used again: a second instance finds what the first just wrote.
    let (other_rec, _) = Recorder::new();
    let other_rec = Arc::new(other_rec);
    let other = TwoTierCache::with_observer(
        tiercache_tests::cache::config(&ns, Some(&server.url()))
            .build()
            .unwrap(),
        other_rec.clone(),
    )
    .unwrap();
    read(&other, 100, &calls).await;
    assert_eq!(other_rec.count("lookup.lead.l2.hit"), 1);
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_costs_a_timeout_then_nothing() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("pause");
    let (recorder, mut circuit) = Recorder::new();
    let rec = Arc::new(recorder);
    let config = config(&ns, Some(&server.url()))
        .l2_timeout(Duration::from_millis(30))
        .build()
        .unwrap();
    let cache = TwoTierCache::with_observer(config, rec.clone()).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    read(&cache, 0, &calls).await;

    server.pause();
    for id in 1..=6 {
        assert_eq!(read(&cache, id, &calls).await, TestLead::new(id, 1));
    }
    server.resume();
    assert_eq!(
        next_change(&mut circuit).await,
        (CircuitState::Closed, CircuitState::Open)
    );
    assert!(
        rec.count("l2_error.timeout") >= 3,
        "timeouts, counted as such"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_refuses_the_connection_opens_the_breaker() {
    let server = RedisServer::start().await;
    let mut admin = server.client().await;
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "the-right-one"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let before = connections_received(&mut admin).await;
    let url = format!("redis://:a-wrong-one@127.0.0.1:{}/", server.port());
    let (recorder, mut circuit) = Recorder::new();
    let rec = Arc::new(recorder);
    let cache = TwoTierCache::with_observer(
        config(&unique_namespace("refused"), Some(&url))
            .build()
            .unwrap(),
        rec.clone(),
    )
    .unwrap();
    let calls = Arc::new(AtomicU32::new(0));

    // Every read answers from the loader; a connection Redis refuses counts against the
    // link, so the breaker opens and later misses skip Redis instead of each opening
    // (and failing) a connection of its own.
    for id in 0..50 {
        assert_eq!(read(&cache, id, &calls).await, TestLead::new(id, 1));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 50);
    assert_eq!(
        next_change(&mut circuit).await,
        (CircuitState::Closed, CircuitState::Open)
    );
    assert!(
        rec.count("l2_error.connection") >= 1 && rec.count("l2_error.protocol") == 0,
        "L2 errors: connection {}, timeout {}, protocol {}, last {:?}",
        rec.count("l2_error.connection"),
        rec.count("l2_error.timeout"),
        rec.count("l2_error.protocol"),
        cache.last_l2_error(),
    );
    assert!(rec.count("l2_error.circuit_open") >= 1);
    let error = cache.last_l2_error().expect("the refusal is on record");
    assert!(
        error.message.to_lowercase().contains("pass"),
        "says why: {}",
        error.message
    );
    let attempts = connections_received(&mut admin).await - before;
    assert!(
        attempts < 25,
        "{attempts} connections for 50 misses: the open breaker should have spared most"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_hit_is_one_command_and_an_l1_hit_is_none() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("cmds");
    let a = cache_on(&server, &ns);
    let b = cache_on(&server, &ns);
    let calls = Arc::new(AtomicU32::new(0));
    let mut admin = server.client().await;

    // Redis learns the script on its first use (NOSCRIPT, then SCRIPT LOAD): counted from
    // after a first miss on another key.
    read(&a, 0, &calls).await;
    a.flush_l2_writes().await;
    let mut before = std::collections::HashMap::new();
    for name in ["evalsha", "get", "set", "exec"] {
        before.insert(name, command_count(&mut admin, name).await);
    }
    let delta = async |admin: &mut redis::aio::MultiplexedConnection, name: &'static str| {
        command_count(admin, name).await - before[name]
    };
    // A miss: one command (the value, else the load lease: `SET key marker NX GET PX`), the
    // query, then one script sent behind the read (one `SET … XX GET`, which replaces this
    // load's marker and returns it): two round trips, the second off the read's path.
    read(&a, 1, &calls).await;
    a.flush_l2_writes().await;
    assert_eq!(delta(&mut admin, "evalsha").await, 1);
    assert_eq!(delta(&mut admin, "get").await, 0);
    assert_eq!(delta(&mut admin, "set").await, 2);
    assert_eq!(delta(&mut admin, "exec").await, 0);

    // An L2 hit: one round trip, no script (the SET NX GET finds the value and writes nothing).
    read(&b, 1, &calls).await;
    assert_eq!(delta(&mut admin, "evalsha").await, 1);
    assert_eq!(delta(&mut admin, "get").await, 0);
    assert_eq!(delta(&mut admin, "set").await, 3);

    for _ in 0..100 {
        read(&a, 1, &calls).await; // L1 hits: no Redis at all
        read(&b, 1, &calls).await;
    }
    assert_eq!(delta(&mut admin, "set").await, 3);
    assert_eq!(delta(&mut admin, "get").await, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "keys 0 and 1, once each");
    // No PING on checkout: 100 reads of cold keys check a connection out 200 times; the only
    // PINGs are the bus heartbeats (4 a second per instance).
    let pings = command_count(&mut admin, "ping").await;
    let started = std::time::Instant::now();
    for id in 100..200 {
        read(&a, id, &calls).await;
    }
    let heartbeats = 2 * 4 * (started.elapsed().as_secs() + 1);
    let sent = command_count(&mut admin, "ping").await - pings;
    assert!(sent <= heartbeats, "{sent} PINGs: more than heartbeats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_redis_missed_is_owed_honoured_and_replayed() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("owed");
    let (recorder, _circuit) = Recorder::new();
    let rec = Arc::new(recorder);
    let cache = TwoTierCache::with_observer(
        config(&ns, Some(&server.url())).build().unwrap(),
        rec.clone(),
    )
    .unwrap();
    let keys = tiercache_repository::keys(&cache);
    let (a, b) = (keys.lead_by_id(1), keys.lead_by_id(2));
    for (key, id) in [(a, 1), (b, 2)] {
        cache
            .get_or_load(key, move || async move {
                Ok::<_, io::Error>(Some(TestLead::new(id, 1)))
            })
            .await
            .unwrap();
    }

    // Redis refuses DEL (while keeping the data, unlike a restart, and without queueing
    // the command for later, unlike a pause): the deletes fail and are owed.
    let mut admin = server.client().await;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "-del"])
        .query_async(&mut admin)
        .await
        .unwrap();
    for key in [a, b] {
        let report = cache
            .invalidate(
                tiercache::Invalidation::key(key),
                tiercache::InvalidationSource::Write,
            )
            .await;
        assert_eq!(report.l2_failure, Some(tiercache::L2ErrorKind::Protocol));
    }
    // Each key's delete, and its bus message, which goes out in the same script.
    assert_eq!(cache.owed_invalidations(), 4);
    let stale: Vec<u8> = redis::AsyncCommands::get(&mut admin, keys.render(&a))
        .await
        .unwrap();
    assert_eq!(
        tiercache::envelope::decode::<TestLead>(&stale)
            .unwrap()
            .value
            .unwrap()
            .version,
        1
    );
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "+del"])
        .query_async(&mut admin)
        .await
        .unwrap();

    // Redis still holds version 1 of lead 1, but this instance does not trust it: it loads
    // version 2 and overwrites the stale copy.
    let read = cache
        .get_or_load(a, || async {
            Ok::<_, io::Error>(Some(TestLead::new(1, 2)))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read.version, 2,
        "a read after the write never sees the old value"
    );
    assert_eq!(
        rec.count("lookup.lead.l2.hit"),
        0,
        "the stale copy was not read"
    );

    // The background replay deletes what is still owed once Redis takes DEL again.
    tokio::time::timeout(Duration::from_secs(10), async {
        while cache.owed_invalidations() > 0 {
            rec.replayed.notified().await;
        }
    })
    .await
    .expect("owed deletes replayed within 10 s");
    let exists: bool = redis::AsyncCommands::exists(&mut admin, keys.render(&b))
        .await
        .unwrap();
    assert!(!exists, "the owed delete reached Redis");
    cache.flush_l2_writes().await;
    // Lead 1 holds the fresh value or nothing (a replayed delete may follow the fresh write).
    let stored: Option<Vec<u8>> = redis::AsyncCommands::get(&mut admin, keys.render(&a))
        .await
        .unwrap();
    if let Some(stored) = stored {
        assert_eq!(
            tiercache::envelope::decode::<TestLead>(&stored)
                .unwrap()
                .value
                .unwrap()
                .version,
            2
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stampede_over_two_instances_loads_once() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("lease");
    let a = cache_on(&server, &ns);
    let b = cache_on(&server, &ns);
    let calls = Arc::new(AtomicU32::new(0));
    let key = tiercache_repository::keys(&a).lead_by_id(7);
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
            let calls = calls.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load(key, move || async move {
                        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                        // A slow query, so that both instances miss while it runs.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, io::Error>(Some(TestLead::new(7, n)))
                    })
                    .await
                    .unwrap()
                    .unwrap()
            })
        })
        .collect();
    let mut versions = std::collections::HashSet::new();
    for task in tasks {
        versions.insert(task.await.unwrap().version);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one load across both instances"
    );
    assert_eq!(versions.len(), 1);
    a.flush_l2_writes().await;
    b.flush_l2_writes().await;
    let mut admin = server.client().await;
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{ns}:*lease*"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(leases.is_empty(), "the lease was released: {leases:?}");
}

/// A load that fails while holding `id`'s lease; `before_failing` runs once the loader has
/// started (the lease is taken) and before it fails.
async fn failed_load(cache: &TwoTierCache, id: i64, before_failing: impl AsyncFnOnce()) {
    let (started_tx, started_rx) = oneshot::channel();
    let fail = Arc::new(Notify::new());
    let load = {
        let (cache, fail) = (cache.clone(), fail.clone());
        let key = tiercache_repository::keys(&cache).lead_by_id(id);
        tokio::spawn(async move {
            cache
                .get_or_load(key, || async move {
                    let _ = started_tx.send(());
                    fail.notified().await;
                    Err::<Option<TestLead>, _>(io::Error::other("the database went away"))
                })
                .await
        })
    };
    started_rx.await.unwrap();
    before_failing().await;
    fail.notify_one();
    assert!(load.await.unwrap().is_err(), "the loader's error stands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_releases_its_own_lease_and_no_other() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("release");
    let cache = cache_on(&server, &ns);
    let mut admin = server.client().await;
    // A lease is a marker at the value's own key.
    let key = |id: i64| format!("{ns}:test:v1:lead:id:{id}");
    let prefix = tiercache::l2::LEASE_MARKER_PREFIX;

    // Its own lease goes at once, so another instance need not wait it out.
    let mut held: Option<String> = None;
    failed_load(&cache, 1, async || {
        held = redis::AsyncCommands::get(&mut admin, key(1)).await.unwrap();
    })
    .await;
    assert!(
        held.as_deref().is_some_and(|h| h.starts_with(prefix)),
        "the load held a lease: {held:?}"
    );
    let left: Option<String> = redis::AsyncCommands::get(&mut admin, key(1)).await.unwrap();
    assert_eq!(left, None, "released");

    // Its lease expired and another load took the key: that one's lease stays.
    let another = format!("{prefix}another-load");
    failed_load(&cache, 2, async || {
        let _: () = redis::AsyncCommands::set(&mut admin, key(2), &another)
            .await
            .unwrap();
    })
    .await;
    let left: Option<String> = redis::AsyncCommands::get(&mut admin, key(2)).await.unwrap();
    assert_eq!(left, Some(another));
}
