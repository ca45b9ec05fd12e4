//! The composition root: wires configuration, the probe, the flow table, ingest, outbound,
//! sinks and the bus together. One function per command.

mod audit;
mod probe;
mod run;
mod send;

use std::sync::{Arc, Mutex, PoisonError};

use netscope_common::{ConnEvent, EventKind};
use tokio::sync::Notify;

pub use self::{
    audit::{VerifyArgs, VerifySettings, verify_audit},
    probe::{ProbeSummary, run_probe},
    run::{Pipeline, RunSummary, run_pipeline},
    send::{SendArgs, send_demo},
};
use crate::{
    clock::MonoClock,
    domain::{BusEvent, EventBus},
    probe::{FlowTable, ProbeError, convert},
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Ingest(#[from] crate::ingest::kafka::IngestError),
    #[error(transparent)]
    Client(#[from] crate::outbound::client::ClientError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
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

/// Turns kernel events into flow updates: flow table first, then the bus; wakes whoever
/// waits for a flow (request correlation).
pub struct FlowPipeline {
    clock: MonoClock,
    table: Arc<Mutex<FlowTable>>,
    bus: Arc<dyn EventBus>,
    updated: Arc<Notify>,
}

impl FlowPipeline {
    pub fn new(table: Arc<Mutex<FlowTable>>, bus: Arc<dyn EventBus>) -> Self {
        Self {
            clock: MonoClock::new(),
            table,
            bus,
            updated: Arc::new(Notify::new()),
        }
    }

    /// Notified after every change of the flow table.
    pub fn updated(&self) -> Arc<Notify> {
        Arc::clone(&self.updated)
    }

    pub fn on_event(&self, kind: EventKind, event: ConnEvent) {
        let flow = convert::flow_from_event(kind, &event, &self.clock);
        let now = self.clock.to_unix_ns(event.header.ts_ns);
        let update = {
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            table.evict_expired(now);
            table.apply(convert::update_kind(kind), flow, now)
        };
        self.updated.notify_waiters();
        self.bus.publish(BusEvent::Flow(Arc::new(update)));
    }
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
