//! The engine's Redis operations: what each sends (a command, a pipeline or a script from
//! [`scripts`](super::scripts)), always through the breaker and the timeout.

use std::time::Duration;

use super::scripts::{self, is_lease_marker};
use super::{L2, L2Error};

/// A tag's index a key joins when its load takes the lease (the key is the member).
pub(crate) struct IndexEntry {
    pub index_key: String,
    pub ttl: Duration,
}

/// A loaded value for [`L2::set_over_markers`], under its load's lease.
pub(crate) struct StoredValue<'a> {
    pub key: &'a str,
    pub bytes: &'a [u8],
    pub ttl: Duration,
    /// The lease marker the key must still hold.
    pub lease: &'a str,
}

impl L2 {
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
        let script = scripts::take_lease();
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
        let script = scripts::set_guarded();
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
    pub async fn set_over_markers(&self, sets: &[StoredValue<'_>]) -> Result<Vec<bool>, L2Error> {
        let script = scripts::set_over_markers();
        let mut invocation = script.prepare_invoke();
        for set in sets {
            invocation
                .key(set.key)
                .arg(set.bytes)
                .arg(millis(set.ttl))
                .arg(set.lease);
        }
        let landed: Vec<i64> = self.invoke("set_many", &invocation).await?;
        Ok(landed.into_iter().map(|l| l == 1).collect())
    }

    /// One invalidation, in one script (one round trip): each epoch key set to this
    /// invalidation's token (kept for the epoch's ttl; an install whose snapshot saw another
    /// value no longer lands), `DEL` the doomed
    /// keys, then the keys each tag index lists (and the index), then `publish` the bus
    /// message, with those keys appended to its own. Returns the indexes' members.
    pub async fn invalidate(
        &self,
        epochs: &[String],
        epoch: (&str, Duration),
        doomed: &[String],
        indexes: &[String],
        publish: Option<&Publish<'_>>,
    ) -> Result<Vec<String>, L2Error> {
        let script = scripts::invalidate();
        let mut invocation = script.prepare_invoke();
        let (token, ttl) = epoch;
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
                .arg(message.stream_ttl_ms)
                .arg(message.channel),
            None => invocation.arg(0).arg(0).arg("").arg(0).arg(""),
        };
        invocation.arg(token);
        self.invoke("invalidate", &invocation).await
    }

    /// `DEL key` if it still holds this load's `marker` (compare and delete, in one script).
    pub async fn release_lease(&self, key: &str, marker: &str) -> Result<(), L2Error> {
        let script = scripts::release_lease();
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

    /// Appends a bus message to the stream and announces it on the channel, in one script.
    pub async fn publish(&self, message: &Publish<'_>) -> Result<(), L2Error> {
        let mut invocation = scripts::publish().prepare_invoke();
        invocation
            .key(message.stream)
            .arg(crate::bus::STREAM_MAXLEN)
            .arg(message.payload)
            .arg(message.stream_ttl_ms)
            .arg(message.channel);
        self.invoke::<String>("publish", &invocation)
            .await
            .map(|_| ())
    }

    /// Runs a batched read (see `engine/batch`): `epochs` are its epoch keys, `steps` each
    /// step's arguments as [`scripts::batch`] takes them. Each step's value, then each
    /// epoch's.
    pub async fn batch_read(
        &self,
        epochs: &[String],
        steps: &[[String; 5]],
    ) -> Result<Vec<Option<Vec<u8>>>, L2Error> {
        let mut invocation = scripts::batch().prepare_invoke();
        for key in epochs {
            invocation.key(key);
        }
        invocation.arg(steps.len());
        for step in steps {
            for arg in step {
                invocation.arg(arg);
            }
        }
        self.invoke("batch", &invocation).await
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
    /// The stream's new TTL in ms, or 0 to leave it (see `Engine::stream_ttl`).
    pub stream_ttl_ms: u64,
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
