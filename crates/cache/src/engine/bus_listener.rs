//! The bus subscriber: one task per cache, on a Redis connection of its own.
//!
//! It subscribes, then catches up from the stream since the last id it applied (or flushes
//! L1 when that is no longer possible), then applies messages as they arrive; when the
//! subscription drops it reconnects with capped backoff and catches up again. Messages seen
//! twice (by the catch-up and by the subscription) are applied once, by id.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::streams::StreamRangeReply;

use super::Engine;
use crate::bus::{BusMessage, RECONNECT_MAX, RECONNECT_MIN, StreamId};
use crate::clock::age_since;
use crate::l2::L2Error;
use crate::observer::InvalidationSource;
use crate::schema::CacheKey;

/// Bound on connecting and subscribing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Stream entries read per catch-up command; catch-up stops after this many batches.
const CATCH_UP_BATCH: usize = 1_000;
const CATCH_UP_BATCHES: usize = 100;

/// Runs until the cache is dropped (which also aborts it).
pub(crate) async fn listen(cache: Weak<Engine>) {
    let mut last: Option<StreamId> = None;
    let mut backoff = RECONNECT_MIN;
    let mut lost_before = false;
    // Whether the last write probe failed (see `confirm_bus`).
    let mut refused = false;
    let probe_key = {
        let Some(inner) = cache.upgrade() else { return };
        format!("{}:probe", inner.bus_channel)
    };
    loop {
        let (client, channel, heartbeat) = {
            let Some(inner) = cache.upgrade() else { return };
            let Some(l2) = &inner.l2 else { return };
            (
                l2.client().clone(),
                inner.bus_channel.clone(),
                inner.coherence.heartbeat(),
            )
        };
        // Where the stream ends before the first subscription: what is published from then
        // on arrives on the subscription or is caught up from the stream, so nothing sent
        // while subscribing is mistaken for history.
        if last.is_none() {
            let Some(inner) = cache.upgrade() else { return };
            let Some(l2) = &inner.l2 else { return };
            match inner.stream_info(l2).await {
                Ok(info) => last = Some(info.last.unwrap_or(StreamId::ZERO)),
                Err(_) => {
                    drop(inner);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    continue;
                }
            }
        }
        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(CONNECT_TIMEOUT, subscribe).await {
            Ok(Ok(pubsub)) => pubsub,
            _ => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        {
            let Some(inner) = cache.upgrade() else { return };
            if let Err(e) = inner.catch_up(&mut last, !lost_before).await {
                tracing::debug!(error = %e, "bus catch-up failed; retrying");
                drop(inner);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
            // After an outage, other instances may still owe what they could not send.
            let recovered = lost_before || refused;
            refused = !inner.confirm_bus(&probe_key, recovered).await;
        }
        backoff = RECONNECT_MIN;
        lost_before = true;
        let (mut sink, mut messages) = pubsub.split();
        let mut beat = tokio::time::interval(heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let Some(inner) = cache.upgrade() else { return };
                    inner.apply_message(&message, &mut last).await;
                }
                _ = beat.tick() => {
                    // A PING answered on the subscription: every message published before it
                    // has arrived, and is applied below before the feed is confirmed. Any reply
                    // will do: on a RESP2 subscription Redis answers `["pong", ""]`, not `PONG`.
                    let pong =
                        tokio::time::timeout(heartbeat * 2, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                    let Some(inner) = cache.upgrade() else { return };
                    while let Some(Some(message)) = messages.next().now_or_never() {
                        inner.apply_message(&message, &mut last).await;
                    }
                    refused = !inner.confirm_bus(&probe_key, refused).await;
                }
            }
        }
        tracing::warn!("invalidation bus subscription lost; reconnecting");
        tokio::time::sleep(backoff).await;
    }
}

impl Engine {
    /// Confirms the bus feed (as recovered after an outage when `recovered`) if Redis takes
    /// a write as an invalidation would: a bus that delivers every message is no use while
    /// the writers' messages are refused. Returns whether it did.
    async fn confirm_bus(&self, probe_key: &str, recovered: bool) -> bool {
        let (Some(l2), Some(feed)) = (&self.l2, &self.bus_feed) else {
            return true;
        };
        if let Err(e) = l2.probe_writes(probe_key).await {
            if !recovered {
                tracing::warn!(
                    error = %e,
                    "Redis refuses writes: invalidations cannot reach other instances; \
                     L1 serves only values younger than half the staleness bound"
                );
            }
            return false;
        }
        if recovered {
            feed.recovered();
        } else {
            feed.confirm();
        }
        true
    }

    /// Applies one message as the subscription delivered it (`{stream id} {payload}`).
    async fn apply_message(&self, message: &redis::Msg, last: &mut Option<StreamId>) {
        let Ok(text) = message.get_payload::<String>() else {
            return;
        };
        if let Some((id, payload)) = text.split_once(' ') {
            self.apply_bus(StreamId::parse(id), payload, last).await;
        }
    }

    /// Applies what the stream holds after `last`, or flushes L1 if some of it is gone;
    /// `first` on the first subscription, `last` being where the stream ended before it.
    async fn catch_up(&self, last: &mut Option<StreamId>, first: bool) -> Result<(), L2Error> {
        let Some(l2) = &self.l2 else { return Ok(()) };
        let info = self.stream_info(l2).await?;
        let seen = last.unwrap_or(StreamId::ZERO);
        // What was missed cannot be known when the stream is gone (a Redis restarted empty,
        // or the stream expired) or trimmed past what this instance last applied. Gone is a
        // gap even when this instance had applied nothing yet: entries added while it was
        // away may have gone with the stream.
        let gap = if !info.exists {
            // Still no stream since before the first subscription: nothing to miss.
            !(first && seen == StreamId::ZERO)
        } else if seen == StreamId::ZERO {
            // Nothing applied yet: every entry since this instance started counts.
            info.entries_added > info.length
        } else {
            // The last entry applied is gone: trimming reached it, and perhaps beyond.
            let mut cmd = redis::cmd("XRANGE");
            let at = seen.render();
            cmd.arg(&self.bus_stream)
                .arg(&at)
                .arg(&at)
                .arg("COUNT")
                .arg(1);
            let still: StreamRangeReply = l2.command("xrange", &cmd).await?;
            still.ids.is_empty()
        };
        if gap {
            tracing::warn!("invalidation bus gap: flushing L1");
            self.clear_l1();
            self.observer.bus_gap();
            *last = Some(info.last.unwrap_or(StreamId::ZERO));
            return Ok(());
        }
        for _ in 0..CATCH_UP_BATCHES {
            let from = format!("({}", last.unwrap_or(StreamId::ZERO).render());
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(&self.bus_stream)
                .arg(from)
                .arg("+")
                .arg("COUNT")
                .arg(CATCH_UP_BATCH);
            let reply: StreamRangeReply = l2.command("xrange", &cmd).await?;
            if reply.ids.is_empty() {
                break;
            }
            for entry in &reply.ids {
                if let Some(payload) = entry.get::<String>("m") {
                    self.apply_bus(StreamId::parse(&entry.id), &payload, last)
                        .await;
                }
            }
        }
        Ok(())
    }

    /// `XINFO STREAM`: whether it exists, its last id, its length and entries ever added.
    async fn stream_info(&self, l2: &crate::l2::L2) -> Result<StreamInfo, L2Error> {
        // XINFO on a missing key is an error reply; asking first keeps it out of the counts.
        let exists: bool = l2
            .command("exists", redis::cmd("EXISTS").arg(&self.bus_stream))
            .await?;
        if !exists {
            return Ok(StreamInfo {
                exists: false,
                last: None,
                length: 0,
                entries_added: 0,
            });
        }
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("STREAM").arg(&self.bus_stream);
        match l2
            .command::<HashMap<String, redis::Value>>("xinfo", &cmd)
            .await
        {
            Ok(fields) => {
                let id = |name: &str| match fields.get(name) {
                    Some(redis::Value::BulkString(bytes)) => {
                        StreamId::parse(&String::from_utf8_lossy(bytes))
                    }
                    Some(redis::Value::SimpleString(text)) => StreamId::parse(text),
                    _ => None,
                };
                let int = |name: &str| match fields.get(name) {
                    Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                    _ => 0,
                };
                Ok(StreamInfo {
                    exists: true,
                    last: id("last-generated-id"),
                    length: int("length"),
                    entries_added: int("entries-added"),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Applies one message unless it was applied already or is this instance's own.
    pub(crate) async fn apply_bus(
        &self,
        id: Option<StreamId>,
        payload: &str,
        last: &mut Option<StreamId>,
    ) {
        if let (Some(id), Some(seen)) = (id, *last)
            && id <= seen
        {
            return;
        }
        if id.is_some() {
            *last = id;
        }
        if BusMessage::sender(payload) == Some(self.instance) {
            return;
        }
        let Some(message) = BusMessage::decode(payload, self.keys.schema()) else {
            return;
        };
        self.observer.bus_received(age_since(message.sent_ms));
        if message.all {
            self.clear_l1();
            for entity in self.keys.schema().entities() {
                self.observer.invalidated(entity, InvalidationSource::Bus);
            }
            return;
        }
        let mut keys = message.cache_keys(&self.keys);
        for tag in message.tags(&self.keys) {
            keys.extend(self.tag_index.take(&tag));
        }
        // As a local invalidation: a load in flight finishes first.
        self.drop_from_l1(&keys, &message.groups).await;
        // A sender older than the entity token: counted under its first key's entity.
        if let Some(entity) = message
            .entity
            .or_else(|| keys.first().map(CacheKey::entity))
        {
            self.observer.invalidated(entity, InvalidationSource::Bus);
        }
    }
}

struct StreamInfo {
    exists: bool,
    last: Option<StreamId>,
    length: u64,
    entries_added: u64,
}
