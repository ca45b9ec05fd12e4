//! A per-target circuit breaker: closed → open when the failure rate or the slow-call rate over
//! the last `window` calls reaches its threshold (after `min_calls`), open → half-open after
//! `open_wait`, half-open → closed after `half_open_probes` successes (→ open on any failure).
//! The reason of the last trip is kept for operators.

use std::{
    collections::VecDeque,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::domain::outcome::{CircuitState, CircuitTransitions, TripReason};

#[derive(Clone, Debug, PartialEq)]
pub struct CircuitConfig {
    /// Calls in the sliding window.
    pub window: u32,
    /// Calls needed in the window before rates are judged.
    pub min_calls: u32,
    /// Failure rate (0–1] that opens the circuit.
    pub failure_rate: f64,
    /// A call slower than this is slow.
    pub slow_call: Duration,
    /// Slow-call rate (0–1] that opens the circuit.
    pub slow_call_rate: f64,
    /// How long the circuit stays open before letting probes through.
    pub open_wait: Duration,
    /// Probe calls allowed (and successes needed) in half-open.
    pub half_open_probes: u32,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            window: 20,
            min_calls: 10,
            failure_rate: 0.5,
            slow_call: Duration::from_secs(5),
            slow_call_rate: 1.0,
            open_wait: Duration::from_secs(10),
            half_open_probes: 2,
        }
    }
}

impl CircuitConfig {
    /// Every problem with these values, empty when valid.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(1..=10_000).contains(&self.window) {
            p.push(format!("circuit window {} must be 1..=10000", self.window));
        }
        if self.min_calls == 0 || self.min_calls > self.window {
            p.push(format!(
                "circuit min_calls {} must be 1..=window ({})",
                self.min_calls, self.window
            ));
        }
        for (name, v) in [
            ("failure_rate", self.failure_rate),
            ("slow_call_rate", self.slow_call_rate),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                p.push(format!("circuit {name} {v} must be in (0, 1]"));
            }
        }
        if self.slow_call.is_zero() {
            p.push("circuit slow_call must be above 0".to_owned());
        }
        if self.open_wait.is_zero() {
            p.push("circuit open_wait must be above 0".to_owned());
        }
        if self.half_open_probes == 0 {
            p.push("circuit half_open_probes must be at least 1".to_owned());
        }
        p
    }
}

#[derive(Clone, Copy, Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    failed: bool,
    slow: bool,
}

/// The last calls while closed, with running counts: judging the rates is O(1) whatever the
/// window's size.
#[derive(Debug)]
struct Window {
    samples: VecDeque<Sample>,
    capacity: usize,
    failed: usize,
    slow: usize,
}

impl Window {
    fn new(capacity: usize) -> Self {
        Self {
            samples: VecDeque::with_capacity(capacity),
            capacity,
            failed: 0,
            slow: 0,
        }
    }

    fn push(&mut self, sample: Sample) {
        if self.samples.len() == self.capacity
            && let Some(old) = self.samples.pop_front()
        {
            self.failed -= usize::from(old.failed);
            self.slow -= usize::from(old.slow);
        }
        self.failed += usize::from(sample.failed);
        self.slow += usize::from(sample.slow);
        self.samples.push_back(sample);
    }

    fn len(&self) -> usize {
        self.samples.len()
    }

    /// The failure and slow-call rates.
    fn rates(&self) -> (f64, f64) {
        let n = self.samples.len().max(1) as f64;
        (self.failed as f64 / n, self.slow as f64 / n)
    }

    fn clear(&mut self) {
        self.samples.clear();
        self.failed = 0;
        self.slow = 0;
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    window: Window,
    reason: Option<TripReason>,
    transitions: CircuitTransitions,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: CircuitConfig,
    inner: Mutex<Inner>,
}

/// A call the circuit let through, and in which state (to be reported back with [`record`]).
///
/// [`record`]: CircuitBreaker::record
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted(pub CircuitState);

impl CircuitBreaker {
    /// `config` must be valid (see [`CircuitConfig::problems`]).
    pub fn new(config: CircuitConfig) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: State::Closed,
                window: Window::new(config.window as usize),
                reason: None,
                transitions: CircuitTransitions::default(),
            }),
            config,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets a call through, or refuses it while open (or when half-open probes are all out).
    pub fn try_acquire(&self, now: Instant) -> Option<Admitted> {
        let mut inner = self.lock();
        if let State::Open { until } = inner.state {
            if now < until {
                return None;
            }
            inner.state = State::HalfOpen {
                in_flight: 0,
                successes: 0,
            };
            inner.transitions.half_opened += 1;
        }
        match &mut inner.state {
            State::Closed => Some(Admitted(CircuitState::Closed)),
            State::HalfOpen {
                in_flight,
                successes,
            } => {
                if *in_flight + *successes >= self.config.half_open_probes {
                    return None;
                }
                *in_flight += 1;
                Some(Admitted(CircuitState::HalfOpen))
            }
            State::Open { .. } => None,
        }
    }

    /// Reports how an admitted call went.
    pub fn record(&self, admitted: Admitted, failed: bool, took: Duration, now: Instant) {
        let slow = took >= self.config.slow_call;
        let mut inner = self.lock();
        match (&mut inner.state, admitted.0) {
            (
                State::HalfOpen {
                    in_flight,
                    successes,
                },
                CircuitState::HalfOpen,
            ) => {
                *in_flight = in_flight.saturating_sub(1);
                if failed {
                    self.open(&mut inner, now, TripReason::HalfOpenProbeFailed);
                } else {
                    *successes += 1;
                    if *successes >= self.config.half_open_probes {
                        inner.state = State::Closed;
                        inner.window.clear();
                        inner.transitions.closed += 1;
                    }
                }
            }
            (State::Closed, _) => {
                inner.window.push(Sample { failed, slow });
                let n = inner.window.len();
                if n < self.config.min_calls as usize {
                    return;
                }
                let (failure, slowness) = inner.window.rates();
                let window = n as u32;
                if failure >= self.config.failure_rate {
                    let threshold = self.config.failure_rate;
                    self.open(
                        &mut inner,
                        now,
                        TripReason::FailureRate {
                            rate: failure,
                            threshold,
                            window,
                        },
                    );
                } else if slowness >= self.config.slow_call_rate {
                    let threshold = self.config.slow_call_rate;
                    self.open(
                        &mut inner,
                        now,
                        TripReason::SlowCallRate {
                            rate: slowness,
                            threshold,
                            window,
                        },
                    );
                }
            }
            // A call admitted in another state ended after the circuit moved on: ignore it.
            _ => {}
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant, reason: TripReason) {
        inner.state = State::Open {
            until: now + self.config.open_wait,
        };
        inner.window.clear();
        inner.reason = Some(reason);
        inner.transitions.opened += 1;
    }

    /// The state now (an open circuit whose wait is over shows as half-open).
    pub fn state(&self, now: Instant) -> CircuitState {
        match self.lock().state {
            State::Closed => CircuitState::Closed,
            State::Open { until } if now >= until => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Why it last opened.
    pub fn trip_reason(&self) -> Option<TripReason> {
        self.lock().reason.clone()
    }

    /// Times it moved to each state.
    pub fn transitions(&self) -> CircuitTransitions {
        self.lock().transitions
    }
}

#[cfg(test)]
#[path = "circuit_tests.rs"]
mod tests;
