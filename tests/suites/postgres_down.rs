//! PostgreSQL stopped under a running service (a throwaway server): values still within
//! their grace window are served stale (the domain routes and the webhook), marked by the `Tiercache-Stale` header and counted;
//! anything else is a clear 503; once PostgreSQL is back, answers are fresh again.

use std::time::Duration;

use tiercache_server::routes::STALE_HEADER;
use tiercache_tests::PgServer;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::unique_namespace;

async fn get(server: &TestServer, path: &str) -> (u16, Option<String>, String) {
    answer(server.client.get(format!("{}{path}", server.base))).await
}

/// Status, `Tiercache-Stale` header and body.
async fn answer(request: reqwest::RequestBuilder) -> (u16, Option<String>, String) {
    let response = request.send().await.unwrap();
    let stale = response
        .headers()
        .get(STALE_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    (
        response.status().as_u16(),
        stale,
        response.text().await.unwrap(),
    )
}

/// The webhook for demo lead 0 calling its organization (1).
async fn post_call(server: &TestServer) -> (u16, Option<String>, String) {
    let body = format!(
        r#"{{"caller_id":"{}","called_number":"{}","call_sid":"CA1"}}"#,
        tiercache_repository::seed::demo_lead_phone(0),
        tiercache_repository::seed::demo_org_phone(1)
    );
    answer(
        server
            .client
            .post(format!(
                "{}/api/webhooks/conversation-initiation",
                server.base
            ))
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

/// Stale leads served, for either reason: the load fails once the pool gives up on
/// connecting (its acquire timeout), and the soft timeout usually comes first.
/// A throwaway PostgreSQL with a migrated database holding 2 organizations and 20 leads.
async fn seeded_server() -> (PgServer, String) {
    let pg = PgServer::start().await;
    let url = pg.create_database("tiercache").await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    tiercache_repository::MIGRATOR.run(&pool).await.unwrap();
    tiercache_repository::seed::seed_sized(&pool, 2, 20)
        .await
        .unwrap();
    pool.close().await;
    (pg, url)
}

fn stale_served(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("tiercache_stale_served_total{") && l.contains("entity=\"lead\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_cached_values_are_served_stale_and_the_rest_is_a_clear_503() {
    let (mut pg, url) = seeded_server().await;
    let ns = unique_namespace("pgdown");
    let mut options = Options::new(&ns, None);
    // Values fresh in L1 for 1 s, then kept for the default grace window (300 s).
    options.vars = vec![
        ("CACHE_TTL_LEAD_L1_SECS", "1".to_owned()),
        ("CACHE_TTL_ORG_L1_SECS", "1".to_owned()),
        ("CACHE_TTL_CONTEXT_L1_SECS", "1".to_owned()),
        ("CACHE_TTL_GREETING_L1_SECS", "1".to_owned()),
    ];
    let server = TestServer::start_url(&url, options).await;

    let (status, stale, fresh_body) = get(&server, "/api/leads/5").await;
    assert_eq!((status, stale), (200, None), "{fresh_body}");
    let (status, stale, fresh_call) = post_call(&server).await;
    assert_eq!((status, stale), (200, None), "{fresh_call}");

    pg.stop().await;
    // Let the cached lead's freshness run out: its TTL is what is being tested.
    tokio::time::sleep(Duration::from_millis(1_300)).await;

    let (status, stale, body) = get(&server, "/api/leads/5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, fresh_body, "the last known value");
    let age: u64 = stale.expect("marked stale").parse().unwrap();
    assert!((1..300).contains(&age), "age {age}");
    let (_, metrics) = server.get("/api/monitoring/metrics").await;
    assert!(stale_served(&metrics) >= 1.0, "counted");

    // The webhook too: every part of the call was cached, so the whole answer is at hand.
    let (status, stale, call) = post_call(&server).await;
    assert_eq!(status, 200, "{call}");
    assert_eq!(call, fresh_call);
    assert!(stale.is_some(), "marked stale");

    // Never cached: nothing to fall back on.
    let (status, stale, body) = get(&server, "/api/leads/7").await;
    assert_eq!((status, stale), (503, None), "{body}");
    assert!(body.contains("unavailable"), "{body}");

    pg.start_again().await;
    // Connections the pool held died with the server: the first read meets one and runs
    // again on a new connection, and the pool drops the others at checkout. An answer may
    // still be stale (a reload slower than the soft timeout); within a few, it is fresh.
    let mut fresh_again = false;
    for _ in 0..12 {
        let (status, stale, body) = get(&server, "/api/leads/5").await;
        assert_eq!(status, 200, "{body}");
        if stale.is_none() {
            assert_eq!(body, fresh_body);
            fresh_again = true;
            break;
        }
    }
    assert!(fresh_again, "fresh answers once PostgreSQL is back");
    let (status, _, _) = get(&server, "/api/leads/7").await;
    assert_eq!(status, 200);
}

/// PostgreSQL down, and a lead this instance never read but Redis holds (another instance
/// read it): its database listener is silent, so it cannot vouch for the value as fresh,
/// but the value is within its grace: served from Redis, marked stale, instead of a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_a_value_only_redis_holds_is_served_stale() {
    let (mut pg, url) = seeded_server().await;
    let ns = unique_namespace("pgdownl2");
    let redis = tiercache_tests::SHARED_REDIS_URL;
    let with_listener = || Options {
        db_notify: true,
        ..Options::new(&ns, Some(redis))
    };
    let a = TestServer::start_url(&url, with_listener()).await;
    let b = TestServer::start_url(&url, with_listener()).await;
    b.db_listening().await;
    let (status, stale, fresh_body) = get(&a, "/api/leads/5").await;
    assert_eq!((status, stale), (200, None), "{fresh_body}");
    a.state.repo.cache().flush_l2_writes().await;

    pg.stop().await;
    // B's listener goes silent; after half the staleness bound (2 s) B serves as fresh only
    // values younger than 1 s, which lead 5 is not by then.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(!b.state.repo.cache().l1_trusted());
    let (status, stale, body) = get(&b, "/api/leads/5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, fresh_body, "the value Redis holds");
    let age: u64 = stale.expect("marked stale").parse().unwrap();
    assert!(age < 300, "age {age}");
    let (_, metrics) = b.get("/api/monitoring/metrics").await;
    assert!(stale_served(&metrics) >= 1.0, "counted");
}
