//! Retry decisions: exponential backoff with full jitter (backon's schedule, each step drawn
//! uniformly in [0, step]), and which failures are worth another attempt.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use rand::Rng as _;

use super::policy::RetryConfig;
use crate::domain::outcome::AttemptError;

/// The delays before successive retries of one call.
pub struct Backoff {
    steps: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(cfg: &RetryConfig) -> Self {
        Self {
            steps: ExponentialBuilder::default()
                .with_min_delay(cfg.min_backoff)
                .with_max_delay(cfg.max_backoff)
                .with_factor(2.0)
                .without_max_times()
                .build(),
            max: cfg.max_backoff,
        }
    }

    /// "Full jitter": uniform in [0, current step], so that retries of many calls spread out.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.steps.next().unwrap_or(self.max);
        let nanos = u64::try_from(step.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// Statuses that say "try again": gateway trouble, unavailable, timeout, too many requests.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// Does this attempt count as a failure of the target (for its circuit)?
pub fn is_failure(status: Option<u16>, error: Option<AttemptError>) -> bool {
    error.is_some() || status.is_some_and(|s| s >= 500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_the_growing_step_and_the_cap() {
        let cfg = RetryConfig {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
            ..RetryConfig::default()
        };
        let caps = [100, 200, 400, 400, 400];
        for _ in 0..200 {
            let mut b = Backoff::new(&cfg);
            for cap in caps {
                let d = b.next_delay();
                assert!(d <= Duration::from_millis(cap), "{d:?} > {cap} ms");
            }
        }
        // Full jitter spreads delays over the whole step, not just its top half.
        let mut small = 0;
        for _ in 0..1000 {
            if Backoff::new(&cfg).next_delay() < Duration::from_millis(50) {
                small += 1;
            }
        }
        assert!(
            (300..700).contains(&small),
            "{small} of 1000 below half the step"
        );
    }

    #[test]
    fn classification() {
        for s in [429, 502, 503, 504] {
            assert!(retryable_status(s));
        }
        for s in [200, 400, 404, 409, 500, 501] {
            assert!(!retryable_status(s), "{s}");
        }
        assert!(is_failure(Some(500), None));
        assert!(is_failure(None, Some(AttemptError::Timeout)));
        assert!(!is_failure(Some(404), None));
        assert!(!is_failure(Some(429), None));
    }
}
