//! The live call log in the service: its settings, starting it on the service's pool and
//! Redis, and reporting it to monitoring (metrics through its observer, health through a
//! probe: monitoring knows no call log, the call log no prometheus).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use sqlx::PgPool;
use tiercache::TwoTierCache;
use tiercache_calls::{
    CallLog, CallLogConfig, CallLogObserver, CallLogTasks, DropReason, LiveFeed, SessionStore,
};
use tiercache_monitoring::health::DROPPING_WINDOW;
use tiercache_monitoring::{CallDropReason, CallLogProbe, CallLogSample, Metrics};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::TicketKey;
use crate::config::Config;

/// The call log's settings (`CALL_EVENTS_*`, `CALL_FEED_HEARTBEAT_MS`, `INSTANCE_NAME`).
#[derive(Clone, Debug)]
pub struct CallsConfig {
    /// Events held while Redis is slow or down (`CALL_EVENTS_QUEUE`).
    pub queue_capacity: usize,
    /// `MAXLEN ~` of each organization's daily stream (`CALL_EVENTS_STREAM_MAXLEN`).
    pub stream_maxlen: u64,
    /// How long an entry stays pending on a consumer before another claims it
    /// (`CALL_EVENTS_CLAIM_IDLE_MS`).
    pub claim_idle: Duration,
    /// Deliveries after which a failing entry goes to the dead-letter stream
    /// (`CALL_EVENTS_MAX_DELIVERIES`).
    pub max_deliveries: u32,
    /// Whether this instance runs a consumer in the group (`CALL_EVENTS_CONSUMER`); off, it
    /// only publishes, and instances elsewhere fold the events.
    pub consume: bool,
    /// This instance's name, its consumer's in the group (`INSTANCE_NAME`); `None`: the
    /// host's name and the process id.
    pub instance_name: Option<String>,
    /// How often a live feed client hears from an idle feed (`CALL_FEED_HEARTBEAT_MS`).
    pub heartbeat: Duration,
    /// Signs live feed tickets; derived from `CACHE_KEY_SECRET`, so every instance
    /// accepts any instance's tickets.
    pub tickets: TicketKey,
}

impl CallsConfig {
    /// Default queue bound: minutes of calls at a busy rate, a few MiB at most.
    pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
    /// Largest queue bound accepted.
    pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;
    /// Default stream bound: far more events than one organization makes in a day.
    pub const DEFAULT_STREAM_MAXLEN: u64 = 100_000;
    /// Default claim idle: many times a healthy consumer's batch.
    pub const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(30);
    /// Default deliveries before dead letter.
    pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
    /// Default heartbeat: under the idle timeouts of common proxies (30 s and up).
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
    /// Longest instance name accepted.
    pub const MAX_INSTANCE_NAME_LEN: usize = 64;

    /// The defaults, tickets signed with a key derived from `key_secret`.
    pub fn new(key_secret: &[u8]) -> CallsConfig {
        CallsConfig {
            queue_capacity: Self::DEFAULT_QUEUE_CAPACITY,
            stream_maxlen: Self::DEFAULT_STREAM_MAXLEN,
            claim_idle: Self::DEFAULT_CLAIM_IDLE,
            max_deliveries: Self::DEFAULT_MAX_DELIVERIES,
            consume: true,
            instance_name: None,
            heartbeat: Self::DEFAULT_HEARTBEAT,
            tickets: TicketKey::derive(key_secret),
        }
    }

    /// The library's settings from these.
    pub fn log_config(&self) -> CallLogConfig {
        CallLogConfig {
            queue_capacity: self.queue_capacity,
            stream_maxlen: self.stream_maxlen,
            claim_idle: self.claim_idle,
            // Looked for often enough that a claim comes soon after an entry qualifies.
            claim_every: (self.claim_idle / 4)
                .clamp(Duration::from_millis(100), DEFAULT_CLAIM_EVERY),
            max_deliveries: self.max_deliveries,
            consume: self.consume,
            consumer: self.consumer_name(),
            ..CallLogConfig::default()
        }
    }

    /// The consumer's name: `INSTANCE_NAME`, else `{host}-{pid}` (unique per process on a
    /// host, and telling an operator where it runs).
    pub fn consumer_name(&self) -> String {
        if let Some(name) = &self.instance_name {
            return name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "tiercache".to_owned());
        format!("{host}-{}", std::process::id())
    }
}

/// The longest wait between looks for pending entries to claim.
const DEFAULT_CLAIM_EVERY: Duration = Duration::from_secs(5);

/// The call log as the handlers use it; cheap to clone.
#[derive(Clone)]
pub struct Calls {
    /// Publishing and inspecting.
    pub log: CallLog,
    /// The sessions.
    pub store: SessionStore,
    /// Session changes as they happen.
    pub feed: LiveFeed,
    /// Signs and checks live feed tickets.
    pub tickets: TicketKey,
    /// How often live clients hear from an idle feed.
    pub heartbeat: Duration,
    probe: Arc<CallsProbe>,
    closing: Arc<watch::Sender<bool>>,
}

impl Calls {
    /// Ends every live feed stream (SSE and WebSocket), now and for those opened later:
    /// at shutdown, since a graceful shutdown waits for responses to end and a feed's never
    /// would. Clients resume on another instance from their last cursor.
    pub fn close_feeds(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`close_feeds`](Self::close_feeds) was called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            // An error means the sender is gone, which only the state holding it drops.
            let _ = closing.wait_for(|closing| *closing).await;
        }
    }

    /// The call log's health probe, for monitoring.
    pub fn probe(&self) -> Arc<dyn CallLogProbe> {
        self.probe.clone()
    }
}

/// The call log's tasks (its queue's drain, its consumer, the feed's listener); stopped
/// when dropped.
pub struct CallsTasks {
    _log: CallLogTasks,
    feed: JoinHandle<()>,
}

impl Drop for CallsTasks {
    fn drop(&mut self) {
        self.feed.abort();
    }
}

/// Starts the call log on `pool` and, when `cache` has one, its Redis (the same server,
/// TLS and namespace), reporting to `metrics`.
pub fn start(
    config: &Config,
    cache: &TwoTierCache,
    pool: PgPool,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Calls, CallsTasks)> {
    let redis = match config.cache.redis() {
        Some(redis) => {
            Some(tiercache::l2::client(redis).context("building the call log's Redis client")?)
        }
        None => None,
    };
    let store = SessionStore::new(pool.clone());
    let (log, log_tasks) = CallLog::start(
        config.calls.log_config(),
        redis,
        cache.keys().namespace(),
        store.clone(),
        Arc::new(CallMetrics(metrics)),
    );
    let (feed, feed_task) = LiveFeed::start(pool);
    let probe = Arc::new(CallsProbe {
        log: log.clone(),
        started: Instant::now(),
        drops: Mutex::new(Drops::default()),
    });
    Ok((
        Calls {
            log,
            store,
            feed,
            tickets: config.calls.tickets.clone(),
            heartbeat: config.calls.heartbeat,
            probe,
            closing: Arc::new(watch::channel(false).0),
        },
        CallsTasks {
            _log: log_tasks,
            feed: feed_task,
        },
    ))
}

/// The call log's events, counted (monitoring knows no call log).
struct CallMetrics(Arc<Metrics>);

impl CallLogObserver for CallMetrics {
    fn published(&self, n: u64) {
        self.0.call_log().published(n);
    }

    fn dropped(&self, reason: DropReason, n: u64) {
        let reason = match reason {
            DropReason::QueueFull => CallDropReason::QueueFull,
            DropReason::Shutdown => CallDropReason::Shutdown,
        };
        self.0.call_log().dropped(reason, n);
    }

    fn append_failed(&self) {
        self.0.call_log().append_failed();
    }

    fn applied(&self, n: u64) {
        self.0.call_log().applied(n);
    }

    fn duplicates(&self, n: u64) {
        self.0.call_log().duplicates(n);
    }

    fn claimed(&self, n: u64) {
        self.0.call_log().claimed(n);
    }

    fn dead_lettered(&self, n: u64) {
        self.0.call_log().dead_lettered(n);
    }

    fn queue_depth(&self, depth: usize) {
        self.0.call_log().queue_depth(depth);
    }

    fn group_state(&self, pending: u64, lag: u64) {
        self.0.call_log().group_state(pending, lag);
    }
}

/// The drops seen by the last sample, and when their count last grew.
#[derive(Default)]
struct Drops {
    seen: u64,
    grew_at: Option<Instant>,
}

/// Reads the call log's status for health; remembers when drops last grew, so "dropping"
/// means lately, not ever.
struct CallsProbe {
    log: CallLog,
    started: Instant,
    drops: Mutex<Drops>,
}

impl CallLogProbe for CallsProbe {
    fn sample(&self) -> CallLogSample {
        let status = self.log.status();
        let now = Instant::now();
        let dropping = {
            let mut drops = self.drops.lock().unwrap_or_else(PoisonError::into_inner);
            if status.dropped > drops.seen {
                drops.seen = status.dropped;
                drops.grew_at = Some(now);
            }
            drops
                .grew_at
                .is_some_and(|at| now.duration_since(at) <= DROPPING_WINDOW)
        };
        let consumer_idle = status.consumer.as_ref().map(|consumer| {
            consumer.last_read_at.map_or(self.started.elapsed(), |at| {
                (Utc::now() - at).to_std().unwrap_or(Duration::ZERO)
            })
        });
        CallLogSample {
            queue_depth: status.queue_depth,
            queue_capacity: status.queue_capacity,
            dropping,
            consumer_idle,
            detail: serde_json::to_value(&status).unwrap_or_default(),
        }
    }
}
