//! Ports: what the domain needs from the outside world, implemented by outer modules.

use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use super::{
    CallRequest, FlowUpdate, RecordRef,
    outcome::{BoxFuture, NetworkFacts, OutboundResult, ResilienceSnapshot},
    query::{CallFilter, Check, FlowCursor, FlowFilter, FlowPage, Sample},
};

/// What travels on the [`EventBus`].
#[derive(Clone, Debug)]
pub enum BusEvent {
    /// The kernel saw a connection open, fail or close.
    Flow(FlowUpdate),
    /// A call finished.
    Call(Arc<OutboundResult>),
}

/// Executes outbound calls under the resilience policies.
pub trait OutboundGateway: Send + Sync {
    fn execute(&self, call: CallRequest) -> BoxFuture<'_, OutboundResult>;
    fn snapshot(&self) -> Vec<ResilienceSnapshot>;
}

/// Internal fan-out of flow updates and call results to whoever listens (the CLI printer, the
/// WebSocket view, request correlation). Publishing never blocks: a listener that falls behind
/// loses events and the bus counts them.
pub trait EventBus: Send + Sync {
    fn publish(&self, event: BusEvent);
}

/// The kernel's view of a connection, for the outbound side (implemented by the probe).
pub trait ConnectionObserver: Send + Sync {
    /// What the kernel saw of the connection `local → remote` during an attempt that started
    /// at `attempt_started_mono_ns` (CLOCK_MONOTONIC) and has just read its response: counters
    /// are this attempt's share of the connection's; `matched: false` when the kernel has no
    /// such flow. Call it as soon as the response is read (that instant bounds the attempt).
    fn facts(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        attempt_started_mono_ns: u64,
    ) -> BoxFuture<'_, NetworkFacts>;

    /// What the kernel saw of a connect to `remote` that failed during a call started at
    /// `call_started` (its errno: refused, timed out, unreachable…).
    fn failed_connect(
        &self,
        remote: SocketAddr,
        call_started: SystemTime,
    ) -> BoxFuture<'_, NetworkFacts>;
}

/// A sink could not make an outcome durable (it is retried).
#[derive(Debug, thiserror::Error)]
#[error("{sink}: {source}")]
pub struct SinkError {
    pub sink: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkError {
    pub fn new(sink: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            sink,
            source: Box::new(source),
        }
    }
}

/// Where call outcomes go (results topic, audit trail, …). `deliver` returns `Ok` only once
/// the outcome is durable there: the source record is committed after every sink said so.
pub trait OutcomeSink: Send + Sync {
    fn name(&self) -> &'static str;
    fn deliver(&self, result: Arc<OutboundResult>) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// The log calls come from (Kafka): told when a record's outcome is durable everywhere, so
/// that its offset may be committed once every record before it is too.
pub trait SourceLog: Send + Sync {
    /// The record's call is about to run: from here on its side effects may happen.
    fn executing(&self, _record: &RecordRef) {}
    fn finished(&self, record: &RecordRef);
}

/// The audit trail of calls (a local NDJSON file by default; Ceph RGW in production).
pub trait AuditSink: OutcomeSink {}

/// Records what happened for the metrics. Called on the path (once per call, once per flow
/// update), so it never blocks and never loses an event, unlike a bus subscriber.
pub trait MetricsRecorder: Send + Sync {
    fn call_finished(&self, result: &OutboundResult);
    fn flow_updated(&self, update: &FlowUpdate);
}

/// The live flow table, read by the API.
pub trait FlowQuery: Send + Sync {
    /// Matching flows newest first, strictly after `after`, at most `limit`.
    fn flows(&self, filter: &FlowFilter, after: Option<FlowCursor>, limit: usize) -> FlowPage;
}

/// The last calls' results, held in a bounded log, read by the API.
pub trait CallQuery: Send + Sync {
    /// Matching results newest first, at most `limit`.
    fn calls(&self, filter: &CallFilter, limit: usize) -> Vec<Arc<OutboundResult>>;
}

/// One component's part of readiness (`/readyz`).
pub trait HealthCheck: Send + Sync {
    fn checks(&self) -> Vec<Check>;
}

/// One component's counters, read at scrape time by `/metrics` and by `/api/v1/status`.
pub trait CounterSource: Send + Sync {
    /// The component's name in `/api/v1/status`.
    fn component(&self) -> &'static str;
    fn samples(&self) -> Vec<Sample>;
}
