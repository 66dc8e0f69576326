//! The drain: takes batches from the queue and writes them, to Redis in one script round
//! trip per batch or, without Redis, straight to the sessions. A batch that fails stays at
//! the head of the queue and is tried again after a capped backoff. A batch gathers for at
//! most the linger (`CallLogConfig::linger`) after its first event.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::config::CallLogConfig;
use crate::conn::Conn;
use crate::event::CallEvent;
use crate::queue::Queue;
use crate::stats::Stats;
use crate::store::{Applied, SessionStore};
use crate::streams::{APPEND_SCRIPT, Keys, append_invocation};

/// First wait after a failed write.
const BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Longest wait between tries: a restarted Redis is written to within about this long.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Where batches go.
// One per call log, never moved about: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Sink {
    /// Appended to the namespace's streams.
    Redis {
        conn: Conn,
        script: redis::Script,
        keys: Keys,
    },
    /// Applied to the sessions directly (`REDIS_ENABLED=false`).
    Direct(SessionStore),
}

/// Writes the queue's batches until aborted.
pub(crate) async fn run(queue: Arc<Queue>, sink: Sink, stats: Arc<Stats>, config: CallLogConfig) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut batch = queue.peek(config.batch_max).await;
        if batch.len() < config.batch_max && !config.linger.is_zero() {
            // Let a batch gather: one script round trip carries it, and the consumer's one
            // transaction after it. The publisher never waits; an event waits at most this.
            tokio::time::sleep(config.linger).await;
            batch = queue.peek(config.batch_max).await;
        }
        let retry = match &sink {
            Sink::Redis { conn, script, keys } => {
                append(conn, script, keys, &batch, &config, &stats).await
            }
            Sink::Direct(store) => apply(store, &batch, &stats).await,
        };
        let failed = !retry.is_empty();
        let written = batch.len() - retry.len();
        let depth = queue.complete(batch.len(), retry);
        stats.published(written as u64);
        stats.queue_depth(depth);
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        } else {
            backoff = BACKOFF_MIN;
        }
    }
}

/// Appends `batch`; the events to try again (all of them, on failure).
async fn append(
    conn: &Conn,
    script: &redis::Script,
    keys: &Keys,
    batch: &[CallEvent],
    config: &CallLogConfig,
    stats: &Stats,
) -> Vec<CallEvent> {
    let ttl_ms = u64::try_from(config.stream_ttl.as_millis()).unwrap_or(u64::MAX);
    let invocation = append_invocation(
        script,
        keys,
        batch,
        config.stream_maxlen,
        ttl_ms,
        &config.group,
        Utc::now(),
    );
    match conn.invoke::<u64>(&invocation).await {
        Ok(_) => {
            stats.recovered();
            Vec::new()
        }
        Err(e) => {
            tracing::debug!(error = %e, events = batch.len(), "call events: append failed");
            stats.append_failed(e.to_string());
            batch.to_vec()
        }
    }
}

/// Applies `batch` to the store; the events whose apply failed, to try again.
async fn apply(store: &SessionStore, batch: &[CallEvent], stats: &Stats) -> Vec<CallEvent> {
    let outcomes = store.apply(batch).await;
    let (mut new, mut duplicates) = (0, 0);
    let mut retry = Vec::new();
    let mut error = None;
    for (event, outcome) in batch.iter().zip(outcomes) {
        match outcome {
            Ok(Applied::New(_)) => new += 1,
            Ok(Applied::Duplicate) => duplicates += 1,
            Err(e) => {
                error.get_or_insert_with(|| e.to_string());
                retry.push(event.clone());
            }
        }
    }
    stats.applied(new);
    stats.duplicates(duplicates);
    match error {
        Some(e) => {
            tracing::debug!(error = %e, events = retry.len(), "call events: apply failed");
            stats.failed(e);
        }
        None => stats.recovered(),
    }
    retry
}

/// The script, built once per call log.
pub(crate) fn script() -> redis::Script {
    redis::Script::new(APPEND_SCRIPT)
}
