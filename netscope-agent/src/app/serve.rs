//! The HTTP server's part of the composition: the state it reads, bound and served for as long
//! as the command runs.

use std::sync::Arc;

use tokio::{sync::watch, task::JoinHandle};
use tracing::info;

use super::AppError;
use crate::{
    api::{self, ApiState, StatusInfo, live::LiveHub, middleware::ClientLimiter},
    config::ApiSettings,
    domain::{CallQuery, FlowQuery, HealthCheck, OutboundGateway, kernel::CheckReport},
    metrics::Metrics,
};

/// Messages a live client may fall behind before it is told it lagged.
const LIVE_QUEUE: usize = 1024;

/// What one command shows through the server.
pub struct View {
    pub metrics: Arc<Metrics>,
    pub flows: Option<Arc<dyn FlowQuery>>,
    pub calls: Option<Arc<dyn CallQuery>>,
    pub gateway: Option<Arc<dyn OutboundGateway>>,
    pub health: Vec<Arc<dyn HealthCheck>>,
    pub liveness: Vec<Arc<dyn HealthCheck>>,
    pub live: Arc<LiveHub>,
    pub programs: Vec<&'static str>,
    pub kernel_support: Option<CheckReport>,
}

/// The live hub of a command (`mode`: `probe` or `run`), stopping with it.
pub fn live_hub(s: &ApiSettings, mode: &'static str, stop: watch::Receiver<bool>) -> Arc<LiveHub> {
    LiveHub::new(s.ws_max_clients, LIVE_QUEUE, mode, stop)
}

/// Binds the listen address (failing the boot when it cannot) and serves until `stop`;
/// returns the address bound and the server's task.
pub async fn start(
    s: &ApiSettings,
    mode: &'static str,
    view: View,
    stop: watch::Receiver<bool>,
) -> Result<(std::net::SocketAddr, JoinHandle<()>), AppError> {
    let listener = api::bind(s.listen).await.map_err(|source| AppError::Io {
        what: format!("listen {}", s.listen),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| AppError::Io {
        what: format!("listen {}", s.listen),
        source,
    })?;
    let state = Arc::new(ApiState {
        settings: s.clone(),
        mode,
        metrics: view.metrics,
        flows: view.flows,
        calls: view.calls,
        gateway: view.gateway,
        health: view.health,
        liveness: view.liveness,
        status: StatusInfo {
            kernel: crate::probe::check::kernel_release(),
            programs: view.programs,
            kernel_support: view.kernel_support,
            started_unix_ms: crate::clock::now_unix_ms(),
        },
        live: view.live,
        limiter: ClientLimiter::new(s.rate_per_sec),
    });
    info!(addr = %addr, url = %format!("http://{addr}/"), token = s.token.is_some(), "HTTP server listening");
    let task = tokio::spawn(async move {
        if let Err(e) = api::serve(listener, state, stop).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok((addr, task))
}

/// Waits for the server to finish (it was told to stop); gives up after a few seconds.
pub async fn stop(server: JoinHandle<()>) {
    let abort = server.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .is_err()
    {
        tracing::warn!("HTTP server still busy after 5 s: closed");
        abort.abort();
    }
}
