//! `netscope-bench flows`: the agent's memory with many live outbound connections, as an SRE
//! reads it — the resident set of the real `netscope-agent probe` process.
//!
//! 1. The agent (`netscope-agent probe`, a sibling of this executable, default settings but for
//!    a port filter and its listen address) is started and waited for (`/metrics` answers);
//!    its RSS is read idle.
//! 2. A thread of this process enters a network namespace of its own, starts a server there (a
//!    child process, `netscope-bench sink`: each side of a connection is a descriptor, and one
//!    process may not hold both sides of 10,000), opens `connections` connections to it and
//!    holds them; the agent's flow table is waited for until it holds them all
//!    (`flow_table_flows` on `/metrics`); the RSS is read again.
//! 3. The connections close; once the agent has seen every close, the RSS is read a last time.
//!
//! Each reading comes with a breakdown by mapping from `/proc/PID/smaps` (the ring buffer's
//! `anon_inode:bpf-map` pages, the heap, other anonymous memory, the binary). Ends with
//! `bench flows: rss_idle_mib=<x> rss_live_mib=<y> ring_mib=<z> connections=<n>`.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{child::SelfChild, workload::BenchNetns};

/// The port the connections go to, inside the bench's own namespace.
const PORT: u16 = 7190;

pub struct MemoryBench {
    pub connections: usize,
    /// Extra arguments for `netscope-agent probe` (e.g. `--ring-bytes`).
    pub agent_args: Vec<String>,
}

/// Resident memory of a process, by kind of mapping, in KiB.
struct Rss {
    total_kib: u64,
    by_kind: BTreeMap<&'static str, u64>,
}

impl Rss {
    fn of(pid: u32) -> Result<Self, String> {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
            .map_err(|e| format!("/proc/{pid}/smaps: {e}"))?;
        let mut by_kind = BTreeMap::new();
        let mut kind = "anonymous";
        for line in smaps.lines() {
            if let Some(kib) = line.strip_prefix("Rss:") {
                let kib: u64 = kib
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                *by_kind.entry(kind).or_insert(0) += kib;
            } else if line
                .split_whitespace()
                .next()
                .is_some_and(|range| range.contains('-') && !range.ends_with(':'))
            {
                // A mapping's header: `start-end perms offset dev inode [path]`.
                let path = line.split_whitespace().nth(5).unwrap_or("");
                kind = match path {
                    "" => "anonymous",
                    p if p.contains("bpf-map") => "bpf maps (ring buffer)",
                    "[heap]" => "heap",
                    "[stack]" => "anonymous",
                    p if p.ends_with("netscope-agent") => "binary",
                    _ => "libraries and other",
                };
            }
        }
        Ok(Self {
            total_kib: by_kind.values().sum(),
            by_kind,
        })
    }

    fn mib(kib: u64) -> f64 {
        kib as f64 / 1024.0
    }

    fn print(&self, when: &str) {
        let parts: Vec<String> = self
            .by_kind
            .iter()
            .map(|(kind, kib)| format!("{kind} {:.1}", Self::mib(*kib)))
            .collect();
        println!(
            "{when:<32} RSS {:>6.1} MiB  ({})",
            Self::mib(self.total_kib),
            parts.join(", ")
        );
    }

    fn ring_kib(&self) -> u64 {
        self.by_kind
            .get("bpf maps (ring buffer)")
            .copied()
            .unwrap_or(0)
    }
}

/// The agent under test; stopped on drop.
struct Agent {
    child: Child,
    api: SocketAddr,
    /// Its stderr (logs), shown when it exits early.
    log: std::path::PathBuf,
}

impl Agent {
    fn start(args: &[String]) -> Result<Self, String> {
        let exe = agent_binary()?;
        let api = free_port()?;
        let log =
            std::env::temp_dir().join(format!("netscope-bench-agent-{}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(&exe)
            .arg("probe")
            .args(["--dport", &PORT.to_string(), "--listen", &api.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        let mut agent = Self { child, api, log };
        agent.wait_for("its API", Duration::from_secs(30), |_| true)?;
        Ok(agent)
    }

    fn rss(&self) -> Result<Rss, String> {
        Rss::of(self.child.id())
    }

    /// The value of `flow_table_flows` now.
    fn flows(metrics: &str) -> Option<u64> {
        metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.contains("flow_table_flows"))
            .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .map(|v| v as u64)
    }

    /// Scrapes `/metrics` until `ready` holds of it (an error if the agent exits).
    fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(format!(
                    "the agent exited ({status}) before {what}:\n{}",
                    log.trim_end()
                ));
            }
            if let Ok(body) = scrape(self.api)
                && ready(&body)
            {
                return Ok(());
            } else if let Ok(body) = scrape(self.api) {
                last = body;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "the agent did not reach {what} within {limit:?} (flow_table_flows={:?})",
            Self::flows(&last)
        ))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signalling our own child, still running (not reaped).
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `netscope-agent` built next to this binary (the benches measure the real agent).
pub fn agent_binary() -> Result<std::path::PathBuf, String> {
    let exe = crate::child::this_exe()?.with_file_name("netscope-agent");
    if !exe.exists() {
        return Err(format!(
            "{} is missing: build it (cargo build --release --bin netscope-agent)",
            exe.display()
        ));
    }
    Ok(exe)
}

/// A loopback port free now, for the agent's API.
pub fn free_port() -> Result<SocketAddr, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("a free port: {e}"))
}

/// GET /metrics over HTTP/1.0 (the body up to the server's close).
pub fn scrape(api: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&api, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {api}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.0 200") && !out.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other("not 200"));
    }
    Ok(out)
}

/// Lets this process hold `n` descriptors, plus some (up to the hard limit, which an
/// unprivileged container may not raise).
fn raise_fd_limit(n: usize) -> Result<(), String> {
    let want = (n + 2048) as libc::rlim_t;
    // SAFETY: a valid rlimit to write to.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if limit.rlim_max < want {
        return Err(format!(
            "{n} connections need {want} open files; the hard limit is {}",
            limit.rlim_max
        ));
    }
    limit.rlim_cur = want;
    // SAFETY: a valid rlimit to read from.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    Ok(())
}

/// The server side, in a child process started in the namespace: accepts every connection on
/// [`PORT`] and holds it, until its stdin closes. Prints `ready` once it listens.
pub fn sink_main(connections: usize) -> Result<(), String> {
    raise_fd_limit(connections)?;
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, PORT)).map_err(|e| format!("listen: {e}"))?;
    // A backlog the connect loop cannot overflow (std listens with 128).
    // SAFETY: a valid listening socket; listening again only changes the backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept() {
            held.push(s);
        }
    });
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}

/// `n` outbound connections held open from a network namespace of their own (their server, a
/// child process there: one process may not hold both sides of 10,000 under this VM's file
/// limit), until closed or dropped. Root.
pub struct LiveConnections {
    close: Option<mpsc::Sender<()>>,
    holder: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl LiveConnections {
    /// Opens them; returns once every one is established.
    pub fn open(n: usize) -> Result<Self, String> {
        raise_fd_limit(n)?;
        let (opened_tx, opened) = mpsc::channel();
        let (close, close_rx) = mpsc::channel();
        let holder = std::thread::spawn(move || {
            let result = hold_connections(n, &opened_tx, &close_rx);
            if let Err(e) = &result {
                let _ = opened_tx.send(Err(e.clone()));
            }
            result
        });
        let live = Self {
            close: Some(close),
            holder: Some(holder),
        };
        opened
            .recv()
            .map_err(|_| "the connections' thread ended early")??;
        Ok(live)
    }

    /// Closes them all; Err if holding them failed.
    pub fn close(mut self) -> Result<(), String> {
        self.end()
    }

    fn end(&mut self) -> Result<(), String> {
        drop(self.close.take());
        match self.holder.take() {
            Some(h) => h.join().map_err(|_| "the connections' thread panicked")?,
            None => Ok(()),
        }
    }
}

impl Drop for LiveConnections {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// In a namespace of its own: starts the sink, opens `n` connections to it, reports, holds
/// them until told to close them (or the sender is gone).
fn hold_connections(
    n: usize,
    opened: &mpsc::Sender<Result<(), String>>,
    close: &mpsc::Receiver<()>,
) -> Result<(), String> {
    let _ns = BenchNetns::enter()?;
    // Started from this thread, the child lives in the namespace too; it says "ready" once it
    // listens, and is killed on drop.
    let (_sink, _ready) = SelfChild::start(&["sink", "--connections", &n.to_string()])?;
    let clients = (0..n)
        .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, PORT)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| format!("connect: {e}"));
    clients.map(|held| {
        let _ = opened.send(Ok(()));
        let _ = close.recv();
        drop(held);
    })
}

pub fn bench(b: &MemoryBench) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("bench flows attaches the probe: run it as root".into());
    }
    raise_fd_limit(b.connections)?;
    let mut agent = Agent::start(&b.agent_args)?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = agent.rss()?;
    idle.print("idle, attached");

    let live_connections = LiveConnections::open(b.connections)?;
    let n = b.connections as u64;
    agent.wait_for(&format!("{n} flows"), Duration::from_secs(60), |m| {
        Agent::flows(m).is_some_and(|f| f >= n)
    })?;
    let live = agent.rss()?;
    live.print(&format!("{n} live connections"));

    live_connections.close()?;
    // Closed flows stay in the table for the retention time; the memory is what it holds.
    std::thread::sleep(Duration::from_secs(2));
    let after = agent.rss()?;
    after.print("after they closed");
    println!(
        "bench flows: rss_idle_mib={:.1} rss_live_mib={:.1} ring_mib={:.1} connections={n}",
        Rss::mib(idle.total_kib),
        Rss::mib(live.total_kib),
        Rss::mib(live.ring_kib()),
    );
    Ok(())
}
