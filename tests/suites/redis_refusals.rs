//! A Redis that answers but refuses, on a throwaway server: a wrong or missing password (a
//! refused connection: `connection` errors that open the breaker), a memory limit with
//! `noeviction` (invalidations still land), and a server that stopped taking writes (every
//! instance stops trusting its L1, and says so).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tiercache::{CircuitState, Invalidation, InvalidationSource, TwoTierCache};
use tiercache_tests::cache::{TestLead, config};
use tiercache_tests::{Recorder, RedisServer, unique_namespace};

/// Reads lead `id`, loading `version` on a miss; counts loads in `calls`.
async fn read(cache: &TwoTierCache, id: i64, version: u32, calls: &Arc<AtomicU32>) -> TestLead {
    let calls = calls.clone();
    let key = tiercache_repository::keys(cache).lead_by_id(id);
    let v = cache
        .get_or_load(key, move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, io::Error>(Some(TestLead::new(id, version)))
        })
        .await
        .expect("a read whose loader answers never fails");
    (*v.unwrap()).clone()
}

/// Sets `requirepass` on the server from `admin`, a connection that stays authenticated.
async fn require_password(admin: &mut MultiplexedConnection, password: &str) {
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(password)
        .query_async(admin)
        .await
        .unwrap();
}

/// A password Redis refuses, or none where it wants one: every command fails as a refused
/// connection (`connection`), never as `protocol`, and the breaker opens, as it does for a
/// Redis that is down; the reads go on to the loader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_password_is_a_connection_error_that_opens_the_breaker() {
    let server = RedisServer::start().await;
    let mut admin = server.client().await;
    require_password(&mut admin, "the-right-password").await;
    let port = server.port();
    for url in [
        format!("redis://:not-the-password@127.0.0.1:{port}/"),
        format!("redis://127.0.0.1:{port}/"),
    ] {
        let (recorder, mut circuit) = Recorder::new();
        let rec = Arc::new(recorder);
        let ns = unique_namespace("auth");
        let cache = TwoTierCache::with_observer(
            config(&ns, Some(&url))
                .l2_timeout(Duration::from_millis(200))
                .build()
                .unwrap(),
            rec.clone(),
        )
        .unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        for id in 0..5 {
            assert_eq!(read(&cache, id, 1, &calls).await, TestLead::new(id, 1));
        }
        let opened = tokio::time::timeout(Duration::from_secs(5), circuit.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{url}: the breaker opens within 5 s (connection errors {}, protocol {})",
                    rec.count("l2_error.connection"),
                    rec.count("l2_error.protocol")
                )
            });
        assert_eq!(opened, Some((CircuitState::Closed, CircuitState::Open)));
        assert!(rec.count("l2_error.connection") >= 1, "{url}");
        assert_eq!(
            rec.count("l2_error.protocol"),
            0,
            "{url}: not a protocol error"
        );
        let last = cache.last_l2_error().expect("the failure is reported");
        assert_eq!(last.kind, tiercache::L2ErrorKind::Connection, "{url}");
        let health = tiercache_monitoring::health::redis(&cache).await;
        assert_eq!(
            health.writable,
            Some(false),
            "{url}: a refused Redis takes no writes"
        );
    }
}

/// Sets one server parameter from `admin`.
async fn config_set(admin: &mut MultiplexedConnection, name: &str, value: &str) {
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(admin)
        .await
        .unwrap();
}

/// Two instances (caches of their own) on `server` under one namespace, with a bound of
/// `BOUND`; each has read lead 1 at version 1, which the second took from Redis.
async fn two_instances(
    server: &RedisServer,
) -> (TwoTierCache, TwoTierCache, Arc<Recorder>, Arc<AtomicU32>) {
    let ns = unique_namespace("refuse");
    let build = |rec: Arc<Recorder>| {
        TwoTierCache::with_observer(
            config(&ns, Some(&server.url()))
                .staleness_bound(BOUND)
                .recovery(BOUND)
                .build()
                .unwrap(),
            rec,
        )
        .unwrap()
    };
    let a = build(Arc::new(Recorder::new().0));
    let b_rec = Arc::new(Recorder::new().0);
    let b = build(b_rec.clone());
    let mut admin = server.client().await;
    tiercache_tests::bus_subscribers(&mut admin, &ns, 2).await;
    let calls = Arc::new(AtomicU32::new(0));
    assert_eq!(read(&a, 1, 1, &calls).await.version, 1);
    a.flush_l2_writes().await;
    assert_eq!(read(&b, 1, 1, &calls).await.version, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "b read lead 1 from Redis");
    (a, b, b_rec, calls)
}

/// The bound the instances of these tests promise.
const BOUND: Duration = Duration::from_millis(1000);

/// Redis at its memory limit with `noeviction` refuses every command that may add memory,
/// but an invalidation must still land (it frees more than it adds): the writer's deletes,
/// epochs and bus message go through, and the other instance drops the old value at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_lands_in_a_redis_out_of_memory() {
    let server = RedisServer::start().await;
    let (a, b, b_rec, calls) = two_instances(&server).await;
    let mut admin = server.client().await;
    config_set(&mut admin, "maxmemory-policy", "noeviction").await;
    config_set(&mut admin, "maxmemory", "1").await;
    let refused: redis::RedisResult<()> = redis::cmd("SET")
        .arg("probe")
        .arg("x")
        .query_async(&mut admin)
        .await;
    assert_eq!(refused.unwrap_err().code(), Some("OOM"), "Redis is full");

    let report = a
        .invalidate(
            Invalidation::key(tiercache_repository::keys(&a).lead_by_id(1)),
            InvalidationSource::Write,
        )
        .await;
    assert_eq!(report.l2_failure, None, "the invalidation landed");
    assert!(
        b_rec
            .wait_count("invalidated.lead.bus", 1, Duration::from_secs(5))
            .await,
        "b heard of the write"
    );
    assert_eq!(read(&b, 1, 2, &calls).await.version, 2);
    assert!(b.l1_trusted(), "invalidations land: nothing to distrust");
}

/// A Redis that takes no writes at all (here a replica, `READONLY`) cannot carry an
/// invalidation: the writer owes it, and no other instance may go on trusting its L1 past
/// the bound. The other instance's feed stops confirming (its heartbeat's write is refused),
/// it says so, and a value older than half the bound is loaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_refusing_writes_leaves_no_instance_trusting_its_l1() {
    let server = RedisServer::start().await;
    let (a, b, _b_rec, calls) = two_instances(&server).await;
    let mut admin = server.client().await;
    // A replica of a master that is not there: it keeps its data, answers reads, refuses
    // writes.
    let () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(tiercache_tests::free_port())
        .query_async(&mut admin)
        .await
        .unwrap();
    let report = a
        .invalidate(
            Invalidation::key(tiercache_repository::keys(&a).lead_by_id(1)),
            InvalidationSource::Write,
        )
        .await;
    assert!(report.l2_failure.is_some(), "the invalidation is owed");
    assert!(a.owed_invalidations() >= 1);

    // No event says when trust goes: bounded polling, within the bound.
    let deadline = tokio::time::Instant::now() + BOUND;
    while b.l1_trusted() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!b.l1_trusted(), "b stops trusting its L1 within the bound");
    let refusing = b.l2_refusing_writes().expect("b says Redis refuses writes");
    assert!(
        refusing.starts_with("refused") && refusing.contains("read only"),
        "{refusing}"
    );
    let health = tiercache_monitoring::health::redis(&b).await;
    assert_eq!(health.writable, Some(false));
    // The value b holds is older than half the bound by now: loaded again.
    tokio::time::sleep(BOUND / 2).await;
    assert_eq!(read(&b, 1, 2, &calls).await.version, 2);
}
