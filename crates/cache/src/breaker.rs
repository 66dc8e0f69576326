//! The circuit breaker that lets the engine skip a failing Redis at no latency cost.
//!
//! # When Redis fails
//!
//! - Closed: every L2 command runs; `failure_threshold` consecutive failures open the circuit.
//! - Open: L2 is skipped outright (no connection attempt, no timeout to wait out) for
//!   `open_for`.
//! - Half-open: after `open_for`, one command is let through as a probe. Success closes
//!   the circuit; failure opens it for another `open_for`. A probe that never reports (its
//!   caller was cancelled) is replaced by a new one after another `open_for`, so the
//!   breaker cannot stick half-open.
//!
//! Time is passed in by the caller, so the state machine is tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;
use crate::observer::CircuitState;

#[derive(Clone, Copy, Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_started: Instant },
}

impl State {
    fn public(self) -> CircuitState {
        match self {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

/// A state change, to report once.
pub type Transition = Option<(CircuitState, CircuitState)>;

/// Consecutive-failure circuit breaker with a single half-open probe.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    // Held only for a few comparisons, never across an await.
    state: Mutex<State>,
}

impl CircuitBreaker {
    /// A closed breaker with these thresholds.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            threshold: config.failure_threshold,
            open_for: config.open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.lock().public()
    }

    /// Whether a command may run now; may move open to half-open (this caller is the probe).
    pub fn allow(&self, now: Instant) -> (bool, Transition) {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => (true, None),
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { probe_started: now };
                (true, Some((CircuitState::Open, CircuitState::HalfOpen)))
            }
            State::Open { .. } => (false, None),
            State::HalfOpen { probe_started } if now >= probe_started + self.open_for => {
                *state = State::HalfOpen { probe_started: now };
                (true, None)
            }
            State::HalfOpen { .. } => (false, None),
        }
    }

    /// Records a command that succeeded.
    pub fn success(&self) -> Transition {
        let mut state = self.lock();
        let before = state.public();
        *state = State::Closed { failures: 0 };
        (before != CircuitState::Closed).then_some((before, CircuitState::Closed))
    }

    /// Records a command that failed at `now`.
    pub fn failure(&self, now: Instant) -> Transition {
        let mut state = self.lock();
        match *state {
            State::Closed { failures } if failures + 1 < self.threshold => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                None
            }
            State::Closed { .. } => {
                *state = State::Open {
                    until: now + self.open_for,
                };
                Some((CircuitState::Closed, CircuitState::Open))
            }
            State::HalfOpen { .. } => {
                *state = State::Open {
                    until: now + self.open_for,
                };
                Some((CircuitState::HalfOpen, CircuitState::Open))
            }
            // A straggler that started before the circuit opened: already open.
            State::Open { .. } => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value with no invariant a panic could break mid-update.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker();
        let t = Instant::now();
        assert_eq!(b.failure(t), None);
        assert_eq!(b.failure(t), None);
        assert_eq!(b.success(), None);
        assert_eq!(b.failure(t), None);
        assert_eq!(b.failure(t), None);
        assert_eq!(
            b.failure(t),
            Some((CircuitState::Closed, CircuitState::Open))
        );
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.allow(t + Duration::from_secs(9)), (false, None));
    }

    #[test]
    fn one_probe_after_the_open_period_then_close_on_success() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.failure(t);
        }
        let later = t + Duration::from_secs(10);
        assert_eq!(
            b.allow(later),
            (true, Some((CircuitState::Open, CircuitState::HalfOpen)))
        );
        // Only the probe goes through.
        assert_eq!(b.allow(later), (false, None));
        assert_eq!(
            b.success(),
            Some((CircuitState::HalfOpen, CircuitState::Closed))
        );
        assert_eq!(b.allow(later), (true, None));
    }

    #[test]
    fn a_failed_probe_reopens() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.failure(t);
        }
        let later = t + Duration::from_secs(10);
        b.allow(later);
        assert_eq!(
            b.failure(later),
            Some((CircuitState::HalfOpen, CircuitState::Open))
        );
        assert_eq!(b.allow(later + Duration::from_secs(5)), (false, None));
        assert!(b.allow(later + Duration::from_secs(10)).0);
    }

    #[test]
    fn a_lost_probe_is_replaced() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.failure(t);
        }
        let later = t + Duration::from_secs(10);
        assert!(b.allow(later).0);
        // The probe's caller went away without reporting.
        assert!(!b.allow(later + Duration::from_secs(1)).0);
        assert!(b.allow(later + Duration::from_secs(10)).0);
    }
}
