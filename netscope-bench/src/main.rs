//! `netscope-bench`: the benchmarks `cargo xtask bench …` runs — `probe`, `pipeline`, `api`,
//! `audit` (each in its module) — and the child processes they start: `workload` (the probe
//! bench's) and `upstream` (the pipeline and API benches').

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use netscope_agent::config::DEFAULT_BROKERS;

mod api;
mod audit;
mod child;
mod memory;
mod pipeline;
mod probe;
mod soak;
mod stats;
mod upstream;
mod workload;

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
    /// The probe's cost: workload CPU with and without it (cgroup cpu.stat), kernel ns per
    /// connection and per request (bpf_stats) against empty programs and against tcplife.
    Probe {
        /// Connections per round of the churn workload.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Requests per round of the keep-alive workload.
        #[arg(long, default_value_t = 50_000)]
        requests: usize,
        /// Bytes each way per connection (churn); bytes of each response (keep-alive).
        #[arg(long, default_value_t = 4_096)]
        payload: usize,
        /// Measured rounds (after one warm-up round).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Also measure the kernel cost with the classifier on lo.
        #[arg(long)]
        tc: bool,
    },
    /// The probe bench's workload, run in a child process in its cgroup (not for direct use).
    #[command(hide = true)]
    Workload {
        kind: workload::Workload,
        #[arg(long)]
        units: usize,
        #[arg(long)]
        payload: usize,
        #[arg(long)]
        cgroup: PathBuf,
    },
    /// The agent's memory (RSS of `netscope-agent probe`) idle and with many live outbound
    /// connections in its flow table (root).
    Flows {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Arguments passed on to `netscope-agent probe` (after `--`), e.g. `--ring-bytes`.
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// `bench flows`' server side, in a child process (not for direct use).
    #[command(hide = true)]
    Sink {
        #[arg(long)]
        connections: usize,
    },
    /// The pipeline under a long run in which faults pile up: two agents in one group, a
    /// scheduled mix of upstream, broker, RGW and agent faults, then a reconciliation (exits
    /// non-zero on any loss).
    Soak {
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// The run's length; messages are produced over its first 80 %.
        #[arg(long, default_value_t = 12.0)]
        minutes: f64,
        /// Each agent's `--workers`.
        #[arg(long, default_value_t = 32)]
        workers: usize,
        /// Connections held open through the middle of the run, so that every agent's flow
        /// table holds them live (root only; 0: none).
        #[arg(long, default_value_t = 10_000)]
        live_flows: usize,
        /// Where the JSON report goes (default: target/soak/report.json).
        #[arg(long)]
        report: Option<PathBuf>,
        #[arg(long, env = "NETSCOPE_KAFKA_BROKERS", default_value = DEFAULT_BROKERS)]
        brokers: String,
        #[arg(
            long,
            env = "NETSCOPE_AUDIT_S3_ENDPOINT",
            default_value = "http://127.0.0.1:7480"
        )]
        rgw: String,
    },
    /// The pipeline and API benches' upstream, in a child process (not for direct use).
    #[command(hide = true)]
    Upstream,
}

fn main() -> ExitCode {
    // The pipeline and API benches run the pipeline in this process: as the agent does.
    netscope_agent::app::limit_malloc_arenas();
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
            requests,
            payload,
            rounds,
            tc,
        } => probe::bench(&probe::ProbeBench {
            connections: connections.max(1),
            requests: requests.max(1),
            payload: payload.max(1),
            rounds: rounds.max(1),
            tc,
        }),
        Bench::Workload {
            kind,
            units,
            payload,
            cgroup,
        } => workload::workload_main(kind, units, payload, &cgroup),
        Bench::Upstream => upstream::upstream_main(),
        Bench::Soak {
            messages,
            minutes,
            workers,
            live_flows,
            report,
            brokers,
            rgw,
        } => soak::bench(&soak::SoakBench {
            live_flows,
            messages: messages.max(100),
            minutes: minutes.max(1.0),
            brokers,
            rgw,
            report,
            workers: workers.max(1),
        }),
        Bench::Sink { connections } => memory::sink_main(connections),
        Bench::Flows {
            connections,
            agent_args,
        } => memory::bench(&memory::MemoryBench {
            connections: connections.max(1),
            agent_args,
        }),
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
