//! `AuditEvent`: the immutable, versioned record of one outbound call, as the audit trail keeps
//! it. Compatibility rules (checked by the contract tests on `samples/audit/`):
//! - every stored sample of every version still decodes;
//! - a new version only adds optional fields (`Option` or `#[serde(default)]`), never renames,
//!   removes or retypes one; `event_version` says which fields a writer knew.
//!
//! Request bodies are never recorded: only their size. The query string is dropped from the
//! recorded path (it may carry secrets).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::outcome::{
    AttemptError, CallOutcome, CircuitState, NetworkFacts, OutboundResult, RetryStop,
};

/// The version this agent writes.
pub const AUDIT_EVENT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub event_version: u32,
    /// Unique: `<node>-<sequence>`.
    pub event_id: String,
    /// The agent (node) that made the call.
    pub node: String,
    /// Per node, gap-free and increasing: completeness is checked against it.
    pub sequence: u64,
    pub timestamp_unix_ms: u64,
    pub context: AuditContext,
    pub request: RequestSummary,
    pub outcome: OutcomeSummary,
    pub network: AuditNetwork,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditContext {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub request_id: String,
    pub idempotency_key: Option<String>,
    pub target: String,
    pub route: String,
    pub internal_ip: Option<IpAddr>,
    pub external_ip: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSummary {
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// Without the query string.
    pub path: String,
    pub body_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditAttempt {
    pub number: u32,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: f64,
    pub backoff_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutcomeSummary {
    /// `response`, `transport_error`, `deadline_exceeded`, `circuit_open`, `bulkhead_full`,
    /// `rate_limited`.
    pub outcome: String,
    pub status: Option<u16>,
    pub attempts: Vec<AuditAttempt>,
    /// Why retrying stopped.
    pub retry_stop: String,
    /// The circuit's state when the call was admitted.
    pub circuit: String,
    pub started_unix_ms: u64,
    pub duration_ms: f64,
    pub response_bytes: u64,
}

/// A copy of [`NetworkFacts`] on purpose: the stored contract must not change when the
/// internal type does (addresses are kept as text, as written).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditNetwork {
    pub matched: bool,
    pub local: Option<String>,
    pub remote: Option<String>,
    pub new_connection: Option<bool>,
    pub connect_latency_ns: Option<u64>,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    pub retransmits: Option<u32>,
    pub srtt_us: Option<u32>,
    pub connect_errno: Option<i32>,
}

/// The snake_case name serde gives a unit variant.
fn name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl From<&NetworkFacts> for AuditNetwork {
    fn from(n: &NetworkFacts) -> Self {
        Self {
            matched: n.matched,
            local: n.local.map(|a| a.to_string()),
            remote: n.remote.map(|a| a.to_string()),
            new_connection: n.new_connection,
            connect_latency_ns: n.connect_latency_ns,
            bytes_sent: n.bytes_sent,
            bytes_received: n.bytes_received,
            retransmits: n.retransmits,
            srtt_us: n.srtt_us,
            connect_errno: n.connect_errno,
        }
    }
}

impl AuditEvent {
    /// The audit record of a call.
    pub fn of(result: &OutboundResult, node: &str, sequence: u64, now_unix_ms: u64) -> Self {
        let c = &result.ctx;
        Self {
            event_version: AUDIT_EVENT_VERSION,
            event_id: format!("{node}-{sequence}"),
            node: node.to_owned(),
            sequence,
            timestamp_unix_ms: now_unix_ms,
            context: AuditContext {
                trace_id: c.trace_id.to_string(),
                span_id: c.span_id.to_string(),
                parent_span_id: c.parent_span_id.map(|s| s.to_string()),
                request_id: c.request_id.clone(),
                idempotency_key: c.idempotency_key.clone(),
                target: c.target.0.clone(),
                route: c.route.0.clone(),
                internal_ip: c.internal_ip,
                external_ip: c.external_ip,
            },
            request: RequestSummary {
                method: result.method.to_owned(),
                scheme: result.request.scheme.clone(),
                host: result.request.host.clone(),
                port: result.request.port,
                path: result.request.path.clone(),
                body_bytes: result.request_bytes,
            },
            outcome: OutcomeSummary {
                outcome: name::<CallOutcome>(&result.outcome),
                status: result.status,
                attempts: result
                    .attempts
                    .iter()
                    .map(|a| AuditAttempt {
                        number: a.number,
                        status: a.status,
                        error: a.error.as_ref().map(name::<AttemptError>),
                        duration_ms: a.duration_ms,
                        backoff_ms: a.backoff_ms,
                    })
                    .collect(),
                retry_stop: name::<RetryStop>(&result.retry_stop),
                circuit: name::<CircuitState>(&result.circuit),
                started_unix_ms: result.started_unix_ms,
                duration_ms: result.duration_ms,
                response_bytes: result.response_bytes,
            },
            network: AuditNetwork::from(&result.network),
        }
    }
}

#[cfg(test)]
#[path = "audit_contract_tests.rs"]
mod contract_tests;
