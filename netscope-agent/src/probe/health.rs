//! The probe's numbers and health while it runs: the kernel's per-CPU counters (read at scrape
//! time), the ring reader's counts, and whether the programs are attached and the reader alive.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, PerCpuArray};
use netscope_common::counter;

use super::KernelCounters;
use crate::{
    clock::monotonic_now_ns,
    domain::{Check, CounterSource, HealthCheck, Sample},
};

/// The kernel's `COUNTERS` map, summed over CPUs on every read.
pub struct KernelCounterReader {
    array: PerCpuArray<MapData, u64>,
}

impl KernelCounterReader {
    pub(super) fn new(array: PerCpuArray<MapData, u64>) -> Self {
        Self { array }
    }

    pub fn read(&self) -> Result<KernelCounters, aya::maps::MapError> {
        let mut counters = KernelCounters::default();
        for index in 0..counter::COUNT {
            let per_cpu = self.array.get(&index, 0)?;
            counters.0[index as usize] = per_cpu.iter().sum();
        }
        Ok(counters)
    }
}

impl CounterSource for KernelCounterReader {
    fn component(&self) -> &'static str {
        "kernel"
    }

    fn samples(&self) -> Vec<Sample> {
        let c = match self.read() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "kernel counters unreadable at scrape");
                return Vec::new();
            }
        };
        const RING: &str =
            "Records the kernel programs submitted to the ring buffer, or dropped when it was full";
        const CONN: &str = "Outbound connects the kernel saw: tracked, or skipped by the filters";
        vec![
            Sample::counter("kernel_ring_events", RING, c.emitted()).with("result", "emitted"),
            Sample::counter("kernel_ring_events", RING, c.dropped()).with("result", "dropped"),
            Sample::counter("kernel_connects", CONN, c.get(counter::CONNECTS_TRACKED))
                .with("result", "tracked"),
            Sample::counter("kernel_connects", CONN, c.get(counter::CONNECTS_FILTERED))
                .with("result", "filtered"),
            Sample::counter(
                "kernel_sock_table_full",
                "Connections not tracked because the kernel's socket table was full",
                c.get(counter::SOCK_TABLE_FULL),
            ),
            Sample::counter(
                "kernel_read_errors",
                "Kernel memory reads that failed in the programs",
                c.get(counter::READ_ERRORS),
            ),
        ]
    }
}

/// What the ring reader took out of the ring, and when it last ran; shared with the API.
#[derive(Debug, Default)]
pub struct ReaderCounters {
    pub(super) delivered: AtomicU64,
    pub(super) malformed: AtomicU64,
    /// CLOCK_MONOTONIC ms of the reader loop's last turn (0: not started).
    pub(super) alive_mono_ms: AtomicU64,
}

impl ReaderCounters {
    pub(super) fn beat(&self) {
        self.alive_mono_ms
            .store(monotonic_now_ns() / 1_000_000, Ordering::Relaxed);
    }
}

impl CounterSource for ReaderCounters {
    fn component(&self) -> &'static str {
        "ring_reader"
    }

    fn samples(&self) -> Vec<Sample> {
        const H: &str = "Ring records the agent read: delivered (decoded) or malformed (skipped)";
        vec![
            Sample::counter("ring_records", H, self.delivered.load(Ordering::Relaxed))
                .with("result", "delivered"),
            Sample::counter("ring_records", H, self.malformed.load(Ordering::Relaxed))
                .with("result", "malformed"),
        ]
    }
}

/// Readiness of the probe: programs attached and the ring reader turning.
pub struct ProbeHealth {
    pub programs: Vec<&'static str>,
    pub reader: Arc<ReaderCounters>,
    /// The reader turns at least every poll interval; silent longer than this, it is stuck.
    pub stale_after: Duration,
}

impl ProbeHealth {
    /// For `probe`'s programs and `reader`, which turns at least every `poll`.
    pub fn new(probe: &super::Probe, reader: &super::EventReader, poll: Duration) -> Self {
        Self {
            programs: probe.attached(),
            reader: reader.counters(),
            stale_after: (poll * 5).max(Duration::from_secs(2)),
        }
    }
}

impl HealthCheck for ProbeHealth {
    fn checks(&self) -> Vec<Check> {
        let last = self.reader.alive_mono_ms.load(Ordering::Relaxed);
        let now = monotonic_now_ns() / 1_000_000;
        let silent = Duration::from_millis(now.saturating_sub(last));
        let alive = last > 0 && silent <= self.stale_after;
        vec![Check {
            name: "probe",
            ok: alive && !self.programs.is_empty(),
            required: true,
            detail: if last == 0 {
                format!(
                    "{} programs attached; ring reader not started",
                    self.programs.len()
                )
            } else {
                format!(
                    "{} programs attached; ring reader last ran {} ms ago",
                    self.programs.len(),
                    silent.as_millis()
                )
            },
        }]
    }
}
