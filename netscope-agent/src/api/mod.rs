//! The agent's HTTP server (axum): `/healthz`, `/readyz`, `/metrics`, the JSON API under
//! `/api/v1`, the live view `/ws/live` and the page at `/`.
//!
//! It knows neither aya nor rdkafka: handlers read the domain's ports ([`FlowQuery`],
//! [`CallQuery`], [`OutboundGateway`], [`HealthCheck`]) and the metrics registry, all held in
//! one [`ApiState`]. The command that runs it (`probe`, `run`) builds that state in the
//! composition root, starts the server once the probe is attached, and stops it — no new
//! connections, close frames to live clients — before it drains.
//!
//! Exposure: `/healthz`, `/readyz` and `/metrics` are open, as exporters' usually are (the
//! kubelet and Prometheus must reach them; they carry no ids or addresses). `/`, `/api` and
//! `/ws` need the bearer token when the server has one, which it must on a non-loopback
//! address unless `--api-insecure` was given.

pub mod dto;
pub mod error;
pub mod extract;
pub mod live;
pub mod middleware;
pub mod routes;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router, http::StatusCode, middleware::from_fn, middleware::from_fn_with_state, routing::get,
};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceBuilder;
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};

use self::{live::LiveHub, middleware::ClientLimiter};
use crate::{
    config::ApiSettings,
    domain::{CallQuery, FlowQuery, HealthCheck, OutboundGateway, kernel::CheckReport},
    metrics::Metrics,
};

/// The page, embedded: no CDN, no asset server (the node showing it may be offline).
pub const PAGE: &str = include_str!("assets/index.html");

/// A request (not a live socket) is answered within this or gets 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What runs here, for `/api/v1/status`.
#[derive(Clone, Debug, Default)]
pub struct StatusInfo {
    pub kernel: String,
    pub programs: Vec<&'static str>,
    pub started_unix_ms: u64,
    /// What the kernel offers and which hook serves each fact (with a probe attached).
    pub kernel_support: Option<CheckReport>,
}

/// Everything the handlers read: one per server, shared.
pub struct ApiState {
    pub settings: ApiSettings,
    /// `probe` or `run`.
    pub mode: &'static str,
    pub metrics: Arc<Metrics>,
    pub flows: Option<Arc<dyn FlowQuery>>,
    pub calls: Option<Arc<dyn CallQuery>>,
    pub gateway: Option<Arc<dyn OutboundGateway>>,
    /// `/readyz`: able to do its work.
    pub health: Vec<Arc<dyn HealthCheck>>,
    /// `/healthz`: not wedged (the process answering is the rest).
    pub liveness: Vec<Arc<dyn HealthCheck>>,
    pub status: StatusInfo,
    pub live: Arc<LiveHub>,
    pub limiter: ClientLimiter,
}

pub fn router(state: Arc<ApiState>) -> Router {
    let guarded = Router::new()
        .route("/", get(routes::page))
        .route("/api/v1/flows", get(routes::flows))
        .route("/api/v1/calls", get(routes::calls))
        .route("/api/v1/resilience", get(routes::resilience))
        .route("/api/v1/resilience/{target}", get(routes::resilience_of))
        .route("/api/v1/status", get(routes::status))
        .route("/ws/live", get(routes::ws_live))
        .route_layer(from_fn_with_state(
            Arc::clone(&state),
            middleware::require_token,
        ));
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .merge(guarded)
        .fallback(routes::not_found)
        .layer(
            ServiceBuilder::new()
                .layer(from_fn(middleware::trace))
                .layer(from_fn(middleware::limit_uri))
                .layer(from_fn_with_state(
                    Arc::clone(&state),
                    middleware::rate_limit,
                ))
                .layer(RequestBodyLimitLayer::new(middleware::MAX_BODY_BYTES))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    REQUEST_TIMEOUT,
                )),
        )
        .with_state(state)
}

/// Binds the listen address (a clear error when it is taken).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `stop` turns true; then stops accepting and waits for open requests (live
/// clients get their close frame from the hub).
pub async fn serve(
    listener: TcpListener,
    state: Arc<ApiState>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}
