//! Load leases between instances: a miss that finds nothing in Redis writes its marker at
//! the key (`SET NX`); another instance's miss finds the marker and waits for the value
//! instead of loading it too. The marker is the lease prefix, this instance's id and a
//! sequence number, so a load writes its value only over its own marker.

use std::time::{Duration, Instant};

use super::Engine;
use crate::l2::{GetOrLease, IndexEntry, L2, LEASE_MARKER_PREFIX};

/// How often a caller waiting on another instance's load looks for its value.
const LEASE_POLL_MIN: Duration = Duration::from_millis(1);
const LEASE_POLL_MAX: Duration = Duration::from_millis(25);

impl Engine {
    /// The marker of one load's lease: the lease prefix, this instance's id and a sequence
    /// number.
    pub(super) fn lease_marker(&self) -> String {
        format!("{LEASE_MARKER_PREFIX}{}", self.token())
    }

    /// The load lease of `redis_key` over its value (which is not trusted); the marker, or
    /// `None` when another load holds the key or Redis fails.
    pub(super) async fn take_lease(
        &self,
        l2: &L2,
        redis_key: &str,
        index: &[IndexEntry],
    ) -> Option<String> {
        let marker = self.lease_marker();
        match l2
            .take_lease(redis_key, &marker, self.load_timeout, index)
            .await
        {
            Ok(GetOrLease::Leased) => Some(marker),
            _ => None,
        }
    }

    /// Lets another instance load at once instead of waiting out the lease; a lease that
    /// expired and went to another load meanwhile is left alone.
    pub(super) async fn release_lease(&self, redis_key: Option<&str>, marker: Option<&str>) {
        if let (Some(l2), Some(redis_key), Some(marker)) = (&self.l2, redis_key, marker) {
            let _ = l2.release_lease(redis_key, marker).await;
        }
    }

    /// Waits, polling with a growing interval, for another instance's load of `redis_key`
    /// to land. Each poll is the miss command again, so a lease that went without its value
    /// (an invalidation deleted it, and with it the load's write) is taken here at once
    /// instead of waited out. Gives up after half the load timeout (the caller then loads
    /// itself, within the other half): a lease nobody holds any more (taken by a command
    /// that timed out on its sender's side and ran when Redis woke up) costs one wait, not a
    /// failed read. `Busy` when it gave up, or Redis failed: the caller loads without a lease.
    pub(super) async fn await_value(
        &self,
        l2: &L2,
        redis_key: &str,
        marker: &str,
        index: &[IndexEntry],
    ) -> GetOrLease {
        let deadline = Instant::now() + self.load_timeout / 2;
        let mut pause = LEASE_POLL_MIN;
        while Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            match l2
                .get_or_lease(redis_key, marker, self.load_timeout, index)
                .await
            {
                Ok(GetOrLease::Busy) => {}
                Ok(found) => return found,
                Err(_) => return GetOrLease::Busy,
            }
            pause = (pause * 2).min(LEASE_POLL_MAX);
        }
        GetOrLease::Busy
    }
}
