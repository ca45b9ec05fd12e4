//! One target's runtime: its policy, HTTP client, circuit breaker, bulkhead, rate limiter and
//! retry budget — the state the gateway's layers share across that target's calls.

use std::{
    num::NonZeroU32,
    sync::{Arc, atomic::AtomicUsize},
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use super::{
    budget::RetryBudget,
    circuit::CircuitBreaker,
    client::{self, ClientError},
    policy::TargetPolicy,
};
use crate::domain::TargetName;

pub(super) struct TargetRuntime {
    pub(super) name: TargetName,
    pub(super) policy: TargetPolicy,
    pub(super) client: reqwest::Client,
    pub(super) circuit: CircuitBreaker,
    pub(super) bulkhead: Arc<Semaphore>,
    pub(super) limiter: Option<DefaultDirectRateLimiter>,
    pub(super) budget: RetryBudget,
    /// Calls waiting for a bulkhead slot (the target's queue).
    pub(super) queue_depth: AtomicUsize,
}

impl TargetRuntime {
    pub(super) fn new(name: TargetName, policy: TargetPolicy) -> Result<Self, ClientError> {
        let r = &policy.retry;
        let limiter = policy.rate_per_sec.and_then(NonZeroU32::new).map(|rate| {
            let burst = NonZeroU32::new(policy.burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Ok(Self {
            client: client::build(policy.connect_timeout)?,
            circuit: CircuitBreaker::new(policy.circuit.clone()),
            bulkhead: Arc::new(Semaphore::new(policy.max_in_flight)),
            limiter,
            budget: RetryBudget::new(r.budget_ttl, r.budget_min_per_sec, r.budget_ratio),
            queue_depth: AtomicUsize::new(0),
            name,
            policy,
        })
    }
}
