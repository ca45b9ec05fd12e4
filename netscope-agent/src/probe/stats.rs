//! Run-time statistics of loaded BPF programs (`bpf_stats`), for the benchmarks: NetScope's own
//! programs ([`super::Probe::program_stats`]) and every other program loaded on the machine (a
//! peer tool's, such as tcplife), so that the bench binary needs no aya of its own.
//!
//! The kernel counts a program's runs and run time only while some process holds the
//! `BPF_ENABLE_STATS` fd ([`RunTimeStats`]); counts made then stay readable afterwards.

use std::os::fd::OwnedFd;

use aya::sys::{Stats, enable_stats};

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("enabling bpf_stats failed (needs CAP_SYS_ADMIN, Linux ≥ 5.8): {0}")]
    Enable(String),
    #[error("listing the loaded BPF programs failed: {0}")]
    List(String),
}

/// `bpf_stats` stays on while this lives.
pub struct RunTimeStats(#[allow(dead_code)] OwnedFd);

impl RunTimeStats {
    pub fn enable() -> Result<Self, StatsError> {
        enable_stats(Stats::RunTime)
            .map(Self)
            .map_err(|e| StatsError::Enable(e.to_string()))
    }
}

/// One loaded program, as `bpftool prog show` would list it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedProgram {
    pub id: u32,
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// A program's run time as `bpf_stats` counted it, in ns (saturating).
pub(super) fn run_time_ns(info: &aya::programs::ProgramInfo) -> u64 {
    u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX)
}

/// Every BPF program loaded on the machine now.
pub fn loaded_programs() -> Result<Vec<LoadedProgram>, StatsError> {
    aya::programs::loaded_programs()
        .map(|p| {
            let p = p.map_err(|e| StatsError::List(e.to_string()))?;
            Ok(LoadedProgram {
                id: p.id(),
                name: p.name_as_str().unwrap_or("?").to_owned(),
                run_count: p.run_count(),
                run_time_ns: run_time_ns(&p),
            })
        })
        .collect()
}
