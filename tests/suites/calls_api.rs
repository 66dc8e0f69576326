//! The call log's HTTP API on the real server (shared Redis, a database per test): events
//! in and what a bad one gets, who may read which organization's calls, tickets, the
//! calls list and its window, polling with a cursor, the admin view, health and the page.
//! The streaming transports (SSE, WebSocket, across instances) are in `calls_feed`.

use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};
use tiercache_repository::api_key::{self, Scope};
use tiercache_repository::seed::demo_org_phone;
use tiercache_server::routes::CONTENT_SECURITY_POLICY;
use tiercache_tests::db::TestDb;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::{SHARED_REDIS_URL, unique_namespace};

/// The webhook's (and the events route's) secret in these tests.
pub(crate) const SECRET: &str = "a-webhook-secret-for-call-tests";
/// The admin token in these tests.
pub(crate) const ADMIN: &str = "admin-token-for-call-tests";
/// A caller who is no one's lead.
pub(crate) const NEW_CALLER: &str = "+14155550123";
/// How long a test waits for the consumer to apply what was posted.
pub(crate) const APPLIED_WITHIN: Duration = Duration::from_secs(10);

/// A server with the call log, on the shared Redis under `ns`, its feed beating every
/// 200 ms.
pub(crate) async fn calls_server(db: &TestDb, ns: &str) -> TestServer {
    TestServer::start(
        db,
        Options {
            admin_token: Some(ADMIN),
            calls: true,
            vars: vec![
                ("WEBHOOK_SECRET", SECRET.to_owned()),
                ("CALL_FEED_HEARTBEAT_MS", "200".to_owned()),
            ],
            ..Options::new(ns, Some(SHARED_REDIS_URL))
        },
    )
    .await
}

pub(crate) fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Places call `sid` to organization `org` from a new caller through the webhook.
pub(crate) async fn place_call(server: &TestServer, sid: &str, org: i64) {
    let body =
        json!({"caller_id": NEW_CALLER, "called_number": demo_org_phone(org), "call_sid": sid});
    let response = server
        .client
        .post(format!(
            "{}/api/webhooks/conversation-initiation",
            server.base
        ))
        .header("x-webhook-secret", SECRET)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

/// Posts `body` as an event of call `sid`, with the secret: (status, body).
pub(crate) async fn post_event(server: &TestServer, sid: &str, body: &str) -> (u16, Value) {
    let response = server
        .client
        .post(format!("{}/api/calls/{sid}/events", server.base))
        .header("x-webhook-secret", SECRET)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, json_of(&response.text().await.unwrap()))
}

/// Waits (bounded) until organization `org`'s calls hold `sid` in a state `done` accepts;
/// returns that session.
pub(crate) async fn session_of(
    server: &TestServer,
    org: i64,
    sid: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + APPLIED_WITHIN;
    loop {
        let (status, body) = server.get(&format!("/api/orgs/{org}/calls")).await;
        assert_eq!(status, 200, "{body}");
        let calls = json_of(&body)["calls"].as_array().unwrap().clone();
        if let Some(session) = calls.into_iter().find(|c| c["call_sid"] == sid)
            && done(&session)
        {
            return session;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sid} not applied as expected within {APPLIED_WITHIN:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts a 400 naming `field`.
fn assert_bad(status: u16, body: &Value, field: &str) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_400s_naming_the_field_and_publish_nothing() {
    let db = TestDb::seeded("callsbad", 2, 10).await;
    let ns = unique_namespace("callsbad");
    let server = calls_server(&db, &ns).await;
    place_call(&server, "CA-bad-1", 1).await;
    session_of(&server, 1, "CA-bad-1", |_| true).await;
    let log = &server.state.calls.as_ref().unwrap().log;
    log.flush().await;
    let published = log.status().published;

    let big = "x".repeat(tiercache_calls::MAX_DATA_BYTES);
    for (body, field) in [
        (r#"{"type":"call_exploded"}"#.to_owned(), "type"),
        (r#"{"type":"call_started"}"#.to_owned(), "type"),
        (r#"{"at":"2026-12-07T12:00:00Z"}"#.to_owned(), "type"),
        (r#"{"type":"intent_detected","at":"noon"}"#.to_owned(), "at"),
        (
            r#"{"type":"intent_detected","at":"2001-01-01T00:00:00Z"}"#.to_owned(),
            "at",
        ),
        (
            format!(r#"{{"type":"intent_detected","data":{{"note":"{big}"}}}}"#),
            "data",
        ),
        (
            r#"{"type":"intent_detected","data":"book"}"#.to_owned(),
            "data",
        ),
        (
            r#"{"type":"call_ended"}"#.to_owned(),
            "data.duration_seconds",
        ),
        (
            r#"{"type":"call_ended","data":{"duration_seconds":-1}}"#.to_owned(),
            "data.duration_seconds",
        ),
        ("[1]".to_owned(), "body"),
        ("{".to_owned(), "body"),
    ] {
        let (status, answer) = post_event(&server, "CA-bad-1", &body).await;
        assert_bad(status, &answer, field);
    }
    // A call sid with a space (decoded from the path) or too long.
    let long = "C".repeat(tiercache_calls::MAX_CALL_SID_LEN + 1);
    for sid in ["CA%20bad", long.as_str()] {
        let (status, answer) = post_event(&server, sid, r#"{"type":"intent_detected"}"#).await;
        assert_bad(status, &answer, "call_sid");
    }
    // A call no one knows: 404 naming the call sid.
    let (status, answer) =
        post_event(&server, "CA-never-started", r#"{"type":"intent_detected"}"#).await;
    assert_eq!(
        (status, &answer["error"]["field"]),
        (404, &json!("call_sid")),
        "{answer}"
    );
    // No secret: 401, nothing read.
    let response = server
        .client
        .post(format!("{}/api/calls/CA-bad-1/events", server.base))
        .json(&json!({"type": "intent_detected"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    log.flush().await;
    assert_eq!(log.status().published, published, "nothing was published");
    let (status, answer) = post_event(
        &server,
        "CA-bad-1",
        r#"{"type":"intent_detected","data":{"intent":"book"},"extra":"ignored"}"#,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert!(answer["event_id"].as_str().unwrap().len() == 36, "{answer}");
    let session = session_of(&server, 1, "CA-bad-1", |s| s["events"] == 2).await;
    assert_eq!(session["intent"], "book", "{session}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_tickets_reach_their_own_organization_only() {
    let db = TestDb::seeded("callsauth", 2, 10).await;
    let pool = db.pool().await;
    let (_, org2_key) = api_key::create(&pool, Scope::Org(2), "org 2")
        .await
        .unwrap();
    let ns = unique_namespace("callsauth");
    let server = calls_server(&db, &ns).await;
    let org2 = server.client_with(Some(org2_key.expose()));
    let get = |client: &reqwest::Client, path: &str| {
        let request = client.get(format!("{}{path}", server.base));
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // Another organization's key gets what a missing organization gets.
    let (_, missing) = get(&server.client, "/api/orgs/99999/calls").await;
    for path in [
        "/api/orgs/1/calls",
        "/api/orgs/1/calls/live?mode=poll",
        "/api/orgs/1/calls/live",
        "/api/orgs/1/calls/ws",
    ] {
        let (status, body) = get(&org2, path).await;
        assert_eq!((status, &body), (404, &missing), "{path}");
    }
    let response = org2
        .post(format!("{}/api/orgs/1/calls/ticket", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.text().await.unwrap(), missing);
    let (status, _) = get(&org2, "/api/orgs/2/calls").await;
    assert_eq!(status, 200, "its own organization");

    // A ticket: the live routes of its organization, without a header, until it expires.
    let response = server
        .client
        .post(format!("{}/api/orgs/1/calls/ticket", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer = json_of(&response.text().await.unwrap());
    assert_eq!(answer["expires_in"], 60);
    let ticket = answer["ticket"].as_str().unwrap().to_owned();
    let anonymous = server.client_with(None);
    let (status, body) = get(
        &anonymous,
        &format!("/api/orgs/1/calls/live?mode=poll&ticket={ticket}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(
        &anonymous,
        &format!("/api/orgs/2/calls/live?mode=poll&ticket={ticket}"),
    )
    .await;
    assert_eq!(
        (status, body),
        (404, missing.clone()),
        "org 1's ticket on org 2"
    );
    // Tickets open nothing else.
    for path in [
        format!("/api/orgs/1/calls?ticket={ticket}"),
        format!("/api/leads/1?ticket={ticket}"),
    ] {
        let (status, _) = get(&anonymous, &path).await;
        assert_eq!(status, 401, "{path}");
    }
    let tickets = &server.state.calls.as_ref().unwrap().tickets;
    let expired = tickets.issue(1, Utc::now() - chrono::Duration::seconds(61));
    for bad in [expired.as_str(), "1.99999999999.00", "junk"] {
        let (status, body) = get(
            &anonymous,
            &format!("/api/orgs/1/calls/live?mode=poll&ticket={bad}"),
        )
        .await;
        assert_eq!(status, 401, "{bad}: {body}");
        assert!(body.contains("ticket"), "{body}");
    }
    let (status, _) = get(&anonymous, "/api/orgs/1/calls/live?mode=poll").await;
    assert_eq!(status, 401, "neither key nor ticket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_come_newest_first_within_their_window() {
    let db = TestDb::seeded("callslist", 2, 10).await;
    let ns = unique_namespace("callslist");
    let server = calls_server(&db, &ns).await;
    place_call(&server, "CA-list-1", 1).await;
    session_of(&server, 1, "CA-list-1", |_| true).await;
    place_call(&server, "CA-list-2", 1).await;
    let second = session_of(&server, 1, "CA-list-2", |_| true).await;
    for field in [
        "call_sid",
        "org_id",
        "status",
        "in_progress",
        "started_at",
        "cursor",
        "caller",
    ] {
        assert!(second.get(field).is_some(), "{field} in {second}");
    }
    assert_eq!(
        (second["in_progress"].as_bool(), second["org_id"].as_i64()),
        (Some(true), Some(1))
    );
    assert_eq!(second["caller"], "•••0123", "masked");
    let hour_ago = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    for since in ["5m", "1h", "24h", "90m", hour_ago.as_str()] {
        let (status, body) = server
            .get(&format!("/api/orgs/1/calls?since={}", urlencode(since)))
            .await;
        assert_eq!(status, 200, "{since}: {body}");
        let body = json_of(&body);
        let sids: Vec<&str> = body["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["call_sid"].as_str().unwrap())
            .collect();
        assert_eq!(sids, ["CA-list-2", "CA-list-1"], "{since}: newest first");
        assert!(
            body["cursor"].is_string() && body["since"].is_string(),
            "{body}"
        );
    }
    let (_, body) = server.get("/api/orgs/1/calls?limit=1").await;
    assert_eq!(json_of(&body)["calls"].as_array().unwrap().len(), 1);
    let old = (Utc::now() - chrono::Duration::hours(25)).to_rfc3339();
    for since in ["0m", "25h", "1441m", "5d", "soon", old.as_str()] {
        let (status, body) = server
            .get(&format!("/api/orgs/1/calls?since={}", urlencode(since)))
            .await;
        assert_bad(status, &json_of(&body), "since");
    }
    for limit in ["0", "1001", "x"] {
        let (status, body) = server
            .get(&format!("/api/orgs/1/calls?limit={limit}"))
            .await;
        assert_bad(status, &json_of(&body), "limit");
    }
}

/// `+` and `:` as a query value needs them (RFC 3339 offsets).
fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_pages_through_changes_with_its_cursor() {
    let db = TestDb::seeded("callspoll", 2, 10).await;
    let ns = unique_namespace("callspoll");
    let server = calls_server(&db, &ns).await;
    let (_, body) = server.get("/api/orgs/1/calls").await;
    let start = json_of(&body)["cursor"].as_str().unwrap().to_owned();
    for sid in ["CA-poll-1", "CA-poll-2", "CA-poll-3"] {
        place_call(&server, sid, 1).await;
    }
    session_of(&server, 1, "CA-poll-3", |_| true).await;
    session_of(&server, 1, "CA-poll-1", |_| true).await;
    session_of(&server, 1, "CA-poll-2", |_| true).await;
    let mut cursor = start;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (status, body) = server
            .get(&format!(
                "/api/orgs/1/calls/live?mode=poll&since={cursor}&limit=2"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let page = json_of(&body);
        let changes = page["changes"].as_array().unwrap();
        assert!(changes.len() <= 2, "{page}");
        let next = page["cursor"].as_str().unwrap().to_owned();
        if changes.is_empty() {
            assert_eq!(next, cursor, "an empty page keeps the cursor");
            break;
        }
        seen.extend(
            changes
                .iter()
                .map(|c| c["call_sid"].as_str().unwrap().to_owned()),
        );
        cursor = next;
    }
    seen.sort();
    assert_eq!(seen, ["CA-poll-1", "CA-poll-2", "CA-poll-3"]);
    for (query, field) in [
        ("mode=poll&since=abc", "since"),
        ("mode=poll&since=-1", "since"),
        ("mode=poll&limit=101", "limit"),
        ("mode=push", "mode"),
    ] {
        let (status, body) = server.get(&format!("/api/orgs/1/calls/live?{query}")).await;
        assert_bad(status, &json_of(&body), field);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_the_streams_and_health_reports_the_log() {
    let db = TestDb::seeded("callsadmin", 2, 10).await;
    let ns = unique_namespace("callsadmin");
    let server = calls_server(&db, &ns).await;
    place_call(&server, "CA-admin-1", 1).await;
    session_of(&server, 1, "CA-admin-1", |_| true).await;
    let admin = server.client_with(Some(ADMIN));
    let response = admin
        .get(format!("{}/api/admin/streams", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = json_of(&response.text().await.unwrap());
    let streams = body["streams"].as_array().unwrap();
    let ours = streams
        .iter()
        .find(|s| s["org_id"] == 1 && s["key"].as_str().unwrap().starts_with(&ns))
        .unwrap_or_else(|| panic!("org 1's stream in {body}"));
    assert!(ours["length"].as_u64().unwrap() >= 1, "{ours}");
    assert!(
        body["dead_letter"].is_u64() && body["queue"]["capacity"].is_u64(),
        "{body}"
    );
    let (status, _) = server.get("/api/admin/streams").await;
    assert_eq!(status, 401, "an API key is no admin token");

    let (status, body) = server.get("/api/monitoring/health/calls").await;
    assert_eq!(status, 200, "{body}");
    let calls = json_of(&body);
    assert_eq!(calls["status"], "ok", "{calls}");
    assert_eq!(calls["log"]["redis"], true, "{calls}");
    let (_, body) = server.get("/api/monitoring/health").await;
    assert_eq!(json_of(&body)["calls"]["status"], "ok", "{body}");
    let scrape = server.scrape().await;
    assert!(scrape["tiercache_call_events_published_total"] >= 1.0);
    assert!(scrape["tiercache_call_events_applied_total"] >= 1.0);
    assert_eq!(
        scrape[r#"tiercache_call_events_dropped_total{reason="queue_full"}"#],
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_a_strict_policy() {
    let db = TestDb::seeded("callspage", 1, 1).await;
    let ns = unique_namespace("callspage");
    let server = calls_server(&db, &ns).await;
    let anonymous = server.client_with(None);
    for (path, kind) in [
        ("/calls", "text/html; charset=utf-8"),
        ("/calls.js", "text/javascript; charset=utf-8"),
        ("/calls.css", "text/css; charset=utf-8"),
    ] {
        let response = anonymous
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], kind, "{path}");
        assert_eq!(headers["content-security-policy"], CONTENT_SECURITY_POLICY);
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    let (_, html) = server.send(Method::GET, "/calls", "").await;
    assert!(html.contains("<script src=\"/calls.js\">"), "{html}");
}
