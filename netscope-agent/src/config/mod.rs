//! Configuration: raw values from the command line and `NETSCOPE_*` environment variables,
//! validated once at boot into typed settings. Validation reports every problem at once, and
//! nothing downstream re-checks. It reads only what it must check — the TOML file, the host
//! name, cgroup directories, interfaces, processes — the probe's through a `System` seam that
//! unit tests replace.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;

use crate::domain::Cidr;

pub mod api;
pub mod audit;
pub mod run;
mod targets_file;

pub use api::{ApiArgs, ApiSettings};
pub use audit::{AuditArgs, AuditSettings, S3Args};
pub use run::{RunArgs, RunSettings};

/// The local broker, the default of every command that talks to Kafka.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// The requests topic `run` consumes and `send` writes to by default.
pub const DEFAULT_REQUESTS_TOPIC: &str = "netscope.requests";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Raw settings of `netscope-agent probe`.
#[derive(Args, Clone, Debug)]
pub struct ProbeArgs {
    /// Track only connections to this destination port (repeatable).
    #[arg(
        long = "dport",
        value_name = "PORT",
        env = "NETSCOPE_DPORTS",
        value_delimiter = ','
    )]
    pub dports: Vec<u16>,
    /// Track only connections made by this process id (repeatable).
    #[arg(
        long = "pid",
        value_name = "PID",
        env = "NETSCOPE_PIDS",
        value_delimiter = ','
    )]
    pub pids: Vec<u32>,
    /// Track only connections made from this cgroup v2 directory (repeatable, exact cgroup).
    #[arg(
        long = "cgroup",
        value_name = "PATH",
        env = "NETSCOPE_CGROUPS",
        value_delimiter = ','
    )]
    pub cgroups: Vec<PathBuf>,
    /// Track only connections to this destination address or CIDR prefix (repeatable).
    #[arg(
        long = "dst",
        value_name = "CIDR",
        env = "NETSCOPE_DSTS",
        value_delimiter = ','
    )]
    pub destinations: Vec<String>,
    /// Count wire packets/bytes with a TC classifier on this interface (repeatable).
    #[arg(
        long = "tc-iface",
        value_name = "IFACE",
        env = "NETSCOPE_TC_IFACES",
        value_delimiter = ','
    )]
    pub tc_interfaces: Vec<String>,
    /// Ring buffer size in bytes (power of two, ≥ 4096). Its pages are mapped twice in the
    /// agent, so it counts twice in the agent's RSS; 4 MiB holds ~7,000 connections' records,
    /// ~350 ms of a 20,000-connections/s burst. Raise it where
    /// `netscope_kernel_ring_events{result="dropped"}` counts.
    #[arg(long, default_value_t = 4 << 20, env = "NETSCOPE_RING_BYTES")]
    pub ring_bytes: u64,
    /// Unread ring bytes at which the kernel wakes the agent (below it the agent polls).
    #[arg(long, default_value_t = 1 << 20, env = "NETSCOPE_WAKEUP_BYTES")]
    pub wakeup_bytes: u64,
    /// Poll interval of the ring buffer, in milliseconds.
    #[arg(long, default_value_t = 50, env = "NETSCOPE_POLL_MS")]
    pub poll_ms: u64,
    /// Outbound connections tracked at once in the kernel.
    #[arg(long, default_value_t = 65_536, env = "NETSCOPE_MAX_CONNECTIONS")]
    pub max_connections: u32,
    /// Flows kept in the agent's flow table.
    #[arg(long, default_value_t = 100_000, env = "NETSCOPE_MAX_FLOWS")]
    pub max_flows: usize,
    /// Seconds a finished flow stays in the flow table.
    #[arg(long, default_value_t = 60, env = "NETSCOPE_RETENTION_SECS")]
    pub retention_secs: u64,
    /// Load this eBPF object (from `cargo xtask build-ebpf`) instead of the embedded one.
    #[arg(long, value_name = "FILE", env = "NETSCOPE_EBPF_OBJECT")]
    pub ebpf_object: Option<PathBuf>,
    /// `probe`: also hook every send and receive (the length tracepoints, or kprobes) to count
    /// a live connection's bytes and calls as they happen. Without it a connection's bytes come
    /// from TCP's own counters when it closes and nothing runs per message; its calls are then
    /// unknown (null). `run` always hooks them: a call's bytes on a pooled connection need them.
    #[arg(long, env = "NETSCOPE_PER_MESSAGE_HOOKS")]
    pub per_message_hooks: bool,
    /// Attach the connection-state hooks as classic tracepoints even where kernel BTF allows
    /// BTF tracepoints (which skip the record the kernel builds for every socket state change;
    /// the probe falls back to classic ones by itself when they do not load).
    #[arg(long, env = "NETSCOPE_CLASSIC_TRACEPOINTS")]
    pub classic_tracepoints: bool,
    /// Also print a line when a connection is established (default: closed and failed only).
    #[arg(long)]
    pub established: bool,
}

/// Validated settings of the probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSettings {
    pub dports: Vec<u16>,
    pub pids: Vec<u32>,
    pub cgroup_ids: Vec<u64>,
    pub destinations: Vec<Cidr>,
    pub tc_interfaces: Vec<String>,
    pub ring_bytes: u32,
    pub wakeup_bytes: u64,
    pub poll: Duration,
    pub max_connections: u32,
    pub max_flows: usize,
    pub retention: Duration,
    pub ebpf_object: Option<PathBuf>,
    pub print_established: bool,
    /// Hook every send and receive (see [`ProbeArgs::per_message_hooks`]).
    pub per_message_hooks: bool,
    /// See [`ProbeArgs::classic_tracepoints`].
    pub classic_tracepoints: bool,
}

const MAX_RING_BYTES: u64 = 1 << 30;

impl ProbeArgs {
    /// Validates everything, reporting every problem at once.
    pub fn validate(&self) -> Result<ProbeSettings, ConfigError> {
        self.validate_with(&SystemView)
    }

    fn validate_with(&self, sys: &dyn System) -> Result<ProbeSettings, ConfigError> {
        let mut errors = self.sizing_problems();
        errors.extend(self.filter_problems(sys));
        let mut cgroup_ids = Vec::new();
        for path in &self.cgroups {
            match sys.cgroup_id(path) {
                Ok(id) => cgroup_ids.push(id),
                Err(e) => errors.push(format!("cgroup {}: {e}", path.display())),
            }
        }
        let mut destinations = Vec::new();
        for d in &self.destinations {
            match d.parse::<Cidr>() {
                Ok(c) => destinations.push(c),
                Err(e) => errors.push(format!("dst {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok(ProbeSettings {
            dports: self.dports.clone(),
            pids: self.pids.clone(),
            cgroup_ids,
            destinations,
            tc_interfaces: self.tc_interfaces.clone(),
            ring_bytes: u32::try_from(self.ring_bytes).unwrap_or(u32::MAX),
            wakeup_bytes: self.wakeup_bytes,
            poll: Duration::from_millis(self.poll_ms),
            max_connections: self.max_connections,
            max_flows: self.max_flows,
            retention: Duration::from_secs(self.retention_secs),
            ebpf_object: self.ebpf_object.clone(),
            print_established: self.established,
            per_message_hooks: self.per_message_hooks,
            classic_tracepoints: self.classic_tracepoints,
        })
    }

    /// Ring, wake-up threshold, poll interval and table sizes out of their ranges.
    fn sizing_problems(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if !self.ring_bytes.is_power_of_two() || !(4096..=MAX_RING_BYTES).contains(&self.ring_bytes)
        {
            errors.push(format!(
                "ring-bytes {} must be a power of two between 4096 and {MAX_RING_BYTES}",
                self.ring_bytes
            ));
        }
        if self.wakeup_bytes == 0 || self.wakeup_bytes >= self.ring_bytes {
            errors.push(format!(
                "wakeup-bytes {} must be above 0 and below ring-bytes {}",
                self.wakeup_bytes, self.ring_bytes
            ));
        }
        if !(1..=10_000).contains(&self.poll_ms) {
            errors.push(format!("poll-ms {} must be 1..=10000", self.poll_ms));
        }
        if !(1..=4_194_304).contains(&self.max_connections) {
            errors.push(format!(
                "max-connections {} must be 1..=4194304",
                self.max_connections
            ));
        }
        if !(1..=10_000_000).contains(&self.max_flows) {
            errors.push(format!("max-flows {} must be 1..=10000000", self.max_flows));
        }
        errors
    }

    /// Ports, processes, interfaces and the object file that do not exist here.
    fn filter_problems(&self, sys: &dyn System) -> Vec<String> {
        let mut errors = Vec::new();
        if self.dports.contains(&0) {
            errors.push("dport 0 is not a destination port".to_owned());
        }
        for pid in &self.pids {
            if !sys.pid_exists(*pid) {
                errors.push(format!("pid {pid}: no such process"));
            }
        }
        for iface in &self.tc_interfaces {
            if !sys.interface_exists(iface) {
                errors.push(format!("tc-iface `{iface}`: no such network interface"));
            }
        }
        if let Some(obj) = &self.ebpf_object
            && !obj.is_file()
        {
            errors.push(format!("ebpf-object {}: no such file", obj.display()));
        }
        errors
    }
}

/// What validation needs to know about the machine (a seam for unit tests).
trait System {
    fn pid_exists(&self, pid: u32) -> bool;
    fn cgroup_id(&self, path: &Path) -> Result<u64, String>;
    fn interface_exists(&self, name: &str) -> bool;
}

struct SystemView;

impl System for SystemView {
    fn pid_exists(&self, pid: u32) -> bool {
        Path::new("/proc").join(pid.to_string()).exists()
    }

    /// On cgroup v2 a cgroup's id is the inode number of its directory.
    fn cgroup_id(&self, path: &Path) -> Result<u64, String> {
        let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
        if !meta.is_dir() {
            return Err("not a cgroup directory".to_owned());
        }
        Ok(meta.ino())
    }

    fn interface_exists(&self, name: &str) -> bool {
        !name.is_empty() && !name.contains('/') && Path::new("/sys/class/net").join(name).exists()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProbeArgs,
    }

    struct FakeSystem;

    impl System for FakeSystem {
        fn pid_exists(&self, pid: u32) -> bool {
            pid == 1
        }
        fn cgroup_id(&self, path: &Path) -> Result<u64, String> {
            (path == Path::new("/cg/ok"))
                .then_some(77)
                .ok_or_else(|| "No such file or directory".to_owned())
        }
        fn interface_exists(&self, name: &str) -> bool {
            name == "lo"
        }
    }

    fn parse(args: &[&str]) -> ProbeArgs {
        let mut argv = vec!["probe"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn defaults_are_valid() {
        let s = parse(&[]).validate_with(&FakeSystem).unwrap();
        assert_eq!(s.ring_bytes, 4 << 20);
        assert_eq!(s.poll, Duration::from_millis(50));
        assert!(s.dports.is_empty() && s.destinations.is_empty());
    }

    #[test]
    fn valid_filters_are_typed() {
        let s = parse(&[
            "--dport",
            "443,8080",
            "--pid",
            "1",
            "--cgroup",
            "/cg/ok",
            "--dst",
            "10.0.0.0/8",
            "--tc-iface",
            "lo",
        ])
        .validate_with(&FakeSystem)
        .unwrap();
        assert_eq!(s.dports, vec![443, 8080]);
        assert_eq!(s.cgroup_ids, vec![77]);
        assert_eq!(s.destinations[0].prefix_len, 8);
        assert_eq!(s.tc_interfaces, vec!["lo".to_owned()]);
    }

    #[test]
    fn every_error_is_listed_at_once() {
        let err = parse(&[
            "--ring-bytes",
            "5000",
            "--wakeup-bytes",
            "0",
            "--pid",
            "999999",
            "--cgroup",
            "/cg/missing",
            "--dst",
            "10.0.0.0/40",
            "--tc-iface",
            "eth9",
            "--dport",
            "0",
            "--poll-ms",
            "0",
            "--max-connections",
            "0",
        ])
        .validate_with(&FakeSystem)
        .unwrap_err();
        let ConfigError::Invalid(errors) = &err;
        let text = err.to_string();
        for needle in [
            "ring-bytes 5000",
            "wakeup-bytes 0",
            "pid 999999",
            "cgroup /cg/missing",
            "10.0.0.0/40",
            "tc-iface `eth9`",
            "dport 0",
            "poll-ms 0",
            "max-connections 0",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
        assert_eq!(errors.len(), 9, "{text}");
    }
}
