//! Shared plumbing of the root-only kernel tests: privilege gate, per-test network namespaces,
//! nftables rules, and a harness around the real probe, reader and event conversion.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod browser;

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use netscope_agent::{
    clock::MonoClock,
    domain::Flow,
    flows::convert::{self, CountedCalls},
    probe::{EventReader, KernelCounters, Probe, ProbeOptions},
};
use netscope_common::{ConnEvent, EventKind};

/// A lock shared by every test process (an `flock` on a file named after what it guards),
/// released when dropped. Test binaries run in parallel lanes (`xtask test`), so in-process
/// mutexes cannot order tests of different binaries.
pub struct TestLock(File);

impl TestLock {
    /// With other holders of the shared lock; never with the exclusive one.
    pub fn shared(what: &str) -> Self {
        Self::take(what, libc::LOCK_SH)
    }

    /// Alone.
    pub fn exclusive(what: &str) -> Self {
        Self::take(what, libc::LOCK_EX)
    }

    fn take(what: &str, op: libc::c_int) -> Self {
        let path = std::env::temp_dir().join(format!("netscope-tests-{what}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap();
        // SAFETY: flock on a valid open descriptor has no other precondition.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        assert_eq!(
            rc,
            0,
            "flock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        Self(file)
    }
}

pub mod ceph;
pub mod kafka;
pub mod manifest;
pub mod prometheus;

/// Returns a guard when kernel tests can run here; otherwise explains why they are skipped, or
/// fails when `NETSCOPE_REQUIRE_KERNEL_TESTS=1` (CI) says they must run.
/// Kernel tests run one at a time, across test processes: they measure latencies and counts
/// that a concurrent burst would disturb, and every probe sees every connection on the host.
pub fn kernel_test(name: &str) -> Option<TestLock> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let required = std::env::var("NETSCOPE_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1");
    if !root {
        assert!(
            !required,
            "{name}: kernel tests are required (NETSCOPE_REQUIRE_KERNEL_TESTS=1) but this is not root"
        );
        eprintln!("{name}: SKIPPED: kernel tests need root (run ./xtask.sh test as root)");
        return None;
    }
    Some(TestLock::exclusive("kernel"))
}

/// A runtime of a plain test's own (a test that holds a lock must not hold it across an await
/// of the test harness's runtime).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `cmd args…` to the end; panics with its stderr unless it succeeds; returns its stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd}: {e} (is it installed? ./xtask.sh setup installs it)")
    });
    assert!(
        out.status.success(),
        "`{cmd} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

static NETNS_SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs `nft -f -` with `script` on stdin, after `prefix` (e.g. `ip netns exec NAME`; empty
/// for the host's namespace); panics with nft's message when it fails.
pub fn nft_with(prefix: &[&str], script: &str) {
    use std::io::Write as _;
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.extend(["nft", "-f", "-"]);
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nft (apt package nftables)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace with `lo` up, deleted on drop (netscope-netns, with the tests'
/// nftables helpers).
pub struct NetNs {
    ns: netscope_netns::NetNs,
}

impl NetNs {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "nstest-{tag}-{}-{}",
            std::process::id(),
            NETNS_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ns = netscope_netns::NetNs::create(name.clone())
            .unwrap_or_else(|e| panic!("netns {name}: {e}"));
        Self { ns }
    }

    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// Moves the calling thread into this namespace until the guard drops. Threads spawned
    /// meanwhile start in it too.
    pub fn enter(&self) -> NetNsGuard {
        self.ns.enter().expect("setns")
    }

    /// Runs `nft -f -` inside the namespace.
    pub fn nft(&self, script: &str) {
        nft_with(&["ip", "netns", "exec", self.name()], script);
    }

    /// `nft` JSON listing of a named counter: (packets, bytes).
    pub fn nft_counter(&self, table: &str, counter: &str) -> (u64, u64) {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                self.name(),
                "nft",
                "-j",
                "list",
                "counter",
                "inet",
                table,
                counter,
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let c = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|o| o.get("counter"))
            .unwrap();
        (c["packets"].as_u64().unwrap(), c["bytes"].as_u64().unwrap())
    }

    pub fn ip(&self, args: &[&str]) {
        self.ns.ip(args).unwrap();
    }

    /// Runs `f` on a new thread inside this namespace (e.g. a server on the far side of a
    /// veth pair); joining it gives `Err` if the thread could not enter.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<std::io::Result<T>> {
        self.ns.spawn_in(f)
    }
}

pub type NetNsGuard = netscope_netns::Entered;

/// One decoded event as the agent sees it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub kind: EventKind,
    pub raw: ConnEvent,
    pub flow: Flow,
}

/// The real probe plus a background thread draining its ring the way the agent does.
pub struct Harness {
    pub probe: Probe,
    events: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    drainer: Option<JoinHandle<EventReader>>,
    /// Which calls this probe's hooks count (fixed at load).
    counted: CountedCalls,
}

impl Harness {
    pub fn start(options: &ProbeOptions) -> Self {
        let mut probe = Probe::load(options).unwrap_or_else(|e| panic!("probe load: {e}"));
        let mut reader = probe.take_events().unwrap();
        let counted = probe.live_bytes().counted_calls();
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ev, st) = (Arc::clone(&events), Arc::clone(&stop));
        let drainer = std::thread::spawn(move || {
            let clock = MonoClock::new();
            while !st.load(Ordering::Relaxed) {
                drain_into(&mut reader, &clock, counted, &ev);
                std::thread::sleep(Duration::from_millis(5));
            }
            reader
        });
        Self {
            probe,
            events,
            stop,
            drainer: Some(drainer),
            counted,
        }
    }

    /// Options that track only connections to `dport`.
    pub fn for_dport(dport: u16) -> ProbeOptions {
        let mut options = ProbeOptions::default();
        options.filters.dports = vec![dport];
        options
    }

    pub fn events(&self) -> Vec<Seen> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (bounded) until `pred` holds over the events seen so far.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        for _ in 0..400 {
            let events = self.events();
            if pred(&events) {
                return events;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out waiting for {what}; seen: {:#?}", self.events());
    }

    /// The one finished (closed or failed) flow whose local port is `sport`.
    pub fn finished_flow(&self, sport: u16) -> Flow {
        let events = self.wait_for(&format!("the end of the flow from port {sport}"), |evs| {
            evs.iter()
                .any(|s| s.kind != EventKind::Established && s.flow.local.port() == sport)
        });
        let mut matching: Vec<_> = events
            .into_iter()
            .filter(|s| s.kind != EventKind::Established && s.flow.local.port() == sport)
            .collect();
        assert_eq!(matching.len(), 1, "one end per flow: {matching:#?}");
        matching.remove(0).flow
    }

    /// Detaches, drains what is left, and returns (events, kernel counters, delivered).
    pub fn finish(mut self) -> (Vec<Seen>, KernelCounters, u64) {
        self.probe.detach();
        self.stop.store(true, Ordering::Relaxed);
        let mut reader = self.drainer.take().unwrap().join().unwrap();
        drain_into(&mut reader, &MonoClock::new(), self.counted, &self.events);
        let counters = self.probe.kernel_counters().unwrap();
        let stats = reader.stats();
        assert_eq!(stats.malformed, 0, "malformed records");
        (self.events(), counters, stats.delivered)
    }
}

fn drain_into(
    reader: &mut EventReader,
    clock: &MonoClock,
    counted: CountedCalls,
    out: &Mutex<Vec<Seen>>,
) {
    let mut batch = Vec::new();
    reader.drain(|kind, raw| {
        batch.push(Seen {
            kind,
            flow: convert::flow_from_event(kind, &raw, clock, counted),
            raw,
        })
    });
    if !batch.is_empty() {
        out.lock().unwrap().extend(batch);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.drainer.take() {
            let _ = d.join();
        }
    }
}

/// The address the agent's HTTP server logged (`HTTP server listening`, field `addr`).
pub fn api_addr_in_log(log: &str) -> Option<std::net::SocketAddr> {
    log.lines()
        .filter(|l| l.contains("HTTP server listening"))
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let addr = v
                .get("fields")
                .and_then(|f| f.get("addr"))
                .or_else(|| v.get("addr"))?;
            addr.as_str()?.parse().ok()
        })
}

/// The agent's HTTP address once it is logged in `log` (the agent's stderr); panics, showing
/// the log's end, when `running` says the agent is gone or `limit` passes first.
pub fn wait_api_addr(
    log: &std::path::Path,
    limit: Duration,
    mut running: impl FnMut() -> bool,
) -> std::net::SocketAddr {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = api_addr_in_log(&text) {
            return addr;
        }
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        assert!(running(), "agent exited: {tail:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "no HTTP server: {tail:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
