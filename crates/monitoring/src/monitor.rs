//! The monitor: samples the counters on a timer, keeps the recent window, evaluates the
//! alerts, probes Redis, and publishes snapshots and alert changes to the live stream.
//!
//! Publishing is a `broadcast` send, which never waits: a slow or gone stream client loses
//! old events (it is told it lagged), and the service never blocks on it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tiercache::TwoTierCache;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::alerts::{self, Alert, AlertKind, Thresholds, Window};
use crate::metrics::Metrics;
use crate::stats::{CacheStats, Counts};

/// Events the stream carries.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The periodic snapshot.
    Snapshot(Box<Snapshot>),
    /// An alert started firing.
    AlertFiring(Alert),
    /// An alert stopped firing.
    AlertResolved(Alert),
}

/// What the stream shows every tick.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Hit rates.
    pub stats: CacheStats,
    /// Active alerts.
    pub alerts: Vec<Alert>,
    /// L1 entries.
    pub l1_entries: u64,
    /// L1 bytes.
    pub l1_bytes: u64,
    /// The breaker's state, when Redis is configured.
    pub circuit: Option<&'static str>,
    /// Whether Redis answered the last probe (`null` when disabled).
    pub redis_up: Option<bool>,
    /// Redis deletes owed.
    pub owed_invalidations: usize,
}

#[derive(Clone)]
struct Sample {
    at: Instant,
    counts: Counts,
    http: (u64, u64, Duration),
}

#[derive(Default)]
struct State {
    samples: VecDeque<Sample>,
    alerts: BTreeMap<AlertKind, Alert>,
    redis_down_since: Option<Instant>,
    redis_up: Option<bool>,
}

/// Samples, evaluates and publishes; see the module doc.
pub struct Monitor {
    metrics: Arc<Metrics>,
    cache: TwoTierCache,
    thresholds: Thresholds,
    events: broadcast::Sender<StreamEvent>,
    state: Mutex<State>,
}

/// The monitor's background task; aborted when dropped.
pub struct MonitorTask(JoinHandle<()>);

impl Drop for MonitorTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Events a stream client may fall behind by before it loses the oldest.
const STREAM_BUFFER: usize = 64;

impl Monitor {
    /// A monitor over `metrics` and `cache`, judging by `thresholds`.
    pub fn new(metrics: Arc<Metrics>, cache: TwoTierCache, thresholds: Thresholds) -> Arc<Self> {
        let (events, _) = broadcast::channel(STREAM_BUFFER);
        Arc::new(Monitor {
            metrics,
            cache,
            thresholds,
            events,
            state: Mutex::new(State::default()),
        })
    }

    /// Ticks every `every` until the returned task is dropped.
    pub fn spawn(self: &Arc<Self>, every: Duration) -> MonitorTask {
        let monitor = Arc::clone(self);
        MonitorTask(tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                monitor.tick().await;
            }
        }))
    }

    /// One round: probe Redis, sample, evaluate, publish.
    pub async fn tick(&self) {
        let redis_up = self.cache.ping_l2().await.map(|result| result.is_ok());
        self.metrics.set_redis_up(redis_up == Some(true));
        let now = Instant::now();
        let sample = Sample {
            at: now,
            counts: Counts::read(&self.metrics),
            http: self.metrics.http_totals(),
        };
        let (fired, resolved) = {
            let mut state = self.lock();
            state.redis_up = redis_up;
            state.redis_down_since = match redis_up {
                Some(false) => Some(state.redis_down_since.unwrap_or(now)),
                _ => None,
            };
            state.samples.push_back(sample.clone());
            while state
                .samples
                .front()
                .is_some_and(|s| now.duration_since(s.at) > self.thresholds.window)
            {
                state.samples.pop_front();
            }
            let window = window_of(&state, &sample, now);
            let firing = alerts::evaluate(&self.thresholds, &window);
            let mut fired = Vec::new();
            for (kind, value, threshold) in &firing {
                let alert = state.alerts.entry(*kind).or_insert_with(|| {
                    let alert = Alert {
                        kind: *kind,
                        name: kind.name(),
                        value: *value,
                        threshold: *threshold,
                        message: alerts::message(*kind, *value, *threshold),
                        since_ms: unix_millis(),
                    };
                    fired.push(alert.clone());
                    alert
                });
                alert.value = *value;
                alert.message = alerts::message(*kind, *value, *threshold);
            }
            let still: Vec<AlertKind> = firing.iter().map(|(k, _, _)| *k).collect();
            let gone: Vec<AlertKind> = state
                .alerts
                .keys()
                .filter(|k| !still.contains(k))
                .copied()
                .collect();
            let resolved: Vec<Alert> = gone.iter().filter_map(|k| state.alerts.remove(k)).collect();
            (fired, resolved)
        };
        for alert in fired {
            tracing::warn!(alert = alert.name, message = %alert.message, "alert firing");
            let _ = self.events.send(StreamEvent::AlertFiring(alert));
        }
        for alert in resolved {
            tracing::info!(alert = alert.name, "alert resolved");
            let _ = self.events.send(StreamEvent::AlertResolved(alert));
        }
        // No receivers is not an error: nobody is watching.
        let _ = self
            .events
            .send(StreamEvent::Snapshot(Box::new(self.snapshot())));
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        let l1 = self.cache.l1_stats();
        let redis_up = self.lock().redis_up;
        Snapshot {
            stats: self.stats(),
            alerts: self.active_alerts(),
            l1_entries: l1.entries,
            l1_bytes: l1.weighted_bytes,
            circuit: self.cache.circuit().map(|c| c.as_str()),
            redis_up,
            owed_invalidations: self.cache.owed_invalidations(),
        }
    }

    /// Hit rates since start and over the window.
    pub fn stats(&self) -> CacheStats {
        let now = Counts::read(&self.metrics);
        let state = self.lock();
        let (recent, window) = match state.samples.front() {
            Some(oldest) => (now.since(&oldest.counts), oldest.at.elapsed()),
            None => (now.clone(), Duration::ZERO),
        };
        CacheStats {
            since_start: now.stats(),
            recent: recent.stats(),
            window_seconds: window.as_secs_f64(),
        }
    }

    /// The alerts firing now.
    pub fn active_alerts(&self) -> Vec<Alert> {
        self.lock().alerts.values().cloned().collect()
    }

    /// A receiver of stream events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StreamEvent> {
        self.events.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn window_of(state: &State, latest: &Sample, now: Instant) -> Window {
    let oldest = state.samples.front().unwrap_or(latest);
    let counts = latest.counts.since(&oldest.counts);
    let (lookups, hits) = counts.lookups_and_hits();
    Window {
        lookups,
        hits,
        responses: latest.http.0.saturating_sub(oldest.http.0),
        server_errors: latest.http.1.saturating_sub(oldest.http.1),
        response_time: latest.http.2.saturating_sub(oldest.http.2),
        redis_down_for: state
            .redis_down_since
            .map(|since| now.duration_since(since)),
    }
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use tiercache::{CacheConfig, NoopObserver};

    use super::*;
    use crate::alerts::THRESHOLDS;
    use crate::test_entities;

    #[tokio::test(flavor = "current_thread")]
    async fn a_subscriber_that_never_reads_never_holds_the_monitor_up() {
        let cache =
            TwoTierCache::new(CacheConfig::builder().build().unwrap(), NoopObserver).unwrap();
        let monitor = Monitor::new(
            Arc::new(Metrics::new(test_entities::ALL.iter().copied())),
            cache,
            THRESHOLDS,
        );
        let mut idle = monitor.subscribe();
        // Four times the buffer: every tick publishes, none waits for the idle subscriber.
        for _ in 0..STREAM_BUFFER * 4 {
            monitor.tick().await;
        }
        match idle.recv().await {
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                assert!(missed >= (STREAM_BUFFER * 3) as u64, "{missed}");
            }
            other => panic!("expected the idle subscriber to have lagged, got {other:?}"),
        }
        // It then resumes with the newest events.
        assert!(matches!(idle.recv().await, Ok(StreamEvent::Snapshot(_))));
    }
}
