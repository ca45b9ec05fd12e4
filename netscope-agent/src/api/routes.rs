//! Handlers: each parses its parameters, asks one read port, and shapes the answer. No
//! business logic here.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, RawQuery, State, WebSocketUpgrade, ws::rejection::WebSocketUpgradeRejection},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
};

use super::{
    ApiState,
    dto::{Calls, Health, Ready, Resilience, Status},
    error::ApiError,
    extract::Params,
    live::{Kind, LiveFilter, MAX_CLIENT_MESSAGE},
};
use crate::domain::{CallFilter, FlowCursor, FlowFilter, FlowOutcomeFilter, outcome::CallOutcome};

/// Flows listed per page at most.
pub const MAX_FLOWS: usize = 1000;
pub const MAX_CALLS: usize = 1000;

/// Alive: the process answers and no liveness check fails (a wedged pipeline is 503, for the
/// kubelet to restart it).
pub async fn healthz(
    State(state): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let checks: Vec<_> = state.liveness.iter().flat_map(|h| h.checks()).collect();
    if checks.iter().all(|c| c.ok) {
        return Ok(Json(Health {
            status: "ok",
            checks,
        })
        .into_response());
    }
    let body = Json(Health {
        status: "stalled",
        checks,
    });
    Ok((StatusCode::SERVICE_UNAVAILABLE, body).into_response())
}

pub async fn readyz(
    State(state): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let checks: Vec<_> = state.health.iter().flat_map(|h| h.checks()).collect();
    let ready = checks.iter().all(|c| c.ok || !c.required);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(Ready { ready, checks })).into_response())
}

/// OpenMetrics, unless the client asks for the Prometheus text format and not for it.
pub async fn metrics(
    State(state): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let text = state
        .metrics
        .encode()
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.contains("text/plain") && !accept.contains("application/openmetrics-text") {
        let text = crate::metrics::to_prometheus_text(&text);
        let content_type = crate::metrics::CONTENT_TYPE_PROMETHEUS;
        return Ok(([(header::CONTENT_TYPE, content_type)], text).into_response());
    }
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

pub async fn flows(
    State(state): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::parse(
        q.as_deref(),
        &[
            "remote", "port", "pid", "comm", "outcome", "limit", "cursor",
        ],
    )?;
    let filter = FlowFilter {
        remote: p.get("remote")?,
        port: p.get("port")?,
        pid: p.get("pid")?,
        comm: p.text("comm").map(str::to_owned),
        outcome: p.get::<FlowOutcomeFilter>("outcome")?,
    };
    let limit = p.limit(100, MAX_FLOWS)?;
    let after = p.get::<FlowCursor>("cursor")?;
    let flows = state
        .flows
        .as_ref()
        .ok_or(ApiError::NotInThisMode("the flow table (no probe)"))?;
    Ok(Json(flows.flows(&filter, after, limit)).into_response())
}

pub async fn calls(
    State(state): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Calls>, ApiError> {
    let p = Params::parse(
        q.as_deref(),
        &[
            "target",
            "route",
            "outcome",
            "trace_id",
            "request_id",
            "limit",
        ],
    )?;
    let filter = CallFilter {
        target: p.text("target").map(str::to_owned),
        route: p.text("route").map(str::to_owned),
        outcome: p.get::<CallOutcome>("outcome")?,
        trace_id: p.text("trace_id").map(str::to_owned),
        request_id: p.text("request_id").map(str::to_owned),
    };
    let limit = p.limit(100, MAX_CALLS)?;
    let log = state
        .calls
        .as_ref()
        .ok_or(ApiError::NotInThisMode("the call log (probe mode)"))?;
    let calls = log.calls(&filter, limit);
    Ok(Json(Calls {
        count: calls.len(),
        calls,
    }))
}

pub async fn resilience(
    State(state): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Resilience>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let gateway = state
        .gateway
        .as_ref()
        .ok_or(ApiError::NotInThisMode("resilience (probe mode)"))?;
    Ok(Json(Resilience {
        targets: gateway.snapshot(),
    }))
}

pub async fn resilience_of(
    State(state): State<Arc<ApiState>>,
    Path(target): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let gateway = state
        .gateway
        .as_ref()
        .ok_or(ApiError::NotInThisMode("resilience (probe mode)"))?;
    let snapshot = gateway
        .snapshot()
        .into_iter()
        .find(|s| s.target.0 == target)
        .ok_or_else(|| ApiError::NotFound(format!("target `{target}`")))?;
    Ok(Json(snapshot).into_response())
}

pub async fn status(
    State(state): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let counters = state
        .metrics
        .sources()
        .iter()
        .map(|s| (s.component(), s.samples()))
        .collect();
    let s = &state.status;
    let body = Status {
        version: env!("CARGO_PKG_VERSION"),
        mode: state.mode,
        kernel: &s.kernel,
        started_unix_ms: s.started_unix_ms,
        programs: &s.programs,
        kernel_support: s.kernel_support.as_ref(),
        counters,
    };
    Ok(Json(body).into_response())
}

pub async fn ws_live(
    State(state): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let p = Params::parse(q.as_deref(), &["type", "target", "route", "outcome"])?;
    let types = p
        .text("type")
        .map(|t| {
            t.split(',')
                .map(|k| {
                    k.parse::<Kind>().map_err(|_| {
                        ApiError::parameter(
                            "type",
                            format!("`{k}` is not one of call, flow, resilience, stats"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let filter = LiveFilter {
        types,
        target: p.text("target").map(str::to_owned),
        route: p.text("route").map(str::to_owned),
        outcome: p.text("outcome").map(str::to_owned),
    };
    let ws =
        ws.map_err(|e| ApiError::BadRequest(format!("a WebSocket upgrade is required: {e}")))?;
    let hub = Arc::clone(&state.live);
    let slot = hub
        .admit()
        .ok_or(ApiError::TooManyClients(hub.max_clients()))?;
    Ok(ws
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| hub.serve(socket, filter, slot)))
}

pub async fn page(RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    Params::parse(q.as_deref(), &["token"])?;
    Ok((
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        Html(super::PAGE),
    )
        .into_response())
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("route".into())
}
