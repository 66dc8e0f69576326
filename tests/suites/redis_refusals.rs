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
    let key = cache.keys().lead_by_id(id);
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
    }
}
