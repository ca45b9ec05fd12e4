//! `netscope-bench pipeline`: the pipeline against a bare reqwest loop hitting the same upstream
//! with the same concurrency, in one run:
//! 1. capacity — an upstream that answers at once, so that the pipeline's own cost is the
//!    limit (Kafka in and out, the durable audit file, the policies, the probe);
//! 2. a delayed upstream (20 ms, a typical external service) at a concurrency at which the bare
//!    loop makes thousands of calls per second, where the pipeline should keep up.
//!
//! The upstream runs on a thread of its own ("upstream"), so that the agent's CPU time is the
//! process's minus that thread's. Ends with
//! `bench pipeline: capacity_calls_per_s=<x> throughput_ratio=<y> cpu_us_per_call=<z>`.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use clap::Parser;

use crate::stats::{Sample, cpu_breakdown, cpu_by_thread, process_cpu, threads_cpu};
use netscope_agent::{
    app::Pipeline, config::RunArgs, demo::upstream::Upstream, domain::BusEvent, outbound::client,
};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::{FutureProducer, FutureRecord},
};
use tokio::sync::watch;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    run: RunArgs,
}

/// What one run (bare or pipeline) did.
struct Stats {
    per_sec: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    /// The agent's (or the bare client's) CPU time per call, upstream excluded.
    cpu_us_per_call: f64,
}

/// CPU time of everything in this process but the upstream.
fn agent_cpu() -> Duration {
    process_cpu().saturating_sub(threads_cpu(UPSTREAM_THREAD))
}

const UPSTREAM_THREAD: &str = "upstream";

/// Figures of a run measured from `cpu_at_start` and `started` until now.
fn stats(latencies_ms: Vec<f64>, started: Instant, cpu_at_start: Duration, calls: usize) -> Stats {
    let cpu = agent_cpu().saturating_sub(cpu_at_start);
    let latency = Sample::new(latencies_ms);
    Stats {
        per_sec: calls as f64 / started.elapsed().as_secs_f64(),
        p50: latency.median(),
        p95: latency.quantile(0.95),
        p99: latency.quantile(0.99),
        cpu_us_per_call: cpu.as_secs_f64() * 1e6 / calls.max(1) as f64,
    }
}

/// `calls` GETs with `concurrency` tasks on one reqwest client built like the gateway's.
async fn bare(base: &str, path: &str, calls: usize, concurrency: usize) -> Result<Stats, String> {
    let http = client::build(Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let (started, cpu) = (Instant::now(), agent_cpu());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let (http, base, path) = (http.clone(), base.to_owned(), path.to_owned());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            for i in (t..calls).step_by(concurrency) {
                let t0 = Instant::now();
                let r = http
                    .get(format!("{base}{path}?i={i}"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                r.bytes().await.map_err(|e| e.to_string())?;
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, String>(lat)
        });
    }
    let mut all = Vec::with_capacity(calls);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.map_err(|e| e.to_string())??);
    }
    Ok(stats(all, started, cpu, calls))
}

async fn through_pipeline(
    base: &str,
    path: &str,
    port: u16,
    calls: usize,
    concurrency: usize,
    queue: usize,
    brokers: &str,
) -> Result<(Stats, bool), String> {
    let tag = format!(
        "{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let dir = std::env::temp_dir().join(format!("netscope-bench-{tag}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[[targets]]\nname = \"bench\"\nhosts = [\"127.0.0.1\"]\nports = [{port}]\n\
             [targets.policy]\nmax_in_flight = {concurrency}\ncircuit_window = 10000\ncircuit_min_calls = 10000\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let (requests, results, dlq) = (
        format!("bench-req-{tag}"),
        format!("bench-res-{tag}"),
        format!("bench-dlq-{tag}"),
    );
    // SAFETY: geteuid has no preconditions.
    let with_probe = unsafe { libc::geteuid() } == 0;
    let mut argv = vec![
        "bench".to_owned(),
        "--config".into(),
        config.display().to_string(),
        "--brokers".into(),
        brokers.into(),
        "--group".into(),
        format!("bench-{tag}"),
        "--requests-topic".into(),
        requests.clone(),
        "--results-topic".into(),
        results.clone(),
        "--dlq-topic".into(),
        dlq.clone(),
        "--audit-file".into(),
        dir.join("audit.ndjson").display().to_string(),
        "--workers".into(),
        concurrency.to_string(),
        "--queue".into(),
        queue.to_string(),
        "--dport".into(),
        port.to_string(),
    ];
    if !with_probe {
        argv.push("--no-probe".into());
    }
    let settings = Args::try_parse_from(&argv)
        .map_err(|e| e.to_string())?
        .run
        .validate()
        .map_err(|e| e.to_string())?;

    // The backlog, produced before the pipeline starts.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let topics = [
        NewTopic::new(&requests, 3, TopicReplication::Fixed(1)),
        NewTopic::new(&results, 3, TopicReplication::Fixed(1)),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
    ];
    for r in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .map_err(|e| e.to_string())?
    {
        r.map_err(|(t, e)| format!("{t}: {e}"))?;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .map_err(|e| e.to_string())?;
    let mut pending = Vec::with_capacity(calls);
    for i in 0..calls {
        let payload =
            format!(r#"{{"schema_version":1,"method":"GET","url":"{base}{path}?i={i}"}}"#);
        let key = i.to_string();
        let record = FutureRecord::to(&requests).key(&key).payload(&payload);
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e.to_string())?,
        );
    }
    for p in pending {
        p.await
            .map_err(|e| e.to_string())?
            .map_err(|(e, _)| e.to_string())?;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let pipeline = Pipeline::build(&settings, stop_rx.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut bus = pipeline.bus().subscribe();
    let counters = pipeline.counters();
    let running = tokio::spawn(pipeline.run(stop_rx));
    // Throughput between the first and the last result: the group join is not the pipeline's.
    let mut latencies = Vec::with_capacity(calls);
    let mut first: Option<(Instant, Duration)> = None;
    let mut threads_at_first = None;
    let mut matched = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    while latencies.len() < calls && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), bus.recv()).await {
            Ok(Some(BusEvent::Call(r))) => {
                if first.is_none() {
                    first = Some((Instant::now(), agent_cpu()));
                    threads_at_first = Some(cpu_by_thread());
                }
                latencies.push(r.duration_ms);
                matched += usize::from(r.network.matched);
            }
            Ok(Some(BusEvent::Flow(_))) | Err(_) => {}
            Ok(None) => break,
        }
    }
    let figures = first.map(|(at, cpu)| stats(latencies.clone(), at, cpu, calls - 1));
    if let Some(before) = &threads_at_first {
        eprintln!(
            "bench pipeline: CPU µs per call by thread: {}",
            cpu_breakdown(before, &cpu_by_thread(), calls - 1)
        );
    }
    let _ = stop_tx.send(true);
    let _ = running.await;
    let _ = std::fs::remove_dir_all(&dir);
    // Partitions left behind would make every later run's broker slower.
    let _ = admin
        .delete_topics(&[&requests, &results, &dlq], &AdminOptions::new())
        .await;
    let finished = counters.finished.load(Ordering::Relaxed) as usize;
    if latencies.len() < calls || finished < calls {
        return Err(format!(
            "only {} of {calls} results ({finished} finished)",
            latencies.len()
        ));
    }
    if with_probe && matched < calls {
        eprintln!(
            "bench pipeline: {} of {calls} calls matched a kernel flow",
            matched
        );
    }
    let figures = figures.ok_or("no result")?;
    Ok((figures, with_probe))
}

/// What `cargo xtask bench pipeline` runs.
pub struct PipelineBench {
    pub calls: usize,
    /// Concurrency of the capacity run (bare loop tasks; pipeline workers).
    pub capacity_workers: usize,
    /// The delayed upstream's latency, and the concurrency of that run.
    pub delay_ms: u64,
    pub delay_workers: usize,
    pub queue: usize,
    pub brokers: String,
}

fn row(upstream: &str, run: &str, workers: usize, s: &Stats) {
    println!(
        "{upstream:<10} {run:<24} {workers:>7} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>10.1}",
        s.per_sec, s.p50, s.p95, s.p99, s.cpu_us_per_call
    );
}

pub fn bench(b: &PipelineBench) -> Result<(), String> {
    // The upstream on a runtime of its own, whose thread's CPU time is not the agent's.
    let upstream_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(UPSTREAM_THREAD)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let up = upstream_rt
        .block_on(Upstream::start("127.0.0.1:0".parse().map_err(|_| "addr")?))
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let base = format!("http://{}", up.addr);
    let port = up.addr.port();
    let result = rt.block_on(async {
        eprintln!("bench pipeline: {} calls per run, upstream {base}", b.calls);
        println!(
            "{:<10} {:<24} {:>7} {:>9} {:>8} {:>8} {:>8} {:>10}",
            "upstream", "run", "workers", "calls/s", "p50 ms", "p95 ms", "p99 ms", "cpu µs/call"
        );
        let mut ratio = None;
        let mut capacity = None;
        for (delay, workers) in [(0, b.capacity_workers), (b.delay_ms, b.delay_workers)] {
            let path = format!("/delay/{delay}");
            let bare = bare(&base, &path, b.calls, workers).await?;
            let (piped, with_probe) = through_pipeline(
                &base, &path, port, b.calls, workers, b.queue, &b.brokers,
            )
            .await?;
            let name = if with_probe {
                "pipeline (with probe)"
            } else {
                "pipeline (no probe)"
            };
            let upstream = format!("{delay} ms");
            row(&upstream, "bare reqwest loop", workers, &bare);
            row(&upstream, name, workers, &piped);
            if delay == 0 {
                capacity = Some(piped);
            } else {
                ratio = Some(piped.per_sec / bare.per_sec);
            }
        }
        let (Some(capacity), Some(ratio)) = (capacity, ratio) else {
            return Err("a run is missing".to_owned());
        };
        println!(
            "bench pipeline: capacity_calls_per_s={:.0} throughput_ratio={ratio:.3} cpu_us_per_call={:.1}",
            capacity.per_sec, capacity.cpu_us_per_call
        );
        Ok(())
    });
    drop(up);
    result
}
