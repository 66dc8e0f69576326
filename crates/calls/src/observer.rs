//! What the call log reports, for the monitoring crate to count (it knows no Redis here).

/// Why events were dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The in-process queue was full (Redis slow or down for long).
    QueueFull,
    /// The service stopped with events still queued and Redis not taking them.
    Shutdown,
}

impl DropReason {
    /// Every reason, for metric labels.
    pub const ALL: [DropReason; 2] = [DropReason::QueueFull, DropReason::Shutdown];

    /// Its label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Receives what the call log does. Every method has an empty default.
pub trait CallLogObserver: Send + Sync + 'static {
    /// `n` events were appended to their streams (or, without Redis, handed to the store).
    fn published(&self, n: u64) {
        let _ = n;
    }
    /// `n` events were dropped, never to be applied.
    fn dropped(&self, reason: DropReason, n: u64) {
        let _ = (reason, n);
    }
    /// An append to Redis failed; the batch stays queued.
    fn append_failed(&self) {}
    /// `n` events were applied to sessions for the first time.
    fn applied(&self, n: u64) {
        let _ = n;
    }
    /// `n` events were delivered again and changed nothing (already applied).
    fn duplicates(&self, n: u64) {
        let _ = n;
    }
    /// `n` entries a consumer left pending too long were claimed by this one.
    fn claimed(&self, n: u64) {
        let _ = n;
    }
    /// `n` entries went to the dead-letter stream.
    fn dead_lettered(&self, n: u64) {
        let _ = n;
    }
    /// Events waiting in this instance's queue now.
    fn queue_depth(&self, depth: usize) {
        let _ = depth;
    }
    /// The consumer group across today's streams: entries delivered but not acknowledged,
    /// and entries not yet delivered to any consumer.
    fn group_state(&self, pending: u64, lag: u64) {
        let _ = (pending, lag);
    }
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopCallObserver;

impl CallLogObserver for NoopCallObserver {}
