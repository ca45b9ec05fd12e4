//! The HTTP [`OutboundGateway`]: reqwest under the target's policies. The layers, outermost
//! first:
//! 1. deadline — nothing starts, and no retry waits, past the call's deadline;
//! 2. rate limit — a token from the target's bucket (waits, at most until the deadline);
//! 3. bulkhead — a slot of the target, then of the whole agent (waits, same bound);
//! 4. circuit breaker — refuses while open, lets probes through when half-open;
//! 5. attempts — per-attempt timeout; retries with backoff and full jitter, only for idempotent
//!    requests or those with an idempotency key, within the retry budget.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::{
    call::{AttemptResult, AttemptTimes, CallState, classify, ms, read_body},
    circuit::Admitted,
    client::{self, ClientError},
    policy::TargetPolicy,
    retry,
    target::TargetRuntime,
};
use crate::{
    backoff::Backoff,
    clock,
    domain::{
        CallRequest, TargetName,
        outcome::{
            Attempt, AttemptError, BoxFuture, CallOutcome, NetworkFacts, OutboundResult, RateLimit,
            ResilienceSnapshot, RetryStop,
        },
        ports::{ConnectionObserver, OutboundGateway},
    },
};

/// The name of the runtime that serves a call whose target has no policy of its own. A
/// configured target cannot be named so (names are a-z 0-9 - _), so its metrics and snapshot
/// never merge with a real target's.
pub const FALLBACK: &str = "~fallback";

pub struct HttpGateway {
    targets: HashMap<TargetName, Arc<TargetRuntime>>,
    fallback: Arc<TargetRuntime>,
    /// Calls in progress across all targets at most.
    global: Arc<Semaphore>,
    observer: Option<Arc<dyn ConnectionObserver>>,
}

impl HttpGateway {
    /// `policies` must be valid ([`TargetPolicy::problems`]); `fallback` serves a target
    /// without one.
    pub fn new(
        policies: Vec<(TargetName, TargetPolicy)>,
        fallback: TargetPolicy,
        global_max_in_flight: usize,
        observer: Option<Arc<dyn ConnectionObserver>>,
    ) -> Result<Self, ClientError> {
        let mut targets = HashMap::new();
        for (name, policy) in policies {
            targets.insert(name.clone(), Arc::new(TargetRuntime::new(name, policy)?));
        }
        Ok(Self {
            targets,
            fallback: Arc::new(TargetRuntime::new(TargetName(FALLBACK.into()), fallback)?),
            global: Arc::new(Semaphore::new(global_max_in_flight)),
            observer,
        })
    }

    fn runtime(&self, target: &TargetName) -> Arc<TargetRuntime> {
        Arc::clone(self.targets.get(target).unwrap_or(&self.fallback))
    }

    /// The call through the layers, outermost first: deadline → rate limit → bulkhead →
    /// circuit and attempts. A layer that refuses the call ends it with its outcome.
    async fn run(&self, call: CallRequest) -> OutboundResult {
        let rt = self.runtime(&call.ctx.target);
        let mut c = CallState::begin(&call, &rt);
        let admitted = async {
            c.within_deadline()?;
            self.rate_limit(&c).await?;
            let slots = self.bulkhead(&c).await?;
            self.attempts(&mut c).await;
            drop(slots);
            Ok::<(), CallOutcome>(())
        }
        .await;
        if let Err(refused) = admitted {
            c.result.outcome = refused;
        }
        c.finish()
    }

    /// Rate limit: a token from the target's bucket, waiting at most until the deadline.
    async fn rate_limit(&self, c: &CallState<'_>) -> Result<(), CallOutcome> {
        let Some(limiter) = &c.rt.limiter else {
            return Ok(());
        };
        tokio::select! {
            _ = limiter.until_ready() => Ok(()),
            _ = tokio::time::sleep_until(c.deadline.into()) => Err(CallOutcome::RateLimited),
        }
    }

    /// Bulkhead: a slot of the target, then one of the whole agent, waiting at most until the
    /// deadline. The slots are held until the attempts are over.
    async fn bulkhead(
        &self,
        c: &CallState<'_>,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), CallOutcome> {
        let rt = c.rt;
        rt.queue_depth.fetch_add(1, Ordering::Relaxed);
        let permits = tokio::select! {
            p = async {
                let target = Arc::clone(&rt.bulkhead).acquire_owned().await;
                let global = Arc::clone(&self.global).acquire_owned().await;
                (target, global)
            } => Some(p),
            _ = tokio::time::sleep_until(c.deadline.into()) => None,
        };
        rt.queue_depth.fetch_sub(1, Ordering::Relaxed);
        match permits {
            Some((Ok(target), Ok(global))) => Ok((target, global)),
            _ => Err(CallOutcome::BulkheadFull),
        }
    }

    /// Circuit breaker and attempts: each attempt must be admitted by the circuit; a failed
    /// one is retried with backoff while [`retry::stop_reason`] allows, the deadline leaves
    /// room, and the retry budget has some.
    async fn attempts(&self, c: &mut CallState<'_>) {
        let rt = c.rt;
        rt.budget.deposit(Instant::now());
        let retryable = c.call.request.retryable(&c.call.ctx);
        let mut backoff = Backoff::new(rt.policy.retry.min_backoff, rt.policy.retry.max_backoff);
        let mut waited = Duration::ZERO;
        c.result.retry_stop = loop {
            let now = Instant::now();
            let Some(admitted) = rt.circuit.try_acquire(now) else {
                if c.result.attempts.is_empty() {
                    c.result.outcome = CallOutcome::CircuitOpen;
                }
                break RetryStop::CircuitOpen;
            };
            if c.result.attempts.is_empty() {
                c.result.circuit = admitted.0;
            }
            let left = c.deadline.saturating_duration_since(now);
            if left.is_zero() {
                break RetryStop::Deadline;
            }
            let a = self.attempt(c, admitted, left, waited).await;
            let tried = c.result.attempts.len() as u32;
            if let Some(stop) =
                retry::stop_reason(a.status, a.error, retryable, tried, &rt.policy.retry)
            {
                break stop;
            }
            let delay = backoff.next_delay();
            if Instant::now() + delay >= c.deadline {
                break RetryStop::Deadline;
            }
            if !rt.budget.withdraw(Instant::now()) {
                break RetryStop::BudgetExhausted;
            }
            debug!(delay_ms = ms(delay), attempt = tried, "retrying");
            tokio::time::sleep(delay).await;
            waited = delay;
        };
    }

    /// One attempt, admitted by the circuit and bounded by the attempt timeout and what is left
    /// of the deadline: sent, recorded in the circuit and in the result with the kernel's facts
    /// of its connection.
    async fn attempt(
        &self,
        c: &mut CallState<'_>,
        admitted: Admitted,
        left: Duration,
        waited: Duration,
    ) -> AttemptResult {
        let rt = c.rt;
        let timeout = rt.policy.attempt_timeout.min(left);
        let started = Instant::now();
        let started_mono_ns = clock::monotonic_now_ns();
        let a = self.send(rt, c.call, timeout).await;
        let took = started.elapsed();
        let failed = retry::is_failure(a.status, a.error);
        rt.circuit.record(admitted, failed, took, Instant::now());
        let r = &mut c.result;
        r.attempts.push(Attempt {
            number: r.attempts.len() as u32 + 1,
            status: a.status,
            error: a.error,
            duration_ms: ms(took),
            backoff_ms: ms(waited),
        });
        let when = AttemptTimes {
            call_started: c.started_wall,
            attempt_started_mono_ns: started_mono_ns,
        };
        r.network = self.network_facts(c.call, &a, when).await;
        r.status = a.status;
        r.response_bytes = a.response_bytes;
        r.outcome = match (a.status, a.error) {
            (Some(_), _) => CallOutcome::Response,
            (None, Some(AttemptError::Timeout)) if Instant::now() >= c.deadline => {
                CallOutcome::DeadlineExceeded
            }
            _ => CallOutcome::TransportError,
        };
        a
    }

    /// The kernel's facts for this attempt's connection — or, for a connect that failed to a
    /// literal IP, for that failed connect (its errno).
    async fn network_facts(
        &self,
        call: &CallRequest,
        a: &AttemptResult,
        when: AttemptTimes,
    ) -> NetworkFacts {
        let connect_failed = matches!(
            a.error,
            Some(
                AttemptError::ConnectRefused
                    | AttemptError::ConnectFailed
                    | AttemptError::ConnectTimeout
            )
        );
        match (&self.observer, a.connection) {
            (Some(o), Some((local, remote))) => {
                o.facts(local, remote, when.attempt_started_mono_ns).await
            }
            (None, Some((local, remote))) => NetworkFacts {
                local: Some(local),
                remote: Some(remote),
                ..NetworkFacts::default()
            },
            (Some(o), None) if connect_failed => {
                let port = call.request.url.port_or_known_default().unwrap_or(0);
                match call.ctx.external_ip {
                    Some(ip) => {
                        o.failed_connect(SocketAddr::new(ip, port), when.call_started)
                            .await
                    }
                    None => NetworkFacts::default(),
                }
            }
            _ => NetworkFacts::default(),
        }
    }

    /// Sends the request once and reads the response to the end.
    async fn send(
        &self,
        rt: &TargetRuntime,
        call: &CallRequest,
        timeout: Duration,
    ) -> AttemptResult {
        let (ctx, req) = (&call.ctx, &call.request);
        let method = reqwest::Method::from_bytes(req.method.as_str().as_bytes())
            .unwrap_or(reqwest::Method::GET);
        let mut builder = rt
            .client
            .request(method, req.url.clone())
            .timeout(timeout)
            .header("traceparent", ctx.traceparent())
            .header("x-request-id", &ctx.request_id);
        if let Some(ts) = &ctx.tracestate {
            builder = builder.header("tracestate", ts);
        }
        if let Some(key) = &ctx.idempotency_key {
            builder = builder.header("idempotency-key", key);
        }
        for (name, value) in &req.headers {
            builder = builder.header(name, value);
        }
        if !req.body.is_empty() {
            builder = builder.body(req.body.clone());
        }
        let mut response = match builder.send().await {
            Ok(r) => r,
            Err(e) => {
                return AttemptResult {
                    status: None,
                    error: Some(classify(&e)),
                    response_bytes: 0,
                    connection: None,
                };
            }
        };
        let status = response.status().as_u16();
        let connection = client::connection_of(&response);
        let (bytes, error) = read_body(&mut response).await;
        AttemptResult {
            status: if error.is_none() { Some(status) } else { None },
            error,
            response_bytes: bytes,
            connection,
        }
    }

    fn snapshot_of(&self, rt: &TargetRuntime) -> ResilienceSnapshot {
        let max = rt.policy.max_in_flight;
        let in_flight = max.saturating_sub(rt.bulkhead.available_permits());
        ResilienceSnapshot {
            target: rt.name.clone(),
            circuit: rt.circuit.state(Instant::now()),
            trip_reason: rt.circuit.trip_reason(),
            queue_depth: rt.queue_depth.load(Ordering::Relaxed),
            in_flight,
            max_in_flight: max,
            saturation: in_flight as f64 / max as f64,
            retry_budget_left: rt.budget.left(Instant::now()),
            rate_limit: rt.policy.rate_per_sec.map(|per_second| RateLimit {
                per_second,
                burst: rt.policy.burst,
            }),
            transitions: rt.circuit.transitions(),
        }
    }
}

impl OutboundGateway for HttpGateway {
    fn execute(&self, call: CallRequest) -> BoxFuture<'_, OutboundResult> {
        // The caller's span (the executor's, per call) carries the call's ids.
        Box::pin(self.run(call))
    }

    fn snapshot(&self) -> Vec<ResilienceSnapshot> {
        let mut out: Vec<_> = self
            .targets
            .values()
            .map(|rt| self.snapshot_of(rt))
            .collect();
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }
}
