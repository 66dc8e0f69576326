//! Invalidations: both tiers and the bus in one Redis script, L1 meanwhile (the keys in
//! flight until Redis has answered, see `pending.rs`), and what Redis does not take owed
//! (see `replay.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::Engine;
use super::write_through::Written;
use crate::bus::BusMessage;
use crate::clock::unix_millis;
use crate::invalidation::Invalidation;
use crate::l2::{L2, L2Error, L2ErrorKind, Publish};
use crate::log_throttle::{LOG_INTERVAL, LogThrottle};
use crate::observer::InvalidationSource;
use crate::schema::Tag;

/// How long an invalidation epoch stays in Redis after its last bump; far longer than any
/// read it guards (a read lasts at most the load timeout).
const EPOCH_TTL: Duration = Duration::from_secs(3600);

/// How often, in ms, an instance renews the bus stream's TTL (a day) while it publishes:
/// far within the TTL, so a stream in use never expires.
const STREAM_RENEWAL_MS: u64 = 60 * 60 * 1000;

/// What an invalidation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidationReport {
    /// Keys removed (or found absent) in L1.
    pub keys: usize,
    /// `None` when L2 is absent or took every delete; otherwise why some did not land.
    /// Those deletes are owed: kept, replayed in the background, and until then this
    /// instance does not read those keys from L2.
    pub l2_failure: Option<L2ErrorKind>,
}

impl Engine {
    /// Drops `invalidation`'s keys from both tiers; see the type's `# Writing` section.
    ///
    /// # Cancel safety
    /// The work runs in a task of its own, so a caller that goes away does not leave an
    /// invalidation half done.
    pub(crate) async fn invalidate_in_task(
        self: &Arc<Self>,
        invalidation: Invalidation,
        source: InvalidationSource,
    ) -> InvalidationReport {
        let inner = Arc::clone(self);
        let task =
            tokio::spawn(async move { inner.invalidate(invalidation, source, None, None).await });
        match task.await {
            Ok(report) => report,
            // Only a panic inside the task, or a runtime shutting down, gets here.
            Err(e) => {
                tracing::error!(error = %e, "invalidation task failed");
                InvalidationReport {
                    keys: 0,
                    l2_failure: None,
                }
            }
        }
    }

    /// [`invalidate`](Self::invalidate), installing `written` once L1 is clear, in a task
    /// of its own; returns when this instance no longer serves anything older than
    /// `written` (L1 cleared, `written` installed or kept out), while Redis's part goes on.
    pub(crate) async fn invalidate_here_first(
        self: &Arc<Self>,
        invalidation: Invalidation,
        source: InvalidationSource,
        written: Option<Written>,
    ) {
        let inner = Arc::clone(self);
        let (here, done_here) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            inner
                .invalidate(invalidation, source, written, Some(here))
                .await
        });
        // The task drops the sender unsent only when it panics or the runtime shuts down.
        if done_here.await.is_err() {
            tracing::error!("invalidation task ended before clearing L1");
        }
    }

    /// Drops everything: L1 at once, and every key under the namespace from Redis in a
    /// background task (`SCAN` and `UNLINK` in batches: Redis is never blocked, no
    /// `FLUSHDB`). Loads in flight are not installed afterwards (the global epoch moves).
    ///
    /// Returns the task deleting from Redis (its result is the number of keys removed), when
    /// L2 is configured.
    pub(crate) fn invalidate_all(
        self: &Arc<Self>,
        source: InvalidationSource,
    ) -> Option<JoinHandle<Result<u64, crate::l2::L2Error>>> {
        self.clear_l1();
        for entity in self.keys.schema().entities() {
            self.observer.invalidated(entity, source);
        }
        let inner = Arc::clone(self);
        self.l2.as_ref()?;
        Some(tokio::spawn(async move {
            // Values loaded before this call are swept too, not written after the sweep.
            inner.write_behind.flushed().await;
            inner
                .publish(BusMessage::flush_all(inner.instance).encode())
                .await;
            let pattern = format!("{}*", inner.keys.namespace());
            // Only what this cache writes: the bus stream stays (it is how other instances
            // catch up), and so does what other parts of a service keep under the namespace.
            match &inner.l2 {
                Some(l2) => {
                    l2.unlink_matching(&pattern, |key| inner.keys.owns(key))
                        .await
                }
                None => Ok(0),
            }
        }))
    }

    async fn invalidate(
        &self,
        invalidation: Invalidation,
        source: InvalidationSource,
        written: Option<Written>,
        here: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> InvalidationReport {
        let mut keys = invalidation.keys;
        let groups = &invalidation.groups;
        // A tag's keys: those its words enumerate, and the indexed ones this instance may
        // hold; those other instances cached are found in Redis, through the tag's index.
        let schema = self.keys.schema();
        let mut indexed: Vec<Tag> = Vec::new();
        for tag in &invalidation.tags {
            schema.enumerate(tag, &mut keys);
            if schema.has_index(tag) {
                keys.extend(self.tag_index.take(tag));
                indexed.push(*tag);
            }
        }
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        keys.retain(|k| seen.insert(*k));
        // Other instances hear of it (not of what they told us: no echo; nor of what the
        // database told every instance's listener already).
        let message = (!matches!(
            source,
            InvalidationSource::Bus | InvalidationSource::Database
        ))
        .then(|| {
            BusMessage {
                instance: self.instance,
                sent_ms: unix_millis(),
                entity: Some(invalidation.entity),
                groups: groups.clone(),
                // A tag's index stands for all its indexed keys, those an instance could not
                // list in Redis included.
                keys: keys
                    .iter()
                    .map(|k| self.keys.render(k))
                    .chain(indexed.iter().map(|tag| self.keys.tag_index(tag)))
                    .collect(),
                all: false,
            }
            .encode()
        });

        // One Redis script, one round trip: the invalidation epochs (batched installs on
        // every instance check them), every key (a load's lease marker with it), the keys
        // the tags' indexes list, and the bus message. A load in flight then cannot write its
        // value to Redis (its marker is gone), and a batched install whose read began before
        // this write does not land. The L1 removals below run meanwhile: the keys are marked
        // in flight first (see `pending.rs`), so no read here trusts Redis for them until the
        // script has answered; when Redis does not take it, they are owed before the marks
        // go, and the message is owed.
        let in_flight = self
            .l2
            .is_some()
            .then(|| self.pending.begin(&keys, &indexed));
        let l2_part = async {
            let Some(l2) = &self.l2 else {
                return (0, None);
            };
            let epochs: Vec<String> = if groups.is_empty() {
                vec![self.keys.epoch_key(None)]
            } else {
                groups
                    .iter()
                    .map(|g| self.keys.epoch_key(Some(g)))
                    .collect()
            };
            let doomed: Vec<String> = keys.iter().map(|k| self.keys.render(k)).collect();
            let indexes: Vec<String> = indexed.iter().map(|t| self.keys.tag_index(t)).collect();
            let publish = message.as_deref().map(|payload| self.bus_message(payload));
            let token = self.token();
            match l2
                .invalidate(
                    &epochs,
                    (&token, EPOCH_TTL),
                    &doomed,
                    &indexes,
                    publish.as_ref(),
                )
                .await
            {
                Ok(members) => {
                    if let Some(publish) = &publish {
                        self.stream_renewed(publish);
                    }
                    let found = members
                        .iter()
                        .filter_map(|m| self.keys.parse(m).ok())
                        .filter(|key| !seen.contains(key))
                        .count();
                    (found, None)
                }
                Err(e) => {
                    self.pending.add(keys.iter().copied(), &indexed);
                    if let Some(payload) = &message {
                        self.pending.owe_publish(payload.clone());
                    }
                    (0, Some(e.kind))
                }
            }
        };

        // What this instance serves: clear, then the written row (its guard counts only
        // local removals, so it need not wait for Redis), then `here` hears of it.
        let l1_part = async {
            self.drop_from_l1(&keys, groups).await;
            if let Some(written) = written {
                // An invalidation that names no group moved the global epoch itself.
                self.cache_written(written, &keys, u64::from(groups.is_empty()))
                    .await;
            }
            if let Some(here) = here {
                // Its receiver may have gone (the caller hung up): nothing to tell then.
                let _ = here.send(());
            }
        };
        let ((pages_found, l2_failure), ()) = tokio::join!(l2_part, l1_part);
        let report_keys = keys.len() + pages_found;
        if let Some(kind) = l2_failure {
            // Every write while Redis fails: one line per interval (the L2 errors and the
            // owed invalidations are counted).
            static NOT_IN_L2: LogThrottle = LogThrottle::new(LOG_INTERVAL);
            if let Some(suppressed) = NOT_IN_L2.admit() {
                tracing::warn!(
                    entity = invalidation.entity.as_str(),
                    kind = kind.as_str(),
                    suppressed,
                    "invalidation did not reach L2; owed and replayed in the background"
                );
            }
            self.replay_wake.notify_one();
        }
        // Counted once both tiers are done, before the marks go, so whoever waits for them
        // (`flush_l2_writes`) sees it counted.
        self.observer.invalidated(invalidation.entity, source);
        drop(in_flight);
        InvalidationReport {
            keys: report_keys,
            l2_failure,
        }
    }

    /// Publishes a bus message, or owes it when Redis does not take it.
    pub(crate) async fn publish(&self, payload: String) {
        let Some(l2) = &self.l2 else { return };
        if let Err(e) = self.try_publish(l2, &payload).await {
            tracing::debug!(error = %e, "bus message not published; owed");
            self.pending.owe_publish(payload);
            self.replay_wake.notify_one();
        }
    }

    /// Publishes a bus message now; `Err` when Redis does not take it.
    pub(super) async fn try_publish(&self, l2: &L2, payload: &str) -> Result<(), L2Error> {
        let message = self.bus_message(payload);
        l2.publish(&message).await?;
        self.stream_renewed(&message);
        Ok(())
    }

    /// `payload` for the bus, renewing the stream's TTL when it is due: on this cache's
    /// first message, then at most once per [`STREAM_RENEWAL_MS`], rather than on every
    /// append (a `PEXPIRE` per write).
    fn bus_message<'a>(&'a self, payload: &'a str) -> Publish<'a> {
        let last = self.stream_renewed_ms.load(Ordering::Relaxed);
        let due = last == 0 || unix_millis().saturating_sub(last) >= STREAM_RENEWAL_MS;
        Publish {
            stream: &self.bus_stream,
            channel: &self.bus_channel,
            payload,
            stream_ttl_ms: if due { crate::bus::STREAM_TTL_MS } else { 0 },
        }
    }

    /// Notes that Redis took `message`, and with it the stream's TTL if it carried one.
    fn stream_renewed(&self, message: &Publish<'_>) {
        if message.stream_ttl_ms != 0 {
            self.stream_renewed_ms
                .store(unix_millis(), Ordering::Relaxed);
        }
    }
}
