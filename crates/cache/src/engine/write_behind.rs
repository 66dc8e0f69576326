//! Write-behind of loaded values: a miss hands its lease-guarded `SET` to one task and
//! returns with its value; the task sends whatever has queued meanwhile in one script call.
//!
//! Under load many misses share a round trip (and the syscalls on both ends): while values
//! keep coming (the last call went out less than [`BUSY`] ago) the task yields to the
//! runtime [`GATHER_YIELDS`] times before each call, so misses finishing on the other
//! workers meanwhile join it. It never waits on a timer: another instance waiting for one of
//! these values polls for it from 1 ms on, doubling, and with a 1 ms linger two instances
//! ran at 0.66× the ops/s of one in the comparison (`tiercache-x2`; 0.81× with the yields,
//! medians of three alternating runs). When idle a value is sent at once, one round trip
//! after its load.
//!
//! Until the write lands, the load's lease marker stays at the key, so another instance's
//! miss waits for the value instead of loading it, and an invalidation in between deletes
//! the key, marker included, so the write does not land. A full queue does not drop a
//! value: its miss writes it itself.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Engine;
use crate::l2::StoredValue;
use crate::outstanding::Outstanding;
use crate::schema::CacheKey;

/// Values waiting for the task; past this, a miss writes its value itself.
const QUEUE: usize = 4096;
/// Writes sent in one script call at most.
const MAX_BATCH: usize = 128;
/// How many times a busy task yields to the runtime, gathering values, before a call.
const GATHER_YIELDS: usize = 4;
/// Values arriving within this of the last call mean the task is busy, and gathers.
const BUSY: Duration = Duration::from_millis(5);

/// One loaded value for Redis, under its load's lease.
pub(crate) struct QueuedSet {
    /// The key, to resolve an owed invalidation once the fresh value has replaced it.
    pub key: CacheKey,
    /// Whether an invalidation of the key was owed when it loaded.
    pub owed: bool,
    /// The key as Redis holds it.
    pub redis_key: String,
    /// The envelope.
    pub bytes: Vec<u8>,
    /// Its Redis TTL.
    pub ttl: Duration,
    /// This load's lease marker, which the value replaces.
    pub lease: String,
}

/// The queue's sending end, and how much in it is not sent yet.
pub(crate) struct WriteBehind {
    tx: mpsc::Sender<QueuedSet>,
    unsent: Outstanding,
}

impl WriteBehind {
    /// A queue, and the receiving end for [`run`].
    pub fn new() -> (Self, mpsc::Receiver<QueuedSet>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let queue = WriteBehind {
            tx,
            unsent: Outstanding::new(),
        };
        (queue, rx)
    }

    /// Queues `set`; gives it back when the queue is full (or its task has stopped).
    pub fn queue(&self, set: QueuedSet) -> Option<QueuedSet> {
        self.unsent.add(1);
        match self.tx.try_send(set) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(set) | mpsc::error::TrySendError::Closed(set)) => {
                self.sent(1);
                Some(set)
            }
        }
    }

    /// Waits until every write queued before the call has been sent (landed or refused).
    pub async fn flushed(&self) {
        self.unsent.zero().await;
    }

    fn sent(&self, n: usize) {
        self.unsent.done(n);
    }
}

/// A write on its way to Redis outside the queue (a batched read's install), counted until it
/// drops, so `flushed` waits for it too.
pub(crate) struct Unsent(Arc<Engine>);

impl Unsent {
    /// Counts one write for `cache`.
    pub fn new(cache: &Arc<Engine>) -> Self {
        cache.write_behind.unsent.add(1);
        Unsent(Arc::clone(cache))
    }

    /// The cache it is counted for.
    pub fn cache(&self) -> &Engine {
        &self.0
    }
}

impl Drop for Unsent {
    fn drop(&mut self) {
        self.0.write_behind.sent(1);
    }
}

/// The task: takes what has queued (up to [`MAX_BATCH`], gathering more when busy),
/// sends it in one script call, and again. It holds only a `Weak`, and the cache aborts it
/// on drop.
pub(crate) async fn run(cache: Weak<Engine>, mut rx: mpsc::Receiver<QueuedSet>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut last_call: Option<Instant> = None;
    loop {
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        if batch.len() < MAX_BATCH && last_call.is_some_and(|at| at.elapsed() < BUSY) {
            for _ in 0..GATHER_YIELDS {
                tokio::task::yield_now().await;
                while batch.len() < MAX_BATCH {
                    let Ok(set) = rx.try_recv() else { break };
                    batch.push(set);
                }
            }
        }
        last_call = Some(Instant::now());
        let Some(inner) = cache.upgrade() else {
            return;
        };
        send(&inner, &batch).await;
        inner.write_behind.sent(batch.len());
        batch.clear();
    }
}

/// Sends `sets` in one script call; an owed invalidation whose key a fresh value replaced is
/// resolved. Also how a miss writes its value itself when the queue is full.
pub(crate) async fn send(inner: &Engine, sets: &[QueuedSet]) {
    let Some(l2) = &inner.l2 else { return };
    // Absorbed: a value missing from L2 costs a later load, nothing more.
    let values: Vec<StoredValue<'_>> = sets
        .iter()
        .map(|set| StoredValue {
            key: &set.redis_key,
            bytes: &set.bytes,
            ttl: set.ttl,
            lease: &set.lease,
        })
        .collect();
    if let Ok(landed) = l2.set_over_markers(&values).await {
        for (set, landed) in sets.iter().zip(landed) {
            if set.owed && landed {
                // The fresh value replaced whatever stale copy a failed delete left.
                inner.pending.resolve(&set.key);
            }
        }
    }
}
