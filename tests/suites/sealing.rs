//! Values sealed at rest in Redis (`CACHE_ENCRYPTION_KEY`): what Redis holds after traffic
//! through the service, with and without a key; values sealed under another encryption
//! key or copied under another Redis key, plain where sealed and sealed where plain (all
//! misses, never errors); and the call script following ids through sealed values in one
//! round trip.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use reqwest::Method;
use serde_json::Value;
use tiercache::seal::SEALED_VERSION;
use tiercache::{EncryptionKey, Slot, TwoTierCache};
use tiercache_repository::Channel;
use tiercache_repository::seed::{demo_lead_phone, demo_org_phone};
use tiercache_tests::cache::{TestLead, build, config};
use tiercache_tests::db::TestDb;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::{
    Recorder, RedisServer, SHARED_REDIS_URL, command_count, shared_redis, unique_namespace,
};

/// `CACHE_ENCRYPTION_KEY` for the service tests.
const KEY_HEX: &str = "5ea1ed0f5ea1ed0f5ea1ed0f5ea1ed0f5ea1ed0f5ea1ed0f5ea1ed0f5ea1ed0f";
const HOOK: &str = "/api/webhooks/conversation-initiation";
/// Leads the service tests touch (ids 1..=LEADS), in two organizations.
const LEADS: i64 = 8;
/// Written through the API, so personal by any measure.
const NOTE: &str = "Allergic to cats, call mornings";
const MESSAGE: &str = "Please call my wife Anna Kowalski";

type Loaded = Result<Option<TestLead>, io::Error>;

fn counting(
    calls: &Arc<AtomicU32>,
    value: Option<TestLead>,
) -> impl FnOnce() -> std::future::Ready<Loaded> + Send + 'static {
    let calls = Arc::clone(calls);
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(value))
    }
}

fn key(byte: u8) -> Option<EncryptionKey> {
    Some(EncryptionKey::from_bytes([byte; 32]))
}

fn webhook_body(caller: &str, called: &str) -> String {
    format!(r#"{{"caller_id":"{caller}","called_number":"{called}","call_sid":"CA1"}}"#)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Every read the service offers for the first [`LEADS`] leads and their organizations.
async fn read_everything(server: &TestServer) -> Vec<(u16, String)> {
    let mut answers = Vec::new();
    for j in 0..LEADS {
        let (id, org) = (j + 1, (j % 2) + 1);
        let (lead_phone, org_phone) = (demo_lead_phone(j), demo_org_phone(org));
        let body = webhook_body(&lead_phone, &org_phone);
        answers.push(server.send(Method::POST, HOOK, &body).await);
        for path in [
            format!("/api/leads/{id}"),
            format!("/api/leads/{id}/context"),
            format!("/api/leads/{id}/summary"),
            format!("/api/leads/{id}/greeting?channel=sms"),
            format!("/api/leads/{id}/history?limit=5&offset=0"),
            format!("/api/orgs/by-phone/{}", org_phone.replace('+', "%2B")),
            format!(
                "/api/orgs/{org}/leads/by-phone/{}",
                lead_phone.replace('+', "%2B")
            ),
        ] {
            answers.push(server.get(&path).await);
        }
    }
    // A caller no organization knows.
    let body = webhook_body("+16465550100", &demo_org_phone(1));
    answers.push(server.send(Method::POST, HOOK, &body).await);
    answers
}

/// What Redis holds under `prefix`, as bytes: each string whole, each set member, each
/// stream entry's fields (the bus), with its key. SCAN is fine here: a test, not a request.
async fn values_under(conn: &mut MultiplexedConnection, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let keys: Vec<String> = {
        let mut iter: redis::AsyncIter<String> =
            conn.scan_match(format!("{prefix}:*")).await.unwrap();
        let mut keys = Vec::new();
        while let Some(key) = iter.next_item().await {
            keys.push(key.unwrap());
        }
        keys
    };
    let mut values = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(conn)
            .await
            .unwrap();
        let found: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![conn.get(&key).await.unwrap()],
            "set" => conn.smembers(&key).await.unwrap(),
            "stream" => {
                let entries: redis::Value = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query_async(conn)
                    .await
                    .unwrap();
                let mut strings = Vec::new();
                flatten(entries, &mut strings);
                strings
            }
            // Expired since the scan.
            "none" => continue,
            other => panic!("{key}: a {other} in the namespace"),
        };
        values.extend(found.into_iter().map(|v| (key.clone(), v)));
    }
    values
}

fn flatten(value: redis::Value, out: &mut Vec<Vec<u8>>) {
    match value {
        redis::Value::BulkString(bytes) => out.push(bytes),
        redis::Value::Array(items) => items.into_iter().for_each(|v| flatten(v, out)),
        _ => {}
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// What one round of traffic left in Redis, and what it showed.
struct Traffic {
    /// The personal data searched for: every phone (digits only), name and note.
    needles: Vec<String>,
    /// Those found in a value in Redis (or in a key name), with where.
    found: Vec<(String, String)>,
    /// Values read from Redis.
    values: usize,
    /// The second instance's events.
    second: Arc<Recorder>,
}

/// Traffic through two instances on one namespace of the shared Redis (`CACHE_ENCRYPTION_KEY`
/// as given): every read on the first, a note and a message written, every read again on
/// both (the second, cold, from Redis); then every value under the namespace is searched for
/// the leads' phones, names and notes.
async fn traffic(tag: &str, encryption_key: Option<&str>) -> Traffic {
    let db = TestDb::seeded(tag, 2, LEADS).await;
    let ns = unique_namespace(tag);
    let vars: Vec<(&str, String)> = encryption_key
        .map(|k| ("CACHE_ENCRYPTION_KEY", k.to_owned()))
        .into_iter()
        .collect();
    let a = TestServer::start(
        &db,
        Options {
            vars: vars.clone(),
            ..Options::new(&ns, Some(SHARED_REDIS_URL))
        },
    )
    .await;
    read_everything(&a).await;
    let (status, _) = a
        .send(
            Method::PATCH,
            "/api/leads/1",
            &format!(r#"{{"notes":"{NOTE}"}}"#),
        )
        .await;
    assert_eq!(status, 200);
    let message = format!(r#"{{"channel":"sms","direction":"inbound","body":"{MESSAGE}"}}"#);
    let (status, _) = a
        .send(Method::POST, "/api/leads/2/messages", &message)
        .await;
    assert_eq!(status, 201);
    let first = read_everything(&a).await;
    a.state.repo.cache().flush_l2_writes().await;

    let (recorder, _) = Recorder::new();
    let second = Arc::new(recorder);
    let b = TestServer::start(
        &db,
        Options {
            vars,
            observer: Some(second.clone()),
            ..Options::new(&ns, Some(SHARED_REDIS_URL))
        },
    )
    .await;
    let again = read_everything(&b).await;
    assert_eq!(first, again, "both instances answer alike");
    assert!(first.iter().all(|(status, _)| *status == 200), "{first:?}");
    a.state.repo.cache().flush_l2_writes().await;
    b.state.repo.cache().flush_l2_writes().await;

    let mut needles = vec![NOTE.to_owned(), MESSAGE.to_owned()];
    for j in 0..LEADS {
        needles.push(demo_lead_phone(j).trim_start_matches('+').to_owned());
        let (_, lead) = a.get(&format!("/api/leads/{}", j + 1)).await;
        needles.push(json(&lead)["name"].as_str().unwrap().to_owned());
    }
    for org in 1..=2 {
        needles.push(demo_org_phone(org).trim_start_matches('+').to_owned());
    }
    needles.push("Prefers calls after 5pm".to_owned());

    let mut conn = shared_redis().await;
    let values = values_under(&mut conn, &ns).await;
    let mut found = Vec::new();
    for (key, value) in &values {
        for needle in &needles {
            if contains(value, needle) || key.contains(needle.as_str()) {
                found.push((key.clone(), needle.clone()));
            }
        }
    }
    Traffic {
        needles,
        found,
        values: values.len(),
        second,
    }
}

/// Redis holds the leads' phones, names and notes in clear without a key (the search
/// finds every one), and none of them with one, while both instances answer the same and
/// the second reads its values from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_encryption_key_redis_holds_no_phone_name_or_note_in_clear() {
    let plain = traffic("plainvals", None).await;
    let missed: Vec<&String> = plain
        .needles
        .iter()
        .filter(|n| !plain.found.iter().any(|(_, f)| f == *n))
        .collect();
    assert!(
        missed.is_empty(),
        "without a key every one is in Redis: {missed:?}"
    );

    let sealed = traffic("sealedvals", Some(KEY_HEX)).await;
    assert!(sealed.values >= 50, "{} values", sealed.values);
    assert!(sealed.found.is_empty(), "in clear: {:?}", sealed.found);
    for entity in ["org", "lead", "context", "greeting", "summary", "history"] {
        assert!(
            sealed.second.count(&format!("lookup.{entity}.l2.hit")) > 0,
            "{entity}: the second instance read sealed values from Redis"
        );
    }
    assert_eq!(sealed.second.sum("corrupt"), 0, "every sealed value opened");
}

/// The webhook's warm path with sealing on: still one script round trip (the script
/// follows the ids sealed values show), no SQL; and what it read was sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_webhook_costs_one_redis_round_trip_warm() {
    let redis = RedisServer::start().await;
    let db = TestDb::seeded("sealcost", 2, 10).await;
    let ns = unique_namespace("sealcost");
    let redis_url = redis.url();
    // Statements are counted: no background re-read of the API keys among them.
    let options = || Options {
        vars: vec![("CACHE_ENCRYPTION_KEY", KEY_HEX.to_owned())],
        refresh_api_keys: false,
        ..Options::new(&ns, Some(&redis_url))
    };
    let a = TestServer::start(&db, options()).await;
    let call = webhook_body(&demo_lead_phone(0), &demo_org_phone(1));
    let (status, cold) = a.send(Method::POST, HOOK, &call).await;
    assert_eq!(status, 200, "{cold}");
    a.state.repo.cache().flush_l2_writes().await;

    let cache = a.state.repo.cache();
    let keys = tiercache_repository::keys(cache);
    let lead = keys.lead_by_phone(&demo_lead_phone(0), 1);
    let mut admin = redis.client().await;
    for (key, shows_id) in [
        (keys.org_by_phone(&demo_org_phone(1)), Some(1)),
        (lead, Some(1)),
        (keys.context(1), None),
        (keys.greeting(1, Channel::Voice), None),
    ] {
        let stored: Vec<u8> = admin.get(keys.render(&key)).await.unwrap();
        assert_eq!(stored.first(), Some(&SEALED_VERSION), "{key:?} sealed");
        assert_eq!(
            tiercache::envelope::leading_id(&stored),
            shows_id,
            "{key:?}: only the ids the script follows are shown"
        );
    }

    // Another instance (cold L1, warm Redis): one script round trip, no SQL.
    let (recorder, _) = Recorder::new();
    let rec = Arc::new(recorder);
    let b = TestServer::start(
        &db,
        Options {
            observer: Some(rec.clone()),
            ..options()
        },
    )
    .await;
    let before = tiercache_tests::CallCost::now(&mut admin).await;
    let (_, warm) = b.send(Method::POST, HOOK, &call).await;
    assert_eq!(warm, cold);
    before.assert_one_round_trip(&mut admin, 7).await;
    for entity in ["org", "lead", "context", "greeting"] {
        assert_eq!(rec.count(&format!("lookup.{entity}.l2.hit")), 1, "{entity}");
    }
}

/// A value sealed under another encryption key (another cache on the same namespace) is a
/// miss for this one, counted as corrupt and reloaded, never an error; the reload replaces
/// it with a value sealed under this cache's key, which the next instance like it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_sealed_under_another_encryption_key_is_a_miss_not_an_error() {
    let ns = unique_namespace("sealkeys");
    let (a, _) = build(config(&ns, Some(SHARED_REDIS_URL)).encryption_key(key(1)));
    let (b, rec_b) = build(config(&ns, Some(SHARED_REDIS_URL)).encryption_key(key(2)));
    let calls = Arc::new(AtomicU32::new(0));
    let id_key = tiercache_repository::keys(&a).lead_by_id(1);
    // A "not found" too: it is sealed like any value.
    let absent = tiercache_repository::keys(&a).lead_by_id(2);
    for (k, value) in [(id_key, Some(TestLead::new(1, 1))), (absent, None)] {
        a.get_or_load(k, counting(&calls, value)).await.unwrap();
    }
    a.flush_l2_writes().await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let v = b
        .get_or_load(id_key, counting(&calls, Some(TestLead::new(1, 2))))
        .await
        .unwrap();
    assert_eq!(v.unwrap().version, 2, "reloaded, not A's value");
    let v = b
        .get_or_load(absent, counting(&calls, Some(TestLead::new(2, 2))))
        .await
        .unwrap();
    assert_eq!(v.unwrap().version, 2, "not A's \"not found\"");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(rec_b.count("corrupt.lead.l2.seal"), 2);
    assert_eq!(rec_b.count("lookup.lead.l2.hit"), 0);
    b.flush_l2_writes().await;

    // B's reload replaced it: another cache with B's key reads it without loading.
    let (b2, rec_b2) = build(config(&ns, Some(SHARED_REDIS_URL)).encryption_key(key(2)));
    let v = b2
        .get_or_load(id_key, counting(&calls, None))
        .await
        .unwrap();
    assert_eq!(v.unwrap().version, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 4, "no load");
    assert_eq!(rec_b2.count("lookup.lead.l2.hit"), 1);
    assert_eq!(rec_b2.sum("corrupt"), 0);
}

/// Without a key a sealed value is a miss; with one a plain value is (a value in clear in
/// a Redis that should hold none was written by a cache without the key, or by someone
/// else). Both are counted as corrupt and reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_sealed_values_are_misses_for_each_other() {
    let ns = unique_namespace("sealmix");
    let (sealed, rec_sealed) = build(config(&ns, Some(SHARED_REDIS_URL)).encryption_key(key(1)));
    let (plain, rec_plain) = build(config(&ns, Some(SHARED_REDIS_URL)));
    let calls = Arc::new(AtomicU32::new(0));
    let (k1, k2) = (
        tiercache_repository::keys(&sealed).lead_by_id(1),
        tiercache_repository::keys(&sealed).lead_by_id(2),
    );
    sealed
        .get_or_load(k1, counting(&calls, Some(TestLead::new(1, 1))))
        .await
        .unwrap();
    plain
        .get_or_load(k2, counting(&calls, Some(TestLead::new(2, 1))))
        .await
        .unwrap();
    sealed.flush_l2_writes().await;
    plain.flush_l2_writes().await;

    let v = plain
        .get_or_load(k1, counting(&calls, Some(TestLead::new(1, 2))))
        .await
        .unwrap();
    assert_eq!(v.unwrap().version, 2);
    let v = sealed
        .get_or_load(k2, counting(&calls, Some(TestLead::new(2, 2))))
        .await
        .unwrap();
    assert_eq!(v.unwrap().version, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(rec_plain.count("corrupt.lead.l2.seal"), 1);
    assert_eq!(rec_sealed.count("corrupt.lead.l2.seal"), 1);
}

/// A sealed value copied under another key (lead 1's value put at lead 2's key) does not
/// open there: without the Redis key in the associated data, lead 2's read would be served
/// lead 1's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_value_copied_under_another_key_is_a_miss() {
    let ns = unique_namespace("sealcopy");
    let (a, _) = build(config(&ns, Some(SHARED_REDIS_URL)).encryption_key(key(1)));
    let calls = Arc::new(AtomicU32::new(0));
    let (k1, k2) = (
        tiercache_repository::keys(&a).lead_by_id(1),
        tiercache_repository::keys(&a).lead_by_id(2),
    );
    a.get_or_load(k1, counting(&calls, Some(TestLead::new(1, 1))))
        .await
        .unwrap();
    a.flush_l2_writes().await;
    let mut redis = shared_redis().await;
    let stored: Vec<u8> = redis.get(a.keys().render(&k1)).await.unwrap();
    let _: () = redis.set(a.keys().render(&k2), &stored).await.unwrap();

    let (b, rec) = build(config(&ns, Some(SHARED_REDIS_URL)).encryption_key(key(1)));
    let v = b
        .get_or_load(k2, counting(&calls, Some(TestLead::new(2, 1))))
        .await
        .unwrap();
    assert_eq!(v.unwrap().id, 2, "lead 2, loaded");
    assert_eq!(rec.count("corrupt.lead.l2.seal"), 1);
    // Lead 1's own value still opens at its own key.
    let v = b.get_or_load(k1, counting(&calls, None)).await.unwrap();
    assert_eq!(v.unwrap().id, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

type Slots = tiercache_repository::cache_keys::CallSlots<TestLead, TestLead, TestLead, TestLead>;

const ORG: &str = "+18005550001";
const CALLER: &str = "+16462000000";

fn found(slot: &Slot<TestLead>) -> Option<(i64, u32)> {
    match slot {
        Slot::Found(v) => Some((v.id, v.version)),
        _ => None,
    }
}

/// The call script follows the ids sealed organization and lead values show, in one round
/// trip; a cache with another encryption key finds nothing it can open there (missing,
/// counted as corrupt, never an error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_script_follows_sealed_values_in_one_round_trip() {
    let server = RedisServer::start().await;
    let ns = unique_namespace("sealcall");
    let sealed_cache = |byte: u8| -> (TwoTierCache, Arc<Recorder>) {
        build(config(&ns, Some(&server.url())).encryption_key(key(byte)))
    };
    let ((a, _), (b, rec_b), (c, rec_c)) = (sealed_cache(1), sealed_cache(1), sealed_cache(2));
    let keys = tiercache_repository::keys(&a);
    let cold: Slots = keys.call(ORG, CALLER, Channel::Voice).read(&a).await;
    a.install(
        cold.batch(),
        keys.org_by_phone(ORG),
        Some(TestLead::new(7, 1)),
    )
    .await
    .unwrap();
    a.install(
        cold.batch(),
        keys.lead_by_phone(CALLER, 7),
        Some(TestLead::new(42, 1)),
    )
    .await
    .unwrap();
    a.install(cold.batch(), keys.context(42), Some(TestLead::new(42, 10)))
        .await
        .unwrap();
    a.install(
        cold.batch(),
        keys.greeting(42, Channel::Voice),
        Some(TestLead::new(42, 20)),
    )
    .await
    .unwrap();
    a.flush_l2_writes().await;

    let mut admin = server.client().await;
    let (evals, gets) = (
        command_count(&mut admin, "evalsha").await,
        command_count(&mut admin, "get").await,
    );
    let slots: Slots = tiercache_repository::keys(&b)
        .call(ORG, CALLER, Channel::Voice)
        .read(&b)
        .await;
    assert_eq!(
        [
            found(&slots.org()),
            found(&slots.lead()),
            found(&slots.context()),
            found(&slots.greeting())
        ],
        [Some((7, 1)), Some((42, 1)), Some((42, 10)), Some((42, 20))]
    );
    assert_eq!(command_count(&mut admin, "evalsha").await, evals + 1);
    assert_eq!(command_count(&mut admin, "get").await, gets + 7);
    assert_eq!(rec_b.sum("corrupt"), 0);

    // Another encryption key: the script still follows the clear ids, but nothing opens.
    let slots: Slots = tiercache_repository::keys(&c)
        .call(ORG, CALLER, Channel::Voice)
        .read(&c)
        .await;
    assert!(matches!(slots.org(), Slot::Missing));
    assert!(!slots.is_complete());
    assert_eq!(rec_c.count("corrupt.org.l2.seal"), 1);
}
