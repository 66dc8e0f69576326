//! The consumer: this instance's member of the consumer group. It reads new entries from
//! every stream of the last day (`XREADGROUP … >`, blocking on a connection of its own),
//! settles them, claims what other consumers left pending too long, and samples the
//! group's pending count and lag.
//!
//! # When Redis fails
//! A failed round is recorded (status `last_error`) and retried after a capped backoff, on
//! a fresh connection. A Redis that lost the group (`NOGROUP`: restarted, or a stream
//! expired) has it recreated from id 0 on the streams that still exist; streams that are
//! gone leave the registry.

use std::time::Duration;

use redis::RedisError;
use redis::streams::StreamReadReply;
use tokio::time::Instant;

use crate::claim::claim;
use crate::config::CallLogConfig;
use crate::conn::Conn;
use crate::settle::{Entry, Settler};
use crate::xinfo::{group_totals, registered};

/// How often the group's pending count and lag are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// First wait after a failed round.
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Longest wait after failed rounds.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Removes a stream from the registry if it no longer exists, atomically, so a stream the
/// append script recreates meanwhile stays registered. KEYS: `[registry, stream]`; returns
/// -1 when the stream exists.
const FORGET_GONE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('ZREM', KEYS[1], KEYS[2])
end
return -1
";

/// The consumer's state.
pub(crate) struct Consumer {
    pub(crate) client: redis::Client,
    pub(crate) config: CallLogConfig,
    pub(crate) settler: Settler,
}

impl Consumer {
    /// Consumes until aborted.
    pub(crate) async fn run(self) {
        // The blocking read's answer may come a whole block late: its connection waits for
        // that on top of the usual response time, and blocks no other command.
        let reader = Conn::new(
            self.client.clone(),
            self.config.command_timeout + self.config.block,
        );
        let conn = Conn::new(self.client.clone(), self.config.command_timeout);
        let mut last_claim = Instant::now();
        let mut last_sample: Option<Instant> = None;
        let mut backoff = BACKOFF_MIN;
        loop {
            match self
                .round(&reader, &conn, &mut last_claim, &mut last_sample)
                .await
            {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(e) => {
                    tracing::debug!(error = %e, "call events: consumer round failed");
                    self.settler.stats.failed(e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One read, and a claim pass and a sample when they are due.
    async fn round(
        &self,
        reader: &Conn,
        conn: &Conn,
        last_claim: &mut Instant,
        last_sample: &mut Option<Instant>,
    ) -> Result<(), RedisError> {
        let config = &self.config;
        let streams = registered(conn, &self.settler.keys, config.stream_ttl).await?;
        if streams.is_empty() {
            // Nothing to block on; the append script registers the first stream. Finding
            // nothing to read is a read all the same (health watches for a stuck consumer).
            self.settler.stats.read_ok();
            tokio::time::sleep(config.block).await;
        } else {
            let read = self.read(reader, conn, &streams).await?;
            if read > 0 && read < config.batch_max && !config.linger.is_zero() {
                // A partial batch means entries trickle in: let them gather, so the next
                // read, its transaction and its acknowledgement carry many at once.
                tokio::time::sleep(config.linger).await;
            }
        }
        if last_claim.elapsed() >= config.claim_every {
            *last_claim = Instant::now();
            claim(
                conn,
                &self.settler,
                &streams,
                &config.consumer,
                config.claim_idle,
                config.batch_max,
            )
            .await?;
        }
        if last_sample.is_none_or(|at| at.elapsed() >= SAMPLE_EVERY) {
            *last_sample = Some(Instant::now());
            let (pending, lag) = group_totals(conn, &streams, &config.group).await?;
            self.settler.stats.group_state(pending, lag);
        }
        self.settler.stats.recovered();
        Ok(())
    }

    /// Reads new entries from `streams` (blocking up to the block time) and settles them.
    /// Reads and settles what is new; how many entries that was.
    async fn read(
        &self,
        reader: &Conn,
        conn: &Conn,
        streams: &[String],
    ) -> Result<usize, RedisError> {
        let config = &self.config;
        let block_ms = u64::try_from(config.block.as_millis()).unwrap_or(u64::MAX);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&config.group)
            .arg(&config.consumer)
            .arg("COUNT")
            .arg(config.batch_max.max(1))
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(streams);
        for _ in streams {
            cmd.arg(">");
        }
        let reply: Option<StreamReadReply> = match reader.query(&cmd).await {
            Ok(reply) => reply,
            Err(e) if e.code() == Some("NOGROUP") => {
                return self.repair(conn, streams).await.map(|()| 0);
            }
            Err(e) => return Err(e),
        };
        self.settler.stats.read_ok();
        let entries: Vec<Entry> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|key| {
                let stream = key.key;
                key.ids.into_iter().map(move |entry| Entry {
                    stream: stream.clone(),
                    id: entry.id,
                    fields: entry.map,
                    deliveries: 1,
                })
            })
            .collect();
        let read = entries.len();
        self.settler.settle(conn, entries).await.map(|()| read)
    }

    /// Recreates the group on every listed stream that lacks it (from id 0: every entry
    /// is delivered, and those applied before are duplicates); drops streams that are gone
    /// from the registry.
    async fn repair(&self, conn: &Conn, streams: &[String]) -> Result<(), RedisError> {
        let forget = redis::Script::new(FORGET_GONE_SCRIPT);
        for stream in streams {
            let mut invocation = forget.prepare_invoke();
            invocation.key(self.settler.keys.registry()).key(stream);
            let forgotten: i64 = conn.invoke(&invocation).await?;
            if forgotten >= 0 {
                continue;
            }
            let created: Result<(), RedisError> = conn
                .query(
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(stream)
                        .arg(&self.config.group)
                        .arg("0"),
                )
                .await;
            match created {
                Ok(()) => tracing::warn!("call events: consumer group recreated on a stream"),
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
