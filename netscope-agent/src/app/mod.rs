//! The composition root: wires configuration, the probe, the flow table, ingest, outbound,
//! sinks and the bus together. One function per command.

mod audit;
mod observed;
mod probe;
mod run;
mod send;
pub mod serve;

pub use self::{
    audit::{VerifyArgs, VerifySettings, verify_audit},
    probe::{ProbeSummary, run_probe},
    run::{Pipeline, RunSummary, run_pipeline},
    send::{SendArgs, send_demo},
};
use crate::probe::ProbeError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Ingest(#[from] crate::ingest::kafka::IngestError),
    #[error(transparent)]
    Topics(#[from] crate::ingest::topics::TopicError),
    #[error(transparent)]
    Client(#[from] crate::outbound::client::ClientError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Audit(#[from] crate::audit::rgw::AuditError),
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
    #[error("ring buffer polling: {0}")]
    Ring(std::io::Error),
    #[error("writing output: {0}")]
    Output(std::io::Error),
    #[error(
        "counters do not reconcile: kernel emitted {emitted}, agent read {read} (delivered {delivered} + malformed {malformed})"
    )]
    Unreconciled {
        emitted: u64,
        read: u64,
        delivered: u64,
        malformed: u64,
    },
}

/// The flow table the probe's settings size: `max_flows` flows, finished ones kept for
/// `retention`; indexed by endpoints only when requests are `correlated` with flows.
fn flow_table(
    ps: &crate::config::ProbeSettings,
    correlated: bool,
) -> std::sync::Arc<std::sync::Mutex<crate::flows::FlowTable>> {
    let retention_ns = u64::try_from(ps.retention.as_nanos()).unwrap_or(u64::MAX);
    let table = crate::flows::FlowTable::new(ps.max_flows, retention_ns);
    let table = if correlated {
        table
    } else {
        table.without_endpoint_index()
    };
    std::sync::Arc::new(std::sync::Mutex::new(table))
}

/// Turns SIGINT/SIGTERM into `true` on `stop`.
pub(crate) fn shutdown_signal(stop: tokio::sync::watch::Sender<bool>) -> Result<(), AppError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        tracing::info!("signal received: stopping");
        let _ = stop.send(true);
    });
    Ok(())
}

/// glibc gives a thread that allocates while others hold the lock an arena of its own (up to
/// 8 per core), and an arena keeps what it once held. With tokio's workers, librdkafka's
/// threads and the probe's reader, that was ~5 MiB of the agent's RSS, ~10 MiB at peak: the
/// soak (`cargo xtask soak --messages 20000 --minutes 3`, release) measured a steady RSS of
/// 51–53 MiB and a peak of 60–63 MiB per agent with glibc's default, 48–49 and 50–53 with two
/// arenas, and the pipeline's capacity did not move (`bench pipeline`: 21.8k and 21.2k
/// calls/s). `MALLOC_ARENA_MAX` in the environment still decides when it is set. Call it first
/// in `main`, before any thread exists.
pub fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}
