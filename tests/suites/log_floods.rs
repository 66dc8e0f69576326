//! Warnings that repeat under a fault (a webhook past its budget, a 503 while PostgreSQL is
//! unreachable) are logged once per interval per kind, the next line saying how many were
//! left out, while the metrics count every occurrence.
//!
//! The lines are captured by a subscriber set as this thread's default (`Captured`), on a
//! current-thread runtime so that the server's tasks log on this thread too. The throttles are process-wide,
//! and nextest runs each test in a process of its own.

use std::sync::Arc;
use std::time::Duration;

use tiercache::log_throttle::LOG_INTERVAL;
use tiercache_monitoring::Metrics;
use tiercache_repository::Repository;
use tiercache_server::AppState;
use tiercache_tests::logs::Captured;
use tiercache_tests::server::TestServer;

/// How many times each condition is driven.
const OCCURRENCES: u64 = 40;

/// A service (L1 only) whose PostgreSQL pool points at a port where nothing listens: a
/// checkout gives up after 300 ms, so a webhook with a 20 ms budget always runs past it.
async fn unreachable_service(webhook_budget: Duration) -> TestServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy(&format!("postgres://postgres@127.0.0.1:{port}/none"))
        .unwrap();
    let metrics = Arc::new(Metrics::new(
        tiercache_repository::schema().schema.entities(),
    ));
    let cache = tiercache::TwoTierCache::with_observer(
        tiercache::CacheConfig::builder()
            .schema(tiercache_repository::schema().schema.clone())
            .build()
            .unwrap(),
        metrics.clone(),
    )
    .unwrap();
    let repo = Repository::new(pool, cache);
    // Its API keys were read before the database went away.
    TestServer::serve_with_keys_apart(AppState::new(repo, metrics, webhook_budget)).await
}

/// The webhook for demo lead 0 calling organization 1, sent with `client`.
async fn post_call(server: &TestServer, client: &reqwest::Client) -> (u16, String) {
    let body = format!(
        r#"{{"caller_id":"{}","called_number":"{}","call_sid":"CA1"}}"#,
        tiercache_repository::seed::demo_lead_phone(0),
        tiercache_repository::seed::demo_org_phone(1)
    );
    let response = client
        .post(format!(
            "{}/api/webhooks/conversation-initiation",
            server.base
        ))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_webhook_past_its_budget_is_logged_once_per_interval_and_counted_every_time() {
    let captured = Captured::default();
    let _subscriber = captured.install();
    let server = unreachable_service(Duration::from_millis(20)).await;

    for _ in 0..OCCURRENCES {
        let (status, body) = post_call(&server, &server.client).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("deadline_default"), "{body}");
    }
    assert_eq!(server.state.metrics.webhook_fallbacks(), OCCURRENCES);
    let lines = captured.lines("webhook past its budget");
    assert_eq!(
        lines.len(),
        1,
        "{OCCURRENCES} calls past the budget within the interval: one line\n{}",
        lines.join("\n")
    );
    assert!(lines[0].contains("suppressed=0"), "{}", lines[0]);

    // Once the interval has passed (it is what is under test), the next one is logged with
    // how many were left out.
    tokio::time::sleep(LOG_INTERVAL).await;
    // A new client: the server may have closed the idle keep-alive connection meanwhile.
    let (status, body) = post_call(&server, &reqwest::Client::new()).await;
    assert_eq!(status, 200, "{body}");
    let lines = captured.lines("webhook past its budget");
    assert_eq!(lines.len(), 2, "{}", lines.join("\n"));
    assert!(
        lines[1].contains(&format!("suppressed={}", OCCURRENCES - 1)),
        "{}",
        lines[1]
    );
    assert_eq!(server.state.metrics.webhook_fallbacks(), OCCURRENCES + 1);
}

#[tokio::test]
async fn a_503_for_an_unreachable_database_is_logged_once_per_interval_and_counted_every_time() {
    let captured = Captured::default();
    let _subscriber = captured.install();
    let server = unreachable_service(Duration::from_secs(2)).await;

    // Concurrently: each waits out the pool's acquire timeout.
    let reads = (1..=OCCURRENCES).map(|id| {
        let server = &server;
        async move { server.get(&format!("/api/leads/{id}")).await }
    });
    for (status, body) in futures_util::future::join_all(reads).await {
        assert_eq!(status, 503, "{body}");
    }
    let (_, server_errors, _) = server.state.metrics.http_totals();
    assert_eq!(server_errors, OCCURRENCES, "every 503 counted");
    let lines = captured.lines("database unavailable");
    assert_eq!(
        lines.len(),
        1,
        "{OCCURRENCES} 503s within the interval: one line\n{}",
        lines.join("\n")
    );
    assert!(lines[0].contains("suppressed=0"), "{}", lines[0]);
}
