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
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(CircuitConfig {
            window: 10,
            min_calls: 4,
            failure_rate: 0.5,
            slow_call: Duration::from_millis(100),
            slow_call_rate: 0.75,
            open_wait: Duration::from_secs(5),
            half_open_probes: 2,
        })
    }

    fn call(b: &CircuitBreaker, now: Instant, failed: bool, ms: u64) -> bool {
        match b.try_acquire(now) {
            Some(a) => {
                b.record(a, failed, Duration::from_millis(ms), now);
                true
            }
            None => false,
        }
    }

    #[test]
    fn opens_on_failure_rate_half_opens_after_the_wait_and_closes_on_success() {
        let b = breaker();
        let t0 = Instant::now();
        assert!(call(&b, t0, false, 1));
        assert!(call(&b, t0, true, 1));
        assert!(call(&b, t0, true, 1));
        assert_eq!(
            b.state(t0),
            CircuitState::Closed,
            "3 calls: below min_calls"
        );
        assert!(call(&b, t0, false, 1));
        assert_eq!(b.state(t0), CircuitState::Open, "2 of 4 failed: 50 %");
        assert!(matches!(
            b.trip_reason(),
            Some(TripReason::FailureRate { window: 4, .. })
        ));
        assert!(
            !call(&b, t0 + Duration::from_secs(4), false, 1),
            "still open"
        );
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.state(t1), CircuitState::HalfOpen);
        // Two probes at most while half-open.
        let p1 = b.try_acquire(t1).unwrap();
        let p2 = b.try_acquire(t1).unwrap();
        assert_eq!(p1.0, CircuitState::HalfOpen);
        assert!(b.try_acquire(t1).is_none(), "no third probe");
        b.record(p1, false, Duration::from_millis(1), t1);
        assert_eq!(b.state(t1), CircuitState::HalfOpen);
        b.record(p2, false, Duration::from_millis(1), t1);
        assert_eq!(b.state(t1), CircuitState::Closed);
        assert_eq!(
            b.transitions(),
            CircuitTransitions {
                opened: 1,
                half_opened: 1,
                closed: 1
            }
        );
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..4 {
            call(&b, t0, true, 1);
        }
        let t1 = t0 + Duration::from_secs(5);
        assert!(call(&b, t1, true, 1));
        assert_eq!(b.state(t1), CircuitState::Open);
        assert_eq!(b.trip_reason(), Some(TripReason::HalfOpenProbeFailed));
        assert_eq!(b.state(t1 + Duration::from_secs(5)), CircuitState::HalfOpen);
    }

    #[test]
    fn opens_on_slow_calls_and_the_window_slides() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            call(&b, t0, false, 500);
        }
        call(&b, t0, false, 1);
        assert_eq!(b.state(t0), CircuitState::Open, "3 of 4 slow: 75 %");
        assert!(matches!(
            b.trip_reason(),
            Some(TripReason::SlowCallRate { .. })
        ));

        let b = breaker();
        for _ in 0..10 {
            call(&b, t0, false, 1);
        }
        for _ in 0..4 {
            call(&b, t0, true, 1);
        }
        assert_eq!(
            b.state(t0),
            CircuitState::Closed,
            "4 of the last 10 failed: 40 %"
        );
        call(&b, t0, true, 1);
        assert_eq!(b.state(t0), CircuitState::Open, "5 of the last 10");
    }

    #[test]
    fn invalid_configs_are_reported_all_at_once() {
        let p = CircuitConfig {
            window: 0,
            min_calls: 5,
            failure_rate: 1.5,
            slow_call: Duration::ZERO,
            slow_call_rate: 0.0,
            open_wait: Duration::ZERO,
            half_open_probes: 0,
        }
        .problems();
        assert_eq!(p.len(), 7, "{p:#?}");
        assert!(CircuitConfig::default().problems().is_empty());
    }
}
