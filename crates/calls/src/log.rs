//! `CallLog`: the front door. Publishing queues; tasks behind it append to Redis and
//! consume the streams into the sessions.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::config::CallLogConfig;
use crate::error::Unavailable;
use crate::event::CallEvent;
use crate::inspect::StreamStats;
use crate::observer::CallLogObserver;
use crate::store::SessionStore;

/// The call log; cheap to clone.
#[derive(Clone)]
pub struct CallLog {
    _private: Arc<()>,
}

/// The call log's tasks (queue drain, consumer); aborted when dropped.
pub struct CallLogTasks {
    handles: Vec<JoinHandle<()>>,
}

impl Drop for CallLogTasks {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
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
    /// This instance's consumer, with Redis.
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
    /// straight from the queue.
    pub fn start(
        config: CallLogConfig,
        redis: Option<redis::Client>,
        namespace: &str,
        store: SessionStore,
        observer: Arc<dyn CallLogObserver>,
    ) -> (CallLog, CallLogTasks) {
        let _ = (config, redis, namespace, store, observer);
        todo!("issue 24: log")
    }

    /// Queues an event; never waits, never fails (a full queue drops it, counted).
    pub fn publish(&self, event: CallEvent) {
        let _ = event;
        todo!("issue 24: log")
    }

    /// The organization a call belongs to: known to this instance, else from Redis, else
    /// from the sessions. `Ok(None)`: no one knows the call.
    pub async fn org_of(&self, call_sid: &str) -> Result<Option<i64>, Unavailable> {
        let _ = call_sid;
        todo!("issue 24: log")
    }

    /// Waits until every event queued so far has been appended (or dropped); for tests and
    /// shutdown.
    pub async fn flush(&self) {
        todo!("issue 24: log")
    }

    /// How it is doing.
    pub fn status(&self) -> CallLogStatus {
        todo!("issue 24: log")
    }

    /// Every stream of the last day with its groups and consumers (empty without Redis).
    pub async fn streams(&self) -> Result<Vec<StreamStats>, Unavailable> {
        todo!("issue 24: log")
    }

    /// The dead-letter stream's length (0 without Redis).
    pub async fn dead_letters(&self) -> Result<u64, Unavailable> {
        let _ = &self._private;
        todo!("issue 24: log")
    }
}

impl CallLogTasks {
    /// Tasks to abort on drop.
    pub fn new(handles: Vec<JoinHandle<()>>) -> Self {
        CallLogTasks { handles }
    }
}
