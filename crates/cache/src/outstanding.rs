//! A count of work on its way to Redis (loaded values queued, invalidations in flight) that
//! can be awaited until it is back to zero: `flush_l2_writes` waits on two of them.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// How many are on their way, and a wake-up each time that comes back to zero.
pub(crate) struct Outstanding {
    count: AtomicUsize,
    zero: Notify,
}

impl Outstanding {
    /// None on its way.
    pub fn new() -> Self {
        Outstanding {
            count: AtomicUsize::new(0),
            zero: Notify::new(),
        }
    }

    /// `n` more on their way.
    pub fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::AcqRel);
    }

    /// `n` of them done; wakes the waiters when none is left.
    pub fn done(&self, n: usize) {
        if self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.zero.notify_waiters();
        }
    }

    /// Whether any is on its way (a cheap check).
    pub fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Waits until none is on its way.
    pub async fn zero(&self) {
        loop {
            // Created before the check: `notify_waiters` wakes a `Notified` from its
            // creation on, so a last one done in between still wakes this.
            let zero = self.zero.notified();
            if !self.any() {
                return;
            }
            zero.await;
        }
    }
}
