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
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;
use tracing::debug;

use super::{
    budget::RetryBudget,
    circuit::CircuitBreaker,
    client::{self, ClientError},
    policy::TargetPolicy,
    retry,
};
use crate::{
    backoff::Backoff,
    clock::unix_ms,
    domain::{
        CallRequest, TargetName,
        outcome::{
            Attempt, AttemptError, BoxFuture, CallOutcome, NetworkFacts, OutboundResult,
            RequestLine, ResilienceSnapshot, RetryStop,
        },
        ports::{ConnectionObserver, OutboundGateway},
    },
};

/// Responses are read to the end (the connection can then be reused) up to this size.
const MAX_RESPONSE_BYTES: u64 = 16 << 20;

struct TargetRuntime {
    name: TargetName,
    policy: TargetPolicy,
    client: reqwest::Client,
    circuit: CircuitBreaker,
    bulkhead: Arc<Semaphore>,
    limiter: Option<DefaultDirectRateLimiter>,
    budget: RetryBudget,
    /// Calls waiting for a bulkhead slot (the target's queue).
    queue_depth: AtomicUsize,
}

impl TargetRuntime {
    fn new(name: TargetName, policy: TargetPolicy) -> Result<Self, ClientError> {
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Why an attempt did not produce a response.
fn classify(e: &reqwest::Error) -> AttemptError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut io_kind = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        source = s.source();
    }
    use std::io::ErrorKind as K;
    match (e.is_connect(), e.is_timeout(), io_kind) {
        (true, true, _) => AttemptError::ConnectTimeout,
        (true, _, Some(K::ConnectionRefused)) => AttemptError::ConnectRefused,
        (true, _, _) => AttemptError::ConnectFailed,
        (false, true, _) => AttemptError::Timeout,
        (
            _,
            _,
            Some(K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof),
        ) => AttemptError::ConnectionReset,
        _ => AttemptError::Protocol,
    }
}

struct AttemptResult {
    status: Option<u16>,
    error: Option<AttemptError>,
    response_bytes: u64,
    connection: Option<(SocketAddr, SocketAddr)>,
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

    async fn run(&self, call: CallRequest) -> OutboundResult {
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let now_ms = unix_ms(started_wall);
        let deadline =
            started + Duration::from_millis(call.request.deadline_unix_ms.saturating_sub(now_ms));
        let rt = self.runtime(&call.ctx.target);
        let mut result = OutboundResult {
            method: call.request.method.as_str(),
            request: RequestLine::of(&call.request.url),
            outcome: CallOutcome::DeadlineExceeded,
            status: None,
            attempts: Vec::new(),
            retry_stop: RetryStop::Deadline,
            started_unix_ms: now_ms,
            duration_ms: 0.0,
            request_bytes: call.request.body.len() as u64,
            response_bytes: 0,
            circuit: rt.circuit.state(started),
            network: NetworkFacts::default(),
            ctx: call.ctx.clone(),
        };
        let finish = |mut r: OutboundResult| {
            r.duration_ms = ms(started.elapsed());
            r
        };
        if Instant::now() >= deadline {
            return finish(result);
        }

        // 2. Rate limit.
        if let Some(limiter) = &rt.limiter {
            tokio::select! {
                _ = limiter.until_ready() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    result.outcome = CallOutcome::RateLimited;
                    return finish(result);
                }
            }
        }
        // 3. Bulkhead: the target's slots, then the agent's.
        rt.queue_depth.fetch_add(1, Ordering::Relaxed);
        let permits = tokio::select! {
            p = async {
                let target = Arc::clone(&rt.bulkhead).acquire_owned().await;
                let global = Arc::clone(&self.global).acquire_owned().await;
                (target, global)
            } => Some(p),
            _ = tokio::time::sleep_until(deadline.into()) => None,
        };
        rt.queue_depth.fetch_sub(1, Ordering::Relaxed);
        let Some((Ok(_target_slot), Ok(_global_slot))) = permits else {
            result.outcome = CallOutcome::BulkheadFull;
            return finish(result);
        };

        // 4–5. Circuit and attempts.
        rt.budget.deposit(Instant::now());
        let retryable = call.request.retryable(&call.ctx);
        let mut backoff = Backoff::new(rt.policy.retry.min_backoff, rt.policy.retry.max_backoff);
        let mut waited = Duration::ZERO;
        loop {
            let now = Instant::now();
            let Some(admitted) = rt.circuit.try_acquire(now) else {
                if result.attempts.is_empty() {
                    result.outcome = CallOutcome::CircuitOpen;
                }
                result.retry_stop = RetryStop::CircuitOpen;
                break;
            };
            if result.attempts.is_empty() {
                result.circuit = admitted.0;
            }
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                result.retry_stop = RetryStop::Deadline;
                break;
            }
            let timeout = rt.policy.attempt_timeout.min(left);
            let attempt_started = Instant::now();
            let a = self.attempt(&rt, &call, timeout).await;
            let took = attempt_started.elapsed();
            rt.circuit.record(
                admitted,
                retry::is_failure(a.status, a.error),
                took,
                Instant::now(),
            );
            result.attempts.push(Attempt {
                number: result.attempts.len() as u32 + 1,
                status: a.status,
                error: a.error,
                duration_ms: ms(took),
                backoff_ms: ms(waited),
            });
            result.network = self.network_facts(&call, &a, started_wall).await;
            result.status = a.status;
            result.response_bytes = a.response_bytes;
            result.outcome = match (a.status, a.error) {
                (Some(_), _) => CallOutcome::Response,
                (None, Some(AttemptError::Timeout)) if Instant::now() >= deadline => {
                    CallOutcome::DeadlineExceeded
                }
                _ => CallOutcome::TransportError,
            };
            let worth_retrying = match (a.status, a.error) {
                (Some(s), _) => retry::retryable_status(s),
                // Every transport failure is worth another attempt; whether this request may
                // be repeated at all is checked next.
                (None, Some(_)) => true,
                (None, None) => false,
            };
            if !worth_retrying {
                result.retry_stop = if a.status.is_some_and(|s| s < 400) {
                    RetryStop::Succeeded
                } else {
                    RetryStop::NotRetryable
                };
                break;
            }
            if !retryable {
                result.retry_stop = RetryStop::NotIdempotent;
                break;
            }
            if result.attempts.len() as u32 >= rt.policy.retry.max_attempts {
                result.retry_stop = RetryStop::MaxAttempts;
                break;
            }
            let delay = backoff.next_delay();
            if Instant::now() + delay >= deadline {
                result.retry_stop = RetryStop::Deadline;
                break;
            }
            if !rt.budget.withdraw(Instant::now()) {
                result.retry_stop = RetryStop::BudgetExhausted;
                break;
            }
            debug!(
                delay_ms = ms(delay),
                attempt = result.attempts.len(),
                "retrying"
            );
            tokio::time::sleep(delay).await;
            waited = delay;
        }
        finish(result)
    }

    /// The kernel's facts for this attempt's connection — or, for a connect that failed to a
    /// literal IP, for that failed connect (its errno).
    async fn network_facts(
        &self,
        call: &CallRequest,
        a: &AttemptResult,
        started: SystemTime,
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
            (Some(o), Some((local, remote))) => o.facts(local, remote, started).await,
            (None, Some((local, remote))) => NetworkFacts {
                local: Some(local),
                remote: Some(remote),
                ..NetworkFacts::default()
            },
            (Some(o), None) if connect_failed => {
                let port = call.request.url.port_or_known_default().unwrap_or(0);
                match call.ctx.external_ip {
                    Some(ip) => o.failed_connect(SocketAddr::new(ip, port), started).await,
                    None => NetworkFacts::default(),
                }
            }
            _ => NetworkFacts::default(),
        }
    }

    async fn attempt(
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
        // Read the body to the end: its bytes are part of the call, and the connection can
        // then go back to the pool.
        let mut bytes = 0u64;
        let mut error = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    bytes += chunk.len() as u64;
                    if bytes > MAX_RESPONSE_BYTES {
                        error = Some(AttemptError::Protocol);
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(classify(&e));
                    break;
                }
            }
        }
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
