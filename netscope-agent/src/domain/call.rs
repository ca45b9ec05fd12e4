//! An outbound call as the pipeline carries it: who asked (trace and request identity), what to
//! call, and under which configured target and route (the bounded names metrics may use).

use std::{fmt, net::IpAddr};

use serde::{Serialize, Serializer};

/// W3C trace id: 16 bytes, never all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// W3C span (parent) id: 8 bytes, never all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

fn hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0, f)
    }
}

impl Serialize for TraceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for SpanId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Name of a configured target service: one of a bounded set, safe as a metric label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TargetName(pub String);

/// Name of a configured route of a target: one of a bounded set, safe as a metric label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RouteName(pub String);

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who asked for a call, carried through logs, results and audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestContext {
    pub trace_id: TraceId,
    /// This call's own span.
    pub span_id: SpanId,
    /// The span that asked for it (from `traceparent`), when one was valid.
    pub parent_span_id: Option<SpanId>,
    pub trace_flags: u8,
    /// Passed on untouched when the `traceparent` was valid.
    pub tracestate: Option<String>,
    pub request_id: String,
    pub idempotency_key: Option<String>,
    pub target: TargetName,
    pub route: RouteName,
    /// The internal caller's address, when the message names it.
    pub internal_ip: Option<IpAddr>,
    /// The external service's address: the URL's literal IP, else the connection's remote
    /// address once known.
    pub external_ip: Option<IpAddr>,
}

impl RequestContext {
    /// A context of target `demo`, route `default`, fixed trace and span ids, no key: what
    /// benchmarks and tests start from.
    pub fn example(request_id: &str) -> Self {
        Self {
            trace_id: TraceId([0x4b; 16]),
            span_id: SpanId([0x11; 8]),
            parent_span_id: None,
            trace_flags: 1,
            tracestate: None,
            request_id: request_id.to_owned(),
            idempotency_key: None,
            target: TargetName("demo".into()),
            route: RouteName("default".into()),
            internal_ip: None,
            external_ip: None,
        }
    }

    /// The `traceparent` to send downstream: same trace, this call's span as parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id, self.span_id, self.trace_flags
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl HttpMethod {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "PATCH" => Self::Patch,
            "DELETE" => Self::Delete,
            "OPTIONS" => Self::Options,
            _ => return None,
        })
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Options => "OPTIONS",
        }
    }

    /// RFC 9110 §9.2.2: repeating the request has the same effect as sending it once.
    pub const fn is_idempotent(self) -> bool {
        !matches!(self, Self::Post | Self::Patch)
    }
}

/// What to send. Header names are lower-case and unique; hop-by-hop headers never appear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundRequest {
    pub method: HttpMethod,
    pub url: url::Url,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The call must be over by then (Unix ms); retries never go past it.
    pub deadline_unix_ms: u64,
}

impl OutboundRequest {
    /// May this request be sent more than once? Only idempotent methods, or requests carrying
    /// an idempotency key (sent as `Idempotency-Key`).
    pub fn retryable(&self, ctx: &RequestContext) -> bool {
        self.method.is_idempotent() || ctx.idempotency_key.is_some()
    }
}

/// A normalised call, ready for the outbound side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRequest {
    pub ctx: RequestContext,
    pub request: OutboundRequest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_as_lowercase_hex() {
        let t = TraceId([0xab; 16]);
        assert_eq!(t.to_string(), "ab".repeat(16));
        assert_eq!(
            SpanId([0, 1, 2, 3, 4, 5, 6, 0xff]).to_string(),
            "00010203040506ff"
        );
    }

    #[test]
    fn methods_know_their_idempotence() {
        for m in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"] {
            assert!(HttpMethod::parse(m).unwrap().is_idempotent(), "{m}");
        }
        for m in ["POST", "PATCH"] {
            assert!(!HttpMethod::parse(m).unwrap().is_idempotent(), "{m}");
        }
        assert_eq!(HttpMethod::parse("get"), None, "methods are case-sensitive");
        assert_eq!(HttpMethod::parse("TRACE"), None);
        assert_eq!(HttpMethod::parse("PATCH").unwrap().as_str(), "PATCH");
    }
}
