//! Replaying what Redis owes: deletes (keys, tags' indexed keys) and bus messages that did
//! not land while it failed, with capped exponential backoff, until Redis takes them.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::Engine;
use crate::bus::BusMessage;
use crate::l2::L2ErrorKind;

/// Backoff between replays of invalidations owed to Redis.
const REPLAY_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Kept well under the recovery period (`CacheConfig::DEFAULT_RECOVERY`), so what an instance
/// owes reaches Redis before the others trust it fully again.
const REPLAY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Keys deleted per replay command.
const REPLAY_BATCH: usize = 256;

impl Engine {
    /// Replays owed deletes once; `Err` when Redis still fails.
    async fn replay_owed(&self) -> Result<(), L2ErrorKind> {
        let Some(l2) = &self.l2 else {
            return Ok(());
        };
        let (keys, tags) = self.pending.snapshot(REPLAY_BATCH);
        let tags_done = tags.len();
        for tag in tags {
            let index_key = self.keys.tag_index(&tag);
            let mut doomed = l2.members(&index_key).await.map_err(|e| e.kind)?;
            // Only keys of this namespace: a member is deleted as it is written.
            doomed.retain(|m| m.starts_with(self.keys.namespace()));
            doomed.push(index_key);
            l2.del(&doomed).await.map_err(|e| e.kind)?;
            self.pending.resolve_tag(&tag);
        }
        if !keys.is_empty() {
            let rendered: Vec<String> = keys.iter().map(|k| self.keys.render(k)).collect();
            l2.del(&rendered).await.map_err(|e| e.kind)?;
            for key in &keys {
                self.pending.resolve(key);
            }
        }
        let (publishes, overflowed) = self.pending.publishes();
        if overflowed {
            let all = BusMessage::flush_all(self.instance);
            self.try_publish(l2, &all.encode())
                .await
                .map_err(|e| e.kind)?;
            self.pending.published(0, true);
        }
        let mut published = 0;
        for payload in &publishes {
            let sent = self.try_publish(l2, payload).await;
            // In order: what went out is no longer owed, the rest stays for the next round.
            self.pending.published(usize::from(sent.is_ok()), false);
            sent.map_err(|e| e.kind)?;
            published += 1;
        }
        self.observer
            .owed_replayed(keys.len() + tags_done + published);
        Ok(())
    }
}

/// The background task that replays owed L2 deletes with capped exponential backoff.
/// It holds only a `Weak`, and the cache aborts it on drop.
pub(super) async fn run(cache: Weak<Engine>, wake: Arc<Notify>) {
    let mut backoff = REPLAY_BACKOFF_MIN;
    loop {
        let Some(inner) = cache.upgrade() else {
            return;
        };
        if inner.pending.len() == 0 {
            backoff = REPLAY_BACKOFF_MIN;
            // Not holding the cache while idle: it may be dropped meanwhile (and abort us).
            drop(inner);
            wake.notified().await;
            continue;
        }
        match inner.replay_owed().await {
            Ok(()) => {
                tracing::info!(
                    left = inner.pending.len(),
                    "replayed invalidations owed to L2"
                );
                backoff = REPLAY_BACKOFF_MIN;
            }
            Err(kind) => {
                tracing::debug!(
                    kind = kind.as_str(),
                    "owed invalidations still cannot reach L2"
                );
                backoff = (backoff * 2).min(REPLAY_BACKOFF_MAX);
            }
        }
        drop(inner);
        tokio::time::sleep(backoff).await;
    }
}
