//! The HTTP API against the real server (on a loopback port), real PostgreSQL (a database
//! per test) and real Redis: every route's happy path and bad inputs, writes seen by the
//! next read, the same bytes with and without Redis, the deadline, the quick start.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tiercache_repository::seed::{demo_lead_phone, demo_org_phone};
use tiercache_server::routes::{GreetingSource, WebhookResponse};
use tiercache_tests::db::TestDb;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::{Recorder, RedisServer, SHARED_REDIS_URL, command_count, unique_namespace};

fn webhook_body(caller: &str, called: &str) -> String {
    format!(r#"{{"caller_id":"{caller}","called_number":"{called}","call_sid":"CA1"}}"#)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_its_happy_path() {
    let db = TestDb::seeded("happy", 3, 30).await;
    let ns = unique_namespace("happy");
    let server = TestServer::start(&db, Options::new(&ns, Some(SHARED_REDIS_URL))).await;
    // Lead j=4 has id 5, belongs to org (4 % 3) + 1 = 2.
    let (lead_phone, org_phone) = (demo_lead_phone(4), demo_org_phone(2));

    let (status, body) = server
        .get(&format!(
            "/api/orgs/by-phone/{}",
            org_phone.replace('+', "%2B")
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["id"], 2);
    // Any format the normalizer accepts works in a path.
    let (status, body) = server.get("/api/orgs/by-phone/(800)%20555-0002").await;
    assert_eq!((status, json(&body)["id"].clone()), (200, Value::from(2)));

    let (status, body) = server
        .get(&format!(
            "/api/orgs/2/leads/by-phone/{}",
            lead_phone.replace('+', "%2B")
        ))
        .await;
    assert_eq!(
        (status, json(&body)["id"].clone()),
        (200, Value::from(5)),
        "{body}"
    );
    let (status, body) = server.get("/api/leads/5").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["phone"], lead_phone);
    let (status, body) = server.get("/api/leads/5/context").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["message_count"], 3);
    let (status, body) = server.get("/api/leads/5/summary").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["inbound_count"], 2);
    for channel in ["voice", "sms", "web"] {
        let (status, body) = server
            .get(&format!("/api/leads/5/greeting?channel={channel}"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(json(&body)["channel"], channel);
    }
    let (status, body) = server.get("/api/leads/5/history?limit=2&offset=1").await;
    assert_eq!(status, 200);
    let page = json(&body);
    assert_eq!(
        (
            page["total"].clone(),
            page["messages"].as_array().unwrap().len()
        ),
        (Value::from(3), 2)
    );

    let (status, body) = server
        .send(Method::PATCH, "/api/leads/5", r#"{"status":"qualified"}"#)
        .await;
    assert_eq!(
        (status, json(&body)["status"].clone()),
        (200, Value::from("qualified"))
    );
    let (status, body) = server
        .send(
            Method::POST,
            "/api/leads/5/messages",
            r#"{"channel":"web","direction":"inbound","body":"Hello"}"#,
        )
        .await;
    assert_eq!(
        (status, json(&body)["body"].clone()),
        (201, Value::from("Hello"))
    );

    let (status, body) = server
        .send(
            Method::POST,
            "/api/webhooks/conversation-initiation",
            &webhook_body(&lead_phone, &org_phone),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let answer: WebhookResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.kind, "conversation_initiation_client_data");
    assert_eq!(answer.dynamic_variables.lead_id, 5);
    assert_eq!(
        answer.dynamic_variables.greeting_source,
        GreetingSource::Lead
    );
    assert!(
        answer
            .conversation_config_override
            .agent
            .first_message
            .contains("Hello")
    );

    // An unknown caller is a new lead, not an error.
    let (status, body) = server
        .send(
            Method::POST,
            "/api/webhooks/conversation-initiation",
            &webhook_body("+16465550199", &org_phone),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let answer: WebhookResponse = serde_json::from_str(&body).unwrap();
    assert!(!answer.dynamic_variables.is_known_caller);
    assert_eq!(answer.dynamic_variables.org_id, 2);
    assert_eq!(
        answer.dynamic_variables.greeting_source,
        GreetingSource::NewCaller
    );
    assert_eq!(server.get("/api/monitoring/health/live").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_naming_the_field_and_unknown_things_are_404s() {
    let db = TestDb::seeded("bad", 2, 10).await;
    let ns = unique_namespace("bad");
    let server = TestServer::start(&db, Options::new(&ns, Some(SHARED_REDIS_URL))).await;
    let hook = "/api/webhooks/conversation-initiation";
    let cases: &[(Method, &str, &str, u16, Option<&str>)] = &[
        (Method::POST, hook, "{not json", 400, None),
        (
            Method::POST,
            hook,
            &webhook_body("hello", "+18005550001"),
            400,
            Some("caller_id"),
        ),
        (
            Method::POST,
            hook,
            &webhook_body("+16462000001", "+1 123"),
            400,
            Some("called_number"),
        ),
        (
            Method::POST,
            hook,
            r#"{"caller_id":"+16462000001","called_number":"+18005550001"}"#,
            400,
            Some("call_sid"),
        ),
        // An unknown field is ignored (it was a 400 naming it until the platform's contract
        // was followed: `webhook_contract`); it masks no missing one.
        (
            Method::POST,
            hook,
            r#"{"caller_id":"+16462000001","called_number":"+18005550001","extra":1}"#,
            400,
            Some("call_sid"),
        ),
        (
            Method::POST,
            hook,
            &webhook_body("+16462000001", "+18005550099"),
            404,
            None,
        ),
        (
            Method::GET,
            "/api/orgs/by-phone/not-a-phone",
            "",
            400,
            Some("phone"),
        ),
        (
            Method::GET,
            "/api/orgs/by-phone/%2B18005550077",
            "",
            404,
            None,
        ),
        (
            Method::GET,
            "/api/orgs/1/leads/by-phone/%2B16465550100",
            "",
            404,
            None,
        ),
        (Method::GET, "/api/leads/abc", "", 400, Some("path")),
        (Method::GET, "/api/leads/999999", "", 404, None),
        (
            Method::GET,
            "/api/leads/1/greeting?channel=fax",
            "",
            400,
            Some("channel"),
        ),
        (
            Method::GET,
            "/api/leads/1/greeting?chanel=sms",
            "",
            400,
            Some("chanel"),
        ),
        (
            Method::GET,
            "/api/leads/1/history?limit=0",
            "",
            400,
            Some("limit"),
        ),
        (
            Method::GET,
            "/api/leads/1/history?limit=101",
            "",
            400,
            Some("limit"),
        ),
        (
            Method::GET,
            "/api/leads/1/history?offset=-1",
            "",
            400,
            Some("offset"),
        ),
        (Method::GET, "/api/leads/999999/history", "", 404, None),
        (
            Method::PATCH,
            "/api/leads/1",
            r#"{"status":"royalty"}"#,
            400,
            Some("status"),
        ),
        (
            Method::PATCH,
            "/api/leads/1",
            r#"{"name":""}"#,
            400,
            Some("name"),
        ),
        (
            Method::PATCH,
            "/api/leads/1",
            r#"{"colour":"red"}"#,
            400,
            Some("colour"),
        ),
        (
            Method::PATCH,
            "/api/leads/1",
            r#"{"name":42}"#,
            400,
            Some("name"),
        ),
        (
            Method::PATCH,
            "/api/leads/999999",
            r#"{"name":"X"}"#,
            404,
            None,
        ),
        (
            Method::POST,
            "/api/leads/1/messages",
            r#"{"channel":"fax","direction":"inbound","body":"x"}"#,
            400,
            Some("channel"),
        ),
        (
            Method::POST,
            "/api/leads/1/messages",
            r#"{"channel":"sms","direction":"sideways","body":"x"}"#,
            400,
            Some("direction"),
        ),
        (
            Method::POST,
            "/api/leads/1/messages",
            r#"{"channel":"sms","direction":"inbound"}"#,
            400,
            Some("body"),
        ),
        (
            Method::POST,
            "/api/leads/999999/messages",
            r#"{"channel":"sms","direction":"inbound","body":"x"}"#,
            404,
            None,
        ),
        (Method::GET, "/api/nothing/here", "", 404, None),
    ];
    for (method, path, body, status, field) in cases {
        let (got, text) = server.send(method.clone(), path, body).await;
        assert_eq!(got, *status, "{method} {path} {body}: {text}");
        let error = &json(&text)["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{text}"
        );
        if let Some(field) = field {
            assert_eq!(error["field"], *field, "{method} {path} {body}: {text}");
        }
    }
    // Nothing was written by the refused requests.
    let (_, lead) = server.get("/api/leads/1").await;
    assert_eq!(json(&lead)["status"], "new");
    let (_, history) = server.get("/api/leads/1/history").await;
    assert_eq!(json(&history)["total"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_seen_by_the_next_read() {
    let db = TestDb::seeded("writes", 2, 10).await;
    let ns = unique_namespace("writes");
    let server = TestServer::start(&db, Options::new(&ns, Some(SHARED_REDIS_URL))).await;
    let views = [
        "/api/leads/3",
        "/api/leads/3/context",
        "/api/leads/3/summary",
        "/api/leads/3/greeting",
        "/api/leads/3/history?limit=5",
    ];
    for view in views {
        assert_eq!(server.get(view).await.0, 200);
    }
    let (_, by_phone) = server
        .get(&format!(
            "/api/orgs/1/leads/by-phone/{}",
            demo_lead_phone(2).replace('+', "%2B")
        ))
        .await;
    assert_eq!(json(&by_phone)["name"], "Aisha Garcia");

    server
        .send(
            Method::PATCH,
            "/api/leads/3",
            r#"{"name":"Zoe Quinn","notes":null}"#,
        )
        .await;
    let (_, lead) = server.get("/api/leads/3").await;
    assert_eq!(
        (json(&lead)["name"].clone(), json(&lead)["notes"].clone()),
        (Value::from("Zoe Quinn"), Value::Null)
    );
    let (_, by_phone) = server
        .get(&format!(
            "/api/orgs/1/leads/by-phone/{}",
            demo_lead_phone(2).replace('+', "%2B")
        ))
        .await;
    assert_eq!(json(&by_phone)["name"], "Zoe Quinn");
    let (_, context) = server.get("/api/leads/3/context").await;
    assert_eq!(json(&context)["name"], "Zoe Quinn");
    let (_, greeting) = server.get("/api/leads/3/greeting").await;
    assert!(
        json(&greeting)["text"]
            .as_str()
            .unwrap()
            .starts_with("Hi Zoe,"),
        "{greeting}"
    );

    server
        .send(
            Method::POST,
            "/api/leads/3/messages",
            r#"{"channel":"sms","direction":"inbound","body":"Is Friday possible?"}"#,
        )
        .await;
    let (_, context) = server.get("/api/leads/3/context").await;
    let context = json(&context);
    assert_eq!(context["message_count"], 4);
    assert_eq!(context["last_topics"][0], "Is Friday possible?");
    let (_, summary) = server.get("/api/leads/3/summary").await;
    assert_eq!(json(&summary)["last_message"], "Is Friday possible?");
    let (_, history) = server.get("/api/leads/3/history?limit=5").await;
    assert_eq!(json(&history)["total"], 4);
    let (_, greeting) = server.get("/api/leads/3/greeting?channel=sms").await;
    assert!(
        json(&greeting)["text"]
            .as_str()
            .unwrap()
            .contains("Is Friday possible?"),
        "{greeting}"
    );
    let (_, hook) = server
        .send(
            Method::POST,
            "/api/webhooks/conversation-initiation",
            &webhook_body(&demo_lead_phone(2), &demo_org_phone(1)),
        )
        .await;
    assert_eq!(
        json(&hook)["dynamic_variables"]["last_topic"],
        "Is Friday possible?"
    );
}

/// A fixed script over every route, reads and writes mixed.
fn script() -> Vec<(Method, String, String)> {
    let mut steps = Vec::new();
    for round in 0..4 {
        for j in 0..12i64 {
            let id = j + 1;
            let org = (j % 3) + 1;
            steps.push((
                Method::POST,
                "/api/webhooks/conversation-initiation".to_owned(),
                webhook_body(&demo_lead_phone(j), &demo_org_phone(org)),
            ));
            steps.push((Method::GET, format!("/api/leads/{id}"), String::new()));
            steps.push((
                Method::GET,
                format!("/api/leads/{id}/context"),
                String::new(),
            ));
            steps.push((
                Method::GET,
                format!("/api/leads/{id}/summary"),
                String::new(),
            ));
            steps.push((
                Method::GET,
                format!("/api/leads/{id}/greeting?channel=web"),
                String::new(),
            ));
            steps.push((
                Method::GET,
                format!("/api/leads/{id}/history?limit=2&offset={}", round % 2),
                String::new(),
            ));
            steps.push((
                Method::GET,
                format!(
                    "/api/orgs/by-phone/{}",
                    demo_org_phone(org).replace('+', "%2B")
                ),
                String::new(),
            ));
            if (j + round) % 4 == 0 {
                steps.push((
                    Method::PATCH,
                    format!("/api/leads/{id}"),
                    format!(r#"{{"status":"contacted","notes":"round {round}"}}"#),
                ));
            }
            if (j + round) % 5 == 0 {
                steps.push((Method::POST, format!("/api/leads/{id}/messages"), format!(r#"{{"channel":"voice","direction":"inbound","body":"Round {round} question"}}"#)));
            }
            steps.push((
                Method::GET,
                format!("/api/leads/{id}/greeting"),
                String::new(),
            ));
        }
        steps.push((
            Method::GET,
            "/api/leads/999/context".to_owned(),
            String::new(),
        ));
        steps.push((
            Method::POST,
            "/api/webhooks/conversation-initiation".to_owned(),
            webhook_body("+16465550100", &demo_org_phone(1)),
        ));
    }
    steps
}

async fn replay(server: &TestServer) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for (method, path, body) in script() {
        out.push(server.send(method, &path, &body).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_on_and_off_answer_byte_for_byte_the_same() {
    let (db_on, db_off) = (
        TestDb::seeded("modeon", 3, 12).await,
        TestDb::seeded("modeoff", 3, 12).await,
    );
    let ns = unique_namespace("modes");
    let on = TestServer::start(&db_on, Options::new(&ns, Some(SHARED_REDIS_URL))).await;
    let off = TestServer::start(&db_off, Options::new(&ns, None)).await;
    let with_redis = replay(&on).await;
    let without = replay(&off).await;
    assert!(with_redis.len() > 400);
    for (i, (a, b)) in with_redis.iter().zip(&without).enumerate() {
        assert_eq!(a, b, "step {i} differs: {:?}", script()[i]);
    }
    assert!(
        with_redis
            .iter()
            .all(|(status, _)| [200, 201, 404].contains(status))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_budget_the_webhook_answers_with_the_orgs_default_greeting() {
    let db = TestDb::seeded("deadline", 2, 10).await;
    let ns = unique_namespace("deadline");
    let opts = Options {
        webhook_budget: Duration::from_millis(300),
        ..Options::new(&ns, None)
    };
    let server = TestServer::start(&db, opts).await;
    // The organization is cached; the lead lookup then waits on a lock held here.
    assert_eq!(server.get("/api/orgs/by-phone/%2B18005550001").await.0, 200);
    let pool = db.pool().await;
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE leads IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let (status, body) = server
        .send(
            Method::POST,
            "/api/webhooks/conversation-initiation",
            &webhook_body(&demo_lead_phone(0), &demo_org_phone(1)),
        )
        .await;
    blocker.rollback().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: WebhookResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer.dynamic_variables.greeting_source,
        GreetingSource::DeadlineDefault
    );
    assert_eq!(answer.dynamic_variables.org_id, 1);
    assert!(
        answer
            .conversation_config_override
            .agent
            .first_message
            .contains("Globex Realty 1")
    );
    assert_eq!(server.state.metrics.webhook_fallbacks(), 1);
    let (_, metrics) = server.get("/api/monitoring/metrics").await;
    assert!(metrics.contains("tiercache_webhook_deadline_fallbacks_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_and_nothing_cached_is_a_503() {
    let server = TestServer::with_unreachable_database().await;
    for path in [
        "/api/leads/1",
        "/api/leads/1/context",
        "/api/leads/1/greeting",
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(json(&body)["error"]["code"], "unavailable");
    }
    let (status, _) = server
        .send(
            Method::POST,
            "/api/webhooks/conversation-initiation",
            &webhook_body(&demo_lead_phone(0), &demo_org_phone(1)),
        )
        .await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_costs_one_query_cold_one_redis_round_trip_warm_and_nothing_hot() {
    let redis = RedisServer::start().await;
    let db = TestDb::seeded("cost", 2, 10).await;
    let ns = unique_namespace("cost");
    let redis_url = redis.url();
    let (recorder, _) = Recorder::new();
    let rec = Arc::new(recorder);
    // Statements are counted: no API key re-reads in the background.
    let quiet = || Options {
        refresh_api_keys: false,
        ..Options::new(&ns, Some(&redis_url))
    };
    let a = TestServer::start(
        &db,
        Options {
            observer: Some(rec.clone()),
            ..quiet()
        },
    )
    .await;
    let call = webhook_body(&demo_lead_phone(0), &demo_org_phone(1));
    let hook = "/api/webhooks/conversation-initiation";
    let mut admin = redis.client().await;
    // Cold everywhere: one batched SQL statement serves all four parts.
    let sql = tiercache_tests::sql_counter::statements();
    let (status, cold) = a.send(Method::POST, hook, &call).await;
    assert_eq!(status, 200, "{cold}");
    assert_eq!(
        tiercache_tests::sql_counter::statements() - sql,
        1,
        "one SQL round trip"
    );
    for entity in ["org", "lead", "context", "greeting"] {
        assert_eq!(rec.count(&format!("load.{entity}.found")), 1, "{entity}");
    }
    // Redis's copies go behind the answer.
    a.state.repo.cache().flush_l2_writes().await;

    // Warm on this instance: L1 only — no SQL, no Redis.
    let (sql, evals, gets) = (
        tiercache_tests::sql_counter::statements(),
        command_count(&mut admin, "evalsha").await,
        command_count(&mut admin, "get").await,
    );
    let (_, hot) = a.send(Method::POST, hook, &call).await;
    assert_eq!(hot, cold);
    assert_eq!(tiercache_tests::sql_counter::statements(), sql);
    assert_eq!(command_count(&mut admin, "evalsha").await, evals);
    assert_eq!(command_count(&mut admin, "get").await, gets);

    // Another instance (cold L1, warm Redis): one script round trip, no SQL.
    let b = TestServer::start(&db, quiet()).await;
    let before = tiercache_tests::CallCost::now(&mut admin).await;
    let (_, warm) = b.send(Method::POST, hook, &call).await;
    assert_eq!(warm, cold);
    // The script's GETs (four values, three invalidation epochs) run inside that round
    // trip; no GET was sent on its own.
    before.assert_one_round_trip(&mut admin, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_works_from_no_database_at_all() {
    let db = TestDb::absent("quickstart").await;
    let ns = unique_namespace("quick");
    let config = tiercache_server::Config::from_vars([
        ("DATABASE_URL".to_owned(), db.url.clone()),
        ("CACHE_PREFIX".to_owned(), ns),
        ("APP_ENV".to_owned(), "test".to_owned()),
    ])
    .unwrap();
    let service = tiercache_server::startup::prepare(&config).await.unwrap();
    assert_eq!(
        service.seeded,
        tiercache_repository::seed::Seeded::Loaded {
            orgs: 100,
            leads: 100_000,
            messages: 300_000
        }
    );
    // DB_NOTIFY_ENABLED defaults to on: the change listener runs with the service.
    let mut listening = service.db_listener.as_ref().unwrap().subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        listening.wait_for(|s| s.listening_since.is_some()),
    )
    .await
    .expect("the change listener listens within 10 s")
    .unwrap();
    assert!(service.demo_api_key, "development has the demo key");
    let server = TestServer::serve(service.state).await;
    // The README's read, with the demo key start-up prints.
    let demo = server.client_with(Some(tiercache_repository::seed::DEMO_API_KEY));
    let response = demo
        .get(format!("{}/api/leads/1", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // The call start-up prints.
    let (status, body) = server
        .send(
            Method::POST,
            "/api/webhooks/conversation-initiation",
            &webhook_body(&demo_lead_phone(0), &demo_org_phone(1)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let answer: WebhookResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.dynamic_variables.lead_id, 1);
    assert_eq!(
        answer.dynamic_variables.greeting_source,
        GreetingSource::Lead
    );
    // Lead 99,999 (the last) belongs to organization 100.
    let (status, body) = server
        .send(
            Method::POST,
            "/api/webhooks/conversation-initiation",
            &webhook_body(&demo_lead_phone(99_999), &demo_org_phone(100)),
        )
        .await;
    assert_eq!(
        (status, json(&body)["dynamic_variables"]["lead_id"].clone()),
        (200, Value::from(100_000))
    );
    // A second start finds the data and does not seed again.
    let again = tiercache_server::startup::prepare(&config).await.unwrap();
    assert_eq!(
        again.seeded,
        tiercache_repository::seed::Seeded::AlreadyPopulated
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_request_in_flight_finish() {
    let db = TestDb::seeded("shutdown", 2, 10).await;
    let ns = unique_namespace("shutdown");
    let server = TestServer::start(&db, Options::new(&ns, None)).await;
    let pool = db.pool().await;
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE leads IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let (client, url) = (
        server.client.clone(),
        format!("{}/api/webhooks/conversation-initiation", server.base),
    );
    let in_flight = tokio::spawn(async move {
        let response = client
            .post(url)
            .header("content-type", "application/json")
            .body(webhook_body(&demo_lead_phone(0), &demo_org_phone(1)))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    // Wait (bounded) until the request's query is queued behind the lock.
    let waiting = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let waiters: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'leads'::regclass",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiters > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waiting.is_ok(), "the webhook reached the database");

    let stopping = tokio::spawn(server.shutdown());
    // The server stops accepting but waits for the request it is serving.
    tokio::task::yield_now().await;
    assert!(!stopping.is_finished());
    blocker.rollback().await.unwrap();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["dynamic_variables"]["greeting_source"], "lead");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updated_lead_is_read_back_on_the_same_instance_without_a_query() {
    let db = TestDb::seeded("readback", 1, 10).await;
    let ns = unique_namespace("readback");
    // Statements are counted: no API key re-reads in the background.
    let options = Options {
        refresh_api_keys: false,
        ..Options::new(&ns, Some(SHARED_REDIS_URL))
    };
    let server = TestServer::start(&db, options).await;
    let (status, before) = server.get("/api/leads/5").await;
    assert_eq!(status, 200, "{before}");
    let (status, updated) = server
        .send(Method::PATCH, "/api/leads/5", r#"{"notes":"called back"}"#)
        .await;
    assert_eq!(status, 200, "{updated}");
    // The write cached the row it returned: this read runs no statement.
    let sql = tiercache_tests::sql_counter::statements();
    let (status, after) = server.get("/api/leads/5").await;
    assert_eq!(status, 200);
    assert_eq!(tiercache_tests::sql_counter::statements(), sql, "no SQL");
    assert_eq!(json(&after), json(&updated));
    assert_eq!(json(&after)["notes"], "called back");
    assert_ne!(json(&after), json(&before));
}

/// Adding a message waits for this instance's L1, not for Redis: with Redis frozen (its
/// command timeout far past the test's bound) the POST answers 201, and once Redis is back
/// the context this instance serves counts the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_message_is_answered_while_redis_is_frozen() {
    let redis = RedisServer::start().await;
    let db = TestDb::seeded("msgearly", 1, 10).await;
    let ns = unique_namespace("msgearly");
    let redis_url = redis.url();
    let server = TestServer::start(
        &db,
        Options {
            vars: vec![("REDIS_COMMAND_TIMEOUT_MS", "30000".to_owned())],
            ..Options::new(&ns, Some(&redis_url))
        },
    )
    .await;
    let (status, before) = server.get("/api/leads/3/context").await;
    assert_eq!(status, 200, "{before}");
    let count = json(&before)["message_count"].as_i64().unwrap();

    redis.pause();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(10),
        server.send(
            Method::POST,
            "/api/leads/3/messages",
            r#"{"channel":"sms","direction":"inbound","body":"Is Friday possible?"}"#,
        ),
    )
    .await
    .expect("the POST answers without waiting for Redis");
    assert_eq!(status, 201, "{body}");

    redis.resume();
    let (status, after) = server.get("/api/leads/3/context").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(json(&after)["message_count"], count + 1);
    assert_eq!(json(&after)["last_topics"][0], "Is Friday possible?");
}
