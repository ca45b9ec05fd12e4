//! The probe: loads NetScope's kernel programs, attaches them, and exposes their ring buffer,
//! counters and per-socket state. Only this module knows about aya. Which program serves which
//! hook, and what each needs of the kernel, is ARCHITECTURE.md's "Kernel compatibility" table
//! (the one source); the attach list itself is `TRACEPOINTS`.

pub mod check;
pub mod correlate;
pub mod health;
pub mod kernel_btf;
mod kernel_log;
mod options;
pub mod privileges;
pub mod ring;
pub mod stats;
pub mod tracefs;

use std::{
    ffi::CString,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{KProbe, Program, SchedClassifier, TcAttachType, TracePoint, tc},
    util::KernelVersion,
};
use netscope_common::{OFFSET_NONE, ProbeConfig, SockState, names};

use crate::flows::convert::CountedCalls;

pub use self::{
    health::{KernelCounterReader, ProbeHealth, ReaderCounters},
    kernel_btf::KernelOffsets,
    options::{Filters, KernelCounters, ProbeOptions, ProgramSet, ProgramStats},
    ring::EventReader,
    tracefs::Tracefs,
};

/// The kernel object built by `cargo xtask build-ebpf` (the agent's build script runs the same
/// build), embedded so that the agent is one self-contained binary.
static EMBEDDED_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NETSCOPE_EBPF_OBJECT"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "missing privileges: {missing} (run as root, or as uid 0 holding CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, as the DaemonSet does: tracefs is root's alone)"
    )]
    Privileges { missing: String },
    #[error(
        "the seccomp profile denies {calls} (EPERM with the capabilities held): run the container under deploy/seccomp/netscope-agent.json — the runtime's default profile plus bpf under CAP_BPF and perf_event_open under CAP_PERFMON"
    )]
    Seccomp { calls: String },
    #[error(
        "tracefs is not mounted (looked in /sys/kernel/tracing and /sys/kernel/debug/tracing): mount it with `mount -t tracefs tracefs /sys/kernel/tracing`"
    )]
    TracefsMissing,
    #[error(
        "tracefs is mounted at {path} but uid {uid} may not read it (permission denied: it is root's alone, mode 0700); run as uid 0 — with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN as the DaemonSet grants, root's other capabilities are not needed"
    )]
    TracefsDenied { path: PathBuf, uid: u32 },
    #[error("tracepoint {tracepoint} is not available ({path}: {source}); this kernel lacks it")]
    TracepointMissing {
        tracepoint: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has an unexpected format: {reason}")]
    TracepointFormat { tracepoint: String, reason: String },
    #[error("kernel BTF (/sys/kernel/btf/vmlinux) is unreadable: {0}")]
    Btf(String),
    #[error("cannot read the eBPF object {path}: {source}")]
    Object {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {program}: {source}")]
    Program {
        program: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error(
        "eBPF program {0} is missing from the object (stale build? run cargo xtask build-ebpf)"
    )]
    MissingProgram(&'static str),
    #[error("eBPF map {0} is missing from the object (stale build? run cargo xtask build-ebpf)")]
    MissingMap(&'static str),
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("interface `{iface}`: {reason}")]
    Interface { iface: String, reason: String },
}

struct TracepointSpec {
    netscope: &'static str,
    baseline: &'static str,
    category: &'static str,
    name: &'static str,
}

const TRACEPOINTS: [TracepointSpec; 7] = [
    TracepointSpec {
        netscope: "ns_set_state",
        baseline: "nop_set_state",
        category: "sock",
        name: "inet_sock_set_state",
    },
    TracepointSpec {
        netscope: "ns_send_length",
        baseline: "nop_send_length",
        category: "sock",
        name: "sock_send_length",
    },
    TracepointSpec {
        netscope: "ns_recv_length",
        baseline: "nop_recv_length",
        category: "sock",
        name: "sock_recv_length",
    },
    TracepointSpec {
        netscope: "ns_retransmit",
        baseline: "nop_retransmit",
        category: "tcp",
        name: "tcp_retransmit_skb",
    },
    TracepointSpec {
        netscope: "ns_send_reset",
        baseline: "nop_send_reset",
        category: "tcp",
        name: "tcp_send_reset",
    },
    TracepointSpec {
        netscope: "ns_recv_reset",
        baseline: "nop_recv_reset",
        category: "tcp",
        name: "tcp_receive_reset",
    },
    TracepointSpec {
        netscope: "ns_destroy_sock",
        baseline: "nop_destroy_sock",
        category: "tcp",
        name: "tcp_destroy_sock",
    },
];

/// Without the length tracepoints (Linux < 6.4), live bytes and turns come from kprobes:
/// (NetScope's program, the empty one, the kernel function).
const SEQ_KPROBES: [(&str, &str, &str); 2] = [
    ("ns_tcp_sendmsg", "nop_tcp_sendmsg", "tcp_sendmsg"),
    (
        "ns_tcp_cleanup_rbuf",
        "nop_tcp_cleanup_rbuf",
        "tcp_cleanup_rbuf",
    ),
];

/// The kernel can create kprobes (`CONFIG_KPROBES`): the kprobe PMU exists.
pub fn kprobes_available() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

/// (egress, ingress) classifier programs of each set.
const fn tc_programs(set: ProgramSet) -> (&'static str, &'static str) {
    match set {
        ProgramSet::NetScope => ("ns_tc_egress", "ns_tc_ingress"),
        ProgramSet::Baseline => ("nop_tc_egress", "nop_tc_ingress"),
    }
}

/// TC classifiers attach as TCX links from Linux 6.6; before, through a clsact qdisc.
pub fn uses_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

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

impl LiveBytes {
    /// The call counts this path keeps.
    pub fn counted_calls(self) -> CountedCalls {
        CountedCalls {
            sends: self != Self::None,
            receives: self == Self::LengthTracepoints,
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

impl Probe {
    /// Checks privileges and kernel support, loads the object, fills the filters and attaches.
    pub fn load(options: &ProbeOptions) -> Result<Self, ProbeError> {
        let missing = privileges::missing_capabilities();
        if !missing.is_empty() {
            return Err(ProbeError::Privileges {
                missing: missing.join(", "),
            });
        }
        let denied = privileges::denied_by_seccomp();
        if !denied.is_empty() {
            return Err(ProbeError::Seccomp {
                calls: denied
                    .iter()
                    .map(|c| format!("{c}()"))
                    .collect::<Vec<_>>()
                    .join(" and "),
            });
        }
        let tracefs = Tracefs::locate()?;
        let btf = KernelOffsets::load()
            .inspect_err(
                |e| tracing::warn!(error = %e, "srtt and sk_err will be reported as unknown"),
            )
            .ok();
        let kernel_offsets = btf.unwrap_or_default();
        let config = probe_config(&tracefs, &kernel_offsets, options)?;

        let owned;
        let object: &[u8] = match &options.object {
            Some(path) => {
                owned = read_object(path)?;
                &owned
            }
            None => EMBEDDED_OBJECT,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(names::GLOBAL_CONFIG, &config, true)
            .map_max_entries(names::MAP_EVENTS, options.ring_bytes)
            .map_max_entries(names::MAP_SOCKS, options.max_connections)
            .map_max_entries(names::MAP_WIRE, options.max_wire_flows)
            .load(object)
            .map_err(ProbeError::Load)?;
        let counters = std::sync::Arc::new(take_counters(&mut ebpf)?);
        let kernel_log = kernel_log::KernelLog::start(&mut ebpf);
        let live_bytes = if config.length_hooks == 1 {
            LiveBytes::LengthTracepoints
        } else if options.per_message_hooks
            && config.tcp_write_seq != OFFSET_NONE
            && config.tcp_copied_seq != OFFSET_NONE
        {
            LiveBytes::SeqKprobes
        } else {
            LiveBytes::None
        };
        let mut probe = Self {
            ebpf,
            _kernel_log: kernel_log,
            loaded: Vec::new(),
            kernel_offsets,
            counters,
            live_bytes,
            report: check::check_with(btf),
        };
        probe.fill_filters(&options.filters)?;
        probe.attach(options)?;
        if probe.live_bytes == LiveBytes::SeqKprobes
            && let Err(e) = probe.attach_seq_kprobes(options.programs)
        {
            tracing::warn!(error = %e, "kprobes unavailable: live per-call bytes are unknown");
            probe.live_bytes = LiveBytes::None;
        }
        probe.settle_report(options.per_message_hooks);
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
        let taken = (self.live_bytes != LiveBytes::None).then(|| self.live_bytes.describe());
        let totals = self.kernel_offsets.has_tcp_totals();
        for f in &mut self.report.facts {
            if f.fact == check::BYTES_PER_CALL {
                f.hook = taken.map(str::to_owned);
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

    pub fn kernel_offsets(&self) -> KernelOffsets {
        self.kernel_offsets
    }

    fn fill_filters(&mut self, filters: &Filters) -> Result<(), ProbeError> {
        const PRESENT: u8 = 1;
        let map_err = |map| move |source| ProbeError::Map { map, source };
        let mut tgids: BpfHashMap<_, u32, u8> = self.map_mut(names::MAP_FILTER_TGID)?;
        for tgid in &filters.tgids {
            tgids
                .insert(tgid, &PRESENT, 0)
                .map_err(map_err(names::MAP_FILTER_TGID))?;
        }
        let mut cgroups: BpfHashMap<_, u64, u8> = self.map_mut(names::MAP_FILTER_CGROUP)?;
        for id in &filters.cgroup_ids {
            cgroups
                .insert(id, &PRESENT, 0)
                .map_err(map_err(names::MAP_FILTER_CGROUP))?;
        }
        let mut dports: BpfHashMap<_, u16, u8> = self.map_mut(names::MAP_FILTER_DPORT)?;
        for port in &filters.dports {
            dports
                .insert(port, &PRESENT, 0)
                .map_err(map_err(names::MAP_FILTER_DPORT))?;
        }
        let mut v4: LpmTrie<_, [u8; 4], u8> = self.map_mut(names::MAP_FILTER_DST_V4)?;
        for cidr in &filters.destinations {
            if let IpAddr::V4(a) = cidr.addr {
                v4.insert(&Key::new(cidr.prefix_len.into(), a.octets()), &PRESENT, 0)
                    .map_err(map_err(names::MAP_FILTER_DST_V4))?;
            }
        }
        let mut v6: LpmTrie<_, [u8; 16], u8> = self.map_mut(names::MAP_FILTER_DST_V6)?;
        for cidr in &filters.destinations {
            if let IpAddr::V6(a) = cidr.addr {
                v6.insert(&Key::new(cidr.prefix_len.into(), a.octets()), &PRESENT, 0)
                    .map_err(map_err(names::MAP_FILTER_DST_V6))?;
            }
        }
        Ok(())
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

    fn attach(&mut self, options: &ProbeOptions) -> Result<(), ProbeError> {
        for spec in &TRACEPOINTS {
            if spec.category == "sock"
                && spec.name != "inet_sock_set_state"
                && self.live_bytes != LiveBytes::LengthTracepoints
            {
                continue;
            }
            let name = match options.programs {
                ProgramSet::NetScope => spec.netscope,
                ProgramSet::Baseline => spec.baseline,
            };
            let program: &mut TracePoint = self.program_mut(name)?;
            let err = |source| ProbeError::Program {
                program: name,
                source,
            };
            program.load().map_err(err)?;
            self.loaded.push(name);
            let program: &mut TracePoint = self.program_mut(name)?;
            program.attach(spec.category, spec.name).map_err(err)?;
        }
        if options.tc_interfaces.is_empty() {
            return Ok(());
        }
        let (egress, ingress) = tc_programs(options.programs);
        let tcx = uses_tcx();
        for name in [egress, ingress] {
            let program: &mut SchedClassifier = self.program_mut(name)?;
            program.load().map_err(|source| ProbeError::Program {
                program: name,
                source,
            })?;
            self.loaded.push(name);
        }
        for iface in &options.tc_interfaces {
            let c_iface = CString::new(iface.as_str()).map_err(|_| ProbeError::Interface {
                iface: iface.clone(),
                reason: "interface names cannot contain NUL".to_owned(),
            })?;
            if !tcx {
                // Before TCX, classifiers hang off a clsact qdisc; one that exists is fine.
                if let Err(e) = tc::qdisc_add_clsact(&c_iface) {
                    let exists = matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
                    if !exists {
                        return Err(ProbeError::Interface {
                            iface: iface.clone(),
                            reason: format!("cannot add clsact qdisc: {e}"),
                        });
                    }
                }
            }
            for (name, direction) in [
                (egress, TcAttachType::Egress),
                (ingress, TcAttachType::Ingress),
            ] {
                let program: &mut SchedClassifier = self.program_mut(name)?;
                program
                    .attach(&c_iface, direction)
                    .map_err(|e| ProbeError::Interface {
                        iface: iface.clone(),
                        reason: format!("cannot attach {name}: {e}"),
                    })?;
            }
        }
        Ok(())
    }

    /// The kprobe fallback for live bytes (kernels without the length tracepoints).
    fn attach_seq_kprobes(&mut self, set: ProgramSet) -> Result<(), ProbeError> {
        for (netscope, baseline, function) in SEQ_KPROBES {
            let name = match set {
                ProgramSet::NetScope => netscope,
                ProgramSet::Baseline => baseline,
            };
            let err = |source| ProbeError::Program {
                program: name,
                source,
            };
            let program: &mut KProbe = self.program_mut(name)?;
            program.load().map_err(err)?;
            self.loaded.push(name);
            let program: &mut KProbe = self.program_mut(name)?;
            program.attach(function, 0).map_err(err)?;
        }
        Ok(())
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

fn read_object(path: &Path) -> Result<Vec<u8>, ProbeError> {
    std::fs::read(path).map_err(|source| ProbeError::Object {
        path: path.to_path_buf(),
        source,
    })
}

/// Builds the programs' load-time configuration from this kernel's tracepoint formats and BTF.
fn probe_config(
    tracefs: &Tracefs,
    offsets: &KernelOffsets,
    options: &ProbeOptions,
) -> Result<ProbeConfig, ProbeError> {
    let skaddr = |category, name| tracefs.format(category, name)?.offset("skaddr", 8);
    // The length tracepoints exist from Linux 6.4; before, bytes come from tcp_sock at close.
    let length = |name| match tracefs.format("sock", name) {
        Ok(format) => format.sock_length_offsets().map(Some),
        Err(ProbeError::TracepointMissing { .. }) => Ok(None),
        Err(e) => Err(e),
    };
    let (send_length, recv_length) = (length("sock_send_length")?, length("sock_recv_length")?);
    let length_hooks = options.per_message_hooks && send_length.is_some() && recv_length.is_some();
    Ok(ProbeConfig {
        set_state: tracefs
            .format("sock", "inet_sock_set_state")?
            .set_state_offsets()?,
        send_length: send_length.unwrap_or(ProbeConfig::UNSET.send_length),
        recv_length: recv_length.unwrap_or(ProbeConfig::UNSET.recv_length),
        retransmit_skaddr: skaddr("tcp", "tcp_retransmit_skb")?,
        send_reset_skaddr: skaddr("tcp", "tcp_send_reset")?,
        receive_reset_skaddr: skaddr("tcp", "tcp_receive_reset")?,
        destroy_skaddr: skaddr("tcp", "tcp_destroy_sock")?,
        tc_attached: u32::from(!options.tc_interfaces.is_empty()),
        helper_reads: u32::from(options.helper_reads_only),
        length_hooks: u32::from(length_hooks),
        sock_sk_err: offsets.sock_sk_err.unwrap_or(OFFSET_NONE),
        tcp_srtt_us: offsets.tcp_sock_srtt_us.unwrap_or(OFFSET_NONE),
        filters: options.filters.bits(),
        tcp_bytes_sent: offsets.tcp_sock_bytes_sent.unwrap_or(OFFSET_NONE),
        tcp_bytes_retrans: offsets.tcp_sock_bytes_retrans.unwrap_or(OFFSET_NONE),
        tcp_bytes_received: offsets.tcp_sock_bytes_received.unwrap_or(OFFSET_NONE),
        tcp_write_seq: offsets.tcp_sock_write_seq.unwrap_or(OFFSET_NONE),
        wakeup_bytes: options.wakeup_bytes,
        tcp_copied_seq: offsets.tcp_sock_copied_seq.unwrap_or(OFFSET_NONE),
        _pad: 0,
    })
}
