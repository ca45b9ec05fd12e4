//! The composition root: wires configuration, the probe, the flow table and the bus together.

use std::{
    io::Write as _,
    sync::{Arc, Mutex, PoisonError},
};

use netscope_common::{ConnEvent, EventKind};
use serde::Serialize;
use tokio::{signal::unix::SignalKind, sync::watch};

use crate::{
    bus::BroadcastBus,
    config::ProbeSettings,
    domain::{EventBus, FlowUpdate, FlowUpdateKind},
    probe::{
        Filters, FlowTable, FlowTableStats, KernelCounters, Probe, ProbeError, ProbeOptions,
        ProgramSet, clock::MonoClock, convert, ring,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
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

impl ProbeSettings {
    pub fn probe_options(&self) -> ProbeOptions {
        ProbeOptions {
            programs: ProgramSet::NetScope,
            filters: Filters {
                tgids: self.pids.clone(),
                cgroup_ids: self.cgroup_ids.clone(),
                dports: self.dports.clone(),
                destinations: self.destinations.clone(),
            },
            ring_bytes: self.ring_bytes,
            wakeup_bytes: self.wakeup_bytes,
            max_connections: self.max_connections,
            max_wire_flows: self.max_connections,
            tc_interfaces: self.tc_interfaces.clone(),
            object: self.ebpf_object.clone(),
            helper_reads_only: false,
        }
    }
}

/// Turns kernel events into flow updates: flow table first, then the bus.
pub struct FlowPipeline {
    clock: MonoClock,
    table: Arc<Mutex<FlowTable>>,
    bus: Arc<dyn EventBus>,
}

impl FlowPipeline {
    pub fn new(table: Arc<Mutex<FlowTable>>, bus: Arc<dyn EventBus>) -> Self {
        Self {
            clock: MonoClock::new(),
            table,
            bus,
        }
    }

    pub fn on_event(&self, kind: EventKind, event: ConnEvent) {
        let flow = convert::flow_from_event(kind, &event, &self.clock);
        let now = self.clock.to_unix_ns(event.header.ts_ns);
        let update = {
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            table.evict_expired(now);
            table.apply(convert::update_kind(kind), flow, now)
        };
        self.bus.publish(update);
    }
}

/// The closing report of `netscope-agent probe`.
#[derive(Debug, Serialize)]
pub struct ProbeSummary {
    pub event: &'static str,
    pub kernel: std::collections::BTreeMap<&'static str, u64>,
    pub user: UserCounters,
    pub reconciled: bool,
}

#[derive(Debug, Serialize)]
pub struct UserCounters {
    pub delivered: u64,
    pub malformed: u64,
    pub printed: u64,
    pub bus_published: u64,
    pub bus_lagged: u64,
    pub flow_table_inserted: u64,
    pub flow_table_rejected_full: u64,
}

/// One JSON line of output: a flow update.
#[derive(Serialize)]
struct FlowLine<'a> {
    event: FlowUpdateKind,
    #[serde(flatten)]
    flow: &'a crate::domain::Flow,
    duration_ns: Option<u64>,
}

fn print_line(out: &mut impl std::io::Write, update: &FlowUpdate) -> std::io::Result<()> {
    let line = FlowLine {
        event: update.kind,
        flow: &update.flow,
        duration_ns: update.flow.duration_ns(),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// `netscope-agent probe`: attach, print one JSON line per closed or failed connection until
/// SIGINT/SIGTERM, then detach, drain, and print the reconciled counters.
pub async fn run_probe(settings: ProbeSettings) -> Result<ProbeSummary, AppError> {
    let mut probe = Probe::load(&settings.probe_options())?;
    let reader = probe.take_events()?;
    let offsets = probe.kernel_offsets();
    tracing::info!(
        sk_err_offset = offsets.sock_sk_err,
        srtt_offset = offsets.tcp_sock_srtt_us,
        tc_interfaces = ?settings.tc_interfaces,
        "probe attached"
    );

    let bus = BroadcastBus::new(65_536);
    let table = Arc::new(Mutex::new(FlowTable::new(
        settings.max_flows,
        u64::try_from(settings.retention.as_nanos()).unwrap_or(u64::MAX),
    )));
    let pipeline = FlowPipeline::new(Arc::clone(&table), Arc::new(bus.clone()));

    let mut subscriber = bus.subscribe();
    let print_established = settings.print_established;
    let printer = tokio::spawn(async move {
        let stdout = std::io::stdout();
        let mut printed = 0u64;
        while let Some(update) = subscriber.recv().await {
            if update.kind == FlowUpdateKind::Established && !print_established {
                continue;
            }
            print_line(&mut stdout.lock(), &update)?;
            printed += 1;
        }
        Ok::<u64, std::io::Error>(printed)
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sigterm =
        tokio::signal::unix::signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut sigint =
        tokio::signal::unix::signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        tracing::info!("signal received: detaching");
        let _ = stop_tx.send(true);
    });

    let mut reader = ring::pump(reader, settings.poll, stop_rx, |k, e| {
        pipeline.on_event(k, e)
    })
    .await
    .map_err(AppError::Ring)?;
    // Stop the producers, then take what they left in the ring: nothing is in flight after this.
    probe.detach();
    reader.drain(|k, e| pipeline.on_event(k, e));
    let kernel = probe.kernel_counters()?;
    drop(pipeline);
    drop(probe);

    let bus_published = bus.published();
    drop(bus);
    let printed = match printer.await {
        Ok(result) => result.map_err(AppError::Output)?,
        Err(e) => return Err(AppError::Output(std::io::Error::other(e))),
    };
    let reader_stats = reader.stats();
    let table_stats: FlowTableStats = table.lock().unwrap_or_else(PoisonError::into_inner).stats();
    let summary = summarize(kernel, reader_stats, printed, bus_published, table_stats);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &summary).map_err(|e| AppError::Output(e.into()))?;
    writeln!(out).map_err(AppError::Output)?;
    if !summary.reconciled {
        return Err(AppError::Unreconciled {
            emitted: kernel.emitted(),
            read: reader_stats.delivered + reader_stats.malformed,
            delivered: reader_stats.delivered,
            malformed: reader_stats.malformed,
        });
    }
    Ok(summary)
}

fn summarize(
    kernel: KernelCounters,
    reader: ring::ReaderStats,
    printed: u64,
    bus_published: u64,
    table: FlowTableStats,
) -> ProbeSummary {
    ProbeSummary {
        event: "summary",
        kernel: kernel.named().collect(),
        user: UserCounters {
            delivered: reader.delivered,
            malformed: reader.malformed,
            printed,
            bus_published,
            bus_lagged: 0,
            flow_table_inserted: table.inserted,
            flow_table_rejected_full: table.rejected_full,
        },
        // Every record the kernel submitted was read, once the producers are gone.
        reconciled: kernel.emitted() == reader.delivered + reader.malformed,
    }
}
