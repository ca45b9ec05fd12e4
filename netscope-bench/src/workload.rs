//! The probe bench's workloads and the place they run in: a child process (`netscope-bench
//! workload …`) that joins a cgroup v2 of its own before it starts, so that its CPU time — the
//! tracepoints that run in its context included — is its cgroup's `cpu.stat` `usage_usec`; and
//! a fresh network namespace per phase. The parent's side is [`run_workload`], the child's
//! [`workload_main`].

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Instant,
};

const PORT: u16 = 7301;
/// The CPU on which the workload's client and server run; the ring reader uses the other one.
const WORKLOAD_CPU: usize = 0;
/// Bytes of a keep-alive request (its response is `payload` bytes).
const REQUEST: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Churn,
    Keepalive,
}

impl Workload {
    pub fn unit(self) -> &'static str {
        match self {
            Self::Churn => "connection",
            Self::Keepalive => "request",
        }
    }
}

/// Runs the workload in a child process inside a cgroup of its own; returns its CPU time in µs
/// per unit.
pub fn run_workload(workload: Workload, units: usize, payload: usize) -> Result<f64, String> {
    let cgroup = Cgroup::create("workload")?;
    let exe = crate::child::this_exe()?;
    let kind = match workload {
        Workload::Churn => "churn",
        Workload::Keepalive => "keepalive",
    };
    let out = Command::new(exe)
        .args(["workload", kind, "--units", &units.to_string()])
        .args(["--payload", &payload.to_string(), "--cgroup"])
        .arg(&cgroup.path)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("workload: {e}"))?;
    if !out.status.success() {
        return Err(format!("workload {kind} exited with {}", out.status));
    }
    Ok(cgroup.usage_usec()? as f64 / units.max(1) as f64)
}

/// A cgroup v2 of its own, removed on drop (once its processes have exited).
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// `netscope-bench-<this pid>-<name>` at the root of the cgroup v2 hierarchy.
    pub fn create(name: &str) -> Result<Self, String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| e.to_string())?;
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"cgroup2"))
            .and_then(|f| f.get(1).map(PathBuf::from))
            .ok_or("no cgroup v2 hierarchy is mounted")?;
        let path = root.join(format!("netscope-bench-{}-{name}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self { path })
    }

    /// Moves a process (all its threads) into this cgroup.
    pub fn adopt(&self, pid: u32) -> Result<(), String> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("moving {pid} into {}: {e}", self.path.display()))
    }

    /// CPU time of everything that ran in it, µs.
    pub fn usage_usec(&self) -> Result<u64, String> {
        let stat = std::fs::read_to_string(self.path.join("cpu.stat"))
            .map_err(|e| format!("cpu.stat: {e}"))?;
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("cpu.stat has no usage_usec: {stat:?}"))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The child's side: joins `cgroup`, then runs the workload with client and server pinned to
/// one CPU (the rate then measures the CPU cost, not whether the two threads met on one CPU).
pub fn workload_main(
    workload: Workload,
    units: usize,
    payload: usize,
    cgroup: &Path,
) -> Result<(), String> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| format!("joining {}: {e}", cgroup.display()))?;
    let listener = TcpListener::bind(("127.0.0.1", PORT)).map_err(|e| format!("bind: {e}"))?;
    pin(Some(WORKLOAD_CPU));
    let started = Instant::now();
    match workload {
        Workload::Churn => churn(listener, units, payload),
        Workload::Keepalive => keepalive(listener, units, payload),
    }?;
    println!("{:.0}", units as f64 / started.elapsed().as_secs_f64());
    Ok(())
}

fn churn(listener: TcpListener, connections: usize, payload: usize) -> Result<(), String> {
    let server = thread::spawn(move || -> std::io::Result<()> {
        pin(Some(WORKLOAD_CPU));
        let mut buf = vec![0u8; payload];
        for _ in 0..connections {
            let (mut s, _) = listener.accept()?;
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let data = vec![0x5au8; payload];
    let mut back = vec![0u8; payload];
    for _ in 0..connections {
        let mut c = TcpStream::connect(("127.0.0.1", PORT)).map_err(|e| format!("connect: {e}"))?;
        c.write_all(&data).map_err(|e| e.to_string())?;
        c.read_exact(&mut back).map_err(|e| e.to_string())?;
        let mut eof = [0u8; 1];
        let _ = c.read(&mut eof);
    }
    join(server)
}

fn keepalive(listener: TcpListener, requests: usize, payload: usize) -> Result<(), String> {
    let server = thread::spawn(move || -> std::io::Result<()> {
        pin(Some(WORKLOAD_CPU));
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut request = [0u8; REQUEST];
        let response = vec![0xa5u8; payload];
        for _ in 0..requests {
            s.read_exact(&mut request)?;
            s.write_all(&response)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(("127.0.0.1", PORT)).map_err(|e| format!("connect: {e}"))?;
    c.set_nodelay(true).map_err(|e| e.to_string())?;
    let request = [0x5au8; REQUEST];
    let mut response = vec![0u8; payload];
    for _ in 0..requests {
        c.write_all(&request).map_err(|e| e.to_string())?;
        c.read_exact(&mut response).map_err(|e| e.to_string())?;
    }
    drop(c);
    join(server)
}

fn join(server: thread::JoinHandle<std::io::Result<()>>) -> Result<(), String> {
    server
        .join()
        .map_err(|_| "server thread panicked".to_owned())?
        .map_err(|e| format!("server: {e}"))
}

/// A fresh network namespace entered by the calling thread (processes and threads started
/// later inherit it); each phase gets its own, so no phase inherits another's TIME_WAIT sockets.
pub struct BenchNetns {
    // Dropped in this order: the thread leaves, then the namespace is deleted.
    _entered: netscope_netns::Entered,
    _ns: netscope_netns::NetNs,
}

impl BenchNetns {
    pub fn enter() -> Result<Self, String> {
        let name = format!("nsbench-{}", std::process::id());
        let ns = netscope_netns::NetNs::create(name.clone())
            .map_err(|e| format!("netns {name}: {e}"))?;
        let entered = ns.enter().map_err(|e| format!("setns {name}: {e}"))?;
        Ok(Self {
            _entered: entered,
            _ns: ns,
        })
    }
}

/// Pins the calling thread to one CPU (or lets it run anywhere with `None`).
pub fn pin(cpu: Option<usize>) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET/sched_setaffinity act on the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpus = usize::try_from(libc::sysconf(libc::_SC_NPROCESSORS_ONLN)).unwrap_or(1);
        for c in 0..cpus {
            if cpu.is_none_or(|only| only == c) {
                libc::CPU_SET(c, &mut set);
            }
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}
