//! Per-target resilience policy: timeouts, retries, circuit breaker, bulkhead, rate limit.
//! Validated once (every problem listed); the hot path never re-checks.

use std::time::Duration;

use super::circuit::CircuitConfig;

#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles up to `max_backoff`; full jitter over each step.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Retry budget (Finagle's; see `budget.rs`): retries allowed as a share of calls over `budget_ttl`,
    /// plus `budget_min_per_sec` regardless of traffic.
    pub budget_ttl: Duration,
    pub budget_min_per_sec: u32,
    pub budget_ratio: f32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            budget_ttl: Duration::from_secs(10),
            budget_min_per_sec: 5,
            budget_ratio: 0.2,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TargetPolicy {
    /// Each attempt's budget (capped by what is left of the call's deadline).
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryConfig,
    pub circuit: CircuitConfig,
    /// Calls in flight to this target at most (the bulkhead).
    pub max_in_flight: usize,
    /// Token bucket: sustained calls per second and burst; `None` for no limit.
    pub rate_per_sec: Option<u32>,
    pub burst: u32,
    /// A call that was executing when the agent died runs again after the restart even when
    /// it is not idempotent; otherwise it is dead-lettered as `maybe_executed`.
    pub replay_unsafe: bool,
}

impl Default for TargetPolicy {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            retry: RetryConfig::default(),
            circuit: CircuitConfig::default(),
            max_in_flight: 64,
            rate_per_sec: None,
            burst: 1,
            replay_unsafe: false,
        }
    }
}

impl TargetPolicy {
    /// Every problem with this policy, each prefixed with `context`; empty when valid.
    pub fn problems(&self, context: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.attempt_timeout.is_zero() || self.attempt_timeout > Duration::from_secs(300) {
            p.push(format!(
                "attempt_timeout {:?} must be in (0, 300 s]",
                self.attempt_timeout
            ));
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > self.attempt_timeout {
            p.push(format!(
                "connect_timeout {:?} must be above 0 and at most attempt_timeout",
                self.connect_timeout
            ));
        }
        let r = &self.retry;
        if !(1..=10).contains(&r.max_attempts) {
            p.push(format!(
                "retry max_attempts {} must be 1..=10",
                r.max_attempts
            ));
        }
        if r.min_backoff.is_zero() {
            p.push("retry min_backoff must be above 0".to_owned());
        }
        if r.max_backoff < r.min_backoff {
            p.push(format!(
                "retry max_backoff {:?} must not be less than min_backoff {:?}",
                r.max_backoff, r.min_backoff
            ));
        }
        // The budget's window arithmetic needs these: they must never reach it invalid.
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&r.budget_ttl) {
            p.push(format!(
                "retry budget_ttl {:?} must be 1–60 s",
                r.budget_ttl
            ));
        }
        if !(0.0..=1000.0).contains(&r.budget_ratio) {
            p.push(format!(
                "retry budget_ratio {} must be 0–1000",
                r.budget_ratio
            ));
        }
        if r.budget_min_per_sec > 1_000_000 {
            p.push(format!(
                "retry budget_min_per_sec {} must be at most 1000000",
                r.budget_min_per_sec
            ));
        }
        p.extend(self.circuit.problems());
        if !(1..=100_000).contains(&self.max_in_flight) {
            p.push(format!(
                "max_in_flight {} must be 1..=100000",
                self.max_in_flight
            ));
        }
        if self.rate_per_sec == Some(0) {
            p.push("rate_per_sec must be above 0 (omit it for no limit)".to_owned());
        }
        if self.burst == 0 {
            p.push("burst must be at least 1".to_owned());
        }
        p.into_iter().map(|m| format!("{context}: {m}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid_and_every_problem_is_listed() {
        assert!(TargetPolicy::default().problems("t").is_empty());
        let bad = TargetPolicy {
            attempt_timeout: Duration::ZERO,
            connect_timeout: Duration::from_secs(1),
            retry: RetryConfig {
                max_attempts: 0,
                min_backoff: Duration::from_secs(2),
                max_backoff: Duration::from_secs(1),
                budget_ttl: Duration::from_secs(61),
                budget_min_per_sec: 1,
                budget_ratio: -1.0,
            },
            max_in_flight: 0,
            rate_per_sec: Some(0),
            burst: 0,
            ..TargetPolicy::default()
        };
        let p = bad.problems("targets.demo");
        assert!(p.iter().all(|m| m.starts_with("targets.demo: ")), "{p:#?}");
        for needle in [
            "attempt_timeout",
            "connect_timeout",
            "max_attempts",
            "max_backoff",
            "budget_ttl",
            "budget_ratio",
            "max_in_flight",
            "rate_per_sec",
            "burst",
        ] {
            assert!(
                p.iter().any(|m| m.contains(needle)),
                "{needle} missing: {p:#?}"
            );
        }
    }
}
