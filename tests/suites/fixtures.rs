//! Tests of the fixtures themselves: a fault test is only as good as the server it breaks.

use std::time::Duration;

use redis::AsyncCommands;
use tiercache_tests::{RedisServer, command_count, shared_redis, unique_namespace};
use tokio::time::{Instant, timeout};

/// Opens a fresh connection with short timeouts, so a dead server fails fast.
async fn try_connect(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn ping(conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(conn).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_server_answers_ping() {
    let server = RedisServer::start().await;
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    assert_ne!(server.port(), 6379);
    let mut conn = server.client().await;
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    // Persistence is off, which is what makes a restart come back empty.
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(save, ["save", ""]);
    let aof: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(aof, ["appendonly", "no"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_server_refuses_connections() {
    let mut server = RedisServer::start().await;
    let mut conn = server.client().await;
    server.stop().await;
    assert!(try_connect(&server.url()).await.is_err());
    // The open connection notices too: its socket was closed with the process.
    assert!(ping(&mut conn).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_answers_on_the_same_port_and_is_empty() {
    let mut server = RedisServer::start().await;
    let port = server.port();
    let mut conn = server.client().await;
    let () = conn.set("k", "v").await.unwrap();
    server.restart().await;
    assert_eq!(server.port(), port);
    let mut conn = server.client().await;
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    let value: Option<String> = conn.get("k").await.unwrap();
    assert_eq!(value, None);
    let size: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert_eq!(size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_stop_brings_the_server_back() {
    let mut server = RedisServer::start().await;
    server.stop().await;
    server.restart().await;
    let mut conn = server.client().await;
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_stalls_until_resumed() {
    let server = RedisServer::start().await;
    let mut conn = server.client().await;
    server.pause();
    let stalled = timeout(Duration::from_millis(200), ping(&mut conn)).await;
    assert!(stalled.is_err(), "a paused server answered: {stalled:?}");
    server.resume();
    // The same connection recovers: the abandoned PING's reply is matched and discarded.
    let answered = timeout(Duration::from_secs(2), ping(&mut conn)).await;
    assert_eq!(answered.unwrap().unwrap(), "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_paused_server() {
    let mut server = RedisServer::start().await;
    server.pause();
    server.stop().await;
    assert!(try_connect(&server.url()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_count_rises_by_exactly_the_commands_sent() {
    let server = RedisServer::start().await;
    let mut conn = server.client().await;
    assert_eq!(command_count(&mut conn, "hgetall").await, 0);
    let before = command_count(&mut conn, "get").await;
    for i in 0..5 {
        let _: Option<String> = conn.get(format!("k{i}")).await.unwrap();
    }
    assert_eq!(command_count(&mut conn, "get").await - before, 5);
    assert_eq!(command_count(&mut conn, "GET").await - before, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_server_is_killed() {
    let server = RedisServer::start().await;
    let url = server.url();
    drop(server);
    // SIGKILL is asynchronous and a dead process emits nothing we can await, so poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(5);
    while try_connect(&url).await.is_ok() {
        assert!(Instant::now() < deadline, "redis-server outlived its guard");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_redis_round_trips_under_a_namespace() {
    let ns = unique_namespace("fixtures");
    let key = format!("{ns}:probe");
    let mut conn = shared_redis().await;
    let () = conn.set_ex(&key, "v", 60).await.unwrap();
    let value: Option<String> = conn.get(&key).await.unwrap();
    assert_eq!(value.as_deref(), Some("v"));
    let removed: u64 = conn.del(&key).await.unwrap();
    assert_eq!(removed, 1);
}
