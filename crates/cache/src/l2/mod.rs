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
mod manager;
pub(crate) mod tls;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bb8_redis::bb8;
use redis::aio::MultiplexedConnection;

use crate::breaker::{CircuitBreaker, Transition};
use crate::config::{BreakerConfig, RedisConfig};
use crate::observer::{CacheObserver, CircuitState};
use crate::write_behind::QueuedSet;

pub use error::{L2Error, L2ErrorKind};
use manager::{ConnectErrors, Manager};
pub use tls::client;

/// The pool's size right now, for health checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolState {
    /// Connections open.
    pub connections: u32,
    /// Of those, connections idle in the pool.
    pub idle: u32,
}

/// A tag's index a key joins when its load takes the lease (the key is the member).
pub(crate) struct IndexEntry {
    pub index_key: String,
    pub ttl: Duration,
}

/// The last L2 failure, for health checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastL2Error {
    /// Its kind.
    pub kind: L2ErrorKind,
    /// The command.
    pub op: &'static str,
    /// The error's text (Redis's own message; never a key or a value).
    pub message: String,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
}

/// What Redis says of itself (`INFO memory` and `INFO stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisInfo {
    /// `used_memory`, bytes.
    pub used_memory: u64,
    /// `maxmemory`, bytes (0: no limit).
    pub maxmemory: u64,
    /// `evicted_keys`: keys Redis dropped for memory since it started.
    pub evicted_keys: u64,
    /// `connected_clients`.
    pub connected_clients: u64,
}

/// The value of `name:value` in an `INFO` reply.
fn info_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

impl RedisInfo {
    fn parse(text: &str) -> Self {
        let field = |name: &str| {
            info_field(text, name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        RedisInfo {
            used_memory: field("used_memory"),
            maxmemory: field("maxmemory"),
            evicted_keys: field("evicted_keys"),
            connected_clients: field("connected_clients"),
        }
    }
}

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

    /// The value at `key`, or when it is absent, a load lease: `marker` written there
    /// (`SET key marker NX GET PX ttl`, one command, Redis ≥ 7.0). Another load's marker
    /// found there is [`GetOrLease::Busy`]. With index entries, the key joins its tags'
    /// indexes in the same round trip, so an invalidation of a tag from now on finds it
    /// (and deletes its marker, so the load's write does not land).
    pub async fn get_or_lease(
        &self,
        key: &str,
        marker: &str,
        ttl: Duration,
        indexes: &[IndexEntry],
    ) -> Result<GetOrLease, L2Error> {
        let mut set = redis::cmd("SET");
        set.arg(key)
            .arg(marker)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(millis(ttl));
        let found: Option<Vec<u8>> = if indexes.is_empty() {
            self.command("get_or_lease", &set).await?
        } else {
            let mut pipe = redis::pipe();
            pipe.add_command(set);
            for index in indexes {
                pipe.cmd("SADD")
                    .arg(&index.index_key)
                    .arg(key)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&index.index_key)
                    .arg(millis(index.ttl))
                    .ignore();
            }
            let (found,): (Option<Vec<u8>>,) = self
                .run("get_or_lease", async |conn| pipe.query_async(conn).await)
                .await?;
            found
        };
        Ok(match found {
            None => GetOrLease::Leased,
            Some(bytes) if is_lease_marker(&bytes) => GetOrLease::Busy,
            Some(bytes) => GetOrLease::Value(bytes),
        })
    }

    /// A load lease at `key` whatever value it holds (that value is not trusted, and the
    /// load replaces it); [`GetOrLease::Busy`] when another load's marker is there.
    pub async fn take_lease(
        &self,
        key: &str,
        marker: &str,
        ttl: Duration,
        indexes: &[IndexEntry],
    ) -> Result<GetOrLease, L2Error> {
        let script = take_lease_script();
        let mut invocation = script.prepare_invoke();
        invocation.key(key).arg(marker).arg(millis(ttl));
        for index in indexes {
            invocation.key(&index.index_key).arg(millis(index.ttl));
        }
        let leased: i64 = self.invoke("take_lease", &invocation).await?;
        Ok(if leased == 1 {
            GetOrLease::Leased
        } else {
            GetOrLease::Busy
        })
    }

    /// `SET key value PX ttl` only if every epoch key still holds the value seen before the
    /// read (`None`: absent), in one script; `Ok(false)` when one moved (an invalidation
    /// came first).
    pub async fn set_guarded(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        epochs: &[(String, Option<String>)],
    ) -> Result<bool, L2Error> {
        let script = set_guarded_script();
        let mut invocation = script.prepare_invoke();
        invocation.key(key).arg(value).arg(millis(ttl));
        for (epoch_key, seen) in epochs {
            invocation.key(epoch_key).arg(seen.as_deref().unwrap_or(""));
        }
        let landed: i64 = self.invoke("set", &invocation).await?;
        Ok(landed == 1)
    }

    /// Loaded values, each `SET` over its load's lease marker only (an invalidation that
    /// deleted the marker, and with it the key, keeps it out), in one script for the batch;
    /// whether each landed, in order.
    pub async fn set_over_markers(&self, sets: &[QueuedSet]) -> Result<Vec<bool>, L2Error> {
        let script = set_over_markers_script();
        let mut invocation = script.prepare_invoke();
        for set in sets {
            invocation
                .key(&set.redis_key)
                .arg(&set.bytes)
                .arg(millis(set.ttl))
                .arg(&set.lease);
        }
        let landed: Vec<i64> = self.invoke("set_many", &invocation).await?;
        Ok(landed.into_iter().map(|l| l == 1).collect())
    }

    /// One invalidation, in one script (one round trip): `INCR` each epoch key (kept for
    /// `ttl`; an install whose snapshot saw an older value no longer lands), `DEL` the doomed
    /// keys, then the keys each tag index lists (and the index), then `publish` the bus
    /// message, with those keys appended to its own. Returns the indexes' members.
    pub async fn invalidate(
        &self,
        epochs: &[String],
        ttl: Duration,
        doomed: &[String],
        indexes: &[String],
        publish: Option<&Publish<'_>>,
    ) -> Result<Vec<String>, L2Error> {
        let script = invalidate_script();
        let mut invocation = script.prepare_invoke();
        invocation
            .arg(epochs.len())
            .arg(doomed.len())
            .arg(millis(ttl))
            .arg(indexes.len());
        for key in epochs.iter().chain(doomed).chain(indexes) {
            invocation.key(key);
        }
        match publish {
            Some(message) => invocation
                .key(message.stream)
                .arg(1)
                .arg(crate::bus::STREAM_MAXLEN)
                .arg(message.payload)
                .arg(crate::bus::STREAM_TTL_MS)
                .arg(message.channel),
            None => invocation.arg(0).arg(0).arg("").arg(0).arg(""),
        };
        self.invoke("invalidate", &invocation).await
    }

    /// `DEL key` if it still holds this load's `marker` (compare and delete, in one script).
    pub async fn release_lease(&self, key: &str, marker: &str) -> Result<(), L2Error> {
        let script = release_lease_script();
        let mut invocation = script.prepare_invoke();
        invocation.key(key).arg(marker);
        self.invoke::<i64>("release_lease", &invocation)
            .await
            .map(|_| ())
    }

    /// `DEL keys…`.
    pub async fn del(&self, keys: &[String]) -> Result<(), L2Error> {
        if keys.is_empty() {
            return Ok(());
        }
        self.run("del", async |conn| {
            redis::cmd("DEL").arg(keys).query_async(conn).await
        })
        .await
    }

    /// `SMEMBERS key`.
    pub async fn members(&self, key: &str) -> Result<Vec<String>, L2Error> {
        self.run("smembers", async |conn| {
            redis::cmd("SMEMBERS").arg(key).query_async(conn).await
        })
        .await
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
    pub async fn unlink_matching(&self, pattern: &str, keep_prefix: &str) -> Result<u64, L2Error> {
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
            let keys: Vec<String> = keys
                .into_iter()
                .filter(|k| !k.starts_with(keep_prefix))
                .collect();
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
                at_ms: crate::cache::unix_millis(),
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

/// A bus message for [`L2::invalidate`] to append to the stream and announce on the channel.
pub(crate) struct Publish<'a> {
    /// The capped stream.
    pub stream: &'a str,
    /// The pub/sub channel.
    pub channel: &'a str,
    /// The encoded message; the indexed keys found are appended to its keys.
    pub payload: &'a str,
}

/// What [`L2::get_or_lease`] found.
pub(crate) enum GetOrLease {
    /// The value.
    Value(Vec<u8>),
    /// No value; this caller holds the load lease and should load.
    Leased,
    /// No value; another caller (another instance) holds the lease and is loading.
    Busy,
}

/// What every load lease's marker starts with: a byte no envelope starts with (see
/// `envelope.rs`), then a tag. The load's token follows.
pub const LEASE_MARKER_PREFIX: &str = "\0lease:";
const _: () = assert!(
    crate::envelope::ENVELOPE_VERSION != 0 && crate::seal::SEALED_VERSION != 0,
    "envelopes, plain or sealed, must not look like leases"
);

/// [`LEASE_MARKER_PREFIX`] as a Lua string literal's contents.
pub(crate) fn lua_lease_marker_prefix() -> String {
    LEASE_MARKER_PREFIX.replace('\0', "\\0")
}

/// Whether a value read from Redis is a load's lease marker rather than an envelope.
pub(crate) fn is_lease_marker(bytes: &[u8]) -> bool {
    bytes.starts_with(LEASE_MARKER_PREFIX.as_bytes())
}

/// KEYS: the key, then the tag indexes it joins. ARGV: marker, ttl, then each index's ttl.
/// Returns 1 when the marker was written.
fn take_lease_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(&TAKE_LEASE.replace("PREFIX", &lua_lease_marker_prefix()))
    })
}

const TAKE_LEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len('PREFIX')) == 'PREFIX' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[i + 1])
end
return 1
";

/// KEYS: the value, then the epoch keys. ARGV: value, ttl, then each epoch's expected value
/// (`''` for an absent epoch).
const SET_GUARDED: &str = r"
for i = 2, #KEYS do
  local seen = redis.call('GET', KEYS[i]) or ''
  if seen ~= ARGV[i + 1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

fn set_guarded_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(SET_GUARDED))
}

/// KEYS: the values' keys. ARGV: for each, its value, ttl and the marker it must still hold.
/// Returns 1 or 0 for each, in order; a key of another type (foreign data) is a 0.
fn set_over_markers_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"
local landed = {}
for i = 1, #KEYS do
  local at = (i - 1) * 3
  landed[i] = 0
  if redis.pcall('GET', KEYS[i]) == ARGV[at + 3] then
    redis.call('SET', KEYS[i], ARGV[at + 1], 'PX', ARGV[at + 2])
    landed[i] = 1
  end
end
return landed
",
        )
    })
}

/// KEYS: a key. ARGV: the lease marker it must still hold to be deleted.
fn release_lease_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
        )
    })
}

/// Runs when Redis is out of memory (`allow-oom`): an invalidation frees more than it
/// adds, and refusing it would leave every instance serving what it should drop.
///
/// KEYS: the epochs (ARGV[1] of them), the doomed keys (ARGV[2]), the tag indexes
/// (ARGV[4]), then the bus stream when ARGV[5] is 1.
/// ARGV: epoch count, doomed count, epoch ttl, index count, publish flag, stream length,
/// message, stream ttl, channel. The stream append and announcement are those of
/// [`crate::bus::PUBLISH_SCRIPT`].
fn invalidate_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"#!lua flags=allow-oom
local epochs, doomed, indexes = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
for i = 1, epochs do
  redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
local dels = {}
for i = epochs + 1, epochs + doomed do dels[#dels + 1] = KEYS[i] end
local at = epochs + doomed + 1
local members = {}
for i = at, at + indexes - 1 do
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    members[#members + 1] = m
    dels[#dels + 1] = m
  end
  dels[#dels + 1] = KEYS[i]
end
at = at + indexes
for i = 1, #dels, 500 do
  redis.call('DEL', unpack(dels, i, math.min(i + 499, #dels)))
end
if ARGV[5] == '1' then
  local message = ARGV[7]
  if #members > 0 then message = message .. ' ' .. table.concat(members, ' ') end
  local id = redis.call('XADD', KEYS[at], 'MAXLEN', '~', ARGV[6], '*', 'm', message)
  redis.call('PEXPIRE', KEYS[at], ARGV[8])
  redis.call('PUBLISH', ARGV[9], id .. ' ' .. message)
end
return members
",
        )
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_marker_is_never_an_envelope() {
        let value = crate::envelope::encode(Some(&"\0lease:x"), 0).unwrap();
        let not_found = crate::envelope::encode::<u8>(None, 0).unwrap();
        assert!(!is_lease_marker(&value) && !is_lease_marker(&not_found));
        let sealer = crate::seal::Sealer::new(&crate::EncryptionKey::from_bytes([0; 32]));
        for plain in [&value, &not_found] {
            let sealed = sealer.seal("k", plain, true).unwrap();
            assert!(!is_lease_marker(&sealed));
        }
        assert!(is_lease_marker(
            format!("{LEASE_MARKER_PREFIX}1:2").as_bytes()
        ));
        assert_eq!(lua_lease_marker_prefix(), "\\0lease:");
    }

    #[test]
    fn info_fields_parse_and_default_to_zero() {
        let info = RedisInfo::parse(
            "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:0\r\n# Stats\r\nevicted_keys:7\r\nconnected_clients:3\r\n",
        );
        assert_eq!(
            info,
            RedisInfo {
                used_memory: 1_048_576,
                maxmemory: 0,
                evicted_keys: 7,
                connected_clients: 3
            }
        );
        assert_eq!(RedisInfo::parse("garbage"), RedisInfo::default());
    }
}
