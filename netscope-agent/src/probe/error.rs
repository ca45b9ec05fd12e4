//! What can stop the probe from loading or attaching, each said with what to do about it.

use std::path::PathBuf;

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
