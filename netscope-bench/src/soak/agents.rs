//! The soak's agents: real `netscope-agent run` processes, each a node of one consumer group,
//! started, SIGKILLed, restarted and stopped on the plan's schedule, and sampled every second
//! (RSS and CPU from `/proc`, counters from `/metrics`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netscope_agent::{clock::now_unix_ms, metrics::sample_sum};
use serde::Serialize;

use crate::memory::{free_port, scrape};

/// One run of an agent process, from its start to its end.
#[derive(Clone, Debug, Serialize)]
pub struct Incarnation {
    pub started_unix_ms: u64,
    pub ended_unix_ms: Option<u64>,
    /// `sigkill`, `sigterm` (clean stop), or `exited: …` when it died on its own.
    pub ended_by: Option<String>,
    /// CPU (user + system) at its last sample.
    pub cpu_ms: u64,
    /// Its last `/metrics` text (the counters it had reached).
    #[serde(skip)]
    pub metrics: String,
}

/// One `/proc` sample of a live agent.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProcSample {
    pub at_unix_ms: u64,
    pub rss_kib: u64,
    /// CPU of the incarnation so far.
    pub cpu_ms: u64,
    /// Flows in its table (`netscope_flow_table_flows`), when its scrape answered.
    pub flows: Option<u64>,
}

pub struct Agent {
    pub node: String,
    exe: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
    api: Option<SocketAddr>,
    pub incarnations: Vec<Incarnation>,
    pub samples: Vec<ProcSample>,
}

/// Clock ticks per second for `/proc/PID/stat` times.
fn ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// (RSS KiB, CPU ms) of a live process.
fn proc_sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((rss_kib, (utime + stime) * 1000 / ticks_per_s()))
}

impl Agent {
    pub fn new(node: &str, exe: &Path, args: Vec<String>, dir: &Path) -> Self {
        Self {
            node: node.to_owned(),
            exe: exe.to_owned(),
            args,
            dir: dir.to_owned(),
            child: None,
            api: None,
            incarnations: Vec::new(),
            samples: Vec::new(),
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.dir.join(format!("{}.{n}.log", self.node))
    }

    /// Starts an incarnation and waits (60 s at most) until its API answers.
    pub fn start(&mut self) -> Result<(), String> {
        let api = free_port()?;
        let log = self.log_path(self.incarnations.len());
        let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(&self.exe)
            .arg("run")
            .args(&self.args)
            .args(["--listen", &api.to_string()])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.exe.display()))?;
        self.incarnations.push(Incarnation {
            started_unix_ms: now_unix_ms(),
            ended_unix_ms: None,
            ended_by: None,
            cpu_ms: 0,
            metrics: String::new(),
        });
        self.child = Some(child);
        self.api = Some(api);
        let deadline = Instant::now() + Duration::from_secs(60);
        while scrape(api).is_err() {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited at start ({status}): {}",
                    self.node,
                    self.tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("{}: no API after 60 s: {}", self.node, self.tail()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The end of the current incarnation's log.
    pub fn tail(&self) -> String {
        let n = self.incarnations.len().saturating_sub(1);
        let log = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(15).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// `Some(status)` when the incarnation ended on its own (it is then recorded as ended).
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.ended(format!("exited: {status}"));
        Some(status.to_string())
    }

    fn ended(&mut self, by: String) {
        self.child = None;
        self.api = None;
        if let Some(i) = self.incarnations.last_mut() {
            i.ended_unix_ms = Some(now_unix_ms());
            i.ended_by = Some(by);
        }
    }

    /// SIGKILL: no commit, no revocation, nothing flushed.
    pub fn kill(&mut self) {
        self.sample();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.ended("sigkill".into());
        }
    }

    /// SIGTERM, and the clean stop it asks for (60 s at most, then SIGKILL). Err when the
    /// agent did not exit 0.
    pub fn stop(&mut self) -> Result<(), String> {
        self.sample();
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.ended("sigterm".into());
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!("{} stopped with {s}: {}", self.node, self.tail())),
            None => Err(format!("{} did not stop within 60 s", self.node)),
        }
    }

    /// Records RSS and CPU, and keeps the last `/metrics` text; nothing when not running.
    pub fn sample(&mut self) {
        let (Some(child), Some(api)) = (&self.child, self.api) else {
            return;
        };
        let Some((rss_kib, cpu_ms)) = proc_sample(child.id()) else {
            return;
        };
        let metrics = scrape(api).ok();
        self.samples.push(ProcSample {
            at_unix_ms: now_unix_ms(),
            rss_kib,
            cpu_ms,
            flows: metrics
                .as_deref()
                .map(|m| sample_sum(m, "netscope_flow_table_flows", &[]) as u64),
        });
        if let Some(i) = self.incarnations.last_mut() {
            i.cpu_ms = cpu_ms;
            if let Some(text) = metrics {
                i.metrics = text;
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_sampled() {
        let (rss, _) = proc_sample(std::process::id()).unwrap();
        assert!(rss > 0);
    }
}
