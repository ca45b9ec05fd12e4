//! Extractors: the query string with strict parameter checks, the client's address (behind
//! trusted proxies only) and the incoming W3C trace context.

use std::{collections::BTreeMap, net::IpAddr, net::SocketAddr, str::FromStr, sync::Arc};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, request::Parts},
};

use super::{ApiState, error::ApiError};
use crate::domain::{Cidr, SpanId, TraceId, trace::parse_traceparent};

/// The query string, checked: every parameter known to the route, none given twice.
#[derive(Debug, Default)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut map = BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                let expected = if allowed.is_empty() {
                    "this route takes no parameters".to_owned()
                } else {
                    format!("expected one of {}", allowed.join(", "))
                };
                return Err(ApiError::parameter(
                    k,
                    format!("unknown parameter; {expected}"),
                ));
            }
            if map.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(ApiError::parameter(k, "given more than once"));
            }
        }
        Ok(Self(map))
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The parameter parsed as `T`; a value that does not parse names the parameter.
    pub fn get<T: FromStr>(&self, name: &str) -> Result<Option<T>, ApiError>
    where
        T::Err: std::fmt::Display,
    {
        self.text(name)
            .map(|v| {
                v.parse::<T>().map_err(|e| {
                    let e = e.to_string();
                    let message = if e.contains(v) {
                        e
                    } else {
                        format!("`{v}`: {e}")
                    };
                    ApiError::parameter(name, message)
                })
            })
            .transpose()
    }

    /// `limit`, 1..=`max`, `default` when absent.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        let limit = self.get::<usize>("limit")?.unwrap_or(default);
        if !(1..=max).contains(&limit) {
            return Err(ApiError::parameter(
                "limit",
                format!("{limit} is not in 1..={max}"),
            ));
        }
        Ok(limit)
    }
}

/// The client's address: the peer's, or — when the peer is a trusted proxy — the nearest
/// `X-Forwarded-For` entry that is not one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> Self {
        let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
        if !is_trusted(peer) {
            return Self(peer);
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        Self(
            forwarded
                .into_iter()
                .rev()
                .find(|ip| !is_trusted(*ip))
                .unwrap_or(peer),
        )
    }
}

impl FromRequestParts<Arc<ApiState>> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or_else(|| ApiError::Internal("no peer address".into()))?;
        Ok(Self::resolve(
            peer,
            &parts.headers,
            &state.settings.trusted_proxies,
        ))
    }
}

/// The request's W3C trace context (`traceparent`), when it carries a valid one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: Option<TraceId>,
    pub parent_id: Option<SpanId>,
}

impl TraceContext {
    pub fn of(headers: &HeaderMap) -> Self {
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
            .map(|(t, s, _)| Self {
                trace_id: Some(t),
                parent_id: Some(s),
            })
            .unwrap_or_default()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TraceContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_repeated_parameters_are_named() {
        let e = Params::parse(Some("limit=5&bogus=1"), &["limit"]).unwrap_err();
        assert!(matches!(&e, ApiError::BadParameter { parameter, .. } if parameter == "bogus"));
        let e = Params::parse(Some("limit=5&limit=6"), &["limit"]).unwrap_err();
        assert!(e.to_string().contains("more than once"), "{e}");
        let p = Params::parse(Some("limit=5"), &["limit"]).unwrap();
        assert_eq!(p.limit(100, 1000).unwrap(), 5);
        let p = Params::parse(Some("limit=5000"), &["limit"]).unwrap();
        assert!(p.limit(100, 1000).is_err());
        let p = Params::parse(Some("limit=x"), &["limit"]).unwrap();
        assert!(p.limit(100, 1000).unwrap_err().to_string().contains("`x`"));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.1.1.1".parse().unwrap());
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            ClientIp::resolve(proxy, &h, &trusted).0,
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(ClientIp::resolve(stranger, &h, &trusted).0, stranger);
        assert_eq!(
            ClientIp::resolve(proxy, &HeaderMap::new(), &trusted).0,
            proxy
        );
    }

    #[test]
    fn a_valid_traceparent_becomes_the_trace_context() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let t = TraceContext::of(&h);
        assert_eq!(
            t.trace_id.unwrap().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        h.insert("traceparent", "garbage".parse().unwrap());
        assert_eq!(TraceContext::of(&h), TraceContext::default());
    }
}
