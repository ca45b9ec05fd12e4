//! Schema v1's fields one by one (a child of `schema.rs`): the URL, headers, body, deadline,
//! route, idempotency key and source address of a request, each checked against the
//! [`Limits`](super::Limits) and refused with its own [`RejectReason`].

use std::{collections::BTreeMap, net::IpAddr};

use base64::Engine as _;
use url::Url;

use super::{Fail, Normalizer, RejectReason, fail};
use crate::domain::{RouteName, targets::Target};

/// Headers NetScope sets itself: a message may not carry them as HTTP headers.
const RESERVED: [&str; 5] = [
    "traceparent",
    "tracestate",
    "x-request-id",
    "idempotency-key",
    "user-agent",
];
/// Connection-level headers (RFC 9110 §7.6.1) and those the client computes.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
    "expect",
];

impl Normalizer {
    pub(super) fn url(&self, raw: &str) -> Result<Url, Fail> {
        if raw.len() > self.limits.max_url_bytes {
            return fail(
                RejectReason::UrlTooLong,
                format!("{} bytes, limit {}", raw.len(), self.limits.max_url_bytes),
            );
        }
        let mut url = Url::parse(raw).or_else(|e| fail(RejectReason::InvalidUrl, e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return fail(
                RejectReason::UnsupportedScheme,
                format!("`{}`: only http and https", url.scheme()),
            );
        }
        if !url.username().is_empty() || url.password().is_some() {
            return fail(
                RejectReason::UrlCredentials,
                "credentials in URLs are refused",
            );
        }
        url.set_fragment(None);
        Ok(url)
    }

    pub(super) fn headers(
        &self,
        raw: BTreeMap<String, String>,
    ) -> Result<Vec<(String, String)>, Fail> {
        if raw.len() > self.limits.max_headers {
            return fail(
                RejectReason::TooManyHeaders,
                format!("{} headers, limit {}", raw.len(), self.limits.max_headers),
            );
        }
        let total: usize = raw.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > self.limits.max_header_bytes {
            return fail(
                RejectReason::HeadersTooLarge,
                format!("{total} bytes, limit {}", self.limits.max_header_bytes),
            );
        }
        let mut out: Vec<(String, String)> = Vec::with_capacity(raw.len());
        for (name, value) in raw {
            // An HTTP token (RFC 9110 §5.1), lower-cased.
            let Ok(parsed) = http::HeaderName::from_bytes(name.as_bytes()) else {
                return fail(
                    RejectReason::InvalidHeaderName,
                    format!("`{}`", name.escape_debug()),
                );
            };
            let lower = parsed.as_str().to_owned();
            if RESERVED.contains(&lower.as_str()) {
                return fail(
                    RejectReason::ReservedHeader,
                    format!("`{lower}` is set by NetScope (use Kafka headers or idempotency_key)"),
                );
            }
            if HOP_BY_HOP.contains(&lower.as_str()) || lower.starts_with("proxy-") {
                return fail(RejectReason::HopByHopHeader, format!("`{lower}`"));
            }
            // Visible ASCII, spaces and tabs only (no obs-text).
            if http::HeaderValue::from_str(&value).is_err() {
                return fail(
                    RejectReason::InvalidHeaderValue,
                    format!("`{lower}`: control or non-ASCII characters"),
                );
            }
            if out.iter().any(|(n, _)| *n == lower) {
                return fail(
                    RejectReason::DuplicateHeader,
                    format!("`{lower}` given twice"),
                );
            }
            out.push((lower, value.trim().to_owned()));
        }
        Ok(out)
    }

    pub(super) fn body(&self, text: Option<String>, b64: Option<String>) -> Result<Vec<u8>, Fail> {
        let body = match (text, b64) {
            (Some(_), Some(_)) => {
                return fail(RejectReason::AmbiguousBody, "both `body` and `body_base64`");
            }
            (Some(t), None) => t.into_bytes(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .or_else(|e| fail(RejectReason::InvalidBase64, e.to_string()))?,
            (None, None) => Vec::new(),
        };
        if body.len() > self.limits.max_body_bytes {
            return fail(
                RejectReason::BodyTooLarge,
                format!("{} bytes, limit {}", body.len(), self.limits.max_body_bytes),
            );
        }
        Ok(body)
    }

    pub(super) fn deadline(
        &self,
        timeout: Option<u64>,
        deadline: Option<u64>,
        now: u64,
    ) -> Result<u64, Fail> {
        let max = self.limits.max_timeout_ms;
        match (timeout, deadline) {
            (Some(_), Some(_)) => fail(
                RejectReason::AmbiguousDeadline,
                "both `timeout_ms` and `deadline_unix_ms`",
            ),
            (Some(t), None) if t == 0 || t > max => fail(
                RejectReason::InvalidTimeout,
                format!("timeout_ms {t}: 1..={max}"),
            ),
            (Some(t), None) => Ok(now + t),
            // An expired deadline is not malformed: the call ends as `deadline_exceeded`.
            (None, Some(d)) if d > now + max => fail(
                RejectReason::InvalidDeadline,
                format!("deadline_unix_ms {d} is more than {max} ms ahead"),
            ),
            (None, Some(d)) => Ok(d),
            (None, None) => Ok(now + self.limits.default_timeout_ms),
        }
    }
}

/// The route asked for (one of the target's configured routes), or the one its path matches.
pub(super) fn route(target: &Target, asked: Option<&str>, url: &Url) -> Result<RouteName, Fail> {
    let Some(name) = asked else {
        return Ok(target.route(url.path()));
    };
    target
        .routes
        .iter()
        .find(|r| r.name.0 == name)
        .map(|r| r.name.clone())
        .ok_or_else(|| {
            (
                RejectReason::UnknownRoute,
                format!(
                    "`{}` is not a route of target `{}`",
                    name.escape_debug(),
                    target.name
                ),
            )
        })
}

/// 1–255 visible ASCII characters, when given.
pub(super) fn idempotency_key(key: Option<String>) -> Result<Option<String>, Fail> {
    match key {
        None => Ok(None),
        Some(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k))
        }
        Some(k) => fail(
            RejectReason::InvalidIdempotencyKey,
            format!("{} bytes; 1–255 visible ASCII characters expected", k.len()),
        ),
    }
}

/// The caller's own address, when given.
pub(super) fn source_ip(ip: Option<String>) -> Result<Option<IpAddr>, Fail> {
    let Some(s) = ip else { return Ok(None) };
    s.parse::<IpAddr>().map(Some).or_else(|_| {
        fail(
            RejectReason::InvalidSourceIp,
            format!("`{}` is not an IP address", s.escape_debug()),
        )
    })
}
