//! The bounded in-process queue between `publish` and the drain: pushing never waits, a
//! full queue refuses, and a batch leaves the queue only once it has been written (so a
//! Redis outage holds events, up to the bound, instead of losing them).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, watch};

use crate::event::CallEvent;
use crate::observer::DropReason;

/// Events waiting to be written, oldest first.
pub(crate) struct Queue {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Wakes the drain when events arrive (a permit is kept if it is not waiting).
    ready: Notify,
    /// How many events have left the queue, written or dropped, since it was made.
    settled: watch::Sender<u64>,
}

struct Inner {
    events: VecDeque<CallEvent>,
    /// How many events were accepted since the queue was made.
    pushed: u64,
    /// Set when the call log stops: nothing is accepted any more.
    closed: bool,
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Queue {
        Queue {
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                pushed: 0,
                closed: false,
            }),
            capacity,
            ready: Notify::new(),
            settled: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues `event` and returns the depth now, or why it was dropped.
    pub(crate) fn push(&self, event: CallEvent) -> Result<usize, DropReason> {
        let depth = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(DropReason::Shutdown);
            }
            if inner.events.len() >= self.capacity {
                return Err(DropReason::QueueFull);
            }
            inner.events.push_back(event);
            inner.pushed += 1;
            inner.events.len()
        };
        self.ready.notify_one();
        Ok(depth)
    }

    pub(crate) fn depth(&self) -> usize {
        self.lock().events.len()
    }

    /// The oldest events (at most `max`), left in the queue until [`complete`]d; waits
    /// while the queue is empty.
    ///
    /// [`complete`]: Self::complete
    pub(crate) async fn peek(&self, max: usize) -> Vec<CallEvent> {
        loop {
            {
                let inner = self.lock();
                if !inner.events.is_empty() {
                    return inner.events.iter().take(max.max(1)).cloned().collect();
                }
            }
            self.ready.notified().await;
        }
    }

    /// Takes the `n` oldest events out (written), except `retry`, put back at the head to
    /// go first next time; the depth now. Only the drain calls this, after a `peek`.
    pub(crate) fn complete(&self, n: usize, retry: Vec<CallEvent>) -> usize {
        let (depth, gone) = {
            let mut inner = self.lock();
            let n = n.min(inner.events.len());
            inner.events.drain(..n);
            let gone = n - retry.len().min(n);
            for event in retry.into_iter().rev() {
                inner.events.push_front(event);
            }
            (inner.events.len(), gone as u64)
        };
        self.settled.send_modify(|settled| *settled += gone);
        depth
    }

    /// Empties and closes the queue (the service is stopping); how many events it held.
    pub(crate) fn abandon(&self) -> usize {
        let n = {
            let mut inner = self.lock();
            inner.closed = true;
            let n = inner.events.len();
            inner.events.clear();
            n
        };
        self.settled.send_modify(|settled| *settled += n as u64);
        n
    }

    /// Waits until every event accepted so far has left the queue.
    pub(crate) async fn flushed(&self) {
        let target = self.lock().pushed;
        let mut settled = self.settled.subscribe();
        // The sender lives as long as `self`, so the wait ends only by reaching the target.
        let _ = settled.wait_for(|settled| *settled >= target).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn event() -> CallEvent {
        CallEvent::started("CA".into(), 1, Some(1), "+1", "lead", Utc::now())
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_batch_stays_until_complete() {
        let queue = Queue::new(3);
        for depth in 1..=3 {
            assert_eq!(queue.push(event()).unwrap(), depth);
        }
        assert_eq!(queue.push(event()), Err(DropReason::QueueFull));
        let batch = queue.peek(2).await;
        assert_eq!(batch.len(), 2);
        assert_eq!(queue.depth(), 3, "peeking takes nothing out");
        // The second failed: it goes back to the head.
        assert_eq!(queue.complete(2, vec![batch[1].clone()]), 2);
        assert_eq!(queue.peek(1).await[0].id, batch[1].id);
        assert_eq!(queue.abandon(), 2);
        assert_eq!(queue.push(event()), Err(DropReason::Shutdown));
    }

    #[tokio::test]
    async fn flushed_waits_for_what_was_queued_before() {
        let queue = std::sync::Arc::new(Queue::new(10));
        queue.push(event()).unwrap();
        queue.push(event()).unwrap();
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.flushed().await }
        });
        queue.complete(1, Vec::new());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        queue.complete(1, Vec::new());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
