//! The call log's series: events published, dropped, applied, claimed and dead-lettered,
//! the queue, the consumer group's pending entries and lag, and live feed clients.
//!
//! The monitoring crate knows nothing of the call log's crate: the server forwards its
//! observer's events here, and the label sets are this module's enums, so a client can
//! never add a series.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::metrics::{invalid_definition, register};

/// Why call events were dropped (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallDropReason {
    /// The in-process queue was full.
    QueueFull,
    /// The service stopped with events still queued.
    Shutdown,
}

impl CallDropReason {
    /// Every reason, in label order.
    pub const ALL: [CallDropReason; 2] = [CallDropReason::QueueFull, CallDropReason::Shutdown];

    /// Its label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            CallDropReason::QueueFull => "queue_full",
            CallDropReason::Shutdown => "shutdown",
        }
    }
}

/// How a live feed client is connected (the `transport` label). Polling holds no
/// connection, so it is not a client here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FeedTransport {
    /// Server-Sent Events.
    Sse,
    /// A WebSocket.
    Ws,
}

impl FeedTransport {
    /// Every transport, in label order.
    pub const ALL: [FeedTransport; 2] = [FeedTransport::Sse, FeedTransport::Ws];

    /// Its label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            FeedTransport::Sse => "sse",
            FeedTransport::Ws => "ws",
        }
    }
}

/// The call log's metrics, registered with the others (see [`crate::Metrics::call_log`]).
pub struct CallLogMetrics {
    published: IntCounter,
    dropped: Vec<IntCounter>,
    applied: IntCounter,
    duplicates: IntCounter,
    claimed: IntCounter,
    dead_lettered: IntCounter,
    append_failures: IntCounter,
    queue_depth: IntGauge,
    pending: IntGauge,
    lag: IntGauge,
    feed_clients: Vec<IntGauge>,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        r,
        IntCounter::new(name, help).unwrap_or_else(invalid_definition),
    )
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        r,
        IntGauge::new(name, help).unwrap_or_else(invalid_definition),
    )
}

impl CallLogMetrics {
    /// Registers every call log series in `r`, each label combination from the start.
    pub(crate) fn register(r: &Registry) -> Self {
        let dropped = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "tiercache_call_events_dropped_total",
                    "Call events dropped, never to be applied, by reason.",
                ),
                &["reason"],
            )
            .unwrap_or_else(invalid_definition),
        );
        let feed_clients = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "tiercache_call_feed_clients",
                    "Clients following the live call feed now, by transport.",
                ),
                &["transport"],
            )
            .unwrap_or_else(invalid_definition),
        );
        CallLogMetrics {
            published: counter(
                r,
                "tiercache_call_events_published_total",
                "Call events appended to their streams (or, without Redis, handed to the store).",
            ),
            dropped: CallDropReason::ALL
                .iter()
                .map(|reason| dropped.with_label_values(&[reason.as_str()]))
                .collect(),
            applied: counter(
                r,
                "tiercache_call_events_applied_total",
                "Call events applied to call sessions for the first time.",
            ),
            duplicates: counter(
                r,
                "tiercache_call_events_duplicates_total",
                "Call events delivered again that changed nothing (already applied).",
            ),
            claimed: counter(
                r,
                "tiercache_call_events_claimed_total",
                "Stream entries claimed from a consumer that left them pending too long.",
            ),
            dead_lettered: counter(
                r,
                "tiercache_call_events_dead_lettered_total",
                "Stream entries sent to the dead-letter stream after failing too often.",
            ),
            append_failures: counter(
                r,
                "tiercache_call_events_append_failures_total",
                "Batches of call events Redis did not take (kept queued and retried).",
            ),
            queue_depth: gauge(
                r,
                "tiercache_call_events_queue_depth",
                "Call events waiting in this instance's queue.",
            ),
            pending: gauge(
                r,
                "tiercache_call_events_pending",
                "Stream entries delivered to a consumer and not yet acknowledged (all consumers).",
            ),
            lag: gauge(
                r,
                "tiercache_call_events_lag",
                "Stream entries not yet delivered to any consumer.",
            ),
            feed_clients: FeedTransport::ALL
                .iter()
                .map(|t| feed_clients.with_label_values(&[t.as_str()]))
                .collect(),
        }
    }

    /// Counts `n` events appended (or handed to the store).
    pub fn published(&self, n: u64) {
        self.published.inc_by(n);
    }

    /// Counts `n` events dropped.
    pub fn dropped(&self, reason: CallDropReason, n: u64) {
        self.dropped[reason as usize].inc_by(n);
    }

    /// Counts `n` events applied for the first time.
    pub fn applied(&self, n: u64) {
        self.applied.inc_by(n);
    }

    /// Counts `n` events delivered again that changed nothing.
    pub fn duplicates(&self, n: u64) {
        self.duplicates.inc_by(n);
    }

    /// Counts `n` entries claimed from another consumer.
    pub fn claimed(&self, n: u64) {
        self.claimed.inc_by(n);
    }

    /// Counts `n` entries sent to the dead-letter stream.
    pub fn dead_lettered(&self, n: u64) {
        self.dead_lettered.inc_by(n);
    }

    /// Counts a batch Redis did not take.
    pub fn append_failed(&self) {
        self.append_failures.inc();
    }

    /// Sets the queue's depth.
    pub fn queue_depth(&self, depth: usize) {
        self.queue_depth.set(saturate(depth as u64));
    }

    /// Sets the consumer group's pending entries and lag, as last sampled.
    pub fn group_state(&self, pending: u64, lag: u64) {
        self.pending.set(saturate(pending));
        self.lag.set(saturate(lag));
    }

    /// Counts a feed client for as long as the returned guard lives.
    pub fn feed_client(&self, transport: FeedTransport) -> FeedClientGuard {
        let gauge = self.feed_clients[transport as usize].clone();
        gauge.inc();
        FeedClientGuard(gauge)
    }

    /// Feed clients connected by `transport` now.
    pub fn feed_clients(&self, transport: FeedTransport) -> i64 {
        self.feed_clients[transport as usize].get()
    }
}

/// One live feed client, counted until dropped (however its connection ends).
pub struct FeedClientGuard(IntGauge);

impl Drop for FeedClientGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn saturate(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_client_is_counted_while_its_guard_lives() {
        let m = CallLogMetrics::register(&Registry::new());
        let a = m.feed_client(FeedTransport::Sse);
        let b = m.feed_client(FeedTransport::Sse);
        let c = m.feed_client(FeedTransport::Ws);
        assert_eq!(m.feed_clients(FeedTransport::Sse), 2);
        drop(a);
        assert_eq!(m.feed_clients(FeedTransport::Sse), 1);
        drop((b, c));
        assert_eq!(
            (
                m.feed_clients(FeedTransport::Sse),
                m.feed_clients(FeedTransport::Ws)
            ),
            (0, 0)
        );
    }
}
