//! What the consumer does with entries it was delivered (read or claimed): applies them,
//! acknowledges those whose apply committed, and sends one that keeps failing to the
//! dead-letter stream, acknowledged in the same transaction.

use std::collections::HashMap;
use std::sync::Arc;

use redis::{RedisError, Value};

use crate::conn::Conn;
use crate::event::CallEvent;
use crate::stats::Stats;
use crate::store::{Applied, SessionStore};
use crate::streams::{DEAD_MAXLEN, Keys, decode};

/// One delivered entry.
pub(crate) struct Entry {
    /// Its stream.
    pub(crate) stream: String,
    /// Its id in the stream.
    pub(crate) id: String,
    /// Its fields, as stored.
    pub(crate) fields: HashMap<String, Value>,
    /// How many times it has been delivered, this time included.
    pub(crate) deliveries: u64,
}

/// Applies, acknowledges and dead-letters entries for one consumer group.
pub(crate) struct Settler {
    pub(crate) keys: Keys,
    pub(crate) store: SessionStore,
    pub(crate) stats: Arc<Stats>,
    pub(crate) group: String,
    pub(crate) max_deliveries: u64,
}

/// What became of an entry.
enum Fate {
    /// Applied (now or before): acknowledged.
    Ack,
    /// Failed: left pending, to be claimed and tried again.
    Retry,
    /// Failed for the last time: dead-lettered, with why.
    Dead(String),
}

impl Settler {
    /// Settles `entries`. An entry not acknowledged stays pending on this consumer, to be
    /// claimed (by any consumer, this one too) once idle long enough.
    ///
    /// An apply that failed while PostgreSQL is unreachable is not the entry's fault: it is
    /// retried however often it was delivered, so an outage never fills the dead letters.
    pub(crate) async fn settle(&self, conn: &Conn, entries: Vec<Entry>) -> Result<(), RedisError> {
        if entries.is_empty() {
            return Ok(());
        }
        let decoded: Vec<Result<CallEvent, String>> = entries
            .iter()
            .map(|e| decode(&self.keys, &e.stream, &e.fields).map_err(|d| d.to_string()))
            .collect();
        let events: Vec<CallEvent> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .cloned()
            .collect();
        let mut outcomes = self.store.apply(&events).await.into_iter();
        let (mut new, mut duplicates) = (0, 0);
        let mut fates = Vec::with_capacity(entries.len());
        let mut apply_failed = false;
        for (entry, decoded) in entries.iter().zip(&decoded) {
            let failure = match decoded {
                Err(why) => Some(why.clone()),
                Ok(_) => match outcomes.next() {
                    Some(Ok(Applied::New(_))) => {
                        new += 1;
                        None
                    }
                    Some(Ok(Applied::Duplicate)) => {
                        duplicates += 1;
                        None
                    }
                    Some(Err(e)) => {
                        apply_failed = true;
                        Some(format!("apply_failed: {e}"))
                    }
                    None => Some("apply_failed".to_owned()),
                },
            };
            fates.push(match failure {
                None => Fate::Ack,
                Some(why) if entry.deliveries >= self.max_deliveries => Fate::Dead(why),
                Some(_) => Fate::Retry,
            });
        }
        self.stats.applied(new);
        self.stats.duplicates(duplicates);
        if apply_failed && !self.store.reachable().await {
            for (fate, decoded) in fates.iter_mut().zip(&decoded) {
                if decoded.is_ok() && matches!(fate, Fate::Dead(_)) {
                    *fate = Fate::Retry;
                }
            }
            self.stats
                .failed("call sessions: PostgreSQL unreachable".to_owned());
        }
        self.write(conn, &entries, &fates).await
    }

    /// Acknowledges and dead-letters in one atomic round trip (`MULTI`/`EXEC`), so a
    /// dead-lettered entry is acknowledged exactly when it is recorded.
    async fn write(
        &self,
        conn: &Conn,
        entries: &[Entry],
        fates: &[Fate],
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut acks: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut dead = 0;
        for (entry, fate) in entries.iter().zip(fates) {
            match fate {
                Fate::Retry => continue,
                Fate::Ack => {}
                Fate::Dead(why) => {
                    dead += 1;
                    let cmd = pipe
                        .cmd("XADD")
                        .arg(self.keys.dead())
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(DEAD_MAXLEN)
                        .arg("*")
                        .arg("stream")
                        .arg(&entry.stream)
                        .arg("entry")
                        .arg(&entry.id)
                        .arg("error")
                        .arg(why)
                        .arg("deliveries")
                        .arg(entry.deliveries);
                    // The entry as it was, so an operator can replay it (its data is what
                    // the stream held: phones already masked).
                    let mut names: Vec<&String> = entry.fields.keys().collect();
                    names.sort();
                    for name in names {
                        if let Some(Value::BulkString(bytes)) = entry.fields.get(name) {
                            cmd.arg(format!("field:{name}")).arg(bytes.as_slice());
                        }
                    }
                    cmd.ignore();
                }
            }
            acks.entry(entry.stream.as_str())
                .or_default()
                .push(entry.id.as_str());
        }
        if acks.is_empty() {
            return Ok(());
        }
        for (stream, ids) in &acks {
            pipe.cmd("XACK")
                .arg(*stream)
                .arg(&self.group)
                .arg(ids)
                .ignore();
        }
        conn.pipe::<()>(&pipe).await?;
        if dead > 0 {
            tracing::warn!(
                entries = dead,
                "call events: dead-lettered after repeated failures"
            );
        }
        self.stats.dead_lettered(dead);
        Ok(())
    }
}
