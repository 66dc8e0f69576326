//! L2: Redis through a bb8 pool, every command under a timeout and behind a circuit breaker.
//!
//! # When Redis fails
//!
//! - Every command, pool checkout included, is bounded by `command_timeout` (tens of ms);
//!   the redis crate's and bb8's own defaults (500 ms, 30 s) are far over a 100 ms budget.
//! - A failure is classified once ([`L2ErrorKind::of`]), counted through the observer and
//!   returned as an [`L2Error`], which the engine absorbs: the caller goes on to the loader.
//! - Timeouts and connection errors count towards the [`CircuitBreaker`]; once it opens,
//!   commands fail at once with [`L2ErrorKind::CircuitOpen`] and touch no socket, until a
//!   probe after `open_for` finds Redis back.
//! - A connection that failed unrecoverably is flagged and leaves the pool on return.
//! - Redis down at start-up is not an error: the pool connects lazily.
//! - A `rediss://` server whose certificate does not chain to the configured CA (or does
//!   not name the URL's host), or a password Redis refuses, fails every connection: a
//!   `connection` error with the reason kept for health checks, which opens the breaker
//!   as a Redis that is down does.

mod error;
mod info;
mod manager;
mod protocol;
mod scripts;
pub(crate) mod tls;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bb8_redis::bb8;
use redis::aio::MultiplexedConnection;

use crate::breaker::{CircuitBreaker, Transition};
use crate::config::{BreakerConfig, RedisConfig};
use crate::observer::{CacheObserver, CircuitState};

pub use error::{L2Error, L2ErrorKind};
pub use info::{LastL2Error, PoolState, RedisInfo};
use manager::{ConnectErrors, Manager};
pub(crate) use protocol::{GetOrLease, IndexEntry, Publish, StoredValue};
pub use scripts::LEASE_MARKER_PREFIX;
pub use tls::client;

/// The Redis tier.
pub(crate) struct L2 {
    client: redis::Client,
    pool: bb8::Pool<Manager>,
    /// Why the pool last failed to open a connection.
    connect_errors: ConnectErrors,
    timeout: Duration,
    breaker: CircuitBreaker,
    observer: Arc<dyn CacheObserver>,
    last_error: std::sync::Mutex<Option<LastL2Error>>,
    refusals: std::sync::Mutex<Refusals>,
}

/// How long after Redis refused a command it is still reported as refusing writes.
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

/// Redis refusing writes, as seen lately.
#[derive(Default)]
struct Refusals {
    /// The last command refused (any kind of write: a fill, a lease), and when.
    last: Option<(Instant, String)>,
    /// Why the last write probe failed; `None` when it succeeded (or none ran yet).
    probe: Option<String>,
}

impl L2 {
    /// A lazily connecting L2 (over TLS for a `rediss://` URL); fails only on a URL or CA
    /// the redis crate cannot parse, which the config's builder has already refused.
    pub fn new(
        config: &RedisConfig,
        breaker: BreakerConfig,
        observer: Arc<dyn CacheObserver>,
    ) -> Result<Self, redis::RedisError> {
        // redis-rs leaves Nagle's algorithm on. Turning it off (TCP_NODELAY) measured no
        // better here, and a little more CPU per operation (benches/README.md), so it stays.
        let client = tls::client(config)?;
        let connect_errors = ConnectErrors::default();
        let manager = Manager::new(
            client.clone(),
            config.connect_timeout,
            config.command_timeout,
            connect_errors.clone(),
        );
        let pool = bb8::Pool::builder()
            .max_size(config.pool_size)
            .test_on_check_out(false)
            .connection_timeout(config.command_timeout)
            .retry_connection(false)
            .error_sink(Box::new(connect_errors.clone()))
            .build_unchecked(manager);
        Ok(L2 {
            client,
            pool,
            connect_errors,
            timeout: config.command_timeout,
            breaker: CircuitBreaker::new(breaker),
            observer,
            last_error: std::sync::Mutex::new(None),
            refusals: std::sync::Mutex::new(Refusals::default()),
        })
    }

    /// `DEL key` (a key that never exists): a write Redis refuses when it takes none
    /// (read-only, a failing disk, an ACL) and allows out of memory, as it allows the
    /// invalidation script. `Ok` means an invalidation sent now would land; the outcome is
    /// kept for [`refusing_writes`](Self::refusing_writes).
    pub async fn probe_writes(&self, key: &str) -> Result<(), L2Error> {
        let outcome = self
            .run("write_probe", async |conn| {
                redis::cmd("DEL").arg(key).query_async::<()>(conn).await
            })
            .await;
        let failed = outcome.as_ref().err().map(|e| match &e.source {
            Some(source) => format!("{}: {source}", e.kind),
            None => e.kind.as_str().to_owned(),
        });
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .probe = failed;
        outcome
    }

    /// Why Redis does not take writes, if it does not: the last write probe failed, or a
    /// command was refused (out of memory, read-only, …) within the last 10 s.
    pub fn refusing_writes(&self) -> Option<String> {
        let refusals = self
            .refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(probe) = &refusals.probe {
            return Some(probe.clone());
        }
        match &refusals.last {
            Some((at, message)) if at.elapsed() < REFUSAL_WINDOW => Some(message.clone()),
            _ => None,
        }
    }

    /// The breaker's state.
    pub fn circuit(&self) -> CircuitState {
        self.breaker.state()
    }

    /// The pool's state.
    pub fn pool_state(&self) -> PoolState {
        let state = self.pool.state();
        PoolState {
            connections: state.connections,
            idle: state.idle_connections,
        }
    }

    /// `INFO` (all sections), parsed.
    pub async fn info(&self) -> Result<RedisInfo, L2Error> {
        let text: String = self
            .run("info", async |conn| {
                redis::cmd("INFO").query_async(conn).await
            })
            .await?;
        Ok(RedisInfo::parse(&text))
    }

    /// Deletes every key matching `pattern`, a batch of `SCAN` then `UNLINK` at a time, so
    /// Redis is never blocked. Not for a request path: run it in a task of its own.
    pub async fn unlink_matching(
        &self,
        pattern: &str,
        doomed: impl Fn(&str) -> bool,
    ) -> Result<u64, L2Error> {
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        // Bounded: a SCAN over the whole keyspace ends when the cursor comes back to 0.
        for _ in 0..1_000_000 {
            let (next, keys): (u64, Vec<String>) = self
                .run("scan", async |conn| {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(conn)
                        .await
                })
                .await?;
            let keys: Vec<String> = keys.into_iter().filter(|k| doomed(k)).collect();
            if !keys.is_empty() {
                let n: u64 = self
                    .run("unlink", async |conn| {
                        redis::cmd("UNLINK").arg(&keys).query_async(conn).await
                    })
                    .await?;
                removed += n;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(removed)
    }

    /// The last failure, if any.
    pub fn last_error(&self) -> Option<LastL2Error> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A client for connections of its own (the bus subscriber), outside the pool.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Any command, under the breaker and the timeout.
    pub async fn command<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, L2Error> {
        self.run(op, async |conn| cmd.query_async(conn).await).await
    }

    /// Any script, under the breaker and the timeout.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, L2Error> {
        self.run(op, async |conn| invocation.invoke_async(conn).await)
            .await
    }

    /// `PING`, returning the round trip.
    pub async fn ping(&self) -> Result<Duration, L2Error> {
        let started = Instant::now();
        self.run("ping", async |conn| {
            redis::cmd("PING").query_async::<()>(conn).await
        })
        .await?;
        Ok(started.elapsed())
    }

    /// Runs one command under the breaker and the timeout, classifying any failure.
    async fn run<T>(
        &self,
        op: &'static str,
        command: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, L2Error> {
        let asked = Instant::now();
        let (allowed, transition) = self.breaker.allow(asked);
        self.report(transition);
        if !allowed {
            return Err(self.fail(op, L2ErrorKind::CircuitOpen, None));
        }
        let attempt = async {
            // The checkout lasts as long as a clone, so a connection is never held by one
            // caller: bb8 hands them out in turn (FIFO) and each multiplexes the commands
            // that land on it. The default pool is one connection: against eight it cost
            // Redis about a tenth less CPU per operation in the comparison, for the same
            // process CPU (benches/README.md). One flagged broken is dropped by the pool
            // when next checked out here.
            let checkout = async || {
                self.pool.get().await.map_err(|e| match e {
                    bb8::RunError::User(e) => (L2ErrorKind::Connection, Some(e)),
                    bb8::RunError::TimedOut => self.timed_out(asked),
                })
            };
            let mut pooled = checkout().await?;
            if pooled.broken.load(Ordering::Relaxed) {
                // Returned, so the pool drops it; the next checkout opens or finds another.
                drop(pooled);
                pooled = checkout().await?;
            }
            let (mut conn, broken) = (pooled.inner.clone(), Arc::clone(&pooled.broken));
            drop(pooled);
            command(&mut conn).await.map_err(|e| {
                // A connection refused its credentials is made again (with AUTH) too.
                if e.is_unrecoverable_error()
                    || e.is_connection_dropped()
                    || error::is_auth_refusal(&e)
                {
                    broken.store(true, Ordering::Relaxed);
                }
                (L2ErrorKind::of(&e), Some(e))
            })
        };
        let outcome = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(self.timed_out(asked)),
        };
        match outcome {
            Ok(value) => {
                self.report(self.breaker.success());
                Ok(value)
            }
            Err((kind, source)) => {
                match kind {
                    // Redis answered: the link is fine, whatever it said.
                    L2ErrorKind::Protocol | L2ErrorKind::Refused => {
                        self.report(self.breaker.success());
                    }
                    _ => self.report(self.breaker.failure(Instant::now())),
                }
                Err(self.fail(op, kind, source))
            }
        }
    }

    /// What a command asked for at `asked` that ran out of time failed of. The pool's wait
    /// for a connection and the command share one bound (whichever timer fires first), so
    /// when the pool failed to open a connection since (refused, the password wrong, the
    /// server too old, its certificate not trusted), that is the failure, with the pool's
    /// own reason, not a bare timeout. So it is when the pool has no connection at all and
    /// its last attempt failed: the wait could only end in a connection that attempt's
    /// cause still stands in the way of, and a handshake slower than the command's bound
    /// (TLS) would otherwise be reported as a bare timeout every time. Either way the
    /// breaker counts it.
    fn timed_out(&self, asked: Instant) -> (L2ErrorKind, Option<redis::RedisError>) {
        let cause = self.connect_errors.last(Some(asked)).or_else(|| {
            (self.pool.state().connections == 0)
                .then(|| self.connect_errors.last(None))
                .flatten()
        });
        match cause {
            Some(e) => (L2ErrorKind::Connection, Some(e)),
            None => (L2ErrorKind::Timeout, None),
        }
    }

    fn fail(
        &self,
        op: &'static str,
        kind: L2ErrorKind,
        source: Option<redis::RedisError>,
    ) -> L2Error {
        self.observer.l2_error(kind);
        let error = L2Error { kind, op, source };
        if kind != L2ErrorKind::CircuitOpen {
            tracing::debug!(error = %error, "L2 command failed; continuing without it");
            let message = match &error.source {
                Some(e) => e.to_string(),
                None => kind.as_str().to_owned(),
            };
            if kind == L2ErrorKind::Refused {
                self.refusals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .last = Some((Instant::now(), message.clone()));
            }
            *self
                .last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(LastL2Error {
                kind,
                op,
                message,
                at_ms: crate::clock::unix_millis(),
            });
        }
        error
    }

    fn report(&self, transition: Transition) {
        if let Some((from, to)) = transition {
            tracing::warn!(
                from = from.as_str(),
                to = to.as_str(),
                "L2 circuit breaker changed state"
            );
            self.observer.circuit_changed(from, to);
        }
    }
}
