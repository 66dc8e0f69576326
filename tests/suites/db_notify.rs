//! Writes that bypass the service (plain SQL on a connection of the test's own) reach the
//! cache through the database's change triggers and the server's listener: leads,
//! messages, organizations and truncations; the service's own writes and the seed stay
//! silent; a bad payload is skipped; a lost connection is re-established and flushes L1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use tiercache::TwoTierCache;
use tiercache_repository::listener::{APPLICATION_NAME, CHANNEL};
use tiercache_repository::seed::{demo_lead_phone, demo_org_phone};
use tiercache_tests::db::{ADMIN_URL, TestDb};
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::{Recorder, SHARED_REDIS_URL, shared_redis, unique_namespace};

/// How long a plain-SQL change may take to reach the cache before a test fails.
const BOUND: Duration = Duration::from_secs(2);

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn path_phone(phone: &str) -> String {
    phone.replace('+', "%2B")
}

/// A server on `db` with the change listener on, listening, and a recorder of its cache's
/// events; L2 on the shared Redis under `ns` when `redis` is set.
async fn listening_server(db: &TestDb, ns: &str, redis: bool) -> (TestServer, Arc<Recorder>) {
    let (recorder, _) = Recorder::new();
    let recorder = Arc::new(recorder);
    let server = TestServer::start(
        db,
        Options {
            db_notify: true,
            observer: Some(recorder.clone()),
            ..Options::new(ns, redis.then_some(SHARED_REDIS_URL))
        },
    )
    .await;
    server.db_listening().await;
    (server, recorder)
}

async fn sql(db: &TestDb, statement: &str) {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(statement).execute(&mut conn).await.unwrap();
}

async fn redis_exists(cache: &TwoTierCache, key: tiercache::CacheKey) -> bool {
    let mut redis = shared_redis().await;
    redis::cmd("EXISTS")
        .arg(cache.keys().render(&key))
        .query_async::<i64>(&mut redis)
        .await
        .unwrap()
        == 1
}

/// A listener of the test's own on `CHANNEL`, to see what the triggers send.
async fn listen(db: &TestDb) -> PgListener {
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    listener
}

/// The next notification on `listener`, as JSON (bounded).
async fn next_payload(listener: &mut PgListener) -> Value {
    let notification = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification within 5 s")
        .unwrap();
    json(notification.payload())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sql_update_of_a_lead_reaches_both_tiers() {
    let db = TestDb::seeded("notifylead", 3, 30).await;
    let ns = unique_namespace("notifylead");
    let (server, recorder) = listening_server(&db, &ns, true).await;
    // Lead j=4: id 5, organization 2.
    let by_phone = format!(
        "/api/orgs/2/leads/by-phone/{}",
        path_phone(&demo_lead_phone(4))
    );
    for path in ["/api/leads/5", by_phone.as_str(), "/api/leads/5/context"] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_ne!(json(&body)["name"], "Plain SQL", "{path}");
    }
    let cache = server.state.repo.cache();
    let id_key = tiercache_repository::keys(cache).lead_by_id(5);
    assert!(redis_exists(cache, id_key).await, "cached in Redis");
    // Served from L1 now.
    let hits = recorder.count("lookup.lead.l1.hit");
    server.get("/api/leads/5").await;
    assert_eq!(recorder.count("lookup.lead.l1.hit"), hits + 1);

    // Timed from the moment the (autocommit) statement is sent: an upper bound on the delay
    // from its commit.
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let issued = Instant::now();
    sqlx::query("UPDATE leads SET name = 'Plain SQL' WHERE id = 5")
        .execute(&mut conn)
        .await
        .unwrap();
    let committed = issued.elapsed();
    assert!(
        recorder
            .wait_count("invalidated.lead.database", 1, BOUND)
            .await,
        "the change reached the cache within {BOUND:?}"
    );
    let heard = issued.elapsed();
    assert!(!redis_exists(cache, id_key).await, "deleted from Redis");
    for path in ["/api/leads/5", by_phone.as_str(), "/api/leads/5/context"] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(json(&body)["name"], "Plain SQL", "{path}");
    }
    let visible = issued.elapsed();
    println!(
        "plain-SQL UPDATE sent; committed after {committed:?}, cache invalidated after \
         {heard:?}, new value served (3 reads) after {visible:?}"
    );
    assert!(visible < BOUND, "{visible:?}");
    let status = server.db_listener.as_ref().unwrap().status();
    assert_eq!((status.applied, status.undecodable), (1, 0));

    // Another instance on the same Redis namespace, its L1 empty, reads the new value too.
    let other = TestServer::start(&db, Options::new(&ns, Some(SHARED_REDIS_URL))).await;
    let (_, body) = other.get("/api/leads/5").await;
    assert_eq!(json(&body)["name"], "Plain SQL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sql_message_invalidates_the_leads_conversation() {
    let db = TestDb::seeded("notifymsg", 3, 30).await;
    let ns = unique_namespace("notifymsg");
    let (server, recorder) = listening_server(&db, &ns, true).await;
    let (_, context) = server.get("/api/leads/5/context").await;
    assert_eq!(json(&context)["message_count"], 3);
    let (_, summary) = server.get("/api/leads/5/summary").await;
    assert_eq!(json(&summary)["message_count"], 3);
    let (_, history) = server.get("/api/leads/5/history?limit=2").await;
    assert_eq!(json(&history)["total"], 3);

    sql(
        &db,
        "INSERT INTO messages (conversation_id, lead_id, channel, direction, body)
         SELECT id, lead_id, channel, 'inbound', 'Asked about plain SQL'
         FROM conversations WHERE lead_id = 5 AND channel = 'voice'",
    )
    .await;
    let committed = Instant::now();
    assert!(
        recorder
            .wait_count("invalidated.context.database", 1, BOUND)
            .await
    );
    let (_, context) = server.get("/api/leads/5/context").await;
    let context = json(&context);
    assert_eq!(context["message_count"], 4);
    assert_eq!(context["last_topics"][0], "Asked about plain SQL");
    let (_, summary) = server.get("/api/leads/5/summary").await;
    assert_eq!(json(&summary)["message_count"], 4);
    let (_, history) = server.get("/api/leads/5/history?limit=2").await;
    let history = json(&history);
    assert_eq!(history["total"], 4);
    assert_eq!(history["messages"][0]["body"], "Asked about plain SQL");
    println!(
        "plain-SQL message → fresh views after {:?}",
        committed.elapsed()
    );
    // The lead itself did not change, and was not invalidated.
    assert_eq!(recorder.count("invalidated.lead.database"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sql_change_to_an_organization_invalidates_its_phone_keys_and_its_leads_views() {
    let db = TestDb::seeded("notifyorg", 3, 30).await;
    let ns = unique_namespace("notifyorg");
    let (server, recorder) = listening_server(&db, &ns, true).await;
    let old = format!("/api/orgs/by-phone/{}", path_phone(&demo_org_phone(2)));
    let new = format!("/api/orgs/by-phone/{}", path_phone("+18005559999"));
    let (status, body) = server.get(&old).await;
    assert_eq!(status, 200);
    assert_ne!(json(&body)["name"], "Renamed");
    // A "not found" is cached too.
    assert_eq!(server.get(&new).await.0, 404);
    // Lead 2 belongs to organization 2: its context shows the organization's name.
    let (status, context) = server.get("/api/leads/2/context").await;
    assert_eq!(status, 200);
    assert_ne!(json(&context)["org_name"], "Renamed", "{context}");

    sql(
        &db,
        "UPDATE organizations SET name = 'Renamed' WHERE id = 2",
    )
    .await;
    assert!(
        recorder
            .wait_count("invalidated.org.database", 1, BOUND)
            .await
    );
    let (status, body) = server.get(&old).await;
    assert_eq!(
        (status, json(&body)["name"].clone()),
        (200, "Renamed".into())
    );
    let (_, context) = server.get("/api/leads/2/context").await;
    assert_eq!(json(&context)["org_name"], "Renamed", "{context}");
    // One invalidation for the organization and its leads' views, not one per lead.
    assert_eq!(recorder.count("invalidated.org.database"), 1);
    assert_eq!(recorder.sum("invalidated.context."), 0);

    // A new number: the old one's key and the new one's cached "not found" both go.
    sql(
        &db,
        "UPDATE organizations SET phone = '+18005559999' WHERE id = 2",
    )
    .await;
    assert!(
        recorder
            .wait_count("invalidated.org.database", 3, BOUND)
            .await
    );
    assert_eq!(server.get(&old).await.0, 404);
    let (status, body) = server.get(&new).await;
    assert_eq!(
        (status, json(&body)["id"].clone()),
        (200, 2.into()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_flushes_everything() {
    let db = TestDb::seeded("notifytrunc", 3, 30).await;
    let ns = unique_namespace("notifytrunc");
    // L1 only: with Redis, the namespace sweep runs in the background after the flush.
    let (server, recorder) = listening_server(&db, &ns, false).await;
    let (_, history) = server.get("/api/leads/5/history").await;
    assert_eq!(json(&history)["total"], 3);
    sql(&db, "TRUNCATE messages").await;
    assert!(
        recorder
            .wait_count("invalidated.history.database", 1, BOUND)
            .await
    );
    let (_, history) = server.get("/api/leads/5/history").await;
    assert_eq!(json(&history)["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_api_send_no_notification() {
    let db = TestDb::seeded("notifyapi", 3, 30).await;
    let ns = unique_namespace("notifyapi");
    let server = TestServer::start(&db, Options::new(&ns, None)).await;
    let mut listener = listen(&db).await;

    let (status, body) = server
        .send(
            reqwest::Method::PATCH,
            "/api/leads/5",
            r#"{"name":"Via API"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .send(
            reqwest::Method::POST,
            "/api/leads/5/messages",
            r#"{"channel":"sms","direction":"inbound","body":"Via API"}"#,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // A marker after them: had they notified, their notifications would come first.
    sql(&db, "UPDATE leads SET name = 'Marker' WHERE id = 7").await;
    assert_eq!(
        next_payload(&mut listener).await,
        serde_json::json!({"kind": "lead", "id": 7, "org_id": 1, "phone": demo_lead_phone(6)})
    );
    let (_, body) = server.get("/api/leads/5").await;
    assert_eq!(json(&body)["name"], "Via API", "the API write committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_mark_ends_with_its_transaction() {
    let db = TestDb::seeded("notifymark", 3, 30).await;
    // One connection, so the plain write after the service's runs on the same session.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let cache = TwoTierCache::new(
        tiercache::CacheConfig::builder().build().unwrap(),
        tiercache::NoopObserver,
    )
    .unwrap();
    let repo = tiercache_repository::Repository::new(pool.clone(), cache);
    let mut listener = listen(&db).await;
    let patch = tiercache_repository::model::LeadPatch {
        name: Some("Service".to_owned()),
        ..Default::default()
    };
    assert!(repo.update_lead(5, &patch).await.unwrap().is_some());
    sqlx::query("UPDATE leads SET name = 'Plain' WHERE id = 8")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(next_payload(&mut listener).await["id"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_sends_no_notification() {
    let db = TestDb::migrated("notifyseed").await;
    let mut listener = listen(&db).await;
    let pool = db.pool().await;
    tiercache_repository::seed::seed_sized(&pool, 3, 30)
        .await
        .unwrap();
    sql(&db, "UPDATE leads SET name = 'Marker' WHERE id = 7").await;
    assert_eq!(
        next_payload(&mut listener).await,
        serde_json::json!({"kind": "lead", "id": 7, "org_id": 1, "phone": demo_lead_phone(6)})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_payload_is_counted_and_skipped() {
    let db = TestDb::seeded("notifybad", 3, 30).await;
    let ns = unique_namespace("notifybad");
    let (server, recorder) = listening_server(&db, &ns, true).await;
    let (_, body) = server.get("/api/leads/5").await;
    assert_ne!(json(&body)["name"], "After garbage");

    sql(&db, "SELECT pg_notify('tiercache_invalidation', 'garbage')").await;
    sql(&db, "UPDATE leads SET name = 'After garbage' WHERE id = 5").await;
    assert!(
        recorder
            .wait_count("invalidated.lead.database", 1, BOUND)
            .await
    );
    let (_, body) = server.get("/api/leads/5").await;
    assert_eq!(json(&body)["name"], "After garbage");
    let status = server.db_listener.as_ref().unwrap().status();
    assert_eq!(
        (status.undecodable, status.applied, status.reconnects),
        (1, 1, 0)
    );
    assert!(status.listening_since.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_reestablished_and_flushes_l1() {
    let db = TestDb::seeded("notifylost", 3, 30).await;
    let ns = unique_namespace("notifylost");
    // L1 only: the flush on reconnect is what keeps this instance fresh (see below).
    let (server, recorder) = listening_server(&db, &ns, false).await;
    let listener = server.db_listener.as_ref().unwrap();
    let mut status = listener.subscribe();
    let first_since = listener.status().listening_since.unwrap();
    let (_, body) = server.get("/api/leads/5").await;
    let original = json(&body)["name"].clone();
    let hits = recorder.count("lookup.lead.l1.hit");
    server.get("/api/leads/5").await;
    assert_eq!(recorder.count("lookup.lead.l1.hit"), hits + 1, "held in L1");

    // Keep the listener out while a change is made, so that change's notification is lost.
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let mut admin = PgConnection::connect(ADMIN_URL).await.unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(APPLICATION_NAME)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(terminated, [true], "one listener connection, terminated");
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.listening_since.is_none()),
    )
    .await
    .expect("the listener notices within 10 s (its idle check)")
    .unwrap();
    assert!(!listener.is_listening());
    sqlx::query("UPDATE leads SET name = 'Changed while away' WHERE id = 5")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let lost_at = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.reconnects == 1 && s.listening_since.is_some()),
    )
    .await
    .expect("listening again within 10 s")
    .unwrap();
    println!(
        "listening again {:?} after connections were allowed",
        lost_at.elapsed()
    );
    assert!(listener.status().listening_since.unwrap() > first_since);
    // Nothing told the cache of the change: the flush is what makes the next read fresh.
    assert_eq!(recorder.count("invalidated.lead.database"), 0);
    let (_, body) = server.get("/api/leads/5").await;
    assert_ne!(json(&body)["name"], original);
    assert_eq!(json(&body)["name"], "Changed while away");

    // And changes are heard again.
    sqlx::query("UPDATE leads SET name = 'After reconnect' WHERE id = 5")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(
        recorder
            .wait_count("invalidated.lead.database", 1, BOUND)
            .await
    );
    let (_, body) = server.get("/api/leads/5").await;
    assert_eq!(json(&body)["name"], "After reconnect");
}
