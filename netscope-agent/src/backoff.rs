//! The one backoff schedule: backon's exponential steps with full jitter (each delay drawn
//! uniformly in [0, step]), so that many waiters spread out. Outbound retries take their bounds
//! from the target's policy; redelivery to NetScope's own infrastructure (sinks, the
//! dead-letter topic, RGW uploads) uses [`Backoff::redelivery`].

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use rand::Rng as _;

/// Successive delays, doubling from `min` up to `max`, without end.
pub struct Backoff {
    steps: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            steps: ExponentialBuilder::default()
                .with_min_delay(min)
                .with_max_delay(max)
                .with_factor(2.0)
                .without_max_times()
                .build(),
            max,
        }
    }

    /// Retrying a write to NetScope's own infrastructure until it works: 100 ms doubling to 5 s.
    pub fn redelivery() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The next delay: uniform in [0, current step].
    pub fn next_delay(&mut self) -> Duration {
        let step = self.steps.next().unwrap_or(self.max);
        let nanos = u64::try_from(step.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounded() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_millis(400))
    }

    #[test]
    fn delays_stay_within_the_growing_step_and_the_cap() {
        for _ in 0..200 {
            let mut b = bounded();
            for cap in [100, 200, 400, 400, 400] {
                let d = b.next_delay();
                assert!(d <= Duration::from_millis(cap), "{d:?} > {cap} ms");
            }
        }
        // Full jitter spreads delays over the whole step, not just its top half.
        let small = (0..1000)
            .filter(|_| bounded().next_delay() < Duration::from_millis(50))
            .count();
        assert!(
            (300..700).contains(&small),
            "{small} of 1000 below half the step"
        );
    }

    #[test]
    fn redelivery_is_capped_at_five_seconds() {
        let mut b = Backoff::redelivery();
        let longest = (0..20).map(|_| b.next_delay()).max().unwrap();
        assert!(longest <= Duration::from_secs(5), "{longest:?}");
    }
}
