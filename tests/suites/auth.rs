//! Who may call what, over HTTP: API keys on the domain routes (401s, another
//! organization's data as 404s, revocation across instances within the staleness bound,
//! no database round trip to check one), the `api-key` commands, the demo key, and the
//! webhook's shared secret.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use tiercache_repository::api_key::{self, Scope};
use tiercache_repository::seed::{
    DEMO_API_KEY, demo_api_key_active, demo_lead_phone, demo_org_phone, ensure_demo_api_key,
};
use tiercache_server::auth::{ApiKeys, Verdict};
use tiercache_server::cli::{self, ApiKeyCommand};
use tiercache_server::config::Config;
use tiercache_tests::db::TestDb;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::unique_namespace;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `method path` with `body` (JSON when not empty) through `client`: (status,
/// `WWW-Authenticate`, body).
async fn call(
    client: &reqwest::Client,
    server: &TestServer,
    method: Method,
    path: &str,
    body: &str,
) -> (u16, Option<String>, String) {
    let mut request = client.request(method, format!("{}{path}", server.base));
    if !body.is_empty() {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, challenge, response.text().await.unwrap())
}

/// Every domain route, for lead `id` with phone `phone`, organization `org` with phone
/// `org_phone`: method, path, body, and the status it answers when allowed.
fn domain_routes(
    id: i64,
    phone: &str,
    org: i64,
    org_phone: &str,
) -> Vec<(Method, String, String, u16)> {
    let get = |path: String| (Method::GET, path, String::new(), 200);
    vec![
        get(format!("/api/leads/{id}")),
        get(format!("/api/leads/{id}/context")),
        get(format!("/api/leads/{id}/summary")),
        get(format!("/api/leads/{id}/greeting?channel=sms")),
        get(format!("/api/leads/{id}/history?limit=5")),
        get(format!("/api/orgs/by-phone/{org_phone}")),
        get(format!("/api/orgs/{org}/leads/by-phone/{phone}")),
        (
            Method::PATCH,
            format!("/api/leads/{id}"),
            r#"{"status":"qualified"}"#.to_owned(),
            200,
        ),
        (
            Method::POST,
            format!("/api/leads/{id}/messages"),
            r#"{"channel":"sms","direction":"inbound","body":"Call me back"}"#.to_owned(),
            201,
        ),
    ]
}

/// Waits until `keys` has a snapshot whose read began after `after` (bounded by
/// `within`), and returns how long that took.
async fn refreshed_after(keys: &ApiKeys, after: Instant, within: Duration) -> Duration {
    let mut snapshots = keys.subscribe();
    tokio::time::timeout(
        within,
        snapshots.wait_for(|s| s.read_at().is_some_and(|at| at > after)),
    )
    .await
    .unwrap_or_else(|_| panic!("no refresh of the API keys within {within:?}"))
    .unwrap();
    after.elapsed()
}

fn config_for(db: &TestDb) -> Config {
    Config::from_vars([("DATABASE_URL".to_owned(), db.url.clone())]).unwrap()
}

/// Runs an `api-key` command as the binary does: (standard output, standard error).
async fn api_key_command(db: &TestDb, command: ApiKeyCommand) -> (String, String) {
    let (mut out, mut notes) = (Vec::new(), Vec::new());
    cli::run(command, &config_for(db), &mut out, &mut notes)
        .await
        .unwrap();
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(notes).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_routes_refuse_a_missing_or_bad_key_with_a_bearer_challenge() {
    let db = TestDb::seeded("authmissing", 2, 10).await;
    let ns = unique_namespace("authmissing");
    let server = TestServer::start(&db, Options::new(&ns, None)).await;
    let phone = demo_lead_phone(0);
    let made_up = "tck_0000000000000000000000000000000000000000000000000000000000000000";
    for (auth, challenge) in [
        (None, "Bearer"),
        (
            Some(format!("Bearer {made_up}")),
            r#"Bearer error="invalid_token""#,
        ),
        (
            Some("Basic dXNlcjpwYXNz".to_owned()),
            r#"Bearer error="invalid_request""#,
        ),
        (
            Some("Bearer".to_owned()),
            r#"Bearer error="invalid_request""#,
        ),
    ] {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(auth) = &auth {
            headers.insert("authorization", auth.parse().unwrap());
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        for (method, path, body, _) in domain_routes(1, &phone, 1, &demo_org_phone(1)) {
            let (status, given, text) = call(&client, &server, method, &path, &body).await;
            assert_eq!(status, 401, "{auth:?} {path}: {text}");
            assert_eq!(given.as_deref(), Some(challenge), "{auth:?} {path}");
            let error = &json(&text)["error"];
            assert_eq!(error["code"], "unauthorized", "{text}");
            assert!(error["message"].is_string(), "{text}");
        }
    }
    // Nothing was written by the refused writes.
    let (_, body) = server.get("/api/leads/1").await;
    assert_eq!(json(&body)["status"], "new", "{body}");
    let (_, body) = server.get("/api/leads/1/summary").await;
    assert_eq!(json(&body)["message_count"], 3, "{body}");
    // With the key: every route answers.
    for (method, path, body, expected) in domain_routes(1, &phone, 1, &demo_org_phone(1)) {
        let (status, _, text) = call(&server.client, &server, method, &path, &body).await;
        assert_eq!(status, expected, "{path}: {text}");
    }
    // The webhook and monitoring take no API key.
    let anonymous = server.client_with(None);
    let hook = format!(
        r#"{{"caller_id":"{phone}","called_number":"{}","call_sid":"CA1"}}"#,
        demo_org_phone(1)
    );
    let path = "/api/webhooks/conversation-initiation";
    let (status, _, text) = call(&anonymous, &server, Method::POST, path, &hook).await;
    assert_eq!(status, 200, "{text}");
    for path in ["/api/monitoring/health", "/api/monitoring/metrics"] {
        assert_eq!(
            call(&anonymous, &server, Method::GET, path, "").await.0,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_one_organization_gets_404_for_anything_of_another() {
    let db = TestDb::seeded("authscope", 2, 10).await;
    let ns = unique_namespace("authscope");
    let server = TestServer::start(&db, Options::new(&ns, None)).await;
    let (_, key) = api_key::create(&db.pool().await, Scope::Org(1), "portal")
        .await
        .unwrap();
    // A read begun after the key was committed holds it.
    let created = Instant::now();
    refreshed_after(&server.state.api_keys, created, Duration::from_secs(10)).await;
    let org1 = server.client_with(Some(key.expose()));

    // Lead 1 (organization 1) is the key's; lead 2 (organization 2) is not; lead 99999,
    // an organization on +18005559999 and a lead on +16469990000 do not exist. Another
    // organization's data reads exactly as missing data.
    let missing = domain_routes(99_999, "+16469990000", 1, "+18005559999");
    let others = domain_routes(2, &demo_lead_phone(1), 2, &demo_org_phone(2));
    for ((method, path, body, _), (_, absent_path, _, _)) in others.into_iter().zip(missing) {
        let (status, _, text) = call(&org1, &server, method.clone(), &path, &body).await;
        let (absent_status, _, absent_text) =
            call(&org1, &server, method, &absent_path, &body).await;
        assert_eq!(status, 404, "{path}: {text}");
        assert_eq!(
            (status, text),
            (absent_status, absent_text),
            "{path} vs {absent_path}"
        );
    }
    // An organization that does exist, named by id, reads as one that does not.
    let (status, _, text) = call(
        &org1,
        &server,
        Method::GET,
        &format!("/api/orgs/2/leads/by-phone/{}", demo_lead_phone(1)),
        "",
    )
    .await;
    let (_, _, absent) = call(
        &org1,
        &server,
        Method::GET,
        &format!("/api/orgs/77/leads/by-phone/{}", demo_lead_phone(1)),
        "",
    )
    .await;
    assert_eq!((status, &text), (404, &absent));
    // The refused writes wrote nothing (the operator key sees all).
    let (_, body) = server.get("/api/leads/2").await;
    assert_eq!(json(&body)["status"], "contacted", "{body}");
    let (_, body) = server.get("/api/leads/2/summary").await;
    assert_eq!(json(&body)["message_count"], 3, "{body}");
    // Its own organization's: every route answers.
    for (method, path, body, expected) in
        domain_routes(1, &demo_lead_phone(0), 1, &demo_org_phone(1))
    {
        let (status, _, text) = call(&org1, &server, method, &path, &body).await;
        assert_eq!(status, expected, "{path}: {text}");
    }
}

/// Two instances on one database: a key created with `api-key create` works on both, and
/// once `api-key revoke` returns, each refuses it within the staleness bound (2 s) without
/// being told by anyone (no Redis here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_every_instance_within_the_staleness_bound() {
    let db = TestDb::seeded("authrevoke", 2, 10).await;
    let ns = unique_namespace("authrevoke");
    let a = TestServer::start(&db, Options::new(&ns, None)).await;
    let b = TestServer::start(&db, Options::new(&ns, None)).await;
    let bound = tiercache::CacheConfig::DEFAULT_STALENESS_BOUND;

    let (key, notes) = api_key_command(
        &db,
        ApiKeyCommand::Create {
            scope: Scope::Org(1),
            name: "portal".to_owned(),
        },
    )
    .await;
    // A read begun after the key was committed holds it.
    let created = Instant::now();
    let key = key.trim_end().to_owned();
    assert!(key.starts_with("tck_") && key.len() == 68, "{key}");
    assert!(notes.contains("org 1") && !notes.contains(&key), "{notes}");
    for server in [&a, &b] {
        refreshed_after(&server.state.api_keys, created, bound).await;
        let client = server.client_with(Some(&key));
        let (status, _, text) = call(&client, server, Method::GET, "/api/leads/1", "").await;
        assert_eq!(status, 200, "{text}");
    }
    let (listed, _) = api_key_command(&db, ApiKeyCommand::List { org: Some(1) }).await;
    assert!(
        listed.contains("portal") && listed.contains("active"),
        "{listed}"
    );

    let id: i64 = api_key::list(&db.pool().await, Some(1)).await.unwrap()[0].id;
    let (_, notes) = api_key_command(&db, ApiKeyCommand::Revoke { id }).await;
    let revoked = Instant::now();
    assert!(notes.contains("Revoked"), "{notes}");
    for server in [&a, &b] {
        let took = refreshed_after(&server.state.api_keys, revoked, bound).await;
        assert!(took <= bound, "{took:?}");
        let client = server.client_with(Some(&key));
        let (status, challenge, text) =
            call(&client, server, Method::GET, "/api/leads/1", "").await;
        assert_eq!(status, 401, "{text}");
        assert_eq!(
            challenge.as_deref(),
            Some(r#"Bearer error="invalid_token""#)
        );
    }
    assert!(
        revoked.elapsed() <= bound,
        "both refuse it within {bound:?}"
    );
    let (listed, _) = api_key_command(&db, ApiKeyCommand::List { org: None }).await;
    assert!(listed.contains("revoked"), "{listed}");
    assert!(!listed.contains(&key[4..12]), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checking_a_key_costs_no_database_round_trip() {
    let db = TestDb::seeded("authcost", 2, 10).await;
    let ns = unique_namespace("authcost");
    // Statements are counted: no API key re-reads in the background.
    let options = Options {
        refresh_api_keys: false,
        ..Options::new(&ns, None)
    };
    let server = TestServer::start(&db, options).await;
    assert_eq!(server.get("/api/leads/1").await.0, 200);
    let made_up = server.client_with(Some("tck_made_up"));
    let anonymous = server.client_with(None);
    let sql = tiercache_tests::sql_counter::statements();
    for _ in 0..20 {
        assert_eq!(server.get("/api/leads/1").await.0, 200);
        let (status, _, _) = call(&made_up, &server, Method::GET, "/api/leads/1", "").await;
        assert_eq!(status, 401);
        let (status, _, _) = call(&anonymous, &server, Method::GET, "/api/leads/1", "").await;
        assert_eq!(status, 401);
    }
    assert_eq!(tiercache_tests::sql_counter::statements(), sql, "no SQL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_key_works_in_development_only_and_stays_revoked() {
    let db = TestDb::seeded("authdemo", 1, 2).await;
    let pool = db.pool().await;
    assert!(ensure_demo_api_key(&pool).await.unwrap(), "added");
    assert!(!ensure_demo_api_key(&pool).await.unwrap(), "added once");
    let bound = tiercache::CacheConfig::DEFAULT_STALENESS_BOUND;
    let development = ApiKeys::new(pool.clone(), bound, false);
    let production = ApiKeys::new(pool.clone(), bound, true);
    for keys in [&development, &production] {
        keys.refresh().await.unwrap();
    }
    assert_eq!(
        development.check(DEMO_API_KEY),
        Verdict::Valid {
            id: 1,
            scope: Scope::Operator
        }
    );
    assert_eq!(production.check(DEMO_API_KEY), Verdict::Invalid);

    // Revoked, it is not brought back by the next start.
    api_key::revoke(&pool, 1).await.unwrap();
    assert!(!ensure_demo_api_key(&pool).await.unwrap());
    assert!(!demo_api_key_active(&pool).await.unwrap());
    development.refresh().await.unwrap();
    assert_eq!(development.check(DEMO_API_KEY), Verdict::Invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_needs_its_secret_in_its_header_when_one_is_set() {
    let db = TestDb::seeded("authhook", 2, 10).await;
    let ns = unique_namespace("authhook");
    let secret = "a-webhook-secret-long-enough";
    let mut options = Options::new(&ns, None);
    options.vars = vec![
        ("WEBHOOK_SECRET", secret.to_owned()),
        ("WEBHOOK_SECRET_HEADER", "X-Platform-Secret".to_owned()),
    ];
    let server = TestServer::start(&db, options).await;
    let path = format!("{}/api/webhooks/conversation-initiation", server.base);
    let body = format!(
        r#"{{"caller_id":"{}","called_number":"{}","call_sid":"CA1"}}"#,
        demo_lead_phone(0),
        demo_org_phone(1)
    );
    let post = |header: Option<(&'static str, &str)>, body: &str| {
        let mut request = server
            .client
            .post(&path)
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    for header in [
        None,
        Some(("x-platform-secret", "a-webhook-secret-long-enougH")),
        Some(("x-platform-secret", "a-webhook-secret")),
        Some(("x-webhook-secret", secret)),
        Some(("authorization", secret)),
    ] {
        let (status, text) = post(header, &body).await;
        assert_eq!(status, 401, "{header:?}: {text}");
        assert_eq!(json(&text)["error"]["code"], "unauthorized", "{text}");
    }
    // Refused before the body is read: a malformed one is a 401 too, not a 400.
    assert_eq!(post(None, "{not json").await.0, 401);
    let (status, text) = post(Some(("x-platform-secret", secret)), &body).await;
    assert_eq!(status, 200, "{text}");
    let (status, _) = post(Some(("x-platform-secret", secret)), "{not json").await;
    assert_eq!(status, 400);
}
