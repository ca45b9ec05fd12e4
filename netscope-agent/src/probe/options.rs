//! What the probe is asked to load: the program set, the connection filters, map sizes and
//! TC interfaces — and what it reports: kernel counters and per-program run statistics.

use std::path::PathBuf;

use netscope_common::{FILTER_CGROUP, FILTER_DPORT, FILTER_DST, FILTER_TGID, counter};

use crate::{config::ProbeSettings, domain::Cidr};

/// Which new connections the kernel tracks. Empty lists mean "no condition"; every non-empty
/// list is a condition that must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub tgids: Vec<u32>,
    pub cgroup_ids: Vec<u64>,
    pub dports: Vec<u16>,
    pub destinations: Vec<Cidr>,
}

impl Filters {
    pub(super) fn bits(&self) -> u32 {
        let mut bits = 0;
        if !self.tgids.is_empty() {
            bits |= FILTER_TGID;
        }
        if !self.cgroup_ids.is_empty() {
            bits |= FILTER_CGROUP;
        }
        if !self.dports.is_empty() {
            bits |= FILTER_DPORT;
        }
        if !self.destinations.is_empty() {
            bits |= FILTER_DST;
        }
        bits
    }
}

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub filters: Filters,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Unread bytes at which the kernel wakes the reader; below it the reader polls.
    pub wakeup_bytes: u64,
    /// Outbound connections tracked at once in the kernel.
    pub max_connections: u32,
    /// Flows the TC classifier counts at once (LRU).
    pub max_wire_flows: u32,
    /// Interfaces on which to attach the TC classifier.
    pub tc_interfaces: Vec<String>,
    /// Load this object file instead of the embedded one (it must hold the same program and map
    /// names: `bench probe` loads the empty baseline object this way).
    pub object: Option<PathBuf>,
    /// Read tracepoint fields with `bpf_probe_read` only, never by direct context loads (the
    /// path taken for offsets outside the usual range; exercised by the kernel tests).
    pub helper_reads_only: bool,
    /// Attach the connection-state hooks as classic tracepoints even where the BTF ones would
    /// load (`--classic-tracepoints`; the kernel tests exercise both).
    pub classic_tracepoints: bool,
    /// Hook every send and receive (the length tracepoints, or the `tcp_sendmsg`/
    /// `tcp_cleanup_rbuf` kprobes): a live connection's bytes, calls and turns as they happen,
    /// which per-call deltas need. Without them only a closed connection's bytes are known
    /// (from `tcp_sock`), its calls are not, and nothing runs per message.
    pub per_message_hooks: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            filters: Filters::default(),
            ring_bytes: 4 << 20,
            wakeup_bytes: 1 << 20,
            max_connections: 65_536,
            max_wire_flows: 65_536,
            tc_interfaces: Vec::new(),
            object: None,
            helper_reads_only: false,
            classic_tracepoints: false,
            per_message_hooks: true,
        }
    }
}

impl ProbeOptions {
    /// What `probe` and `run` load: NetScope's programs under the validated settings.
    pub fn from_settings(s: &ProbeSettings) -> Self {
        Self {
            filters: Filters {
                tgids: s.pids.clone(),
                cgroup_ids: s.cgroup_ids.clone(),
                dports: s.dports.clone(),
                destinations: s.destinations.clone(),
            },
            ring_bytes: s.ring_bytes,
            wakeup_bytes: s.wakeup_bytes,
            max_connections: s.max_connections,
            max_wire_flows: s.max_connections,
            tc_interfaces: s.tc_interfaces.clone(),
            object: s.ebpf_object.clone(),
            helper_reads_only: false,
            classic_tracepoints: s.classic_tracepoints,
            per_message_hooks: s.per_message_hooks,
        }
    }
}

/// Kernel-side counters summed over CPUs, indexed by `netscope_common::counter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters(pub [u64; counter::COUNT as usize]);

impl KernelCounters {
    pub fn get(&self, index: u32) -> u64 {
        self.0[index as usize]
    }

    pub fn emitted(&self) -> u64 {
        self.get(counter::EVENTS_EMITTED)
    }

    pub fn dropped(&self) -> u64 {
        self.get(counter::EVENTS_DROPPED)
    }

    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        counter::NAMES.iter().copied().zip(self.0.iter().copied())
    }
}

/// Run statistics of one loaded program (needs `bpf_stats` enabled to move).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub program: &'static str,
    pub run_count: u64,
    pub run_time_ns: u64,
}
