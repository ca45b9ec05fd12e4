//! `netscope-agent probe`: the kernel probe alone, flows printed as JSON lines.

use std::{
    io::Write as _,
    sync::{Arc, Mutex, PoisonError},
};

use serde::Serialize;
use tokio::sync::{Notify, watch};

use super::{AppError, serve, shutdown_signal};
use crate::{
    bus::{BroadcastBus, BusSubscriber},
    config::{ApiSettings, ProbeSettings},
    domain::{BusEvent, CounterSource, FlowQuery, FlowUpdate, FlowUpdateKind, HealthCheck},
    flows::{FlowPipeline, FlowTable, FlowTableStats},
    metrics::{MetricsBuilder, Recorder},
    probe::{KernelCounters, Probe, ProbeHealth, ProbeOptions, ring},
};

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

/// Appends one JSON line for `update` to `out`: `{"event":…, the flow's fields,
/// "duration_ns":…}`. The flow is serialised as the struct it is and its braces reused, which
/// gives the line a `#[serde(flatten)]` wrapper would, without flatten's detour through serde's
/// map serializer (a third of the printer's time under connection churn).
fn print_line(out: &mut Vec<u8>, update: &FlowUpdate) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"event\":");
    serde_json::to_writer(&mut *out, &update.kind)?;
    let flow_at = out.len();
    serde_json::to_writer(&mut *out, &*update.flow)?;
    // `{fields}` → `,fields`: they continue the line's object, which ends after duration_ns.
    out[flow_at] = b',';
    out.pop();
    out.extend_from_slice(b",\"duration_ns\":");
    serde_json::to_writer(&mut *out, &update.flow.duration_ns())?;
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// `netscope-agent probe`: attach, serve the API, print one JSON line per closed or failed
/// connection until SIGINT/SIGTERM, then stop serving, detach, drain, and print the
/// reconciled counters.
pub async fn run_probe(
    settings: ProbeSettings,
    api: ApiSettings,
) -> Result<ProbeSummary, AppError> {
    // Signals first, before the probe says it is attached: whoever waits for that line may
    // stop it at once (the kernel matrix's least-privilege check does; once, on a slow guest,
    // an agent ran on after that SIGTERM — not reproduced since). One during the load stops
    // the probe right after it.
    let (stop_tx, stop_rx) = watch::channel(false);
    shutdown_signal(stop_tx)?;
    let mut probe = Probe::load(&ProbeOptions::from_settings(&settings))?;
    let reader = probe.take_events()?;
    let offsets = probe.kernel_offsets();
    tracing::info!(
        sk_err_offset = offsets.sock_sk_err,
        srtt_offset = offsets.tcp_sock_srtt_us,
        tc_interfaces = ?settings.tc_interfaces,
        "probe attached"
    );

    let bus = BroadcastBus::new(65_536);
    let table = super::flow_table(&settings, false);
    let mut metrics = MetricsBuilder::new();
    let recorder = Recorder::register(&mut metrics, Some(api.flow_labels()));
    let pipeline = FlowPipeline::new(Arc::clone(&table), Arc::new(bus.clone()))
        .with_recorder(recorder)
        .counting_calls(probe.live_bytes().counted_calls());

    let printer = tokio::spawn(print_flows(bus.subscribe(), settings.print_established));

    let parts = ViewParts {
        probe: &probe,
        reader: &reader,
        bus: &bus,
        table: &table,
        poll: settings.poll,
    };
    let view = parts.view(&api, metrics, stop_rx.clone());
    let (_, server) = serve::start(&api, "probe", view, stop_rx.clone()).await?;

    let kick = Arc::new(Notify::new());
    let mut reader = ring::pump(reader, settings.poll, kick, stop_rx, |k, e| {
        pipeline.on_event(k, e)
    })
    .await
    .map_err(AppError::Ring)?;
    // The server stops taking requests and closes live clients; then the producers stop, and
    // what they left in the ring is taken: nothing is in flight after this.
    serve::stop(server).await;
    probe.detach();
    reader.drain(|k, e| pipeline.on_event(k, e));
    let kernel = probe.kernel_counters()?;
    drop(pipeline);
    drop(probe);
    let bus_published = bus.published();
    drop(bus);
    let (printed, bus_lagged) = match printer.await {
        Ok(result) => result.map_err(AppError::Output)?,
        Err(e) => return Err(AppError::Output(std::io::Error::other(e))),
    };
    let bus = BusCounts {
        published: bus_published,
        lagged: bus_lagged,
    };
    let table_stats: FlowTableStats = table.lock().unwrap_or_else(PoisonError::into_inner).stats();
    report(kernel, reader.stats(), printed, bus, table_stats)
}

/// What the server shows of the probe: the flow table, the kernel's and the reader's
/// counters, the bus, the live view, and readiness.
struct ViewParts<'a> {
    probe: &'a Probe,
    reader: &'a ring::EventReader,
    bus: &'a BroadcastBus,
    table: &'a Arc<Mutex<FlowTable>>,
    poll: std::time::Duration,
}

impl ViewParts<'_> {
    fn view(
        &self,
        api: &ApiSettings,
        mut metrics: MetricsBuilder,
        stop: watch::Receiver<bool>,
    ) -> serve::View {
        let live = serve::live_hub(api, "probe", stop);
        let sources: [Arc<dyn CounterSource>; 5] = [
            self.probe.counter_reader(),
            self.reader.counters(),
            self.bus.counter_source(),
            Arc::clone(self.table) as Arc<dyn CounterSource>,
            Arc::clone(&live) as Arc<dyn CounterSource>,
        ];
        for source in sources {
            metrics.source(source);
        }
        tokio::spawn(Arc::clone(&live).feed(self.bus.subscribe(), None));
        let health = ProbeHealth::new(self.probe, self.reader, self.poll);
        serve::View {
            metrics: metrics.finish(),
            flows: Some(Arc::clone(self.table) as Arc<dyn FlowQuery>),
            calls: None,
            gateway: None,
            health: vec![Arc::new(health) as Arc<dyn HealthCheck>],
            liveness: Vec::new(),
            live,
            programs: self.probe.attached(),
            kernel_support: Some(self.probe.report()),
        }
    }
}

/// Prints the summary; an error when the counters do not reconcile.
fn report(
    kernel: KernelCounters,
    reader: ring::ReaderStats,
    printed: u64,
    bus: BusCounts,
    table: FlowTableStats,
) -> Result<ProbeSummary, AppError> {
    let summary = summarize(kernel, reader, printed, bus, table);
    print_summary(&summary)?;
    if !summary.reconciled {
        return Err(AppError::Unreconciled {
            emitted: kernel.emitted(),
            read: reader.delivered + reader.malformed,
            delivered: reader.delivered,
            malformed: reader.malformed,
        });
    }
    Ok(summary)
}

/// Prints one JSON line per closed or failed flow (and opened ones when asked) until the bus
/// closes; returns (lines printed, updates the subscriber missed).
///
/// Lines are written in batches: every update already waiting on the bus (up to
/// [`PRINT_BATCH_BYTES`] of output) goes out in one `write`, and a batch ends as soon as
/// nothing more is waiting, so a line is never held back for a later one. One `write` per
/// line, through stdout's line buffering, was three quarters of `probe`'s CPU under
/// connection churn (`perf`: ~4 µs per connection, against ~1 µs for the ring reader).
async fn print_flows(
    mut subscriber: BusSubscriber,
    print_established: bool,
) -> std::io::Result<(u64, u64)> {
    let mut printed = 0u64;
    let mut batch = Vec::with_capacity(PRINT_BATCH_BYTES + 4096);
    while let Some(first) = subscriber.recv().await {
        let mut next = Some(first);
        while let Some(event) = next {
            if let BusEvent::Flow(update) = event
                && (update.kind != FlowUpdateKind::Established || print_established)
            {
                print_line(&mut batch, &update)?;
                printed += 1;
            }
            next = if batch.len() < PRINT_BATCH_BYTES {
                subscriber.try_recv()
            } else {
                None
            };
        }
        batch = write_out(batch).await?;
    }
    // Read after the last receive: lag is counted as the subscriber catches up.
    Ok((printed, subscriber.lagged()))
}

/// Writes `batch` to stdout from the blocking pool and gives it back emptied: a reader of stdout
/// that stalls holds up the printer only (the bus then counts what it misses), never the
/// runtime's one thread and the ring pump on it.
async fn write_out(mut batch: Vec<u8>) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut out = std::io::stdout().lock();
        out.write_all(&batch)?;
        out.flush()?;
        batch.clear();
        Ok(batch)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Output gathered before one `write` (a line is ~600 bytes).
const PRINT_BATCH_BYTES: usize = 64 * 1024;

fn print_summary(summary: &ProbeSummary) -> Result<(), AppError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, summary).map_err(|e| AppError::Output(e.into()))?;
    writeln!(out).map_err(AppError::Output)
}

/// What the bus saw: published, and missed by a subscriber that fell behind.
struct BusCounts {
    published: u64,
    lagged: u64,
}

fn summarize(
    kernel: KernelCounters,
    reader: ring::ReaderStats,
    printed: u64,
    bus: BusCounts,
    table: FlowTableStats,
) -> ProbeSummary {
    ProbeSummary {
        event: "summary",
        kernel: kernel.named().collect(),
        user: UserCounters {
            delivered: reader.delivered,
            malformed: reader.malformed,
            printed,
            bus_published: bus.published,
            bus_lagged: bus.lagged,
            flow_table_inserted: table.inserted,
            flow_table_rejected_full: table.rejected_full,
        },
        // Every record the kernel submitted was read, once the producers are gone.
        reconciled: kernel.emitted() == reader.delivered + reader.malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FlowOutcome, FlowState, WireStats, flow::sample_flow};

    /// The line as a flattening wrapper serialises it: the shape the spliced writer must keep.
    #[derive(Serialize)]
    struct FlowLine<'a> {
        event: FlowUpdateKind,
        #[serde(flatten)]
        flow: &'a crate::domain::Flow,
        duration_ns: Option<u64>,
    }

    #[test]
    fn a_printed_line_is_the_flow_with_its_event_and_duration_around_it() {
        let closed = sample_flow(7, 40_000);
        let mut open = sample_flow(8, 40_001);
        open.state = FlowState::Established;
        open.end_unix_ns = None;
        open.outcome = None;
        let mut failed = sample_flow(9, 40_002);
        failed.state = FlowState::Failed;
        failed.outcome = Some(FlowOutcome::Refused);
        failed.wire = Some(WireStats::default());
        failed.comm = "a \"quoted\" name".into();
        let updates = [
            (FlowUpdateKind::Closed, closed),
            (FlowUpdateKind::Established, open),
            (FlowUpdateKind::Failed, failed),
        ];
        let mut out = Vec::new();
        let mut expected = String::new();
        for (kind, flow) in updates {
            let update = FlowUpdate {
                kind,
                flow: Arc::new(flow),
            };
            print_line(&mut out, &update).unwrap();
            let line = FlowLine {
                event: kind,
                flow: &update.flow,
                duration_ns: update.flow.duration_ns(),
            };
            expected += &serde_json::to_string(&line).unwrap();
            expected.push('\n');
        }
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }
}
