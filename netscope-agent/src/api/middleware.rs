//! Middleware, outermost first: request id (kept or generated, echoed back), a span per request
//! (carrying the incoming `traceparent`), URI length limit, per-client rate limit, and — on the
//! routes that need it — the bearer token. Body limit and timeout are tower-http layers (see
//! [`super::router`]).

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Instant};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};
use rand::Rng as _;
use subtle::ConstantTimeEq as _;
use tracing::Instrument as _;

use super::{
    ApiState,
    error::ApiError,
    extract::{ClientIp, TraceContext},
};

/// Longest request URI accepted (path and query).
pub const MAX_URI_BYTES: usize = 2048;
/// Largest request body accepted (the API reads none; a page's form would be small).
pub const MAX_BODY_BYTES: usize = 16 << 10;
/// The cookie the page's token is kept in after `/?token=…`.
pub const TOKEN_COOKIE: &str = "netscope_token";
const REQUEST_ID: &str = "x-request-id";

/// A request id: the client's when it sent a sane one, else 16 random bytes in hex.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(REQUEST_ID)
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        })
        .cloned()
        .unwrap_or_else(|| {
            let id: [u8; 16] = rand::rng().random();
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&hex).unwrap_or(HeaderValue::from_static("invalid"))
        })
}

/// Request id and span: every log line of the request carries its `request_id` and, when the
/// client sent a `traceparent`, its `trace_id`.
pub async fn trace(mut req: Request, next: Next) -> Response {
    let id = request_id(req.headers());
    req.headers_mut().insert(REQUEST_ID, id.clone());
    let tc = TraceContext::of(req.headers());
    let trace_id = tc.trace_id.map(|t| t.to_string()).unwrap_or_default();
    let span = tracing::info_span!("api", request_id = id.to_str().unwrap_or_default(),
        trace_id = %trace_id, method = %req.method(), path = req.uri().path());
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "API request served"
        );
    });
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

/// 414 for a URI longer than [`MAX_URI_BYTES`].
pub async fn limit_uri(req: Request, next: Next) -> Response {
    let len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if len > MAX_URI_BYTES {
        return ApiError::UriTooLong(MAX_URI_BYTES).into_response();
    }
    next.run(req).await
}

/// Per-client token buckets (keyed by [`ClientIp`]).
pub struct ClientLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl ClientLimiter {
    /// `rate` requests per second, bursts of twice as many.
    pub fn new(rate: u32) -> Self {
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        }
    }

    /// `Err(seconds to wait)` when `ip` is over its rate.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        // Forget idle clients once in a while, so that the table stays bounded.
        if self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

pub async fn rate_limit(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(peer) = peer {
        let ip = ClientIp::resolve(peer, req.headers(), &state.settings.trusted_proxies);
        if let Err(retry_after_secs) = state.limiter.check(ip.0) {
            return ApiError::TooManyRequests { retry_after_secs }.into_response();
        }
    }
    next.run(req).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn same(presented: &str, expected: &str) -> bool {
    // Constant time in the token's content; only its length can show.
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// The bearer token, when the server has one: `Authorization: Bearer …`, or the cookie the
/// page got by being opened once as `/?token=…` (then redirected, so the token leaves the
/// address bar). The token is never logged.
pub async fn require_token(
    State(state): State<Arc<ApiState>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.settings.token.as_deref() else {
        return next.run(req).await;
    };
    let headers = req.headers();
    if bearer(headers)
        .or_else(|| cookie(headers, TOKEN_COOKIE))
        .is_some_and(|t| same(t, expected))
    {
        return next.run(req).await;
    }
    if req.uri().path() == "/" {
        let from_query = req.uri().query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        });
        if from_query.is_some_and(|t| same(&t, expected)) {
            let cookie = format!("{TOKEN_COOKIE}={expected}; Path=/; HttpOnly; SameSite=Strict");
            let mut response = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            return response;
        }
    }
    ApiError::Unauthorized.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_request_id_is_kept_and_a_hostile_one_replaced() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123");
        h.insert(
            REQUEST_ID,
            "a b\u{7f}"
                .parse()
                .unwrap_or(HeaderValue::from_static("a b")),
        );
        let generated = request_id(&h);
        assert_eq!(generated.len(), 32, "{generated:?}");
    }

    #[test]
    fn tokens_come_from_the_header_or_the_cookie() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(bearer(&h), Some("s3cret"));
        h.insert(header::COOKIE, "a=1; netscope_token=xyz".parse().unwrap());
        assert_eq!(cookie(&h, TOKEN_COOKIE), Some("xyz"));
        assert!(same("xyz", "xyz"));
        assert!(!same("xyz", "xyZ"));
        assert!(!same("xy", "xyz"));
    }

    #[test]
    fn a_client_over_its_rate_is_told_when_to_come_back() {
        let l = ClientLimiter::new(1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.check(ip).is_ok());
        assert!(l.check(ip).is_ok(), "burst of 2");
        let wait = l.check(ip).unwrap_err();
        assert!((1..=2).contains(&wait), "{wait}");
        assert!(l.check("192.0.2.2".parse().unwrap()).is_ok(), "per client");
    }
}
