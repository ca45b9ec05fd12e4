//! What every benchmark reports about a sample: percentiles, medians, best rounds, and the CPU
//! time a part of this process used.

use std::{collections::BTreeMap, time::Duration};

/// A sorted sample.
pub struct Sample(Vec<f64>);

impl Sample {
    pub fn new(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self(values)
    }

    /// The value at quantile `q` (0–1), nearest rank; 0 for an empty sample.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let rank = (self.0.len() as f64 * q) as usize;
        self.0[rank.min(self.0.len() - 1)]
    }

    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    pub fn mean(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }

    /// The largest value. Interference on a shared VM only ever slows a round down: the
    /// fastest round is the one that shows the workload's own cost.
    pub fn max(&self) -> f64 {
        self.0.last().copied().unwrap_or(0.0)
    }
}

/// CPU time used so far by this process (every thread, exited ones included).
pub fn process_cpu() -> Duration {
    // SAFETY: `usage` is a valid rusage to write to.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer has no other precondition.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time used so far by each of this process's live threads, keyed by (name, thread id).
pub fn cpu_by_thread() -> BTreeMap<(String, u32), Duration> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let ns = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        by_name.insert((comm.trim_end().to_owned(), tid), Duration::from_nanos(ns));
    }
    by_name
}

/// Per thread name, the CPU time its threads used between `before` and `after`, in µs per
/// `calls` (a thread that ended in between is not counted: the sum may fall short of the
/// process's total).
pub fn cpu_breakdown(
    before: &BTreeMap<(String, u32), Duration>,
    after: &BTreeMap<(String, u32), Duration>,
    calls: usize,
) -> String {
    let mut by_name: BTreeMap<&str, Duration> = BTreeMap::new();
    for (key, cpu) in after {
        let used = cpu.saturating_sub(before.get(key).copied().unwrap_or_default());
        *by_name.entry(key.0.as_str()).or_default() += used;
    }
    by_name
        .into_iter()
        .map(|(name, used)| (name, used.as_secs_f64() * 1e6 / calls.max(1) as f64))
        .filter(|(_, us)| *us >= 0.5)
        .map(|(name, us)| format!("{name}={us:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}
