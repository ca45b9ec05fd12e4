//! What a call produced: status, attempts, durations, resilience decisions, and what the kernel
//! saw of its connection.

use std::{future::Future, net::SocketAddr, pin::Pin};

use serde::Serialize;

use super::{RequestContext, TargetName};

/// How a call ended.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    strum::EnumString,
    strum::EnumIter,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum CallOutcome {
    /// A response arrived (whatever its status).
    Response,
    /// No response: every attempt failed at the transport level.
    TransportError,
    /// The call's deadline passed (before or during an attempt).
    DeadlineExceeded,
    /// The target's circuit was open: not attempted.
    CircuitOpen,
    /// The bulkhead was full until the deadline: not attempted.
    BulkheadFull,
    /// The rate limit had no token before the deadline: not attempted.
    RateLimited,
}

/// Why one attempt failed (for retry decisions and the circuit breaker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum AttemptError {
    ConnectRefused,
    ConnectTimeout,
    ConnectFailed,
    Timeout,
    ConnectionReset,
    Protocol,
}

/// One try at the call.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Attempt {
    pub number: u32,
    pub status: Option<u16>,
    pub error: Option<AttemptError>,
    pub duration_ms: f64,
    /// Delay waited before this attempt (0 for the first).
    pub backoff_ms: f64,
}

/// Why the call stopped retrying (or never retried).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RetryStop {
    Succeeded,
    NotRetryable,
    /// Non-idempotent without an idempotency key: never retried.
    NotIdempotent,
    MaxAttempts,
    BudgetExhausted,
    Deadline,
    CircuitOpen,
}

/// The kernel's facts about the connection a call used; all `None` when no flow matched.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetworkFacts {
    /// True when the kernel saw this connection; false means nothing below is known.
    pub matched: bool,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// True when the connection was opened for this call; false when reused.
    pub new_connection: Option<bool>,
    pub connect_latency_ns: Option<u64>,
    /// During this call only (deltas of the connection's counters).
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    pub retransmits: Option<u32>,
    pub srtt_us: Option<u32>,
    /// errno of a connect that failed (e.g. 111 refused), when the kernel saw one.
    pub connect_errno: Option<i32>,
}

/// Where a call went, without the query string (which may carry secrets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestLine {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl RequestLine {
    pub fn of(url: &url::Url) -> Self {
        Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str().unwrap_or_default().to_owned(),
            port: url.port_or_known_default().unwrap_or(0),
            path: url.path().to_owned(),
        }
    }
}

/// The result of one call, as sinks (results topic, bus, audit) receive it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutboundResult {
    pub ctx: RequestContext,
    pub method: &'static str,
    pub request: RequestLine,
    pub outcome: CallOutcome,
    pub status: Option<u16>,
    pub attempts: Vec<Attempt>,
    pub retry_stop: RetryStop,
    pub started_unix_ms: u64,
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The circuit's state when the call was admitted.
    pub circuit: CircuitState,
    pub network: NetworkFacts,
}

impl OutboundResult {
    /// A representative finished call (`GET http://127.0.0.1:18080/orders/1`, one attempt,
    /// 200) with this request id: what benchmarks and tests of the sinks feed them.
    pub fn example(request_id: &str) -> Self {
        Self {
            ctx: RequestContext {
                route: super::RouteName("orders".into()),
                ..RequestContext::example(request_id)
            },
            method: "GET",
            request: RequestLine {
                scheme: "http".into(),
                host: "127.0.0.1".into(),
                port: 18080,
                path: "/orders/1".into(),
            },
            outcome: CallOutcome::Response,
            status: Some(200),
            attempts: vec![Attempt {
                number: 1,
                status: Some(200),
                error: None,
                duration_ms: 1.2,
                backoff_ms: 0.0,
            }],
            retry_stop: RetryStop::Succeeded,
            started_unix_ms: 0,
            duration_ms: 1.3,
            request_bytes: 0,
            response_bytes: 128,
            circuit: CircuitState::Closed,
            network: NetworkFacts::default(),
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

/// Why a circuit opened.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TripReason {
    FailureRate {
        rate: f64,
        threshold: f64,
        window: u32,
    },
    SlowCallRate {
        rate: f64,
        threshold: f64,
        window: u32,
    },
    HalfOpenProbeFailed,
}

/// A target's resilience state, for the API and operators.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResilienceSnapshot {
    pub target: TargetName,
    pub circuit: CircuitState,
    pub trip_reason: Option<TripReason>,
    pub queue_depth: usize,
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// in_flight ÷ max_in_flight.
    pub saturation: f64,
    /// Retries the budget would allow right now (0 or more; estimated).
    pub retry_budget_left: u32,
    /// The target's rate limit (calls/s and burst), when it has one.
    pub rate_limit: Option<RateLimit>,
    /// Times the circuit moved to each state since start.
    pub transitions: CircuitTransitions,
}

/// A token bucket's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// Times a circuit moved to each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CircuitTransitions {
    pub opened: u64,
    pub half_opened: u64,
    pub closed: u64,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
