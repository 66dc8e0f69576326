//! PostgreSQL restarted under a running service (a throwaway server, fast shutdown: every
//! backend ends its connection with 57P01, "terminating connection due to administrator
//! command"). The pool's connections die with it: no read may answer 500 for that, only 503
//! while PostgreSQL is down, and once it is back the first reads answer 200. Every read is
//! of a lead never read before, so L1 stays out of the way and each one reaches PostgreSQL.

use std::time::Duration;

use tiercache_tests::PgServer;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::unique_namespace;

/// The pool's size in a test server (`DATABASE_POOL_SIZE`).
const POOL_SIZE: u32 = 5;

/// Leads seeded: enough for every read of a test to be of a lead not yet cached.
const LEADS: i64 = 60;

/// Bound on waiting for the pool's connections to come back idle.
const IDLE_DEADLINE: Duration = Duration::from_secs(5);

/// A throwaway PostgreSQL with the demo schema and `LEADS` leads, and a service on it
/// (L1 only: Redis plays no part here).
async fn service(tag: &str) -> (PgServer, TestServer) {
    let pg = PgServer::start().await;
    let url = pg.create_database("tiercache").await;
    {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        tiercache_repository::MIGRATOR.run(&pool).await.unwrap();
        tiercache_repository::seed::seed_sized(&pool, 2, LEADS)
            .await
            .unwrap();
        pool.close().await;
    }
    let ns = unique_namespace(tag);
    let server = TestServer::start_url(&url, Options::new(&ns, None)).await;
    (pg, server)
}

/// Opens every connection the pool may hold and leaves them idle in it, as a busy service
/// would have them when PostgreSQL restarts.
async fn warm_pool(server: &TestServer) {
    let pool = server.state.repo.pool();
    let mut held = Vec::new();
    for _ in 0..POOL_SIZE {
        held.push(pool.acquire().await.unwrap());
    }
    drop(held);
    // Connections go back to the pool from tasks of sqlx's own; no event says when.
    let deadline = tokio::time::Instant::now() + IDLE_DEADLINE;
    while pool.num_idle() < POOL_SIZE as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pool's {POOL_SIZE} connections came back idle within {IDLE_DEADLINE:?} (idle: {})",
            pool.num_idle()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `GET /api/leads/{id}`: (status, body).
async fn read_lead(server: &TestServer, id: i64) -> (u16, String) {
    server.get(&format!("/api/leads/{id}")).await
}

/// A fast restart: SIGINT (what `pg_ctl restart -m fast` sends), wait for the exit, start.
async fn restart_fast(pg: &mut PgServer) {
    pg.stop().await;
    pg.start_again().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_fast_restart_every_read_answers_200() {
    let (mut pg, server) = service("pgrestart").await;
    warm_pool(&server).await;
    restart_fast(&mut pg).await;

    // One at a time: the first reads are those that meet the dead connections.
    let mut failures = Vec::new();
    for id in 1..=2 * i64::from(POOL_SIZE) {
        let (status, body) = read_lead(&server, id).await;
        if status != 200 {
            failures.push(format!("lead {id}: {status} {body}"));
        }
    }
    assert!(
        failures.is_empty(),
        "reads after PostgreSQL came back failed:\n{}",
        failures.join("\n")
    );

    // Concurrently, after a second restart: many reads meet dead connections at once.
    warm_pool(&server).await;
    restart_fast(&mut pg).await;
    let first = 2 * i64::from(POOL_SIZE) + 1;
    let reads = (first..first + 4 * i64::from(POOL_SIZE)).map(|id| {
        let server = &server;
        async move { (id, read_lead(server, id).await) }
    });
    let failures: Vec<String> = futures_util::future::join_all(reads)
        .await
        .into_iter()
        .filter(|(_, (status, _))| *status != 200)
        .map(|(id, (status, body))| format!("lead {id}: {status} {body}"))
        .collect();
    assert!(
        failures.is_empty(),
        "concurrent reads after PostgreSQL came back failed:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_reads_are_503_never_500_and_200_once_it_is_back() {
    let (mut pg, server) = service("pgdownup").await;
    warm_pool(&server).await;
    pg.stop().await;

    // More reads than the pool held connections: each dead one is met, then the pool can
    // open none.
    for id in 1..=i64::from(POOL_SIZE) + 2 {
        let (status, body) = read_lead(&server, id).await;
        assert_eq!(status, 503, "lead {id} with PostgreSQL down: {body}");
        assert!(body.contains("unavailable"), "{body}");
    }

    pg.start_again().await;
    for id in 21..=20 + i64::from(POOL_SIZE) {
        let (status, body) = read_lead(&server, id).await;
        assert_eq!(status, 200, "lead {id} once PostgreSQL is back: {body}");
    }
}
