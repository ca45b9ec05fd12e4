//! The probe: loads NetScope's kernel programs, attaches them, and exposes their ring buffer,
//! counters and per-socket state. Only this module knows about aya. Which program serves which
//! hook, and what each needs of the kernel, is ARCHITECTURE.md's "Kernel compatibility" table
//! (the one source); the attach list itself is `attach.rs`'s `TRACEPOINTS`. Loading is in
//! `loader.rs`, attaching in `attach.rs`, what can fail in `error.rs`.

mod attach;
mod btf;
pub mod check;
pub mod correlate;
mod error;
pub mod health;
pub mod kernel_btf;
mod kernel_log;
mod loader;
mod options;
pub mod privileges;
pub mod ring;
pub mod stats;
pub mod tracefs;

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::Program,
};
use netscope_common::{OFFSET_NONE, ProbeConfig, SockState, names};

use crate::flows::convert::CountedCalls;

pub use self::{
    attach::{kprobes_available, uses_tcx},
    error::ProbeError,
    health::{KernelCounterReader, ProbeHealth, ReaderCounters},
    kernel_btf::KernelOffsets,
    options::{Filters, KernelCounters, ProbeOptions, ProgramStats},
    ring::EventReader,
    tracefs::Tracefs,
};

/// The kernel object built by `cargo xtask build-ebpf` (the agent's build script runs the same
/// build), embedded so that the agent is one self-contained binary.
static EMBEDDED_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NETSCOPE_EBPF_OBJECT"));

/// The per-CPU counters map, out of the object (it stays readable after detaching).
fn take_counters(ebpf: &mut Ebpf) -> Result<KernelCounterReader, ProbeError> {
    let map = ebpf
        .take_map(names::MAP_COUNTERS)
        .ok_or(ProbeError::MissingMap(names::MAP_COUNTERS))?;
    let array = PerCpuArray::try_from(map).map_err(|source| ProbeError::Map {
        map: names::MAP_COUNTERS,
        source,
    })?;
    Ok(KernelCounterReader::new(array))
}

/// Loaded and attached kernel programs. Dropping it detaches everything.
pub struct Probe {
    ebpf: Ebpf,
    /// The programs' diagnostics forwarded to the logs (dropped after `ebpf`'s programs).
    _kernel_log: Option<kernel_log::KernelLog>,
    loaded: Vec<&'static str>,
    kernel_offsets: KernelOffsets,
    counters: std::sync::Arc<KernelCounterReader>,
    /// How live bytes per socket (and turns) are counted, if at all.
    live_bytes: LiveBytes,
    /// Which kind of tracepoint serves the hooks.
    tracepoint_kind: TracepointKind,
    /// What this kernel offers (read once, at load).
    report: check::CheckReport,
}

/// Which hooks count a live connection's bytes and delimit its turns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveBytes {
    /// `sock:sock_send_length`/`sock_recv_length` (Linux ≥ 6.4).
    LengthTracepoints,
    /// kprobes on `tcp_sendmsg` and `tcp_cleanup_rbuf`, reading `write_seq`/`copied_seq`.
    SeqKprobes,
    /// Neither: only a closed connection's bytes are known (read from `tcp_sock` at close).
    None,
}

/// The kind of tracepoint every hook of the attach table (`attach.rs`'s `TRACEPOINTS`) attaches
/// as: all BTF or all classic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracepointKind {
    /// BTF tracepoints (`tp_btf`): the kernel's arguments, no record built per event. Chosen
    /// when kernel BTF gives the socket fields the programs read.
    Btf,
    /// Classic tracepoints: the record tracefs describes, built by the kernel per event.
    Classic,
}

impl TracepointKind {
    fn choose(offsets: &KernelOffsets, classic_asked: bool) -> Self {
        if !classic_asked && offsets.has_sock_fields() {
            Self::Btf
        } else {
            Self::Classic
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Btf => "BTF tracepoint inet_sock_set_state (tp_btf)",
            Self::Classic => "tracepoint sock:inet_sock_set_state",
        }
    }
}

impl LiveBytes {
    /// The length tracepoints where the configuration enabled them; otherwise the kprobes,
    /// when per-message hooks are asked for and BTF gave the sequence-number offsets.
    fn choose(config: &ProbeConfig, per_message_hooks: bool) -> Self {
        if config.length_hooks == 1 {
            Self::LengthTracepoints
        } else if per_message_hooks
            && config.tcp_write_seq != OFFSET_NONE
            && config.tcp_copied_seq != OFFSET_NONE
        {
            Self::SeqKprobes
        } else {
            Self::None
        }
    }

    /// The call counts this path keeps.
    pub fn counted_calls(self) -> CountedCalls {
        CountedCalls {
            sends: self != Self::None,
            receives: self == Self::LengthTracepoints,
        }
    }

    /// The path with the kind of tracepoint the length hooks attach as.
    pub fn describe_as(self, kind: TracepointKind) -> &'static str {
        match (self, kind) {
            (Self::LengthTracepoints, TracepointKind::Btf) => {
                "BTF tracepoints sock_send_length/sock_recv_length (tp_btf)"
            }
            _ => self.describe(),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::LengthTracepoints => "tracepoints sock:sock_send_length/sock_recv_length",
            Self::SeqKprobes => "kprobes tcp_sendmsg/tcp_cleanup_rbuf (tcp_sock sequence numbers)",
            Self::None => "none",
        }
    }
}

/// Loading parsed the kernel's whole BTF (aya's parser, for the BTF tracepoints: a small
/// allocation per type) and freed it; the freed pages stay in the heap, resident, unless given
/// back. Once, at the end of the load: ~10 MiB of the idle agent's resident set.
fn release_load_time_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; no allocation is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Probe {
    /// Checks privileges and kernel support, loads the object, fills the filters and attaches.
    pub fn load(options: &ProbeOptions) -> Result<Self, ProbeError> {
        loader::check_privileges()?;
        let tracefs = Tracefs::locate()?;
        let btf = KernelOffsets::load()
            .inspect_err(
                |e| tracing::warn!(error = %e, "srtt and sk_err will be reported as unknown"),
            )
            .ok();
        let kernel_offsets = btf.unwrap_or_default();
        let config = loader::probe_config(&tracefs, &kernel_offsets, options)?;
        let mut ebpf = loader::load_object(options, &config)?;
        let counters = std::sync::Arc::new(take_counters(&mut ebpf)?);
        let kernel_log = kernel_log::KernelLog::start(&mut ebpf);
        let mut probe = Self {
            ebpf,
            _kernel_log: kernel_log,
            loaded: Vec::new(),
            kernel_offsets,
            counters,
            live_bytes: LiveBytes::choose(&config, options.per_message_hooks),
            tracepoint_kind: TracepointKind::choose(&kernel_offsets, options.classic_tracepoints),
            report: check::check_with(btf),
        };
        probe.fill_filters(&options.filters)?;
        probe.attach(options)?;
        probe.settle_report(options.per_message_hooks);
        release_load_time_heap();
        let report = serde_json::to_string(&probe.report).unwrap_or_default();
        tracing::info!(kernel_support = %report, "probe attached");
        Ok(probe)
    }

    /// What this kernel offers, as `probe --check` reports it, with the per-call bytes path
    /// this probe actually took.
    pub fn report(&self) -> check::CheckReport {
        self.report.clone()
    }

    /// Once attached: the per-call bytes path is the one taken (kprobes can fail to attach, and
    /// the per-message hooks may be left out), and so is the per-connection one.
    fn settle_report(&mut self, per_message_hooks: bool) {
        let taken = (self.live_bytes != LiveBytes::None).then(|| self.per_message_hook());
        let totals = self.kernel_offsets.has_tcp_totals();
        for f in &mut self.report.facts {
            if f.fact == check::CONNECT_LATENCY {
                f.hook = Some(self.tracepoint_kind.describe().to_owned());
            } else if f.fact == check::BYTES_PER_CALL {
                f.hook.clone_from(&taken);
                if !per_message_hooks {
                    f.note = Some(
                        "per-message hooks off (`probe --per-message-hooks`; `run` has them)"
                            .to_owned(),
                    );
                }
            } else if f.fact == check::BYTES_PER_CONNECTION
                && self.live_bytes != LiveBytes::LengthTracepoints
            {
                f.hook = totals.then(|| check::TCP_TOTALS.to_owned());
            }
        }
    }

    /// The live-bytes path's description, with the kind of tracepoint the length hooks took.
    fn per_message_hook(&self) -> String {
        self.live_bytes.describe_as(self.tracepoint_kind).to_owned()
    }

    pub fn kernel_offsets(&self) -> KernelOffsets {
        self.kernel_offsets
    }

    /// Which kind of tracepoint serves the hooks.
    pub fn tracepoint_kind(&self) -> TracepointKind {
        self.tracepoint_kind
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, ProbeError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingMap(name))?;
        T::try_from(map).map_err(|source| ProbeError::Map { map: name, source })
    }

    fn program_mut<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, ProbeError>
    where
        &'a mut T: TryFrom<&'a mut Program, Error = aya::programs::ProgramError>,
    {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(ProbeError::MissingProgram(name))?;
        program.try_into().map_err(|source| ProbeError::Program {
            program: name,
            source,
        })
    }

    /// Takes the ring buffer out of the probe (once).
    pub fn take_events(&mut self) -> Result<EventReader, ProbeError> {
        let map = self
            .ebpf
            .take_map(names::MAP_EVENTS)
            .ok_or(ProbeError::MissingMap(names::MAP_EVENTS))?;
        let ring = RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            map: names::MAP_EVENTS,
            source,
        })?;
        Ok(EventReader::new(ring))
    }

    /// Takes the per-socket state map out of the probe (once), for live counters.
    pub fn take_socks(&mut self) -> Result<BpfHashMap<MapData, u64, SockState>, ProbeError> {
        let map = self
            .ebpf
            .take_map(names::MAP_SOCKS)
            .ok_or(ProbeError::MissingMap(names::MAP_SOCKS))?;
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map {
            map: names::MAP_SOCKS,
            source,
        })
    }

    /// Kernel counters summed over CPUs.
    pub fn kernel_counters(&self) -> Result<KernelCounters, ProbeError> {
        self.counters.read().map_err(|source| ProbeError::Map {
            map: names::MAP_COUNTERS,
            source,
        })
    }

    /// The kernel counters' reader, shared (read at scrape time).
    pub fn counter_reader(&self) -> std::sync::Arc<KernelCounterReader> {
        std::sync::Arc::clone(&self.counters)
    }

    /// Whether the kernel counts each socket's bytes as they flow and delimits its turns (the
    /// length tracepoints, or the kprobes); otherwise only a closed connection's bytes are known.
    pub fn counts_live_bytes(&self) -> bool {
        self.live_bytes != LiveBytes::None
    }

    pub fn live_bytes(&self) -> LiveBytes {
        self.live_bytes
    }

    /// The programs attached now.
    pub fn attached(&self) -> Vec<&'static str> {
        self.loaded.clone()
    }

    /// Run count and run time of every loaded program.
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, ProbeError> {
        self.loaded
            .iter()
            .map(|&name| {
                let program = self
                    .ebpf
                    .program(name)
                    .ok_or(ProbeError::MissingProgram(name))?;
                let info = program.info().map_err(|source| ProbeError::Program {
                    program: name,
                    source,
                })?;
                Ok(ProgramStats {
                    program: name,
                    run_count: info.run_count(),
                    run_time_ns: stats::run_time_ns(&info),
                })
            })
            .collect()
    }

    /// Detaches and unloads every program; maps stay readable so that the last events can be
    /// drained and the counters reconciled.
    pub fn detach(&mut self) {
        for name in std::mem::take(&mut self.loaded) {
            let result = match self.ebpf.program_mut(name) {
                Some(Program::TracePoint(p)) => p.unload(),
                Some(Program::SchedClassifier(p)) => p.unload(),
                Some(Program::KProbe(p)) => p.unload(),
                _ => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(program = name, error = %e, "detach failed");
            }
        }
    }
}
