//! `netscope-bench probe` (run through `cargo xtask bench probe`): what the kernel probe costs,
//! in the figure an SRE trusts — CPU time.
//!
//! Two lean loopback workloads run in a child process of their own, placed in a cgroup v2 of its
//! own before it starts, each in a fresh network namespace (`workload.rs`):
//! - **churn**: connect, send `payload` bytes, get them back, close;
//! - **keep-alive**: one connection, `requests` request/response exchanges (256 B up,
//!   `payload` down), the pipeline's pattern on a pooled connection.
//!
//! The tracepoints NetScope attaches run in the workload's context, so they are charged to its
//! cgroup (`cpu.stat` `usage_usec`). A raw with/without difference of that figure is too noisy
//! on a shared VM to resolve a few per cent, so the overhead is estimated from exact counters:
//! (NetScope's programs' run time per unit from `bpf_stats` + the agent's CPU per unit) ÷ the
//! workload's CPU per unit without the probe (median of interleaved rounds). The raw
//! difference is printed beside it as the check.
//!
//! The agent's CPU: for `probe`'s configuration, the real `netscope-agent probe` process,
//! started for the phase in a cgroup of its own (`AgentProcess`): everything it does per
//! connection — ring reader, flow table, flow metrics, the JSON line it prints (to /dev/null
//! here) — and its idle timers. Each phase starts a fresh agent, so its flow table grows from
//! empty (page faults a long-running agent no longer pays): a slight overstatement. For
//! `run`'s configuration (the pipeline's agent, which needs Kafka), the ring reader the
//! pipeline runs, in this process: decode, flow table with the endpoint index, bus, flow
//! metrics.
//!
//! NetScope is measured in its two configurations ([`Mode`]): as `probe` attaches it (the node's
//! view: connection events only, a connection's bytes read from `tcp_sock` at close) and as
//! `run` does (also every send and receive hooked, for each call's bytes on a pooled
//! connection). Per workload, rounds interleave the phases: without programs and with each
//! configuration (bpf_stats off: CPU), then each configuration and the empty programs on the
//! same hooks (the dispatch floor) and — for churn — libbpf-tools' `tcplife` as a peer
//! (bpf_stats on: kernel ns). Ends with `bench probe: ns_ratio=<x> cpu_overhead_churn=<fraction>
//! cpu_overhead_keepalive=<fraction> tcplife_ratio=<x>` for `probe`'s configuration, then the
//! same figures for `run`'s (`run_ns_ratio`, `run_cpu_overhead_churn`,
//! `run_cpu_overhead_keepalive`).

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use netscope_agent::{
    bus::BroadcastBus,
    config::ApiArgs,
    domain::MetricsRecorder,
    flows::{FlowPipeline, FlowTable},
    metrics::{MetricsBuilder, Recorder},
    probe::{
        Probe, ProbeOptions, ProgramStats,
        stats::{LoadedProgram, RunTimeStats, loaded_programs},
    },
};

use crate::{
    memory::agent_binary,
    stats::Sample,
    workload::{BenchNetns, Cgroup, Workload, pin, run_workload},
};

pub struct ProbeBench {
    pub connections: usize,
    pub requests: usize,
    pub payload: usize,
    pub rounds: usize,
    /// Also measure NetScope's kernel cost with the classifier on lo.
    pub tc: bool,
}

/// NetScope's two configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// As `probe` attaches it: no per-message hooks.
    Probe,
    /// As `run` attaches it: every send and receive hooked too.
    Run,
}

impl Mode {
    const BOTH: [Self; 2] = [Self::Probe, Self::Run];

    fn per_message_hooks(self) -> bool {
        self == Self::Run
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    None,
    NetScope(Mode),
    Empty(Mode),
    Tcplife,
}

/// What one phase of one round measured.
#[derive(Default)]
struct PhaseResult {
    /// The workload's CPU time (its cgroup's), µs per unit.
    workload_us: f64,
    /// Programs' run time, ns per unit (bpf_stats on only).
    kernel_ns: f64,
    /// The agent's CPU time, ns per unit (NetScope only): the `probe` process's, or `run`'s
    /// ring reader's.
    agent_ns: f64,
    programs: Vec<ProgramStats>,
}

/// The agent's CPU (its process, or `run`'s ring reader); the workload runs on the other one
/// (`workload::WORKLOAD_CPU`).
const READER_CPU: usize = 1;

/// The agent's defaults (`--max-flows`, `--retention-secs`).
const MAX_FLOWS: usize = 100_000;
const RETENTION_NS: u64 = 60_000_000_000;

pub fn bench(b: &ProbeBench) -> Result<(), String> {
    let tcplife = tcplife_path()?;
    let churn = measure(b, Workload::Churn, b.connections, Some(&tcplife), false)?;
    let keepalive = measure(b, Workload::Keepalive, b.requests, None, false)?;
    if b.tc {
        let with_tc = measure(b, Workload::Churn, b.connections, None, true)?;
        println!(
            "with TC on lo: ns_ratio={:.2} run_ns_ratio={:.2}",
            with_tc.modes[0].ns_ratio, with_tc.modes[1].ns_ratio
        );
    }
    let [probe, run] = [0, 1].map(|m| (&churn.modes[m], &keepalive.modes[m]));
    println!(
        "bench probe: ns_ratio={:.2} cpu_overhead_churn={:.4} cpu_overhead_keepalive={:.4} \
         tcplife_ratio={:.3} run_ns_ratio={:.2} run_cpu_overhead_churn={:.4} \
         run_cpu_overhead_keepalive={:.4}",
        probe.0.ns_ratio,
        probe.0.overhead,
        probe.1.overhead,
        churn.tcplife_ratio.unwrap_or(f64::NAN),
        run.0.ns_ratio,
        run.0.overhead,
        run.1.overhead,
    );
    Ok(())
}

/// One configuration's figures for one workload.
struct ModeSummary {
    /// NetScope's programs' run time per unit (median).
    kernel_ns: f64,
    ns_ratio: f64,
    overhead: f64,
}

struct Summary {
    /// In [`Mode::BOTH`]'s order.
    modes: [ModeSummary; 2],
    tcplife_ratio: Option<f64>,
}

fn measure(
    b: &ProbeBench,
    workload: Workload,
    units: usize,
    tcplife: Option<&Path>,
    tc: bool,
) -> Result<Summary, String> {
    // One flow table per configuration for the whole workload, as the agent keeps one for its
    // lifetime: a fresh table per phase would charge each phase's connections with growing it
    // from empty (hash table doubling into newly faulted pages), which a running agent paid
    // once, and one shared with the other workload would charge its requests with expiring
    // the churn's connections. `probe` correlates no request, so its table has no endpoint
    // index, as the agent's.
    let tables = Mode::BOTH.map(|mode| {
        let table = FlowTable::new(MAX_FLOWS, RETENTION_NS);
        Arc::new(Mutex::new(match mode {
            Mode::Probe => table.without_endpoint_index(),
            Mode::Run => table,
        }))
    });
    // Likewise one set of flow metrics, whose series the agent creates once per process name.
    let recorder = flow_recorder()?;
    let unit = workload.unit();
    let setting = if tc { " (TC on lo)" } else { "" };
    println!(
        "== {workload:?}{setting}: {units} {unit}s, {} B; {} rounds",
        b.payload, b.rounds
    );
    let run = |phase, units| {
        let reader = Reader {
            tables: tables.clone(),
            recorder: Arc::clone(&recorder),
            tc,
        };
        run_phase(phase, workload, units, b.payload, &reader, tcplife)
    };
    // Warm-up: caches, the verifier's first load, the page cache of the binaries.
    for phase in [Phase::None, Phase::NetScope(Mode::Run)] {
        run(phase, units / 5)?;
    }
    // CPU rounds: without programs, then with each configuration.
    let cpu_phases = [
        Phase::None,
        Phase::NetScope(Mode::Probe),
        Phase::NetScope(Mode::Run),
    ];
    let mut cpu: [Vec<f64>; 3] = Default::default();
    if !tc {
        for round in 0..b.rounds {
            for (i, phase) in cpu_phases.into_iter().enumerate() {
                let r = run(phase, units)?;
                eprintln!(
                    "  cpu round {round} {phase:?}: {:.2} µs/{unit}",
                    r.workload_us
                );
                cpu[i].push(r.workload_us);
            }
        }
    }
    let stats = RunTimeStats::enable().map_err(|e| e.to_string())?;
    // Per configuration: NetScope's programs, then the empty ones on the same hooks.
    let mut cost: [[Vec<PhaseResult>; 2]; 2] = Default::default();
    let mut peer = Vec::new();
    for _ in 0..b.rounds {
        for (m, mode) in Mode::BOTH.into_iter().enumerate() {
            cost[m][0].push(run(Phase::NetScope(mode), units)?);
            cost[m][1].push(run(Phase::Empty(mode), units)?);
        }
        if tcplife.is_some() {
            peer.push(run(Phase::Tcplife, units)?);
        }
    }
    drop(stats);

    println!(
        "{:<20} {:<13} {:>12} {:>14} {:>8}",
        "program", "set", "runs", "total_ns", "ns/run"
    );
    for (m, mode) in Mode::BOTH.into_iter().enumerate() {
        let name = format!("{mode:?}").to_lowercase();
        print_programs(&format!("netscope/{name}"), &sum_stats(&cost[m][0]));
        print_programs(&format!("empty/{name}"), &sum_stats(&cost[m][1]));
    }
    print_programs("tcplife", &sum_stats(&peer));
    let modes = [0, 1].map(|m| summarize(Mode::BOTH[m], &cost[m], &cpu[0], &cpu[m + 1], tc, unit));
    let tcplife_ratio = (!peer.is_empty()).then(|| {
        let tcplife = median(&peer, |r| r.kernel_ns);
        let ratio = modes[0].kernel_ns / tcplife.max(f64::MIN_POSITIVE);
        println!("tcplife kernel {tcplife:.0} ns per {unit}: tcplife_ratio {ratio:.3} (probe's configuration)");
        ratio
    });
    println!();
    Ok(Summary {
        modes,
        tcplife_ratio,
    })
}

/// The median of `f` over rounds.
fn median(rounds: &[PhaseResult], f: fn(&PhaseResult) -> f64) -> f64 {
    Sample::new(rounds.iter().map(f).collect()).median()
}

/// One configuration's figures from its rounds (`cost`: NetScope's, then the empty programs')
/// and, unless `tc`, its CPU rounds against those without programs.
fn summarize(
    mode: Mode,
    cost: &[Vec<PhaseResult>; 2],
    without: &[f64],
    with: &[f64],
    tc: bool,
    unit: &str,
) -> ModeSummary {
    let kernel = median(&cost[0], |r| r.kernel_ns);
    let agent = median(&cost[0], |r| r.agent_ns);
    let empty = median(&cost[1], |r| r.kernel_ns);
    let ns_ratio = kernel / empty.max(f64::MIN_POSITIVE);
    println!(
        "{mode:?}: per {unit} (medians): NetScope kernel {kernel:.0} ns + agent {agent:.0} ns; \
         empty programs {empty:.0} ns (ns_ratio {ns_ratio:.2})"
    );
    let overhead = if tc {
        f64::NAN
    } else {
        cpu_overhead(without, with, kernel + agent, kernel - empty + agent, unit)
    };
    ModeSummary {
        kernel_ns: kernel,
        ns_ratio,
        overhead,
    }
}

/// The overhead estimated from counters — `probe_ns` (NetScope's kernel + agent ns per unit) ÷
/// the workload's CPU per unit without the probe — printed beside the raw difference of the
/// CPU rounds (µs per unit, `without` and `with` the probe) and its range. `bpf_stats` times
/// each run with two clock reads that are not there when it is off, so the estimate is an
/// upper bound; `above_floor_ns` (NetScope's kernel ns above the empty programs', + agent) is
/// printed as the lower one (it leaves out the real, stats-free dispatch cost).
fn cpu_overhead(
    without: &[f64],
    with: &[f64],
    probe_ns: f64,
    above_floor_ns: f64,
    unit: &str,
) -> f64 {
    let raw = Sample::new(
        with.iter()
            .zip(without)
            .map(|(w, wo)| w / wo - 1.0)
            .collect(),
    );
    let [without, with] = [without, with].map(|v| Sample::new(v.to_vec()));
    let overhead = probe_ns / 1_000.0 / without.median();
    println!(
        "workload CPU per {unit} (cgroup cpu.stat, medians): without {:.2} µs, with {:.2} µs; \
         raw difference {:+.1} % (rounds {:+.1} % to {:+.1} %); estimate from counters: {:.2} % \
         (above the empty programs' floor: {:.2} %)",
        without.median(),
        with.median(),
        100.0 * (with.median() / without.median() - 1.0),
        100.0 * raw.quantile(0.0),
        100.0 * raw.max(),
        100.0 * overhead,
        100.0 * above_floor_ns / 1_000.0 / without.median(),
    );
    overhead
}

/// The empty programs' object, built beside NetScope's by the agent's build script (this
/// crate's build script names it); the agent binary does not carry it.
fn baseline_object() -> Result<PathBuf, String> {
    let path = PathBuf::from(env!("NETSCOPE_EBPF_BASELINE_OBJECT"));
    if !path.exists() {
        return Err(format!(
            "the baseline object {} is missing: run `cargo xtask build-ebpf`",
            path.display()
        ));
    }
    Ok(path)
}

/// What NetScope's phases attach and read with: the classifier on lo or not, the flow table
/// the ring reader fills (per configuration, in [`Mode::BOTH`]'s order) and the flow metrics
/// it records into.
struct Reader {
    tables: [Arc<Mutex<FlowTable>>; 2],
    recorder: Arc<dyn MetricsRecorder>,
    tc: bool,
}

fn run_phase(
    phase: Phase,
    workload: Workload,
    units: usize,
    payload: usize,
    reader: &Reader,
    tcplife: Option<&Path>,
) -> Result<PhaseResult, String> {
    let _netns = BenchNetns::enter()?;
    let per_unit = |ns: u64| ns as f64 / units.max(1) as f64;
    match phase {
        Phase::None => Ok(PhaseResult {
            workload_us: run_workload(workload, units, payload)?,
            ..PhaseResult::default()
        }),
        // `probe`'s configuration is the real agent: its CPU is all of the process's, the
        // line it prints per connection included.
        Phase::NetScope(Mode::Probe) if !reader.tc => {
            let agent = AgentProcess::start()?;
            let before = agent.snapshot()?;
            let workload_us = run_workload(workload, units, payload);
            // The agent reads its ring every 50 ms: let it read the last records (its idle
            // CPU meanwhile is counted, as it is while the workload runs).
            thread::sleep(Duration::from_millis(100));
            let after = agent.snapshot()?;
            agent.stop()?;
            let programs = delta(&before.programs, &after.programs, None);
            Ok(PhaseResult {
                workload_us: workload_us?,
                kernel_ns: per_unit(programs.iter().map(|p| p.run_time_ns).sum()),
                agent_ns: per_unit(1_000 * (after.cpu_us - before.cpu_us)),
                programs,
            })
        }
        Phase::NetScope(mode) | Phase::Empty(mode) => {
            let netscope = matches!(phase, Phase::NetScope(_));
            let object = if netscope {
                None
            } else {
                Some(baseline_object()?)
            };
            let attached = Attached::load(object, reader, mode)?;
            let workload_us = run_workload(workload, units, payload);
            let (programs, agent_cpu) = attached.finish(netscope)?;
            Ok(PhaseResult {
                workload_us: workload_us?,
                kernel_ns: per_unit(programs.iter().map(|p| p.run_time_ns).sum()),
                agent_ns: per_unit(agent_cpu),
                programs,
            })
        }
        Phase::Tcplife => {
            let path = tcplife.ok_or("tcplife phase without tcplife")?;
            let peer = Tcplife::start(path)?;
            let before = peer.programs()?;
            let workload_us = run_workload(workload, units, payload);
            let after = peer.programs()?;
            let seen = peer.stop()?;
            if seen < units {
                return Err(format!("tcplife printed {seen} connections of {units}"));
            }
            // All of tcplife's programs under one name (they are summed over rounds).
            let programs = delta(&before, &after, Some("tcplife (all)"));
            Ok(PhaseResult {
                workload_us: workload_us?,
                kernel_ns: per_unit(programs.iter().map(|p| p.run_time_ns).sum()),
                agent_ns: 0.0,
                programs,
            })
        }
    }
}

/// NetScope's (or the empty) programs, attached, with a ring reader that does what `run`'s
/// does with each record (decode, flow table, flow metrics, bus) on the other CPU.
struct Attached {
    probe: Probe,
    stop: Arc<AtomicBool>,
    reader: thread::JoinHandle<(u64, u64)>,
}

impl Attached {
    /// `object`: `None` for NetScope's embedded programs, the baseline object's path otherwise.
    fn load(object: Option<PathBuf>, with: &Reader, mode: Mode) -> Result<Self, String> {
        let options = ProbeOptions {
            object,
            per_message_hooks: mode.per_message_hooks(),
            tc_interfaces: if with.tc {
                vec!["lo".to_owned()]
            } else {
                Vec::new()
            },
            ..ProbeOptions::default()
        };
        let mut probe = Probe::load(&options).map_err(|e| e.to_string())?;
        let mut ring = probe.take_events().map_err(|e| e.to_string())?;
        let counted = probe.live_bytes().counted_calls();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let table = Arc::clone(&with.tables[mode as usize]);
        let recorder = Arc::clone(&with.recorder);
        // Named, so that a profile can single it out (`perf report --comm ring-reader`).
        let reader = thread::Builder::new()
            .name("ring-reader".into())
            .spawn(move || {
                pin(Some(READER_CPU));
                let flows = FlowPipeline::new(table, Arc::new(BroadcastBus::new(4_096)))
                    .with_recorder(recorder)
                    .counting_calls(counted);
                let started = thread_cpu_ns();
                let mut events = 0u64;
                let mut on_event = |kind, event| {
                    events += 1;
                    flows.on_event(kind, event);
                };
                while !stopped.load(Ordering::Relaxed) {
                    ring.drain(&mut on_event);
                    thread::sleep(Duration::from_millis(50));
                }
                ring.drain(&mut on_event);
                (events, thread_cpu_ns().saturating_sub(started))
            })
            .map_err(|e| format!("ring reader: {e}"))?;
        Ok(Self {
            probe,
            stop,
            reader,
        })
    }

    /// Detaches; returns the programs' stats and the reader's CPU time (ns). NetScope's phase
    /// also checks that every record emitted was read and none dropped.
    fn finish(mut self, reconcile: bool) -> Result<(Vec<ProgramStats>, u64), String> {
        let stats = self.probe.program_stats().map_err(|e| e.to_string());
        self.probe.detach();
        self.stop.store(true, Ordering::Relaxed);
        let (delivered, cpu) = self
            .reader
            .join()
            .map_err(|_| "ring reader panicked".to_owned())?;
        let counters = self.probe.kernel_counters().map_err(|e| e.to_string())?;
        if reconcile && (counters.emitted() != delivered || counters.dropped() != 0) {
            return Err(format!(
                "events: emitted {} delivered {delivered} dropped {}",
                counters.emitted(),
                counters.dropped()
            ));
        }
        Ok((stats?, cpu))
    }
}

/// The flow metrics the agent's reader records into, labelled by its defaults.
fn flow_recorder() -> Result<Arc<dyn MetricsRecorder>, String> {
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        api: ApiArgs,
    }
    let args = <Defaults as clap::Parser>::try_parse_from(["netscope-agent"])
        .map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    let api = args
        .api
        .validate_into(&mut errors)
        .ok_or_else(|| errors.join("; "))?;
    Ok(Recorder::register(
        &mut MetricsBuilder::new(),
        Some(api.flow_labels()),
    ))
}

/// libbpf-tools' tcplife (setup installs it; the bench installs nothing).
fn tcplife_path() -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("tcplife"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "tcplife not found: install libbpf-tools (bash scripts/setup.sh does)".to_owned()
        })
}

/// A running tcplife, its output counted line by line.
struct Tcplife {
    child: Child,
    ids: HashSet<u32>,
    lines: thread::JoinHandle<usize>,
}

impl Tcplife {
    /// Starts it and waits for its header, which it prints once attached.
    fn start(path: &Path) -> Result<Self, String> {
        let existing = loaded_since(&HashSet::new())?;
        // Line-buffered, or the header would wait in stdio's buffer.
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("tcplife: {e}"))?;
        let mut out = BufReader::new(child.stdout.take().ok_or("tcplife: no stdout")?);
        let mut header = String::new();
        out.read_line(&mut header)
            .map_err(|e| format!("tcplife: {e}"))?;
        if !header.contains("PID") {
            let _ = child.kill();
            return Err(format!("tcplife did not start: {header:?}"));
        }
        let lines = thread::spawn(move || out.lines().map_while(Result::ok).count());
        Ok(Self {
            child,
            ids: loaded_since(&existing)?,
            lines,
        })
    }

    /// tcplife's own programs (loaded after it started) with their stats now.
    fn programs(&self) -> Result<Vec<LoadedProgram>, String> {
        programs_of(&self.ids)
    }

    /// Stops it (SIGINT, as a user would) and returns how many connections it printed.
    fn stop(mut self) -> Result<usize, String> {
        // Its perf buffer is polled every 100 ms: let it print the last connections.
        thread::sleep(Duration::from_millis(300));
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|e| e.to_string())?;
        // SAFETY: signalling our own child, which has not been waited for yet.
        unsafe { libc::kill(pid, libc::SIGINT) };
        self.child.wait().map_err(|e| format!("tcplife: {e}"))?;
        self.lines
            .join()
            .map_err(|_| "tcplife reader panicked".to_owned())
    }
}

/// Per-program differences between two snapshots of the same programs, under `label` or, with
/// `None`, each under its own name.
fn delta(
    before: &[LoadedProgram],
    after: &[LoadedProgram],
    label: Option<&'static str>,
) -> Vec<ProgramStats> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.id == a.id);
            ProgramStats {
                // A few names per run of the bench, kept for its printout.
                program: label.unwrap_or_else(|| String::leak(a.name.clone())),
                run_count: a.run_count - b.map_or(0, |b| b.run_count),
                run_time_ns: a.run_time_ns - b.map_or(0, |b| b.run_time_ns),
            }
        })
        .collect()
}

/// Programs loaded since `existing` was listed.
fn loaded_since(existing: &HashSet<u32>) -> Result<HashSet<u32>, String> {
    Ok(loaded_programs()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|p| p.id)
        .filter(|id| !existing.contains(id))
        .collect())
}

/// These programs with their stats now.
fn programs_of(ids: &HashSet<u32>) -> Result<Vec<LoadedProgram>, String> {
    Ok(loaded_programs()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .collect())
}

/// `netscope-agent probe` (the binary beside this one, default settings, its lines to
/// /dev/null) in a cgroup of its own, pinned to the ring reader's CPU: the agent an SRE runs,
/// whose CPU is the cgroup's — ring reader, flow table, metrics, the JSON line it prints per
/// connection, its timers — and whose programs are the ones it loaded.
struct AgentProcess {
    child: Child,
    cgroup: Cgroup,
    ids: HashSet<u32>,
    /// Taken by `stop`.
    log: Option<thread::JoinHandle<Vec<String>>>,
}

/// An agent left running by an error between its start and [`AgentProcess::stop`] would stay
/// attached to the machine's tracepoints: it is killed. After `stop` it has been reaped, and
/// this does nothing.
impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's programs' stats and its CPU time at one instant.
struct AgentSnapshot {
    programs: Vec<LoadedProgram>,
    cpu_us: u64,
}

impl AgentProcess {
    /// Starts it, waits until it serves, then lets it settle: what a running agent costs is
    /// measured, not its start.
    fn start() -> Result<Self, String> {
        let existing = loaded_since(&HashSet::new())?;
        let cgroup = Cgroup::create("agent")?;
        let mut child = Command::new("taskset")
            .args(["-c", &READER_CPU.to_string()])
            .arg(agent_binary()?)
            .args(["probe", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("netscope-agent probe (through taskset): {e}"))?;
        let stderr = child.stderr.take().ok_or("the agent: no stderr")?;
        let adopted = cgroup.adopt(child.id());
        let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
        let mut log = Vec::new();
        let attached = adopted.is_ok()
            && lines.any(|l| {
                // Its last startup line: the probe is attached and everything serves.
                let found = l.contains("HTTP server listening");
                log.push(l);
                found
            });
        if !attached {
            let _ = child.kill();
            let _ = child.wait();
            adopted?;
            return Err(format!("the agent did not attach: {}", log.join("\n")));
        }
        // Its log is read to the end (a full pipe would stop it) and kept for an error.
        let log = thread::spawn(move || lines.collect());
        thread::sleep(Duration::from_millis(500));
        Ok(Self {
            child,
            cgroup,
            ids: loaded_since(&existing)?,
            log: Some(log),
        })
    }

    fn snapshot(&self) -> Result<AgentSnapshot, String> {
        Ok(AgentSnapshot {
            programs: programs_of(&self.ids)?,
            cpu_us: self.cgroup.usage_usec()?,
        })
    }

    /// Stops it as a user would (SIGINT); it exits with 0 only when every record the kernel
    /// emitted was read, none dropped.
    fn stop(mut self) -> Result<(), String> {
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|e| e.to_string())?;
        // SAFETY: signalling our own child, which has not been waited for yet.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let status = self.child.wait().map_err(|e| format!("the agent: {e}"))?;
        let log = self
            .log
            .take()
            .and_then(|l| l.join().ok())
            .unwrap_or_default();
        if !status.success() {
            return Err(format!(
                "the agent exited with {status}: {}",
                log.iter()
                    .rev()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        Ok(())
    }
}

/// Sums per-program stats over rounds, in program order.
fn sum_stats(rounds: &[PhaseResult]) -> Vec<ProgramStats> {
    let mut total: Vec<ProgramStats> = Vec::new();
    for s in rounds.iter().flat_map(|r| &r.programs) {
        match total.iter_mut().find(|t| t.program == s.program) {
            Some(t) => {
                t.run_count += s.run_count;
                t.run_time_ns += s.run_time_ns;
            }
            None => total.push(s.clone()),
        }
    }
    total
}

fn print_programs(set: &str, stats: &[ProgramStats]) {
    for s in stats {
        let per_run = s.run_time_ns.checked_div(s.run_count).unwrap_or(0);
        println!(
            "{:<20} {:<13} {:>12} {:>14} {:>8}",
            s.program, set, s.run_count, s.run_time_ns, per_run
        );
    }
}

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
