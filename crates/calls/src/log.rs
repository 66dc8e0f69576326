//! `CallLog`: the front door. Publishing queues; tasks behind it append to Redis and
//! consume the streams into the sessions.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::config::CallLogConfig;
use crate::conn::Conn;
use crate::consumer::Consumer;
use crate::drain::{self, Sink};
use crate::error::Unavailable;
use crate::event::{CallEvent, EventKind};
use crate::inspect::StreamStats;
use crate::observer::{CallLogObserver, DropReason};
use crate::queue::Queue;
use crate::settle::Settler;
use crate::stats::Stats;
use crate::store::SessionStore;
use crate::streams::Keys;
use crate::xinfo::{registered, stream_stats};

/// Calls whose organization this instance remembers from their `call_started`, so the
/// agent's events for them need no Redis or database lookup.
const KNOWN_CALLS: u64 = 100_000;

/// The call log; cheap to clone.
///
/// # When Redis fails
/// - `publish` goes on queueing, never waiting and never failing; the drain retries the
///   head batch with a capped backoff, so no event is lost while the queue has room. Past
///   it, new events are dropped and counted (`dropped(QueueFull)`).
/// - The consumer retries its rounds with a capped backoff on a fresh connection; a Redis
///   that lost its data comes back with the streams the drain appends next (the group is
///   created with them, from id 0).
/// - `org_of` answers from this instance's memory, then PostgreSQL; it fails
///   ([`Unavailable`]) only when neither can tell.
/// - `streams` and `dead_letters` fail with [`Unavailable`].
///
/// Without Redis (`redis: None`) the same queue is drained straight into the sessions.
#[derive(Clone)]
pub struct CallLog {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    store: SessionStore,
    keys: Keys,
    config: CallLogConfig,
    /// Commands outside the drain and the consumer (lookups, inspection).
    redis: Option<Conn>,
    /// Call sid → organization, for calls started through this instance.
    known: moka::sync::Cache<String, i64>,
}

/// The call log's tasks (queue drain, consumer); aborted when dropped, and the events
/// still queued then are dropped and counted (`dropped(Shutdown)`).
pub struct CallLogTasks {
    handles: Vec<JoinHandle<()>>,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Drop for CallLogTasks {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
        }
        if let Some(on_drop) = self.on_drop.take() {
            on_drop();
        }
    }
}

/// How the call log is doing, for health.
#[derive(Clone, Debug, Serialize)]
pub struct CallLogStatus {
    /// Whether events go through Redis (else straight to the store).
    pub redis: bool,
    /// Events waiting in this instance's queue.
    pub queue_depth: usize,
    /// Its bound.
    pub queue_capacity: usize,
    /// Events appended (or applied directly) by this instance.
    pub published: u64,
    /// Events this instance dropped.
    pub dropped: u64,
    /// Events this instance applied for the first time.
    pub applied: u64,
    /// Entries this instance sent to the dead-letter stream.
    pub dead_lettered: u64,
    /// The last append or consume failure, while failing.
    pub last_error: Option<String>,
    /// This instance's consumer, with Redis and consuming.
    pub consumer: Option<ConsumerStatus>,
}

/// This instance's consumer.
#[derive(Clone, Debug, Serialize)]
pub struct ConsumerStatus {
    /// Its name in the group.
    pub name: String,
    /// Entries pending across the group (all consumers), as last sampled.
    pub pending: u64,
    /// Entries not yet delivered to any consumer, as last sampled.
    pub lag: u64,
    /// When it last read successfully.
    pub last_read_at: Option<DateTime<Utc>>,
}

impl CallLog {
    /// Starts the call log: with `redis`, events are appended to the namespace's streams and
    /// a consumer in the group applies them to `store`; without, they are applied to `store`
    /// straight from the queue. Call it within a tokio runtime (it spawns its tasks).
    pub fn start(
        config: CallLogConfig,
        redis: Option<redis::Client>,
        namespace: &str,
        store: SessionStore,
        observer: Arc<dyn CallLogObserver>,
    ) -> (CallLog, CallLogTasks) {
        let queue = Arc::new(Queue::new(config.queue_capacity));
        let stats = Arc::new(Stats::new(observer));
        let keys = Keys::new(namespace);
        let sink = match &redis {
            Some(client) => Sink::Redis {
                conn: Conn::new(client.clone(), config.command_timeout),
                script: drain::script(),
                keys: keys.clone(),
            },
            None => Sink::Direct(store.clone()),
        };
        let mut handles = vec![tokio::spawn(drain::run(
            queue.clone(),
            sink,
            stats.clone(),
            config.clone(),
        ))];
        if let Some(client) = redis.as_ref().filter(|_| config.consume) {
            let consumer = Consumer {
                client: client.clone(),
                config: config.clone(),
                settler: Settler {
                    keys: keys.clone(),
                    store: store.clone(),
                    stats: stats.clone(),
                    group: config.group.clone(),
                    max_deliveries: u64::from(config.max_deliveries.max(1)),
                },
            };
            handles.push(tokio::spawn(consumer.run()));
        }
        let known = moka::sync::Cache::builder()
            .max_capacity(KNOWN_CALLS)
            .time_to_live(config.stream_ttl)
            .build();
        let inner = Arc::new(Inner {
            queue: queue.clone(),
            stats: stats.clone(),
            store,
            keys,
            redis: redis.map(|client| Conn::new(client, config.command_timeout)),
            config,
            known,
        });
        let on_drop = move || {
            let n = queue.abandon();
            stats.dropped(DropReason::Shutdown, n as u64);
        };
        let tasks = CallLogTasks {
            handles,
            on_drop: Some(Box::new(on_drop)),
        };
        (CallLog { inner }, tasks)
    }

    /// Queues an event; never waits, never fails (a full queue drops it, counted).
    pub fn publish(&self, event: CallEvent) {
        let inner = &self.inner;
        if event.kind == EventKind::CallStarted {
            inner.known.insert(event.call_sid.clone(), event.org_id);
        }
        match inner.queue.push(event) {
            Ok(depth) => inner.stats.queue_depth(depth),
            Err(reason) => inner.stats.dropped(reason, 1),
        }
    }

    /// The organization a call belongs to: known to this instance, else from Redis, else
    /// from the sessions. `Ok(None)`: no one knows the call.
    ///
    /// # Cancel safety
    /// It changes nothing but this instance's memory of calls; dropping it is harmless.
    pub async fn org_of(&self, call_sid: &str) -> Result<Option<i64>, Unavailable> {
        let inner = &self.inner;
        if let Some(org) = inner.known.get(call_sid) {
            return Ok(Some(org));
        }
        let redis_error = match &inner.redis {
            None => None,
            Some(conn) => {
                match conn
                    .query::<Option<i64>>(redis::cmd("GET").arg(inner.keys.sid(call_sid)))
                    .await
                {
                    Ok(Some(org)) => {
                        inner.known.insert(call_sid.to_owned(), org);
                        return Ok(Some(org));
                    }
                    Ok(None) => None,
                    Err(e) => Some(e),
                }
            }
        };
        match (inner.store.org_of(call_sid).await, redis_error) {
            (Ok(Some(org)), _) => Ok(Some(org)),
            (Ok(None), None) => Ok(None),
            // Redis failed, so a call started within the last moments may be only there.
            (Ok(None), Some(e)) => Err(Unavailable(e.to_string())),
            (Err(e), _) => Err(Unavailable(e.to_string())),
        }
    }

    /// Waits until every event queued so far has been appended (or dropped); for tests and
    /// shutdown.
    ///
    /// # Cancel safety
    /// It only waits; dropping it is harmless.
    pub async fn flush(&self) {
        self.inner.queue.flushed().await;
    }

    /// How it is doing.
    pub fn status(&self) -> CallLogStatus {
        let inner = &self.inner;
        let (published, dropped, applied, dead_lettered) = inner.stats.counts();
        let consumer = inner
            .redis
            .as_ref()
            .filter(|_| inner.config.consume)
            .map(|_| {
                let group = inner.stats.group();
                ConsumerStatus {
                    name: inner.config.consumer.clone(),
                    pending: group.pending,
                    lag: group.lag,
                    last_read_at: group.last_read_at,
                }
            });
        CallLogStatus {
            redis: inner.redis.is_some(),
            queue_depth: inner.queue.depth(),
            queue_capacity: inner.queue.capacity(),
            published,
            dropped,
            applied,
            dead_lettered,
            last_error: inner.stats.last_error(),
            consumer,
        }
    }

    /// Every stream of the last day with its groups and consumers (empty without Redis).
    pub async fn streams(&self) -> Result<Vec<StreamStats>, Unavailable> {
        let inner = &self.inner;
        let Some(conn) = &inner.redis else {
            return Ok(Vec::new());
        };
        let streams = registered(conn, &inner.keys, inner.config.stream_ttl)
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        stream_stats(conn, &inner.keys, &streams)
            .await
            .map_err(|e| Unavailable(e.to_string()))
    }

    /// The dead-letter stream's length (0 without Redis).
    pub async fn dead_letters(&self) -> Result<u64, Unavailable> {
        let inner = &self.inner;
        let Some(conn) = &inner.redis else {
            return Ok(0);
        };
        conn.query(redis::cmd("XLEN").arg(inner.keys.dead()))
            .await
            .map_err(|e| Unavailable(e.to_string()))
    }
}

impl CallLogTasks {
    /// Tasks to abort on drop.
    pub fn new(handles: Vec<JoinHandle<()>>) -> Self {
        CallLogTasks {
            handles,
            on_drop: None,
        }
    }
}
