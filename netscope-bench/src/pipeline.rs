//! `netscope-bench pipeline`: the pipeline against a bare reqwest loop hitting the same upstream
//! with the same concurrency, in one run:
//! 1. capacity — an upstream that answers at once, so that the pipeline's own cost is the
//!    limit (Kafka in and out, the durable audit file, the policies, the probe);
//! 2. a delayed upstream (20 ms, a typical external service) at a concurrency at which the bare
//!    loop makes thousands of calls per second, where the pipeline should keep up.
//!
//! The upstream runs in a child process ([`UpstreamProcess`]), so that this process's CPU time
//! is the agent's. Rate and CPU are taken between the pipeline's first result and its last: the
//! consumer-group join before and the shutdown after are not its work. Ends with
//! `bench pipeline: capacity_calls_per_s=<x> throughput_ratio=<y> cpu_us_per_call=<z>`.

use std::{
    path::PathBuf,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use clap::Parser;

use crate::{
    stats::{Sample, cpu_breakdown, cpu_by_thread, process_cpu},
    upstream::UpstreamProcess,
};
use netscope_agent::{
    app::Pipeline,
    bus::BusSubscriber,
    config::{RunArgs, RunSettings},
    domain::BusEvent,
    outbound::client,
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
pub struct Stats {
    pub per_sec: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    /// The agent's (or the bare client's) CPU time per call, upstream excluded.
    pub cpu_us_per_call: f64,
}

/// A point of a run: when, and the agent's CPU time then.
#[derive(Clone, Copy)]
pub struct Mark {
    at: Instant,
    cpu: Duration,
}

impl Mark {
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            cpu: process_cpu(),
        }
    }
}

/// Figures of `calls` calls made between `from` and `to` (nothing after the last result —
/// shutting the pipeline down, deleting topics — is counted).
fn stats(latencies_ms: Vec<f64>, from: Mark, to: Mark, calls: usize) -> Stats {
    let cpu = to.cpu.saturating_sub(from.cpu);
    let latency = Sample::new(latencies_ms);
    Stats {
        per_sec: calls as f64 / to.at.duration_since(from.at).as_secs_f64(),
        p50: latency.median(),
        p95: latency.quantile(0.95),
        p99: latency.quantile(0.99),
        cpu_us_per_call: cpu.as_secs_f64() * 1e6 / calls.max(1) as f64,
    }
}

/// `calls` GETs with `concurrency` tasks on one reqwest client built like the gateway's.
async fn bare(base: &str, path: &str, calls: usize, concurrency: usize) -> Result<Stats, String> {
    let http = client::build(Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let started = Mark::now();
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
    Ok(stats(all, started, Mark::now(), calls))
}

/// One pipeline run's shape.
pub struct RunSpec<'a> {
    pub base: &'a str,
    pub path: &'a str,
    pub port: u16,
    pub calls: usize,
    pub concurrency: usize,
    pub queue: usize,
    pub brokers: &'a str,
}

/// A pipeline's settings on fresh topics, its backlog already produced (so that the run
/// measures consumption, not the producer).
pub struct Prepared {
    pub settings: RunSettings,
    pub with_probe: bool,
    dir: PathBuf,
    topics: [String; 3],
    admin: AdminClient<DefaultClientContext>,
}

impl Prepared {
    pub async fn new(spec: &RunSpec<'_>) -> Result<Self, String> {
        let tag = format!(
            "{}-{}",
            std::process::id(),
            netscope_agent::clock::now_unix_ms()
        );
        let dir = std::env::temp_dir().join(format!("netscope-bench-{tag}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let config = dir.join("bench.toml");
        std::fs::write(
            &config,
            format!(
                "[[targets]]\nname = \"bench\"\nhosts = [\"127.0.0.1\"]\nports = [{}]\n\
                 [targets.policy]\nmax_in_flight = {}\ncircuit_window = 10000\ncircuit_min_calls = 10000\n",
                spec.port, spec.concurrency
            ),
        )
        .map_err(|e| e.to_string())?;
        let topics = [
            format!("bench-req-{tag}"),
            format!("bench-res-{tag}"),
            format!("bench-dlq-{tag}"),
        ];
        // SAFETY: geteuid has no preconditions.
        let with_probe = unsafe { libc::geteuid() } == 0;
        let mut argv: Vec<String> = [
            "bench",
            "--config",
            &config.display().to_string(),
            "--brokers",
            spec.brokers,
            "--group",
            &format!("bench-{tag}"),
            "--requests-topic",
            &topics[0],
            "--results-topic",
            &topics[1],
            "--dlq-topic",
            &topics[2],
            "--audit-file",
            &dir.join("audit.ndjson").display().to_string(),
            "--workers",
            &spec.concurrency.to_string(),
            "--queue",
            &spec.queue.to_string(),
            "--dport",
            &spec.port.to_string(),
            "--listen",
            "127.0.0.1:0",
            // The benchmarks scrape as fast as they can.
            "--api-rate",
            "1000000",
        ]
        .map(str::to_owned)
        .to_vec();
        if !with_probe {
            argv.push("--no-probe".into());
        }
        let settings = Args::try_parse_from(&argv)
            .map_err(|e| e.to_string())?
            .run
            .validate()
            .map_err(|e| e.to_string())?;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", spec.brokers)
            .create()
            .map_err(|e| e.to_string())?;
        let new_topics = [
            NewTopic::new(&topics[0], 3, TopicReplication::Fixed(1)),
            NewTopic::new(&topics[1], 3, TopicReplication::Fixed(1)),
            NewTopic::new(&topics[2], 1, TopicReplication::Fixed(1)),
        ];
        for r in admin
            .create_topics(&new_topics, &AdminOptions::new())
            .await
            .map_err(|e| e.to_string())?
        {
            r.map_err(|(t, e)| format!("{t}: {e}"))?;
        }
        let me = Self {
            settings,
            with_probe,
            dir,
            topics,
            admin,
        };
        me.produce(spec).await?;
        Ok(me)
    }

    async fn produce(&self, spec: &RunSpec<'_>) -> Result<(), String> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", spec.brokers)
            .set("linger.ms", "5")
            .create()
            .map_err(|e| e.to_string())?;
        let mut pending = Vec::with_capacity(spec.calls);
        for i in 0..spec.calls {
            let payload = format!(
                r#"{{"schema_version":1,"method":"GET","url":"{}{}?i={i}"}}"#,
                spec.base, spec.path
            );
            let key = i.to_string();
            let record = FutureRecord::to(&self.topics[0])
                .key(&key)
                .payload(&payload);
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
        Ok(())
    }

    /// Removes the run's files and topics (partitions left behind slow every later run).
    pub async fn cleanup(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        let _ = self
            .admin
            .delete_topics(&topics, &AdminOptions::new())
            .await;
    }
}

type ThreadsCpu = std::collections::BTreeMap<(String, u32), Duration>;

/// The results of a run as the bus carried them.
pub struct Collected {
    pub latencies_ms: Vec<f64>,
    /// The first result and the last: throughput and CPU are measured between them (the group
    /// join before and the shutdown after are not the pipeline's work).
    pub first: Option<Snapshot>,
    pub last: Option<Snapshot>,
    pub matched: usize,
}

/// The clocks and each thread's CPU time at one instant.
pub struct Snapshot {
    mark: Mark,
    threads: ThreadsCpu,
}

impl Snapshot {
    fn now() -> Self {
        Self {
            mark: Mark::now(),
            threads: cpu_by_thread(),
        }
    }
}

/// Takes `calls` results off the bus (10 minutes at most).
pub async fn collect(mut bus: BusSubscriber, calls: usize) -> Collected {
    let mut c = Collected {
        latencies_ms: Vec::with_capacity(calls),
        first: None,
        last: None,
        matched: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while c.latencies_ms.len() < calls && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), bus.recv()).await {
            Ok(Some(BusEvent::Call(r))) => {
                if c.first.is_none() {
                    c.first = Some(Snapshot::now());
                }
                c.latencies_ms.push(r.duration_ms);
                c.matched += usize::from(r.network.matched);
                if c.latencies_ms.len() == calls {
                    c.last = Some(Snapshot::now());
                }
            }
            Ok(Some(BusEvent::Flow(_))) | Err(_) => {}
            Ok(None) => break,
        }
    }
    c
}

impl Collected {
    /// The run's figures; an error when results are missing.
    pub fn figures(
        self,
        calls: usize,
        finished: usize,
        with_probe: bool,
        label: &str,
    ) -> Result<Stats, String> {
        if let (Some(before), Some(after)) = (&self.first, &self.last) {
            eprintln!(
                "bench {label}: CPU µs per call by thread: {}",
                cpu_breakdown(&before.threads, &after.threads, calls - 1)
            );
        }
        if self.latencies_ms.len() < calls || finished < calls {
            return Err(format!(
                "only {} of {calls} results ({finished} finished)",
                self.latencies_ms.len()
            ));
        }
        if with_probe && self.matched < calls {
            eprintln!(
                "bench {label}: {} of {calls} calls matched a kernel flow",
                self.matched
            );
        }
        let (Some(first), Some(last)) = (self.first, self.last) else {
            return Err("no result".into());
        };
        Ok(stats(self.latencies_ms, first.mark, last.mark, calls - 1))
    }
}

pub async fn through_pipeline(spec: &RunSpec<'_>) -> Result<(Stats, bool), String> {
    let prepared = Prepared::new(spec).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let pipeline = Pipeline::build(&prepared.settings, stop_rx.clone())
        .await
        .map_err(|e| e.to_string())?;
    let bus = pipeline.bus().subscribe();
    let counters = pipeline.counters();
    let running = tokio::spawn(pipeline.run(stop_rx));
    let collected = collect(bus, spec.calls).await;
    let stopping = Instant::now();
    let _ = stop_tx.send(true);
    let _ = running.await;
    eprintln!(
        "bench pipeline: stopped {} ms after its last result (not counted)",
        stopping.elapsed().as_millis()
    );
    let with_probe = prepared.with_probe;
    prepared.cleanup().await;
    let finished = counters.finished.load(Ordering::Relaxed) as usize;
    Ok((
        collected.figures(spec.calls, finished, with_probe, "pipeline")?,
        with_probe,
    ))
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

/// The programmable upstream in its child process, and the agent's runtime (two workers, as
/// `netscope-agent` has).
pub fn runtimes() -> Result<(UpstreamProcess, tokio::runtime::Runtime), String> {
    let up = UpstreamProcess::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    Ok((up, rt))
}

pub fn bench(b: &PipelineBench) -> Result<(), String> {
    let (up, rt) = runtimes()?;
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
            let spec = RunSpec {
                base: &base,
                path: &path,
                port,
                calls: b.calls,
                concurrency: workers,
                queue: b.queue,
                brokers: &b.brokers,
            };
            let (piped, with_probe) = through_pipeline(&spec).await?;
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
