//! Tests of the throwaway PostgreSQL fixture: fault tests that stop or crash the database rely
//! on what these pin (queries fail rather than hang while it is down, data survives restarts).
//!
//! They print how long start and restart take (`--no-capture` shows it); nothing asserts it.

use std::path::Path;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tiercache_tests::PgServer;
use tokio::time::{Instant, timeout};

/// Bound on a query or connect against a server that is down: it must fail, not hang.
const DOWN_BOUND: Duration = Duration::from_secs(5);

/// What PostgreSQL logs when it starts on a data directory a crash left behind.
const CRASH_RECOVERY: &str = "database system was not properly shut down; automatic recovery";

/// A small pool that gives up on checkout well within [`DOWN_BOUND`], as the server's does.
async fn small_pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect(url)
        .await
        .unwrap()
}

async fn insert_org(pool: &PgPool, phone: &str, name: &str) {
    sqlx::query("INSERT INTO organizations (phone, name) VALUES ($1, $2)")
        .bind(phone)
        .bind(name)
        .execute(pool)
        .await
        .unwrap();
}

async fn org_names(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM organizations ORDER BY id")
        .fetch_all(pool)
        .await
}

/// A fresh server holding database `app`, migrated, with one organization, and a pool on it.
async fn server_with_a_row() -> (PgServer, PgPool) {
    let started = Instant::now();
    let server = PgServer::start().await;
    println!("pg_server: start took {:?}", started.elapsed());
    let pool = small_pool(&server.create_database("app").await).await;
    tiercache_repository::MIGRATOR.run(&pool).await.unwrap();
    insert_org(&pool, "+15550000001", "Acme").await;
    (server, pool)
}

/// Runs `names` under [`DOWN_BOUND`] and asserts the server answered with an error.
async fn assert_down(pool: &PgPool, url: &str) {
    let query = timeout(DOWN_BOUND, org_names(pool))
        .await
        .expect("a query on a pooled connection hung while the server was down");
    assert!(
        query.is_err(),
        "a query succeeded while the server was down: {query:?}"
    );
    let connect = timeout(DOWN_BOUND, PgConnection::connect(url))
        .await
        .expect("a connect hung while the server was down");
    assert!(
        connect.is_err(),
        "a connect succeeded while the server was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_server_is_its_own_and_takes_migrations() {
    let (server, pool) = server_with_a_row().await;
    assert_ne!(server.port(), 5432);
    assert_eq!(
        server.admin_url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", server.port())
    );
    assert_eq!(
        server.url("app"),
        format!("postgres://postgres@127.0.0.1:{}/app", server.port())
    );
    // The pool reaches the fixture's cluster, not the shared one.
    let data_dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(Path::new(&data_dir).starts_with(server.dir()), "{data_dir}");
    assert_eq!(org_names(&pool).await.unwrap(), ["Acme"]);
    // Fast where an OS crash is the only risk, durable against a process crash.
    for (setting, value) in [
        ("fsync", "off"),
        ("full_page_writes", "off"),
        ("synchronous_commit", "on"),
        ("server_encoding", "UTF8"),
    ] {
        let actual: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(setting)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(actual, value, "{setting}");
    }
    let collation: String =
        sqlx::query_scalar("SELECT datcollate FROM pg_database WHERE datname = current_database()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(collation, "C");
    // The server runs as its own unprivileged user even when the tests run as root.
    let superuser_is_root: bool =
        sqlx::query_scalar("SELECT pg_read_file('/proc/self/status') ~ '\\nUid:\\s+0\\s'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!superuser_is_root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_server_fails_queries_and_keeps_its_data_for_start_again() {
    let (mut server, pool) = server_with_a_row().await;
    let port = server.port();
    let stopping = Instant::now();
    server.stop().await;
    println!("pg_server: stop took {:?}", stopping.elapsed());
    assert_down(&pool, &server.url("app")).await;
    assert!(server.log().contains("received fast shutdown request"));

    let restarted = Instant::now();
    server.start_again().await;
    println!(
        "pg_server: start_again after stop took {:?}",
        restarted.elapsed()
    );
    assert_eq!(server.port(), port);
    // The same pool serves again: it drops the connections that died with the server.
    let names = timeout(DOWN_BOUND, org_names(&pool)).await.unwrap();
    assert_eq!(names.unwrap(), ["Acme"]);
    insert_org(&pool, "+15550000002", "Globex").await;
    assert!(!server.log().contains(CRASH_RECOVERY));

    // Stopping twice in a row works as well.
    server.stop().await;
    server.stop().await;
    server.start_again().await;
    let fresh = small_pool(&server.url("app")).await;
    assert_eq!(org_names(&fresh).await.unwrap(), ["Acme", "Globex"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_recovers_what_was_committed_on_start_again() {
    let (mut server, pool) = server_with_a_row().await;
    // Committed just before the crash: lost if commits returned before their WAL was written.
    insert_org(&pool, "+15550000002", "Globex").await;
    let killing = Instant::now();
    server.kill().await;
    println!("pg_server: kill took {:?}", killing.elapsed());
    assert_down(&pool, &server.url("app")).await;
    assert!(!server.log().contains(CRASH_RECOVERY));

    let restarted = Instant::now();
    server.start_again().await;
    println!(
        "pg_server: start_again after kill took {:?}",
        restarted.elapsed()
    );
    assert!(server.log().contains(CRASH_RECOVERY), "{}", server.log());
    let names = timeout(DOWN_BOUND, org_names(&pool)).await.unwrap();
    assert_eq!(names.unwrap(), ["Acme", "Globex"]);

    // A second crash, right after writing on the recovered server, recovers as well.
    insert_org(&pool, "+15550000003", "Initech").await;
    server.kill().await;
    server.start_again().await;
    assert_eq!(
        org_names(&pool).await.unwrap(),
        ["Acme", "Globex", "Initech"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_server_is_shut_down_and_its_directory_removed() {
    let server = PgServer::start().await;
    let dir = server.dir().to_path_buf();
    let url = server.admin_url();
    assert!(dir.join("data").join("PG_VERSION").is_file());
    let mut conn = PgConnection::connect(&url).await.unwrap();
    drop(server);
    assert!(!dir.exists(), "{} outlived its guard", dir.display());
    // Drop waits for the exit, so the server is gone at once.
    let ping = timeout(DOWN_BOUND, conn.ping()).await.expect("ping hung");
    assert!(ping.is_err(), "the server answered after drop");
    let connect = timeout(DOWN_BOUND, PgConnection::connect(&url))
        .await
        .expect("connect hung");
    assert!(
        connect.is_err(),
        "the server accepted a connection after drop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_after_kill_leaves_no_shared_memory_behind() {
    let mut server = PgServer::start().await;
    let dir = server.dir().to_path_buf();
    // The postmaster's lock file names its System V segment on line 7: "key shmid".
    let lock = std::fs::read_to_string(dir.join("data").join("postmaster.pid")).unwrap();
    let shmid = lock
        .lines()
        .nth(6)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    server.kill().await;
    // A SIGKILLed postmaster cannot remove its segment; nobody is attached any more.
    assert_eq!(segment_attached(&shmid), Some(0));
    drop(server);
    assert_eq!(segment_attached(&shmid), None);
    assert!(!dir.exists(), "{} outlived its guard", dir.display());
}

/// How many processes are attached to System V segment `shmid`, `None` if it does not exist.
fn segment_attached(shmid: &str) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let id = header.iter().position(|h| *h == "shmid").unwrap();
    let nattch = header.iter().position(|h| *h == "nattch").unwrap();
    lines
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields[id] == shmid)
        .map(|fields| fields[nattch].parse().unwrap())
}
