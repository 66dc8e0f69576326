//! What the call log did, counted once: each report bumps this instance's counters (for
//! [`CallLog::status`](crate::CallLog::status)) and goes on to the observer, so the health
//! route and the metrics never disagree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};

use crate::observer::{CallLogObserver, DropReason};

/// Counters and the observer behind them.
pub(crate) struct Stats {
    observer: Arc<dyn CallLogObserver>,
    published: AtomicU64,
    dropped: AtomicU64,
    applied: AtomicU64,
    dead_lettered: AtomicU64,
    state: Mutex<State>,
}

/// What is not a counter: the last failure and the consumer's last sample.
#[derive(Default)]
struct State {
    last_error: Option<String>,
    pending: u64,
    lag: u64,
    last_read_at: Option<DateTime<Utc>>,
}

/// The consumer's group state as last sampled.
pub(crate) struct GroupSample {
    pub(crate) pending: u64,
    pub(crate) lag: u64,
    pub(crate) last_read_at: Option<DateTime<Utc>>,
}

impl Stats {
    pub(crate) fn new(observer: Arc<dyn CallLogObserver>) -> Stats {
        Stats {
            observer,
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn published(&self, n: u64) {
        if n > 0 {
            self.published.fetch_add(n, Ordering::Relaxed);
            self.observer.published(n);
        }
    }

    pub(crate) fn dropped(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            self.observer.dropped(reason, n);
        }
    }

    pub(crate) fn applied(&self, n: u64) {
        if n > 0 {
            self.applied.fetch_add(n, Ordering::Relaxed);
            self.observer.applied(n);
        }
    }

    pub(crate) fn duplicates(&self, n: u64) {
        if n > 0 {
            self.observer.duplicates(n);
        }
    }

    pub(crate) fn claimed(&self, n: u64) {
        if n > 0 {
            self.observer.claimed(n);
        }
    }

    pub(crate) fn dead_lettered(&self, n: u64) {
        if n > 0 {
            self.dead_lettered.fetch_add(n, Ordering::Relaxed);
            self.observer.dead_lettered(n);
        }
    }

    pub(crate) fn append_failed(&self, error: String) {
        self.observer.append_failed();
        self.failed(error);
    }

    pub(crate) fn queue_depth(&self, depth: usize) {
        self.observer.queue_depth(depth);
    }

    /// A failure of the drain or the consumer, kept until [`recovered`](Self::recovered).
    /// Its text is a driver's error: no key, no event data.
    pub(crate) fn failed(&self, error: String) {
        self.state().last_error = Some(error);
    }

    pub(crate) fn recovered(&self) {
        self.state().last_error = None;
    }

    pub(crate) fn read_ok(&self) {
        self.state().last_read_at = Some(Utc::now());
    }

    pub(crate) fn group_state(&self, pending: u64, lag: u64) {
        {
            let mut state = self.state();
            state.pending = pending;
            state.lag = lag;
        }
        self.observer.group_state(pending, lag);
    }

    pub(crate) fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.published.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.applied.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.state().last_error.clone()
    }

    pub(crate) fn group(&self) -> GroupSample {
        let state = self.state();
        GroupSample {
            pending: state.pending,
            lag: state.lag,
            last_read_at: state.last_read_at,
        }
    }
}
