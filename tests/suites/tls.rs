//! TLS and credentials to the stores, on throwaway servers with certificates each test makes
//! (`tiercache_tests::tls`): a PostgreSQL that takes TCP connections over TLS only, reached
//! with `sslmode=verify-full` and a password by the pool, the database creation and the
//! change listener; a Redis on a TLS port only, with `requirepass`, reached on `rediss://`
//! with `REDIS_CA_CERT` by the pool and the bus. And what a wrong CA or password does: a
//! start-up error naming `DATABASE_URL` for PostgreSQL; for Redis, the service goes on from
//! L1 and PostgreSQL while `/health/redis` says why Redis is refused.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tiercache::CircuitState;
use tiercache_server::Config;
use tiercache_tests::db::TestDb;
use tiercache_tests::server::{Options, TestServer};
use tiercache_tests::tls::TestCa;
use tiercache_tests::{PgServer, Recorder, RedisServer, bus_subscribers, unique_namespace};

/// The role the service logs in as on the TLS PostgreSQL, and its password.
const PG_USER: &str = "app";
const PG_PASSWORD: &str = "pg-password-7f3a";

/// `requirepass` of the TLS Redis.
const REDIS_PASSWORD: &str = "redis-password-91c2";

/// An ACL user on the TLS Redis, and its password.
const ACL_USER: &str = "tiercache";
const ACL_PASSWORD: &str = "acl-password-5e0b";

/// The database the service creates at start-up on the TLS PostgreSQL.
const PG_DB: &str = "tiercache_tls";

/// Bound on an event between two instances or a breaker opening.
const EVENT_BOUND: Duration = Duration::from_secs(5);

/// `DATABASE_URL` for the TLS server: `user:password`, verify-full against `ca`, plus `extra`.
fn pg_url(server: &PgServer, password: &str, ca: &TestCa, extra: &str) -> String {
    format!(
        "postgres://{PG_USER}:{password}@127.0.0.1:{}/{PG_DB}?sslmode=verify-full&sslrootcert={}{extra}",
        server.port(),
        ca.ca_path().display()
    )
}

/// A service on `db` whose L2 is the TLS Redis at `url`, trusting the CA at `ca_path`
/// (`REDIS_CA_CERT`).
async fn instance(
    db: &TestDb,
    ns: &str,
    url: &str,
    ca_path: &Path,
    observer: Option<Arc<Recorder>>,
) -> TestServer {
    let mut opts = Options::new(ns, Some(url));
    opts.vars
        .push(("REDIS_CA_CERT", ca_path.display().to_string()));
    opts.observer = observer.map(|o| o as _);
    TestServer::start(db, opts).await
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The start-up path's connect (database creation, then the pool) with `DATABASE_URL=url`,
/// through the real configuration; an error as `main` prints it (`{:#}`).
async fn connect(url: &str) -> Result<tiercache_repository::DbPool, String> {
    let config = Config::from_vars([
        ("DATABASE_URL".to_owned(), url.to_owned()),
        ("REDIS_ENABLED".to_owned(), "false".to_owned()),
    ])
    .unwrap();
    tiercache_server::startup::connect(&config.database)
        .await
        .map_err(|e| format!("{e:#}"))
}

/// The pool, the database's creation and the change listener all reach PostgreSQL over
/// verified TLS with a password: the server's `pg_hba.conf` refuses any TCP connection
/// without TLS (checked first), and `pg_stat_ssl` shows each of the service's connections,
/// the listener's included, encrypted. Before TLS was built into sqlx, `sslmode=verify-full`
/// stopped start-up ("TLS upgrade required by connect options but SQLx was built without
/// TLS support enabled").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_verified_tls_serves_creates_the_database_and_listens() {
    let ca = TestCa::new("pg");
    let server = PgServer::start_tls(&ca).await;
    server.create_user(PG_USER, PG_PASSWORD).await;
    let plain = PgConnection::connect(&format!(
        "postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
        server.port()
    ))
    .await;
    assert!(plain.is_err(), "a connection without TLS was let in");

    let url = pg_url(&server, PG_PASSWORD, &ca, "");
    // The database does not exist yet: start-up creates it, over TLS.
    let pool = connect(&url).await.unwrap();
    tiercache_repository::MIGRATOR
        .run(pool.pool())
        .await
        .unwrap();
    tiercache_repository::seed::seed_sized(pool.pool(), 2, 10)
        .await
        .unwrap();
    let mut opts = Options::new("tlspg", None);
    opts.db_notify = true;
    let service = TestServer::start_url(&url, opts).await;
    service.db_listening().await;

    let (status, body) = service.get("/api/leads/1").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("Renamed over TLS"), "{body}");
    // A write that bypasses the service reaches it through the listener's connection.
    let mut listener_status = service.db_listener.as_ref().unwrap().subscribe();
    let mut admin = PgConnection::connect(&server.url(PG_DB)).await.unwrap();
    sqlx::query("UPDATE leads SET name = 'Renamed over TLS' WHERE id = 1")
        .execute(&mut admin)
        .await
        .unwrap();
    tokio::time::timeout(EVENT_BOUND, listener_status.wait_for(|s| s.applied >= 1))
        .await
        .expect("the listener applies the change")
        .unwrap();
    let (status, body) = service.get("/api/leads/1").await;
    assert_eq!(status, 200);
    assert!(body.contains("Renamed over TLS"), "{body}");

    let connections: Vec<(String, bool, Option<String>)> = sqlx::query_as(
        "SELECT a.application_name, s.ssl, s.version FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
    )
    .bind(PG_USER)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(
        connections
            .iter()
            .any(|(name, _, _)| name == "tiercache-listener"),
        "{connections:?}"
    );
    assert!(
        connections.len() >= 2 && connections.iter().all(|(_, ssl, _)| *ssl),
        "{connections:?}"
    );
}

/// A CA the server's certificate does not chain to, a wrong password, no TLS where
/// `pg_hba.conf` wants it, or a CA file that is not there: each stops start-up with an
/// error that names `DATABASE_URL` (its password hidden) and what in it to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_password_for_postgres_stops_start_up_naming_database_url() {
    let ca = TestCa::new("pg");
    let other = TestCa::new("other");
    let server = PgServer::start_tls(&ca).await;
    server.create_user(PG_USER, PG_PASSWORD).await;

    let url = pg_url(&server, PG_PASSWORD, &other, "");
    let wrong_ca = connect(&url).await.unwrap_err();
    let text = &wrong_ca;
    let shown = url.replace(PG_PASSWORD, "***");
    assert!(
        text.starts_with(&format!(
            "connecting to PostgreSQL (DATABASE_URL={shown}): "
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "PostgreSQL's certificate is not signed by the CA in sslrootcert ({})",
            other.ca_path().display()
        )),
        "{text}"
    );

    let wrong_password = connect(&pg_url(&server, "not-the-password", &ca, ""))
        .await
        .unwrap_err();
    let text = &wrong_password;
    assert!(text.contains("DATABASE_URL=postgres://app:***@"), "{text}");
    assert!(
        text.contains("PostgreSQL refused the user or password in DATABASE_URL"),
        "{text}"
    );

    let plain = format!(
        "postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/{PG_DB}?sslmode=disable",
        server.port()
    );
    let no_tls = connect(&plain).await.unwrap_err();
    let text = &no_tls;
    assert!(
        text.contains("DATABASE_URL=") && text.contains("hostssl"),
        "{text}"
    );
    for text in [wrong_ca, wrong_password, no_tls] {
        assert!(
            !text.contains(PG_PASSWORD) && !text.contains("not-the-password"),
            "{text}"
        );
    }
    let missing = format!(
        "postgres://{PG_USER}@127.0.0.1:{}/{PG_DB}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        server.port()
    );
    let err = Config::from_vars([("DATABASE_URL".to_owned(), missing)]).unwrap_err();
    assert!(
        err.to_string()
            .contains("DATABASE_URL: sslrootcert: cannot read /nonexistent/ca.pem"),
        "{err}"
    );
}

/// Two instances on a Redis that takes only TLS and a password, reached with
/// `REDIS_CA_CERT` on `rediss://:password@…` (the default user) and on
/// `rediss://user:password@…` (an ACL user): a value one loads lands in Redis and the other
/// reads it from there, and a write on one reaches the other over the bus (its subscriber
/// connects over TLS, as the same user, as the pool does). Before, `REDIS_URL=rediss://…` was
/// refused by the configuration: "not a Redis URL (expected redis://...)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_password_carries_values_and_the_bus() {
    let ca = TestCa::new("redis");
    let redis = RedisServer::start_tls(&ca, REDIS_PASSWORD).await;
    let url = redis.url();
    assert!(url.starts_with("rediss://:"), "{url}");
    let mut admin = redis.client().await;
    // B logs in as an ACL user of its own; A as the default user, with `requirepass`.
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", ACL_USER, "on", &format!(">{ACL_PASSWORD}")])
        .arg(&["~*", "&*", "+@all"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let acl_url = format!(
        "rediss://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{}/",
        redis.port()
    );
    let db = TestDb::seeded("tlsredis", 2, 10).await;
    let ns = unique_namespace("tlsredis");
    let a = instance(&db, &ns, &url, ca.ca_path(), None).await;
    let b_rec = Arc::new(Recorder::new().0);
    let b = instance(&db, &ns, &acl_url, ca.ca_path(), Some(b_rec.clone())).await;
    bus_subscribers(&mut admin, &ns, 2).await;

    let (status, body) = a.get("/api/leads/1").await;
    assert_eq!(status, 200, "{body}");
    a.state.repo.cache().flush_l2_writes().await;
    let stored: Option<Vec<u8>> = admin.get(format!("{ns}:test:v1:lead:id:1")).await.unwrap();
    assert!(stored.is_some(), "the loaded lead is in Redis");
    assert_eq!(b.get("/api/leads/1").await, (200, body.clone()));
    assert_eq!(b_rec.count("lookup.lead.l2.hit"), 1, "B read it from Redis");

    let (status, patched) = a
        .send(
            reqwest::Method::PATCH,
            "/api/leads/1",
            r#"{"name":"Renamed over rediss"}"#,
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert!(
        b_rec
            .wait_count("invalidated.lead.bus", 1, EVENT_BOUND)
            .await,
        "B hears A's write on the bus"
    );
    let (status, body) = b.get("/api/leads/1").await;
    assert_eq!(status, 200);
    assert!(body.contains("Renamed over rediss"), "{body}");
    assert_eq!(b_rec.sum("l2_error."), 0, "no Redis error on B");
    // B's pool and bus subscriber are logged in as the ACL user.
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    let as_acl_user = clients
        .lines()
        .filter(|line| line.contains(&format!(" user={ACL_USER} ")))
        .count();
    assert!(as_acl_user >= 2, "{clients}");
}

/// A Redis the service cannot use: a CA its certificate does not chain to, or a wrong
/// password. Reads still answer, from PostgreSQL then L1; the failures are `connection`
/// errors that open the breaker, and `/api/monitoring/health/redis` gives the reason.
/// Before, with the wrong CA the health said `"kind":"timeout","message":"timeout"`: the
/// TLS handshake's failure came after the 50 ms command bound, so the pool's reason was
/// never attached (`L2::timed_out` now keeps it while the pool has no connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tls_redis_leaves_the_service_on_l1_and_postgres_and_health_says_why() {
    let ca = TestCa::new("redis");
    let other = TestCa::new("other");
    let redis = RedisServer::start_tls(&ca, REDIS_PASSWORD).await;
    let db = TestDb::seeded("tlsrefused", 2, 10).await;
    let wrong_password = redis.url().replace(REDIS_PASSWORD, "not-the-password");
    for (url, ca_path, reason) in [
        (redis.url(), other.ca_path(), "certificate"),
        (wrong_password, ca.ca_path(), "password"),
    ] {
        let (recorder, mut circuit) = Recorder::new();
        let rec = Arc::new(recorder);
        let ns = unique_namespace("tlsrefused");
        let service = instance(&db, &ns, &url, ca_path, Some(rec.clone())).await;
        let mut first = Vec::new();
        for id in 1..=10 {
            let (status, body) = service.get(&format!("/api/leads/{id}")).await;
            assert_eq!(status, 200, "{reason}: {body}");
            assert!(body.contains(&format!("\"id\":{id}")), "{body}");
            first.push(body);
        }
        let opened = tokio::time::timeout(EVENT_BOUND, circuit.recv())
            .await
            .unwrap_or_else(|_| panic!("{reason}: the breaker opens"));
        assert_eq!(opened, Some((CircuitState::Closed, CircuitState::Open)));
        assert!(rec.count("l2_error.connection") >= 1, "{reason}");
        assert_eq!(rec.count("l2_error.protocol"), 0, "{reason}");
        // The same answers again, now from L1.
        for id in 1..=10 {
            assert_eq!(
                service.get(&format!("/api/leads/{id}")).await,
                (200, first[id - 1].clone())
            );
        }
        assert!(rec.count("lookup.lead.l1.hit") >= 10, "{reason}");

        let (status, body) = service.get("/api/monitoring/health/redis").await;
        assert_eq!(status, 200);
        let health = json(&body);
        assert_eq!(health["ok"], false, "{body}");
        assert_eq!(health["circuit"], "open", "{body}");
        assert_eq!(health["last_error"]["kind"], "connection", "{body}");
        // rustls's reason for the certificate; redis-rs's for the AUTH Redis refused.
        let message = health["last_error"]["message"].as_str().unwrap();
        let expected = match reason {
            "certificate" => "invalid peer certificate: UnknownIssuer",
            _ => "Password authentication failed",
        };
        assert!(message.contains(expected), "{reason}: {body}");
        assert!(!body.contains(REDIS_PASSWORD), "{body}");
        let (status, body) = service.get("/api/monitoring/health").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["status"], "degraded", "{body}");
    }
}
