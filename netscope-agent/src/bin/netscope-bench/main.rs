//! `netscope-bench probe` (run through `cargo xtask bench probe`): what the kernel probe costs.
//! (`pipeline` and `audit` are in their modules.)
//!
//! A fixed loopback workload (connect, send a payload, get it back, close) runs in a private
//! network namespace, in interleaved rounds of three phases: no programs, NetScope's programs,
//! and empty programs on the same hooks (the hook-dispatch floor). `bpf_stats` gives each
//! program's run count and run time. Prints a table and ends with
//! `bench probe: ns_ratio=<x> conn_rate_ratio=<y>`.

use std::{
    fs::File,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::sys::{Stats, enable_stats};
use clap::{Parser, Subcommand};
use netscope_agent::{
    config::DEFAULT_BROKERS,
    probe::{Probe, ProbeOptions, ProgramSet, ProgramStats},
};

mod api;
mod audit;
mod pipeline;
mod stats;

use stats::Sample;

#[derive(Parser)]
#[command(name = "netscope-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// The live view and /metrics under the pipeline's load: 50 WebSocket clients (one never
    /// reading) at the 20 ms-upstream rate, and scrapes at the label budget.
    Api {
        #[arg(long, default_value_t = 10_000)]
        calls: usize,
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        #[arg(long, default_value_t = 128)]
        workers: usize,
        /// Live clients, one of which never reads.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        #[arg(long, default_value_t = 200)]
        scrapes: usize,
        #[arg(long, default_value_t = 1024)]
        queue: usize,
        #[arg(long, default_value = DEFAULT_BROKERS)]
        brokers: String,
    },
    /// The pipeline against a bare reqwest loop, same upstream, same concurrency: its capacity
    /// (instant upstream) and its throughput at a delayed upstream.
    Pipeline {
        /// Calls in each run.
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
        /// Concurrency of the capacity run (bare loop tasks; pipeline workers).
        #[arg(long, default_value_t = 64)]
        capacity_workers: usize,
        /// Latency of the delayed upstream.
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// Concurrency of the delayed run: enough for the bare loop to make thousands of
        /// calls per second.
        #[arg(long, default_value_t = 128)]
        delay_workers: usize,
        #[arg(long, env = "NETSCOPE_KAFKA_BROKERS", default_value = DEFAULT_BROKERS)]
        brokers: String,
        /// The pipeline's job queue (`run --queue`).
        #[arg(long, default_value_t = 1024)]
        queue: usize,
    },
    /// The RGW audit trail: sustained events/s into RGW, PUTs per 10,000 events, and the
    /// request path's latency with RGW healthy vs stopped.
    Audit {
        /// Events of the throughput run.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Concurrent deliveries (the pipeline's delivery stage allows 4 × workers).
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Events/s offered in the latency rounds.
        #[arg(long, default_value_t = 2_000)]
        rate: u64,
        /// Seconds of each latency round (healthy, then stopped).
        #[arg(long, default_value_t = 3)]
        round_secs: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(
            long,
            env = "NETSCOPE_AUDIT_S3_ENDPOINT",
            default_value = "http://127.0.0.1:7480"
        )]
        endpoint: String,
    },
    /// Kernel cost and connection rate of the probe.
    Probe {
        /// Connections per phase and round.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Bytes sent each way per connection.
        #[arg(long, default_value_t = 4_096)]
        payload: usize,
        /// Measured rounds (after one warm-up round).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Only the default configuration (skip the one with TC on lo).
        #[arg(long)]
        no_tc: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    None,
    NetScope,
    Baseline,
}

struct PhaseResult {
    rate: f64,
    stats: Vec<ProgramStats>,
}

const PORT: u16 = 7301;

fn main() -> ExitCode {
    let result = match Cli::parse().bench {
        Bench::Api {
            calls,
            delay_ms,
            workers,
            clients,
            scrapes,
            queue,
            brokers,
        } => api::bench(&api::ApiBench {
            calls: calls.max(2),
            delay_ms,
            workers: workers.max(1),
            clients: clients.max(2),
            scrapes: scrapes.max(1),
            queue: queue.max(1),
            brokers,
        }),
        Bench::Probe {
            connections,
            payload,
            rounds,
            no_tc,
        } => bench_probe(connections, payload, rounds.max(1), no_tc),
        Bench::Audit {
            events,
            concurrency,
            rate,
            round_secs,
            rounds,
            endpoint,
        } => audit::bench(&audit::AuditBench {
            events: events.max(1),
            concurrency: concurrency.max(1),
            rate: rate.max(1),
            round_secs: round_secs.max(1),
            rounds: rounds.max(1),
            endpoint,
        }),
        Bench::Pipeline {
            calls,
            capacity_workers,
            delay_ms,
            delay_workers,
            brokers,
            queue,
        } => pipeline::bench(&pipeline::PipelineBench {
            calls: calls.max(2),
            capacity_workers: capacity_workers.max(1),
            delay_ms,
            delay_workers: delay_workers.max(1),
            queue: queue.max(1),
            brokers,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netscope-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The default configuration of `netscope-agent probe` (TC is opt-in per interface) gives the
/// closing line; the same with the classifier on lo, where every packet crosses egress and
/// ingress, is printed before it.
fn bench_probe(
    connections: usize,
    payload: usize,
    rounds: usize,
    no_tc: bool,
) -> Result<(), String> {
    let default = run(connections, payload, rounds, false)?;
    if !no_tc {
        let (ns, rate) = run(connections, payload, rounds, true)?;
        println!("with TC on lo: ns_ratio={ns:.2} conn_rate_ratio={rate:.3}");
    }
    println!(
        "bench probe: ns_ratio={:.2} conn_rate_ratio={:.3}",
        default.0, default.1
    );
    Ok(())
}

/// A fresh network namespace entered by the calling thread (threads spawned later inherit it);
/// each phase gets its own, so no phase inherits another's TIME_WAIT sockets.
struct BenchNetns {
    name: String,
    original: File,
}

impl BenchNetns {
    fn enter() -> Result<Self, String> {
        let name = format!("nsbench-{}", std::process::id());
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .map_err(|e| format!("ip: {e}"))?
                .success()
                .then_some(())
                .ok_or_else(|| format!("`ip {}` failed", args.join(" ")))
        };
        let original = File::open("/proc/thread-self/ns/net").map_err(|e| format!("netns: {e}"))?;
        ok(&["netns", "add", &name])?;
        let ns = Self {
            name: name.clone(),
            original,
        };
        ok(&["-n", &name, "link", "set", "lo", "up"])?;
        let file =
            File::open(format!("/var/run/netns/{name}")).map_err(|e| format!("netns: {e}"))?;
        // SAFETY: a valid namespace fd; affects the calling thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(ns)
    }
}

impl Drop for BenchNetns {
    fn drop(&mut self) {
        // SAFETY: a valid namespace fd: back to where this thread was.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Pins the calling thread to one CPU (or lets it run anywhere with `None`).
fn pin(cpu: Option<usize>) {
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

/// CPU on which the workload's client and server run; the ring reader uses another one.
const WORKLOAD_CPU: usize = 0;
const READER_CPU: usize = 1;

/// Connections per second for `connections` request/response exchanges of `payload` bytes.
/// Client and server share one CPU: the rate then measures the CPU cost of a connection,
/// without the noise of the two threads meeting on one CPU in some runs and not in others.
fn workload(connections: usize, payload: usize) -> Result<f64, String> {
    let listener = TcpListener::bind(("127.0.0.1", PORT)).map_err(|e| format!("bind: {e}"))?;
    pin(Some(WORKLOAD_CPU));
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
    let started = Instant::now();
    for _ in 0..connections {
        let mut c = TcpStream::connect(("127.0.0.1", PORT)).map_err(|e| format!("connect: {e}"))?;
        c.write_all(&data).map_err(|e| e.to_string())?;
        c.read_exact(&mut back).map_err(|e| e.to_string())?;
        let mut eof = [0u8; 1];
        let _ = c.read(&mut eof);
    }
    let elapsed = started.elapsed();
    pin(None);
    server
        .join()
        .map_err(|_| "server thread panicked".to_owned())?
        .map_err(|e| format!("server: {e}"))?;
    Ok(connections as f64 / elapsed.as_secs_f64())
}

fn run_phase(
    phase: Phase,
    connections: usize,
    payload: usize,
    tc: bool,
) -> Result<PhaseResult, String> {
    let _netns = BenchNetns::enter()?;
    let set = match phase {
        Phase::None => {
            return Ok(PhaseResult {
                rate: workload(connections, payload)?,
                stats: Vec::new(),
            });
        }
        Phase::NetScope => ProgramSet::NetScope,
        Phase::Baseline => ProgramSet::Baseline,
    };
    let options = ProbeOptions {
        programs: set,
        tc_interfaces: if tc {
            vec!["lo".to_owned()]
        } else {
            Vec::new()
        },
        ..ProbeOptions::default()
    };
    let mut probe = Probe::load(&options).map_err(|e| e.to_string())?;
    // Consume the ring as the agent would, so NetScope's phase pays for the whole path.
    let mut reader = probe.take_events().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reader = Arc::clone(&stop);
    let drainer = thread::spawn(move || {
        pin(Some(READER_CPU));
        let mut events = 0u64;
        while !stop_reader.load(Ordering::Relaxed) {
            reader.drain(|_, _| events += 1);
            thread::sleep(Duration::from_millis(50));
        }
        reader.drain(|_, _| events += 1);
        events
    });
    let rate = workload(connections, payload);
    let stats = probe.program_stats().map_err(|e| e.to_string());
    probe.detach();
    stop.store(true, Ordering::Relaxed);
    let delivered = drainer.join().map_err(|_| "reader panicked".to_owned())?;
    let counters = probe.kernel_counters().map_err(|e| e.to_string())?;
    if phase == Phase::NetScope && (counters.emitted() != delivered || counters.dropped() != 0) {
        return Err(format!(
            "events: emitted {} delivered {delivered} dropped {}",
            counters.emitted(),
            counters.dropped()
        ));
    }
    Ok(PhaseResult {
        rate: rate?,
        stats: stats?,
    })
}

/// Sums per-program stats over rounds, in program order.
fn sum_stats(rounds: &[Vec<ProgramStats>]) -> Vec<ProgramStats> {
    let mut total: Vec<ProgramStats> = Vec::new();
    for round in rounds {
        for s in round {
            match total.iter_mut().find(|t| t.program == s.program) {
                Some(t) => {
                    t.run_count += s.run_count;
                    t.run_time_ns += s.run_time_ns;
                }
                None => total.push(s.clone()),
            }
        }
    }
    total
}

fn print_table(set: &str, stats: &[ProgramStats]) -> u64 {
    let mut total_ns = 0;
    for s in stats {
        let per_run = s.run_time_ns.checked_div(s.run_count).unwrap_or(0);
        println!(
            "{:<18} {:<9} {:>12} {:>14} {:>8}",
            s.program, set, s.run_count, s.run_time_ns, per_run
        );
        total_ns += s.run_time_ns;
    }
    total_ns
}

/// Returns (ns_ratio, conn_rate_ratio) for one configuration.
fn run(connections: usize, payload: usize, rounds: usize, tc: bool) -> Result<(f64, f64), String> {
    let phases = [Phase::None, Phase::NetScope, Phase::Baseline];
    let config = if tc {
        "tracepoints + TC on lo"
    } else {
        "tracepoints (default)"
    };
    eprintln!(
        "bench probe [{config}]: {connections} connections × {payload} B each way; 1 warm-up + \
         {rounds} rate rounds (bpf_stats off), then {rounds} cost rounds (bpf_stats on)"
    );
    println!("== {config}");
    for phase in phases {
        run_phase(phase, connections / 5, payload, tc)?;
    }
    // Connection rate without bpf_stats: its two clock reads per program run are not NetScope's.
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for (i, phase) in phases.into_iter().enumerate() {
            let r = run_phase(phase, connections, payload, tc)?;
            eprintln!("  rate round {round} {phase:?}: {:.0} conn/s", r.rate);
            rates[i].push(r.rate);
        }
    }
    // Kernel cost with bpf_stats on (it stays enabled while this fd lives).
    let stats_fd = enable_stats(Stats::RunTime).map_err(|e| format!("enable bpf_stats: {e}"))?;
    let mut stats: [Vec<Vec<ProgramStats>>; 2] = Default::default();
    for _ in 0..rounds {
        stats[0].push(run_phase(Phase::NetScope, connections, payload, tc)?.stats);
        stats[1].push(run_phase(Phase::Baseline, connections, payload, tc)?.stats);
    }
    drop(stats_fd);

    // The best round shows the workload's own cost (the median is printed beside it).
    let samples = rates.each_ref().map(|r| Sample::new(r.clone()));
    let [none_rate, ns_rate, base_rate] = samples.each_ref().map(Sample::max);
    let [none_median, ns_median, base_median] = samples.each_ref().map(Sample::median);
    println!(
        "{:<18} {:<9} {:>12} {:>14} {:>8}",
        "program", "set", "runs", "total_ns", "ns/run"
    );
    let ns_total = print_table("netscope", &sum_stats(&stats[0]));
    let base_total = print_table("empty", &sum_stats(&stats[1]));
    println!();
    println!(
        "{:<10} {:>14} {:>14}",
        "phase", "conn/s (best)", "conn/s (median)"
    );
    println!("{:<10} {:>14.0} {:>14.0}", "none", none_rate, none_median);
    println!("{:<10} {:>14.0} {:>14.0}", "netscope", ns_rate, ns_median);
    println!("{:<10} {:>14.0} {:>14.0}", "empty", base_rate, base_median);
    println!(
        "conn_rate_ratio from medians: {:.3}",
        ns_median / none_median
    );
    let ns_ratio = ns_total as f64 / base_total.max(1) as f64;
    let conn_rate_ratio = ns_rate / none_rate;
    println!();
    Ok((ns_ratio, conn_rate_ratio))
}
