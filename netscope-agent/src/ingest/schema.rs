//! Outbound-call request messages, schema v1 (JSON; see `docs/request-schema-v1.md` and the
//! samples in `samples/requests/`), and their normalisation into a [`CallRequest`].
//!
//! Every way a message can be wrong has a stable [`RejectReason`] code: it goes with the original
//! bytes to the dead-letter topic.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Deserialize;
use url::Url;

use super::{
    record::{RecordHeader, escape_name},
    trace_context::{self, TraceContext},
};
use crate::domain::{
    CallRequest, HttpMethod, OutboundRequest, RequestContext,
    targets::{Host, Refusal, Target, Targets},
};

/// Why a message was rejected. Codes (the snake_case names) are stable: dashboards and
/// replays depend on them, and the stored corpus pins every one.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, strum::EnumCount, strum::EnumIter, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum RejectReason {
    EmptyMessage,
    MessageTooLarge,
    InvalidJson,
    NotAnObject,
    MissingSchemaVersion,
    UnsupportedSchemaVersion,
    MissingField,
    UnknownField,
    InvalidFieldType,
    InvalidMethod,
    InvalidUrl,
    UnsupportedScheme,
    UrlCredentials,
    UrlTooLong,
    TargetForbidden,
    TargetNotAllowed,
    UnknownRoute,
    InvalidHeaderName,
    InvalidHeaderValue,
    ReservedHeader,
    HopByHopHeader,
    DuplicateHeader,
    TooManyHeaders,
    HeadersTooLarge,
    BodyTooLarge,
    AmbiguousBody,
    InvalidBase64,
    InvalidTimeout,
    AmbiguousDeadline,
    InvalidDeadline,
    InvalidIdempotencyKey,
    InvalidSourceIp,
    /// A Kafka record header's name is not UTF-8.
    InvalidRecordHeader,
    /// The Kafka record carries more headers, or more header bytes, than the limits allow.
    RecordHeadersTooLarge,
    /// In flight at two consecutive deaths of the agent: it is what kills it (see
    /// `ingest::inflight`).
    Poison,
    /// Older than `--max-record-age-secs` by its Kafka timestamp: whoever asked has given up.
    Expired,
    /// Executing when the agent died, and not safe to run again (a POST or PATCH without an
    /// idempotency key, its target not `replay_unsafe`): it may have reached its target.
    MaybeExecuted,
}

impl RejectReason {
    pub fn code(self) -> &'static str {
        self.into()
    }

    /// Its place in `0..RejectReason::COUNT` (for per-reason counters).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the record's own bytes decide it (the malformed corpus has a sample of each);
    /// the others come from what happened to the record before.
    pub fn about_content(self) -> bool {
        !matches!(self, Self::Poison | Self::MaybeExecuted | Self::Expired)
    }
}

/// A rejected message: the reason, a human detail, and the identity it would have had (so the
/// rejection can be logged with its trace and request ids).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
    pub trace: TraceContext,
    pub request_id: String,
}

/// Bounds on what a message may ask for. Validated with the rest of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_url_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    /// Kafka record headers (not the request's own): at most this many…
    pub max_record_headers: usize,
    /// …and this many bytes of names and values together.
    pub max_record_header_bytes: usize,
    /// A record older than this (by its Kafka timestamp) is dead-lettered as `expired`, not
    /// run; `None`: no limit.
    pub max_record_age_ms: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 2 << 20,
            max_url_bytes: 2048,
            max_headers: 64,
            max_header_bytes: 16 << 10,
            max_body_bytes: 1 << 20,
            default_timeout_ms: 10_000,
            max_timeout_ms: 300_000,
            max_record_headers: 64,
            max_record_header_bytes: 64 << 10,
            max_record_age_ms: Some(15 * 60 * 1000),
        }
    }
}

/// Schema v1's fields, and those it requires (besides `schema_version`, checked first).
const V1_FIELDS: [&str; 11] = [
    "schema_version",
    "method",
    "url",
    "headers",
    "body",
    "body_base64",
    "route",
    "idempotency_key",
    "timeout_ms",
    "deadline_unix_ms",
    "source_ip",
];
const V1_REQUIRED: [&str; 2] = ["method", "url"];

/// Schema v1. Unknown fields are refused so that a typo does not silently drop an intent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestV1 {
    #[allow(dead_code, reason = "checked before this struct is decoded")]
    schema_version: u64,
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    body_base64: Option<String>,
    /// One of the target's configured route names (else derived from the path).
    route: Option<String>,
    idempotency_key: Option<String>,
    timeout_ms: Option<u64>,
    deadline_unix_ms: Option<u64>,
    source_ip: Option<String>,
}

/// One Kafka record as the normaliser needs it.
pub struct Incoming<'a> {
    pub payload: Option<&'a [u8]>,
    /// Kafka headers, names and values as bytes, as sent.
    pub headers: &'a [RecordHeader],
    pub received_unix_ms: u64,
    /// The record's Kafka timestamp (create or log-append time), when it has one.
    pub record_unix_ms: Option<u64>,
}

impl Incoming<'_> {
    /// When the call's time started: the record's timestamp, or when it was received if it has
    /// none (or one from the future: a producer's clock ahead of ours).
    fn since_unix_ms(&self) -> u64 {
        self.record_unix_ms
            .map_or(self.received_unix_ms, |t| t.min(self.received_unix_ms))
    }

    /// The trace and request id the record's headers give (a new trace, a generated id, where
    /// they give none), and whether the id was generated.
    fn identity(&self) -> (TraceContext, String, bool) {
        let trace =
            trace_context::trace_context(self.header("traceparent"), self.header("tracestate"));
        let (request_id, generated) = trace_context::request_id(self.header("x-request-id"));
        (trace, request_id, generated)
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|h| h.value.as_deref())
    }
}

/// A normalised message, with what happened to its trace identity (for counters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    pub call: CallRequest,
    pub traceparent: trace_context::TraceParentStatus,
    pub request_id_generated: bool,
}

pub struct Normalizer {
    targets: Targets,
    limits: Limits,
}

type Fail = (RejectReason, String);

fn fail<T>(reason: RejectReason, detail: impl Into<String>) -> Result<T, Fail> {
    Err((reason, detail.into()))
}

impl Normalizer {
    pub fn new(targets: Targets, limits: Limits) -> Self {
        Self { targets, limits }
    }

    /// A rejection of `msg` for what happened to it before (not its content), with the trace
    /// and request ids its headers give.
    pub fn refuse(&self, msg: &Incoming<'_>, reason: RejectReason, detail: String) -> Rejection {
        let (trace, request_id, _) = msg.identity();
        Rejection {
            reason,
            detail,
            trace,
            request_id,
        }
    }

    /// Whether `target`'s calls may run again after a death mid-call even when not idempotent.
    pub fn replay_unsafe(&self, target: &crate::domain::TargetName) -> bool {
        self.targets
            .0
            .iter()
            .any(|t| &t.name == target && t.replay_unsafe)
    }

    /// Validates and normalises one record. Never panics, whatever the bytes.
    pub fn normalize(&self, msg: &Incoming<'_>) -> Result<Normalized, Rejection> {
        let (trace, request_id, request_id_generated) = msg.identity();
        match self.call(msg, &trace, &request_id) {
            Ok(call) => Ok(Normalized {
                call,
                traceparent: trace.status,
                request_id_generated,
            }),
            Err((reason, detail)) => Err(Rejection {
                reason,
                detail,
                trace,
                request_id,
            }),
        }
    }

    /// The steps of normalisation, in order; the first that fails names the reason.
    fn call(
        &self,
        msg: &Incoming<'_>,
        trace: &TraceContext,
        request_id: &str,
    ) -> Result<CallRequest, Fail> {
        self.record_headers(msg.headers)?;
        self.age(msg)?;
        let v1 = self.decode(msg.payload)?;
        let method = HttpMethod::parse(&v1.method).ok_or((
            RejectReason::InvalidMethod,
            format!(
                "`{}` is not one of GET HEAD POST PUT PATCH DELETE OPTIONS",
                v1.method.escape_debug()
            ),
        ))?;
        let url = self.url(&v1.url)?;
        let (target, external_ip) = self.target(&url)?;
        let route = fields::route(target, v1.route.as_deref(), &url)?;
        let headers = self.headers(v1.headers)?;
        let body = self.body(v1.body, v1.body_base64)?;
        // The deadline counts from the record's timestamp: time spent in Kafka is spent.
        let deadline_unix_ms =
            self.deadline(v1.timeout_ms, v1.deadline_unix_ms, msg.since_unix_ms())?;
        let idempotency_key = fields::idempotency_key(v1.idempotency_key)?;
        let internal_ip = fields::source_ip(v1.source_ip)?;
        let ctx = RequestContext {
            trace_id: trace.trace_id,
            span_id: trace_context::random_span_id(),
            parent_span_id: trace.parent_span_id,
            trace_flags: trace.flags,
            tracestate: trace.tracestate.clone(),
            request_id: request_id.to_owned(),
            idempotency_key,
            target: target.name.clone(),
            route,
            internal_ip,
            external_ip,
        };
        Ok(CallRequest {
            ctx,
            request: OutboundRequest {
                method,
                url,
                headers,
                body,
                deadline_unix_ms,
            },
        })
    }

    /// The payload as schema v1: present, within the size limit, a JSON object of version 1,
    /// with only known fields, the required ones, and each of its type.
    fn decode(&self, payload: Option<&[u8]>) -> Result<RequestV1, Fail> {
        let raw = match payload {
            None | Some([]) => {
                return fail(RejectReason::EmptyMessage, "the record has no payload");
            }
            Some(p) if p.len() > self.limits.max_message_bytes => {
                return fail(
                    RejectReason::MessageTooLarge,
                    format!("{} bytes, limit {}", p.len(), self.limits.max_message_bytes),
                );
            }
            Some(p) => p,
        };
        let value: serde_json::Value = serde_json::from_slice(raw)
            .or_else(|e| fail(RejectReason::InvalidJson, e.to_string()))?;
        let object = value.as_object().ok_or((
            RejectReason::NotAnObject,
            "the payload is not a JSON object".to_owned(),
        ))?;
        match object.get("schema_version") {
            None => return fail(RejectReason::MissingSchemaVersion, "no `schema_version`"),
            Some(v) if v.as_u64() == Some(1) => {}
            Some(v) => {
                return fail(
                    RejectReason::UnsupportedSchemaVersion,
                    format!("schema_version {v} (this agent reads 1)"),
                );
            }
        }
        if let Some(unknown) = object.keys().find(|k| !V1_FIELDS.contains(&k.as_str())) {
            return fail(
                RejectReason::UnknownField,
                format!("unknown field `{}`", unknown.escape_debug()),
            );
        }
        if let Some(missing) = V1_REQUIRED.iter().find(|f| !object.contains_key(**f)) {
            return fail(
                RejectReason::MissingField,
                format!("missing field `{missing}`"),
            );
        }
        // Every field is known and present: what serde still refuses is a value's type.
        serde_json::from_value(value).or_else(|e| {
            let reason = match e.classify() {
                serde_json::error::Category::Data => RejectReason::InvalidFieldType,
                _ => RejectReason::InvalidJson,
            };
            fail(reason, e.to_string())
        })
    }

    /// The record is not older than the age limit.
    fn age(&self, msg: &Incoming<'_>) -> Result<(), Fail> {
        let age = msg.received_unix_ms.saturating_sub(msg.since_unix_ms());
        match self.limits.max_record_age_ms {
            Some(max) if age > max => fail(
                RejectReason::Expired,
                format!("the record is {} s old, limit {} s", age / 1000, max / 1000),
            ),
            _ => Ok(()),
        }
    }

    /// The Kafka record's own headers: within the count and byte limits, every name UTF-8.
    fn record_headers(&self, headers: &[RecordHeader]) -> Result<(), Fail> {
        let bytes: usize = headers.iter().map(RecordHeader::len).sum();
        if headers.len() > self.limits.max_record_headers
            || bytes > self.limits.max_record_header_bytes
        {
            return fail(
                RejectReason::RecordHeadersTooLarge,
                format!(
                    "{} record headers of {bytes} bytes, limits {} and {}",
                    headers.len(),
                    self.limits.max_record_headers,
                    self.limits.max_record_header_bytes
                ),
            );
        }
        match headers
            .iter()
            .enumerate()
            .find(|(_, h)| h.name_str().is_none())
        {
            Some((i, h)) => fail(
                RejectReason::InvalidRecordHeader,
                format!(
                    "record header #{i}'s name is not UTF-8 (`{}`)",
                    escape_name(&h.name)
                ),
            ),
            None => Ok(()),
        }
    }

    /// The allow-listed target the URL's host and port belong to, and the host's IP when it is
    /// a literal one.
    fn target(&self, url: &Url) -> Result<(&Target, Option<IpAddr>), Fail> {
        let host = match url.host() {
            Some(url::Host::Domain(d)) => Host::Name(d),
            Some(url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Host::Ip(IpAddr::V6(ip)),
            None => return fail(RejectReason::InvalidUrl, "the URL has no host"),
        };
        let port = url.port_or_known_default().unwrap_or(0);
        let external_ip = match host {
            Host::Ip(ip) => Some(ip),
            Host::Name(_) => None,
        };
        match self.targets.resolve(&host, port) {
            Ok(t) => Ok((t, external_ip)),
            Err(Refusal::Forbidden) => fail(
                RejectReason::TargetForbidden,
                format!("{host:?} is never a target"),
            ),
            Err(Refusal::NotAllowed) => fail(
                RejectReason::TargetNotAllowed,
                format!(
                    "{}:{port} is not in the allow-list",
                    url.host_str().unwrap_or("")
                ),
            ),
        }
    }
}

#[path = "schema_fields.rs"]
mod fields;

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
