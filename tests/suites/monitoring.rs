//! The monitoring API against the real server: exact metric deltas over a scripted
//! sequence, `promtool check metrics` on a real scrape, health as Redis stops and returns,
//! the live stream delivering a snapshot and an alert, and the admin API's guard.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tiercache_tests::db::TestDb;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::{RedisServer, unique_namespace};
use tokio::io::AsyncWriteExt;

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_exactly_as_a_scripted_sequence_says() {
    let redis = RedisServer::start().await;
    let db = TestDb::seeded("metrics", 2, 10).await;
    let ns = unique_namespace("metrics");
    let url = redis.url();
    let server = TestServer::start(&db, Options::new(&ns, Some(&url))).await;
    let lead = |result: &str, tier: &str| {
        format!(
            r#"tiercache_cache_requests_total{{entity="lead",result="{result}",tier="{tier}"}}"#
        )
    };
    let loads = r#"tiercache_loads_total{entity="lead",result="found"}"#;
    let age_l1 = r#"tiercache_served_value_age_seconds_count{entity="lead",tier="l1"}"#;
    let http =
        r#"tiercache_http_requests_total{method="GET",route="/api/leads/{id}",status="200"}"#;

    // A cold read: L1 miss, L2 miss, one load.
    let s0 = server.scrape().await;
    assert_eq!(server.get("/api/leads/3").await.0, 200);
    let s1 = server.scrape().await;
    assert_eq!(delta(&s0, &s1, &lead("miss", "l1")), 1.0);
    assert_eq!(delta(&s0, &s1, &lead("miss", "l2")), 1.0);
    assert_eq!(delta(&s0, &s1, loads), 1.0);
    assert_eq!(delta(&s0, &s1, http), 1.0);

    // Twice warm: two L1 hits, their ages observed, no load.
    server.get("/api/leads/3").await;
    server.get("/api/leads/3").await;
    let s2 = server.scrape().await;
    assert_eq!(delta(&s1, &s2, &lead("hit", "l1")), 2.0);
    assert_eq!(delta(&s1, &s2, age_l1), 2.0);
    assert_eq!(delta(&s1, &s2, loads), 0.0);

    // A write invalidates, then caches the row it wrote here: the next read is a hit.
    server
        .send(Method::PATCH, "/api/leads/3", r#"{"status":"customer"}"#)
        .await;
    server.get("/api/leads/3").await;
    // The PATCH answered once L1 held the new row; the invalidation is counted once Redis
    // has answered too.
    server.state.repo.cache().flush_l2_writes().await;
    let s3 = server.scrape().await;
    assert_eq!(
        delta(
            &s2,
            &s3,
            r#"tiercache_invalidations_total{entity="lead",source="write"}"#
        ),
        1.0
    );
    assert_eq!(delta(&s2, &s3, &lead("hit", "l1")), 1.0);
    assert_eq!(delta(&s2, &s3, &lead("miss", "l1")), 0.0);
    assert_eq!(delta(&s2, &s3, loads), 0.0);
    // An unknown lead is a load that finds nothing, then a cached "not found".
    server.get("/api/leads/999").await;
    server.get("/api/leads/999").await;
    let s4 = server.scrape().await;
    assert_eq!(
        delta(
            &s3,
            &s4,
            r#"tiercache_loads_total{entity="lead",result="not_found"}"#
        ),
        1.0
    );
    assert_eq!(delta(&s3, &s4, &lead("negative_hit", "l1")), 1.0);
    assert_eq!(
        delta(
            &s3,
            &s4,
            r#"tiercache_http_requests_total{method="GET",route="/api/leads/{id}",status="404"}"#
        ),
        2.0
    );
    // Gauges read at scrape time.
    assert_eq!(s4[r#"tiercache_circuit_state{state="closed"}"#], 1.0);
    assert_eq!(s4["tiercache_redis_enabled"], 1.0);
    assert!(s4["tiercache_l1_entries"] >= 1.0);
    // Labels never carry an id or a phone.
    let (_, text) = server.get("/api/monitoring/metrics").await;
    assert!(!text.contains("/api/leads/3") && !text.contains("+1646"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_a_real_scrape() {
    let db = TestDb::seeded("promtool", 2, 10).await;
    let ns = unique_namespace("promtool");
    let server = TestServer::start(
        &db,
        Options::new(&ns, Some(tiercache_tests::SHARED_REDIS_URL)),
    )
    .await;
    for path in [
        "/api/leads/1",
        "/api/leads/1",
        "/api/leads/1/context",
        "/api/nothing",
    ] {
        server.get(path).await;
    }
    let (_, text) = server.get("/api/monitoring/metrics").await;
    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = promtool.wait_with_output().await.unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_and_health_probes_are_not_counted_as_requests() {
    let db = TestDb::seeded("uncounted", 2, 10).await;
    let ns = unique_namespace("uncounted");
    let server = TestServer::start(&db, Options::new(&ns, None)).await;
    server.scrape().await;
    for path in [
        "/api/monitoring/health",
        "/api/monitoring/health/live",
        "/api/monitoring/health/ready",
        "/api/monitoring/health/redis",
        "/api/monitoring/metrics",
    ] {
        assert_eq!(server.get(path).await.0, 200, "{path}");
    }
    assert_eq!(server.get("/api/leads/1").await.0, 200);
    assert_eq!(server.get("/api/monitoring/stats/cache").await.0, 200);
    let scrape = server.scrape().await;
    let requests: Vec<_> = scrape
        .iter()
        .filter(|(k, _)| k.starts_with("tiercache_http_request"))
        .collect();
    let probes: Vec<_> = requests
        .iter()
        .filter(|(k, _)| {
            k.contains("/api/monitoring/metrics") || k.contains("/api/monitoring/health")
        })
        .collect();
    assert!(probes.is_empty(), "{probes:#?}");
    // The rest is counted: the API and the other monitoring routes.
    let total: f64 = requests
        .iter()
        .filter(|(k, _)| k.starts_with("tiercache_http_requests_total"))
        .map(|(_, v)| **v)
        .sum();
    assert_eq!(total, 2.0, "{requests:#?}");
    assert_eq!(
        scrape[r#"tiercache_http_requests_total{method="GET",route="/api/monitoring/stats/cache",status="200"}"#],
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrape_has_process_build_and_postgres_pool_metrics_and_buckets_to_10_s() {
    let db = TestDb::seeded("poolmetrics", 2, 10).await;
    let ns = unique_namespace("poolmetrics");
    let options = Options {
        vars: vec![("DATABASE_POOL_SIZE", "3".to_owned())],
        ..Options::new(&ns, None)
    };
    let server = TestServer::start(&db, options).await;
    let acquires = "tiercache_postgres_pool_acquire_duration_seconds_count";
    let s0 = server.scrape().await;
    // A cold read loads from PostgreSQL (one checkout); a write takes one more.
    assert_eq!(server.get("/api/leads/3").await.0, 200);
    assert_eq!(
        server
            .send(Method::PATCH, "/api/leads/3", r#"{"status":"customer"}"#)
            .await
            .0,
        200
    );
    let s1 = server.scrape().await;
    assert!(
        delta(&s0, &s1, acquires) >= 2.0,
        "{}",
        delta(&s0, &s1, acquires)
    );
    assert_eq!(s1["tiercache_postgres_pool_acquire_failures_total"], 0.0);
    assert_eq!(s1["tiercache_postgres_pool_max_connections"], 3.0);
    let size = s1["tiercache_postgres_pool_connections"];
    let idle = s1["tiercache_postgres_pool_idle_connections"];
    assert!((1.0..=3.0).contains(&size) && idle <= size, "{size} {idle}");
    assert_eq!(s1["tiercache_postgres_pool_waiting"], 0.0);
    // Build information: the version, and a commit (`unknown` outside a git checkout).
    let build: Vec<_> = s1
        .iter()
        .filter(|(k, _)| k.starts_with("tiercache_build_info{"))
        .collect();
    assert_eq!(build.len(), 1, "{build:?}");
    let (labels, value) = build[0];
    assert_eq!(*value, 1.0);
    assert!(
        labels.contains(&format!(r#"version="{}""#, env!("CARGO_PKG_VERSION")))
            && labels.contains(r#"commit=""#)
            && !labels.contains(r#"commit="""#),
        "{labels}"
    );
    // The process, from /proc.
    for name in [
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(
            s1.get(name).is_some_and(|v| *v > 0.0),
            "{name}: {:?}",
            s1.get(name)
        );
    }
    assert!(s1.contains_key("process_cpu_seconds_total"));
    // A request as slow as the 2 s timeouts still lands in a bucket of its own.
    for le in ["2.5", "5", "10"] {
        let bucket = format!(
            r#"tiercache_http_request_duration_seconds_bucket{{method="GET",route="/api/leads/{{id}}",le="{le}"}}"#
        );
        assert_eq!(s1.get(&bucket), Some(&1.0), "{bucket}");
    }
    // No L1 lookup latency: L1 lookups are not timed.
    assert!(
        !s1.keys()
            .any(|k| k.starts_with("tiercache_cache_lookup_duration_seconds")
                && k.contains(r#"tier="l1""#))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_while_redis_is_down_and_ok_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let db = TestDb::seeded("health", 2, 10).await;
    let ns = unique_namespace("health");
    let url = redis.url();
    let server = TestServer::start(&db, Options::new(&ns, Some(&url))).await;

    let (status, body) = server.get("/api/monitoring/health").await;
    assert_eq!(
        (status, json(&body)["status"].clone()),
        (200, Value::from("ok")),
        "{body}"
    );
    let (status, body) = server.get("/api/monitoring/health/redis").await;
    let detail = json(&body);
    assert_eq!(status, 200);
    assert_eq!(detail["ok"], true);
    assert!(detail["latency_ms"].as_f64().is_some());
    assert!(detail["used_memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(detail["circuit"], "closed");

    redis.stop().await;
    let (status, body) = server.get("/api/monitoring/health").await;
    let health = json(&body);
    assert_eq!(status, 200, "Redis down still serves: {body}");
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["redis"]["ok"], false);
    assert_eq!(health["postgres"]["ok"], true);
    assert_eq!(
        server.get("/api/monitoring/health/ready").await.0,
        200,
        "ready without Redis"
    );
    let (_, body) = server.get("/api/monitoring/health/redis").await;
    assert!(json(&body)["last_error"]["kind"].is_string(), "{body}");
    // Reads keep answering meanwhile.
    assert_eq!(server.get("/api/leads/2").await.0, 200);

    redis.restart().await;
    // The breaker lets a probe through after its open period; health then recovers.
    let recovered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, body) = server.get("/api/monitoring/health").await;
            if json(&body)["status"] == "ok" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(recovered.is_ok(), "health back to ok once Redis returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_is_a_503_on_health_and_readiness() {
    let server = TestServer::with_unreachable_database().await;
    let (status, body) = server.get("/api/monitoring/health").await;
    assert_eq!(
        (status, json(&body)["status"].clone()),
        (503, Value::from("down")),
        "{body}"
    );
    assert_eq!(server.get("/api/monitoring/health/ready").await.0, 503);
    assert_eq!(server.get("/api/monitoring/health/live").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_hit_rates_per_entity_and_tier() {
    let db = TestDb::seeded("stats", 2, 10).await;
    let ns = unique_namespace("stats");
    let server = TestServer::start(&db, Options::new(&ns, None)).await;
    for _ in 0..4 {
        server.get("/api/leads/1").await;
    }
    let (status, body) = server.get("/api/monitoring/stats/cache").await;
    assert_eq!(status, 200);
    let lead = &json(&body)["since_start"]["by_entity"]["lead"];
    assert_eq!(lead["lookups"], 4);
    assert_eq!(lead["l1"]["hits"], 3);
    assert_eq!(lead["hit_rate"], 0.75);
    assert!(json(&body)["recent"]["overall"].is_object());
}

/// Reads server-sent events until `wanted` arrives (bounded), returning every event name seen.
async fn events_until(response: &mut reqwest::Response, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buffer = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                if let Some(name) = event.lines().find_map(|l| l.strip_prefix("event: ")) {
                    seen.push(name.to_owned());
                    if name == wanted {
                        return true;
                    }
                }
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no {wanted} event; saw {seen:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_delivers_a_snapshot_then_an_alert_as_it_fires() {
    let db = TestDb::seeded("stream", 2, 300).await;
    let ns = unique_namespace("stream");
    let server = TestServer::start(&db, Options::new(&ns, None)).await;
    let mut stream = server
        .client
        .get(format!("{}/api/monitoring/stream", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let seen = events_until(&mut stream, "snapshot").await;
    assert_eq!(seen, ["snapshot"], "a snapshot comes first");

    // 200 distinct leads, every one a miss: past warm-up with a hit rate of 0.
    for id in 1..=200 {
        server.get(&format!("/api/leads/{id}")).await;
    }
    events_until(&mut stream, "alert_firing").await;
    let (_, alerts) = server.get("/api/monitoring/alerts").await;
    assert_eq!(
        json(&alerts)["alerts"][0]["name"],
        "TiercacheLowHitRate",
        "{alerts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_and_invalidates() {
    let db = TestDb::seeded("admin", 2, 10).await;
    let ns = unique_namespace("admin");
    let token = "an-admin-token-long-enough";
    let redis = RedisServer::start().await;
    let url = redis.url();
    let server = TestServer::start(
        &db,
        Options {
            admin_token: Some(token),
            ..Options::new(&ns, Some(&url))
        },
    )
    .await;
    let admin = |auth: Option<&str>, body: &str| {
        let mut request = server
            .client
            .post(format!("{}/api/admin/invalidate", server.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    let bearer = format!("Bearer {token}");

    for auth in [None, Some("Bearer wrong-token-of-some-length"), Some(token)] {
        let response = admin(auth, r#"{"all":true}"#).await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{auth:?}");
    }

    // By entity: the next read loads again.
    let loads = r#"tiercache_loads_total{entity="lead",result="found"}"#;
    server.get("/api/leads/4").await;
    let before = server.scrape().await;
    let response = admin(Some(&bearer), r#"{"entity":"lead","id":4}"#)
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    server.get("/api/leads/4").await;
    let after = server.scrape().await;
    assert_eq!(delta(&before, &after, loads), 1.0);
    assert_eq!(
        delta(
            &before,
            &after,
            r#"tiercache_invalidations_total{entity="lead",source="admin"}"#
        ),
        1.0
    );
    assert_eq!(
        admin(Some(&bearer), r#"{"entity":"lead","id":4040}"#)
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        admin(Some(&bearer), r#"{"entity":"planet","id":1}"#)
            .await
            .unwrap()
            .status()
            .as_u16(),
        400
    );
    assert_eq!(
        admin(Some(&bearer), r#"{"entity":"lead","key":"x"}"#)
            .await
            .unwrap()
            .status()
            .as_u16(),
        400
    );

    // By exact key, as an operator copies it from redis-cli.
    let key = format!("{ns}:test:v1:lead:id:4");
    let response = admin(Some(&bearer), &format!(r#"{{"key":"{key}"}}"#))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        admin(Some(&bearer), r#"{"key":"not:ours:v1:lead:id:4"}"#)
            .await
            .unwrap()
            .status()
            .as_u16(),
        400
    );

    // Everything: L1 at once, Redis swept in the background with SCAN, never KEYS or FLUSHDB.
    server.get("/api/leads/5").await;
    let response = admin(Some(&bearer), r#"{"all":true}"#).await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let mut conn = redis.client().await;
    let swept = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{ns}:*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            // The bus stream stays: other instances catch up from it.
            if keys.iter().all(|k| k.ends_with(":bus:stream")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(swept.is_ok(), "the namespace was swept from Redis");
    assert_eq!(
        tiercache_tests::command_count(&mut conn, "flushdb").await,
        0
    );
    let metrics = server.scrape().await;
    assert_eq!(
        metrics[r#"tiercache_admin_actions_total{action="invalidate",result="unauthorized"}"#],
        3.0
    );
    assert_eq!(
        metrics[r#"tiercache_admin_actions_total{action="invalidate_all",result="ok"}"#],
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_admin_api_does_not_exist() {
    let db = TestDb::seeded("noadmin", 1, 2).await;
    let ns = unique_namespace("noadmin");
    let server = TestServer::start(&db, Options::new(&ns, None)).await;
    let (status, _) = server
        .send(Method::POST, "/api/admin/invalidate", r#"{"all":true}"#)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../grafana/prometheus");
    // Every rule has a unit test, and the Alertmanager inhibits by a rule that exists.
    let unit_tests = include_str!("../../grafana/prometheus/alerts_test.yml");
    for kind in tiercache_monitoring::alerts::AlertKind::ALL {
        assert!(
            unit_tests.contains(&format!("alertname: {}\n", kind.name())),
            "alerts_test.yml does not test {}",
            kind.name()
        );
    }
    let alertmanager = include_str!("../../grafana/alertmanager/alertmanager.yml");
    assert!(
        alertmanager.contains(r#"source_matchers: ['alertname="TiercacheRedisDisconnected"']"#)
    );
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = tokio::process::Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .await
            .expect("promtool (Debian package prometheus; .ci/run installs it)");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}: {report}");
        assert!(report.contains("SUCCESS"), "{report}");
    }
}

/// The admin API's `{"entity":"org"}` means what a change to the organization's row means to
/// the database listener: its phone key and its leads' views that show its name go, in one
/// invalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_invalidates_an_organization_with_its_leads_views() {
    let db = TestDb::seeded("adminorg", 2, 10).await;
    let ns = unique_namespace("adminorg");
    let token = "an-admin-token-long-enough";
    let server = TestServer::start(
        &db,
        Options {
            admin_token: Some(token),
            ..Options::new(&ns, None)
        },
    )
    .await;
    // Lead 2 (demo lead 1) belongs to organization 2; its context shows the org's name.
    let loads =
        |entity: &str| format!(r#"tiercache_loads_total{{entity="{entity}",result="found"}}"#);
    assert_eq!(server.get("/api/leads/2/context").await.0, 200);
    assert_eq!(server.get("/api/leads/2/greeting").await.0, 200);
    let before = server.scrape().await;
    let response = server
        .client
        .post(format!("{}/api/admin/invalidate", server.base))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(r#"{"entity":"org","id":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(server.get("/api/leads/2/context").await.0, 200);
    assert_eq!(server.get("/api/leads/2/greeting").await.0, 200);
    let after = server.scrape().await;
    assert_eq!(
        delta(&before, &after, &loads("context")),
        1.0,
        "context reloaded"
    );
    assert_eq!(
        delta(&before, &after, &loads("greeting")),
        1.0,
        "greeting reloaded"
    );
    assert_eq!(
        delta(
            &before,
            &after,
            r#"tiercache_invalidations_total{entity="org",source="admin"}"#
        ),
        1.0
    );
}
