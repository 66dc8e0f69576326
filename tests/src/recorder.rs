//! A [`CacheObserver`] for tests: counts every event by name and forwards circuit changes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tiercache::{
    CacheObserver, CircuitState, CorruptKind, Entity, EvictionCause, InvalidationSource,
    L2ErrorKind, LoadOutcome, Outcome, Tier,
};
use tokio::sync::{Notify, mpsc};

/// Counts events as `"lookup.lead.l1.hit"`, `"load.lead.found"`, `"l2_error.timeout"`, ….
pub struct Recorder {
    counts: Mutex<HashMap<String, u64>>,
    /// Notified each time owed L2 deletes are replayed.
    pub replayed: Notify,
    /// Notified each time a bus message from another instance is applied (or L1 flushed).
    pub heard: Notify,
    /// Every waiter is woken on each event (see [`Recorder::wait_count`]).
    counted: Notify,
    circuit: mpsc::UnboundedSender<(CircuitState, CircuitState)>,
}

impl Recorder {
    /// A recorder and the receiving end of its circuit changes.
    pub fn new() -> (
        Recorder,
        mpsc::UnboundedReceiver<(CircuitState, CircuitState)>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Recorder {
                counts: Mutex::new(HashMap::new()),
                replayed: Notify::new(),
                heard: Notify::new(),
                counted: Notify::new(),
                circuit: tx,
            },
            rx,
        )
    }

    /// How often `name` happened.
    pub fn count(&self, name: &str) -> u64 {
        self.counts.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    /// Every count whose name starts with `prefix`, summed.
    pub fn sum(&self, prefix: &str) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    /// Waits until `name` has happened at least `n` times, up to `within`; whether it did.
    pub async fn wait_count(&self, name: &str, n: u64, within: Duration) -> bool {
        tokio::time::timeout(within, async {
            loop {
                // Registered before the count is read, so an event in between still wakes us.
                let counted = self.counted.notified();
                tokio::pin!(counted);
                counted.as_mut().enable();
                if self.count(name) >= n {
                    return;
                }
                counted.await;
            }
        })
        .await
        .is_ok()
    }

    fn bump(&self, name: String) {
        *self.counts.lock().unwrap().entry(name).or_default() += 1;
        self.counted.notify_waiters();
    }
}

impl CacheObserver for Recorder {
    fn lookup(&self, entity: Entity, tier: Tier, outcome: Outcome, _took: Duration) {
        self.bump(format!(
            "lookup.{entity}.{}.{}",
            tier.as_str(),
            outcome.as_str()
        ));
    }
    fn load(&self, entity: Entity, outcome: LoadOutcome, _took: Duration) {
        self.bump(format!("load.{entity}.{}", outcome.as_str()));
    }
    fn coalesced(&self, entity: Entity) {
        self.bump(format!("coalesced.{entity}"));
    }
    fn stale_served(&self, entity: Entity, reason: tiercache::StaleReason) {
        self.bump(format!("stale.{entity}.{}", reason.as_str()));
    }
    fn corrupt(&self, entity: Entity, tier: Tier, kind: CorruptKind) {
        self.bump(format!(
            "corrupt.{entity}.{}.{}",
            tier.as_str(),
            kind.as_str()
        ));
    }
    fn l2_error(&self, kind: L2ErrorKind) {
        self.bump(format!("l2_error.{}", kind.as_str()));
    }
    fn evicted(&self, entity: Entity, cause: EvictionCause) {
        self.bump(format!("evicted.{entity}.{}", cause.as_str()));
    }
    fn invalidated(&self, entity: Entity, source: InvalidationSource) {
        self.bump(format!("invalidated.{entity}.{}", source.as_str()));
        if source == InvalidationSource::Bus {
            self.heard.notify_one();
        }
    }
    fn owed_replayed(&self, keys: usize) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry("owed_replayed".to_owned())
            .or_default() += keys as u64;
        self.replayed.notify_one();
    }
    fn bus_received(&self, _lag: Duration) {
        self.bump("bus.received".to_owned());
    }
    fn bus_gap(&self) {
        self.bump("bus.gap".to_owned());
        self.heard.notify_one();
    }
    fn circuit_changed(&self, from: CircuitState, to: CircuitState) {
        self.bump(format!("circuit.{}", to.as_str()));
        let _ = self.circuit.send((from, to));
    }
}
