//! Health: whether the service can serve, and the state of each dependency.
//!
//! PostgreSQL down means the service cannot answer a miss: 503. Redis down (or disabled)
//! only makes it slower: "degraded", still 200, so a load balancer keeps routing to it.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde::Serialize;
use tiercache::TwoTierCache;

/// How the monitoring crate asks the server whether PostgreSQL answers (it knows no sqlx).
pub trait DatabaseProbe: Send + Sync + 'static {
    /// Runs a trivial query; `Err` carries a message fit for an operator.
    fn ping(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;

    /// How full the PostgreSQL pool is now, read at scrape time; `None` when unknown.
    fn pool(&self) -> Option<DbPoolState> {
        None
    }
}

/// How the monitoring crate asks the server about the call log (it knows no call log).
pub trait CallLogProbe: Send + Sync + 'static {
    /// The call log's state now; no I/O.
    fn sample(&self) -> CallLogSample;
}

/// The call log's state, as the server reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct CallLogSample {
    /// Events waiting in this instance's queue.
    pub queue_depth: usize,
    /// The queue's bound.
    pub queue_capacity: usize,
    /// Whether events were dropped within the last [`DROPPING_WINDOW`].
    pub dropping: bool,
    /// How long since this instance's consumer last read; `None` without a consumer
    /// (no Redis: events go straight to the store).
    pub consumer_idle: Option<Duration>,
    /// Everything else the call log says of itself, shown as is.
    pub detail: serde_json::Value,
}

/// How recent a drop must be for the call log to count as dropping events.
pub const DROPPING_WINDOW: Duration = Duration::from_secs(60);

/// How long the consumer may go without reading before the call log is degraded: its reads
/// block for under a second, so this is many missed reads.
pub const CONSUMER_STALL: Duration = Duration::from_secs(30);

/// `GET /api/monitoring/health/calls`, and the `calls` component of the health.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallsHealth {
    /// `ok` or `degraded` (events dropped, the queue over half full, or the consumer not
    /// reading): calls are still answered either way.
    pub status: &'static str,
    /// What makes it degraded.
    pub problems: Vec<&'static str>,
    /// The call log's own report.
    pub log: serde_json::Value,
}

/// The call log's health from its sample.
pub fn calls(probe: &dyn CallLogProbe) -> CallsHealth {
    let sample = probe.sample();
    let mut problems = Vec::new();
    if sample.dropping {
        problems.push("dropping events");
    }
    if sample.queue_depth * 2 > sample.queue_capacity {
        problems.push("queue over half full");
    }
    if sample
        .consumer_idle
        .is_some_and(|idle| idle > CONSUMER_STALL)
    {
        problems.push("consumer not reading");
    }
    CallsHealth {
        status: if problems.is_empty() {
            "ok"
        } else {
            "degraded"
        },
        problems,
        log: sample.detail,
    }
}

/// The PostgreSQL pool's occupancy, as the server reads it from its pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbPoolState {
    /// Connections open, idle or in use.
    pub size: u32,
    /// Of those, connections idle in the pool.
    pub idle: u32,
    /// The pool's bound.
    pub max: u32,
    /// Callers waiting for a connection.
    pub waiting: u32,
}

/// Bound on each probe, so a health check answers even when a dependency hangs.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One dependency's health.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dependency {
    /// Whether it answered.
    pub ok: bool,
    /// Its round trip, when it answered.
    pub latency_ms: Option<f64>,
    /// Why not, when it did not.
    pub error: Option<String>,
}

/// `GET /api/monitoring/health`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Health {
    /// `ok`, `degraded` (Redis down or disabled: slower, still correct) or `down`.
    pub status: &'static str,
    /// PostgreSQL.
    pub postgres: Dependency,
    /// Redis; `null` when disabled.
    pub redis: Option<Dependency>,
    /// The cache itself.
    pub cache: CacheHealth,
    /// The call log; `null` when it does not run here.
    pub calls: Option<CallsHealth>,
}

/// The cache's own state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CacheHealth {
    /// Whether values are kept in process.
    pub l1_enabled: bool,
    /// Entries in L1.
    pub l1_entries: u64,
    /// Bytes charged against the L1 bound.
    pub l1_bytes: u64,
    /// The bound.
    pub l1_max_bytes: u64,
    /// The breaker in front of Redis.
    pub circuit: Option<&'static str>,
    /// Redis deletes owed.
    pub owed_invalidations: usize,
    /// Whether every invalidation feed is live (see `tiercache_l1_trusted`).
    pub l1_trusted: bool,
}

impl Health {
    /// Whether a load balancer should send traffic here.
    pub fn can_serve(&self) -> bool {
        self.postgres.ok
    }
}

/// Probes every dependency.
pub async fn check(
    db: &dyn DatabaseProbe,
    cache: &TwoTierCache,
    calls_probe: Option<&dyn CallLogProbe>,
) -> Health {
    let (postgres, redis) = tokio::join!(probe_db(db), probe_redis(cache));
    let calls = calls_probe.map(calls);
    let status = match (&postgres, &redis) {
        (p, _) if !p.ok => "down",
        (_, Some(r)) if !r.ok => "degraded",
        (_, None) => "degraded",
        _ if calls.as_ref().is_some_and(|c| c.status != "ok") => "degraded",
        _ => "ok",
    };
    let l1 = cache.l1_stats();
    Health {
        status,
        postgres,
        redis,
        cache: CacheHealth {
            l1_enabled: cache.has_l1(),
            l1_entries: l1.entries,
            l1_bytes: l1.weighted_bytes,
            l1_max_bytes: l1.max_bytes,
            circuit: cache.circuit().map(|c| c.as_str()),
            owed_invalidations: cache.owed_invalidations(),
            l1_trusted: cache.l1_trusted(),
        },
        calls,
    }
}

/// PostgreSQL alone (for readiness).
pub async fn probe_db(db: &dyn DatabaseProbe) -> Dependency {
    let started = Instant::now();
    match tokio::time::timeout(PROBE_TIMEOUT, db.ping()).await {
        Ok(Ok(())) => Dependency {
            ok: true,
            latency_ms: Some(millis(started.elapsed())),
            error: None,
        },
        Ok(Err(e)) => Dependency {
            ok: false,
            latency_ms: None,
            error: Some(e),
        },
        Err(_) => Dependency {
            ok: false,
            latency_ms: None,
            error: Some(format!("no answer within {PROBE_TIMEOUT:?}")),
        },
    }
}

async fn probe_redis(cache: &TwoTierCache) -> Option<Dependency> {
    let result = cache.ping_l2().await?;
    Some(match result {
        // Answering is not enough: a Redis that refuses writes carries no invalidation.
        Ok(rtt) => match cache.l2_refusing_writes() {
            None => Dependency {
                ok: true,
                latency_ms: Some(millis(rtt)),
                error: None,
            },
            Some(why) => Dependency {
                ok: false,
                latency_ms: Some(millis(rtt)),
                error: Some(format!("refusing writes: {why}")),
            },
        },
        Err(e) => Dependency {
            ok: false,
            latency_ms: None,
            error: Some(e.kind.as_str().to_owned()),
        },
    })
}

/// `GET /api/monitoring/health/redis`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RedisHealth {
    /// Whether Redis is configured.
    pub enabled: bool,
    /// Whether it answered a PING.
    pub ok: bool,
    /// The PING's round trip.
    pub latency_ms: Option<f64>,
    /// The breaker's state.
    pub circuit: Option<&'static str>,
    /// Whether Redis answers and takes writes (invalidations, values); `null` when disabled.
    pub writable: Option<bool>,
    /// Why it does not, when it does not.
    pub write_error: Option<String>,
    /// Open pool connections.
    pub pool_connections: Option<u32>,
    /// Idle pool connections.
    pub pool_idle: Option<u32>,
    /// `used_memory`, bytes.
    pub used_memory_bytes: Option<u64>,
    /// `maxmemory`, bytes (0: no limit).
    pub max_memory_bytes: Option<u64>,
    /// Keys Redis evicted for memory since it started.
    pub evicted_keys: Option<u64>,
    /// Connected clients.
    pub connected_clients: Option<u64>,
    /// The last failure seen, if any.
    pub last_error: Option<LastError>,
}

/// The last L2 failure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LastError {
    /// Its kind.
    pub kind: &'static str,
    /// The command.
    pub op: &'static str,
    /// Redis's message.
    pub message: String,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
}

/// Redis in detail.
pub async fn redis(cache: &TwoTierCache) -> RedisHealth {
    let ping = cache.ping_l2().await;
    let info = match cache.l2_info().await {
        Some(Ok(info)) => Some(info),
        _ => None,
    };
    let pool = cache.pool_state();
    let write_error = cache.l2_refusing_writes();
    RedisHealth {
        // A Redis that does not answer takes no writes either.
        writable: cache
            .has_l2()
            .then_some(write_error.is_none() && matches!(ping, Some(Ok(_)))),
        write_error,
        enabled: cache.has_l2(),
        ok: matches!(ping, Some(Ok(_))),
        latency_ms: match ping {
            Some(Ok(rtt)) => Some(millis(rtt)),
            _ => None,
        },
        circuit: cache.circuit().map(|c| c.as_str()),
        pool_connections: pool.map(|p| p.connections),
        pool_idle: pool.map(|p| p.idle),
        used_memory_bytes: info.as_ref().map(|i| i.used_memory),
        max_memory_bytes: info.as_ref().map(|i| i.maxmemory),
        evicted_keys: info.as_ref().map(|i| i.evicted_keys),
        connected_clients: info.as_ref().map(|i| i.connected_clients),
        last_error: cache.last_l2_error().map(|e| LastError {
            kind: e.kind.as_str(),
            op: e.op,
            message: e.message,
            at_ms: e.at_ms,
        }),
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
