//! Fixtures for the end-to-end suites: throwaway and shared Redis and PostgreSQL, namespaces,
//! command counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod cache;
pub mod calls;
pub mod db;
pub mod logs;
mod pg_server;
mod recorder;
mod redis_server;
pub mod server;
pub mod sql_counter;
pub mod tls;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionLike, MultiplexedConnection};

pub use pg_server::PgServer;
pub use recorder::Recorder;
pub use redis_server::RedisServer;

/// The Redis every suite shares; tests keep to their own namespace and never flush it.
pub const SHARED_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Longest part of a tag kept in a namespace, so keys and channel names stay short.
const MAX_TAG_LEN: usize = 12;

/// A connection to the shared Redis at [`SHARED_REDIS_URL`].
pub async fn shared_redis() -> MultiplexedConnection {
    redis::Client::open(SHARED_REDIS_URL)
        .expect("SHARED_REDIS_URL is valid")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the shared Redis at {SHARED_REDIS_URL}: {e}"))
}

/// Waits (bounded) until `n` caches of namespace `ns` (environment `test`) are subscribed
/// to its bus channel. No event tells a test that a subscriber connected: bounded polling.
pub async fn bus_subscribers(conn: &mut MultiplexedConnection, ns: &str, n: i64) {
    let channel = format!("{ns}:test:v1:bus");
    let ok = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(conn)
                .await
                .unwrap();
            if counts.first().is_some_and(|(_, c)| *c >= n) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "{n} subscribers on {channel}");
}

/// A short `[a-z0-9]` prefix unique per call and per process: `t`, the tag, pid, counter, salt.
///
/// Tests on the shared Redis put every key and bus channel under one, so they run in parallel
/// (nextest runs each test in its own process) and a rerun never sees a previous run's keys.
pub fn unique_namespace(tag: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // `RandomState` is seeded randomly per process, which separates two runs that reuse a pid
    // within the same clock tick.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u32(pid);
    hasher.write_u64(count);
    let salt = hasher.finish() % 36u64.pow(6);
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(MAX_TAG_LEN)
        .collect();
    format!(
        "t{tag}{}{}{}",
        base36(u64::from(pid)),
        base36(count),
        base36(salt)
    )
}

/// How many times the server has run `cmd` (`calls` of `cmdstat_<cmd>` in `INFO commandstats`).
///
/// The count is server-wide, so it proves round trips only on a [`RedisServer`] that one test
/// owns. Counting `info` includes this call's own INFO.
pub async fn command_count<C: ConnectionLike + Send>(conn: &mut C, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    parse_command_calls(&info, cmd)
}

/// What a warm webhook call costs, counted around it: SQL statements, script calls and
/// `GET`s on a [`RedisServer`] one test owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallCost {
    /// SQL statements this process ran.
    pub sql: u64,
    /// `EVALSHA` calls.
    pub evals: u64,
    /// `GET`s, inside scripts or not.
    pub gets: u64,
}

impl CallCost {
    /// The counts now.
    pub async fn now<C: ConnectionLike + Send>(conn: &mut C) -> CallCost {
        CallCost {
            sql: sql_counter::statements(),
            evals: command_count(conn, "evalsha").await,
            gets: command_count(conn, "get").await,
        }
    }

    /// Asserts that what ran since `self` was one script round trip with `gets` GETs inside
    /// it, and no SQL.
    pub async fn assert_one_round_trip<C: ConnectionLike + Send>(self, conn: &mut C, gets: u64) {
        let after = CallCost::now(conn).await;
        assert_eq!(after.sql, self.sql, "no SQL");
        assert_eq!(after.evals, self.evals + 1, "one Redis round trip");
        assert_eq!(after.gets, self.gets + gets, "the script's GETs");
    }
}

/// How many connections the server has accepted since it started
/// (`total_connections_received` in `INFO stats`).
pub async fn connections_received<C: ConnectionLike + Send>(conn: &mut C) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .expect("INFO stats");
    info_field(&info, "total_connections_received")
        .and_then(|n| n.parse().ok())
        .expect("INFO stats names total_connections_received")
}

/// The value of `field:value` in an INFO reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// Extracts `calls` for `cmd` from an `INFO commandstats` reply, 0 if the command never ran.
fn parse_command_calls(info: &str, cmd: &str) -> u64 {
    let prefix = format!("cmdstat_{}:", cmd.to_ascii_lowercase());
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|stats| stats.split(',').find_map(|f| f.strip_prefix("calls=")))
        .map_or(0, |calls| {
            calls
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("bad calls for {cmd}: {calls:?}: {e}"))
        })
}

/// Renders `n` in lowercase base 36, the densest form that stays within `[a-z0-9]`.
fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base-36 digits are ASCII")
}

/// Asks the kernel for a free loopback port; the listener is closed before a throwaway
/// server binds it.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("listener address").port()
}

/// Creates an empty working directory for a throwaway `kind` server, unique to this process
/// and call.
pub(crate) fn fresh_dir(kind: &str) -> std::path::PathBuf {
    static DIRS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "tiercache-{kind}-{}-{}-{nanos}",
        std::process::id(),
        DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_distinct_and_alphanumeric() {
        let a = unique_namespace("Bus-Tests!");
        let b = unique_namespace("Bus-Tests!");
        assert_ne!(a, b);
        assert!(a.starts_with("tbustests"), "{a}");
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{a}"
        );
    }

    #[test]
    fn long_tags_are_truncated() {
        let ns = unique_namespace(&"x".repeat(100));
        assert!(ns.len() < 40, "{ns}");
    }

    #[test]
    fn base36_renders_edges() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(u64::MAX), "3w5e11264sgsf");
    }

    #[test]
    fn command_calls_parse_from_info() {
        let info = "# Commandstats\r\n\
            cmdstat_get:calls=7,usec=10,usec_per_call=1.43,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_getex:calls=2,usec=3,usec_per_call=1.50,rejected_calls=0,failed_calls=0\r\n";
        assert_eq!(parse_command_calls(info, "GET"), 7);
        assert_eq!(parse_command_calls(info, "getex"), 2);
        assert_eq!(parse_command_calls(info, "set"), 0);
    }
}
