//! `netscope-bench audit` (run through `cargo xtask bench audit`, which starts Ceph): the RGW
//! audit trail's sustained rate and what it adds to the request path.
//!
//! 1. Throughput: `events` results delivered by `concurrency` tasks (as the pipeline's delivery
//!    stage does) into the spooling sink; timed until RGW holds them all. Prints events/s into
//!    RGW and PUTs per 10,000 events.
//! 2. Request-path latency, RGW healthy vs stopped (`scripts/ceph.sh rgw-stop`): the same paced
//!    load (`rate` events/s) in interleaved rounds; each `deliver` is timed — it is what a call's
//!    delivery waits for before its offset may be committed. After the last outage round RGW
//!    is started again and the spool must drain completely.
//!
//! Ends with `bench audit: events_per_s=<x> outage_latency_ratio=<y>`, where the ratio is the
//! mean `deliver` latency with RGW stopped ÷ with RGW healthy.

use std::{
    path::PathBuf,
    process::Command,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use crate::stats::Sample;
use netscope_agent::{
    audit::{
        rgw::{AuditStats, RgwAudit, SpoolSettings},
        s3::S3Settings,
    },
    domain::{OutcomeSink as _, outcome::OutboundResult},
};

pub struct AuditBench {
    pub events: u64,
    pub concurrency: usize,
    pub rate: u64,
    pub round_secs: u64,
    pub rounds: usize,
    pub endpoint: String,
}

fn settings(endpoint: &str, tag: &str) -> (S3Settings, SpoolSettings) {
    let stamp = netscope_agent::clock::now_unix_ms();
    let bucket = format!("bench-{tag}-{stamp}");
    let dir: PathBuf = std::env::temp_dir().join(&bucket);
    (
        S3Settings {
            endpoint: endpoint.to_owned(),
            bucket,
            access_key: "netscope-local".into(),
            secret_key: "netscope-local-secret".into(),
            region: "default".into(),
        },
        SpoolSettings {
            dir: dir.join("bench"),
            node: "bench".into(),
            budget_bytes: 4 << 30,
            batch_events: 10_000,
            batch_bytes: 64 << 20,
            batch_age: Duration::from_secs(1),
            queue: 8192,
        },
    )
}

fn ceph(what: &str) -> Result<(), String> {
    let status = Command::new("bash")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ceph.sh"),
            what,
        ])
        .status()
        .map_err(|e| format!("scripts/ceph.sh {what}: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("scripts/ceph.sh {what}: {status}"))
}

async fn wait_shipped(stats: &AuditStats, n: u64, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while stats.shipped.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {n} events reached RGW within {limit:?}",
                stats.shipped.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// `n` deliveries from `concurrency` tasks as fast as they go; `pace` spreads each task's
/// deliveries evenly over the time given. Returns each delivery's latency in µs.
async fn load(
    audit: &Arc<RgwAudit>,
    first: u64,
    n: u64,
    concurrency: usize,
    pace: Option<Duration>,
) -> Result<Vec<f64>, String> {
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = n.div_ceil(concurrency as u64);
    for t in 0..concurrency as u64 {
        let audit = Arc::clone(audit);
        let ids = (first + t * per_task)..(first + ((t + 1) * per_task).min(n));
        let gap = pace.map(|p| p.div_f64(per_task.max(1) as f64));
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(ids.end.saturating_sub(ids.start) as usize);
            let start = Instant::now();
            for (k, i) in ids.enumerate() {
                if let Some(gap) = gap {
                    let at = start + gap * k as u32;
                    tokio::time::sleep_until(at.into()).await;
                }
                let result = Arc::new(OutboundResult::example(&format!("b{i}")));
                let t0 = Instant::now();
                audit
                    .deliver(result)
                    .await
                    .map_err(|e| format!("deliver: {e}"))?;
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<_, String>(lat)
        });
    }
    let mut all = Vec::with_capacity(n as usize);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

struct Latency {
    mean: f64,
    p50: f64,
    p99: f64,
}

fn latency(us: Vec<f64>) -> Latency {
    let sample = Sample::new(us);
    Latency {
        mean: sample.mean(),
        p50: sample.median(),
        p99: sample.quantile(0.99),
    }
}

pub fn bench(b: &AuditBench) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(b))
}

async fn run(b: &AuditBench) -> Result<(), String> {
    // 1. Sustained rate into RGW.
    let (s3, spool) = settings(&b.endpoint, "rate");
    let audit = Arc::new(
        RgwAudit::connect(s3, spool, 1, true)
            .await
            .map_err(|e| e.to_string())?,
    );
    let stats = audit.stats();
    let started = Instant::now();
    load(&audit, 0, b.events, b.concurrency, None).await?;
    let spooled_in = started.elapsed();
    wait_shipped(&stats, b.events, Duration::from_secs(600)).await?;
    let elapsed = started.elapsed();
    let summary = audit.close(Duration::from_secs(10)).await;
    let events_per_s = b.events as f64 / elapsed.as_secs_f64();
    let puts_per_10k = summary.puts as f64 * 10_000.0 / b.events as f64;
    println!(
        "throughput: {} events, {} delivering tasks: spooled in {:.2} s ({:.0}/s), in RGW after {:.2} s",
        b.events,
        b.concurrency,
        spooled_in.as_secs_f64(),
        b.events as f64 / spooled_in.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "  events_per_s={events_per_s:.0} puts={} puts_per_10000_events={puts_per_10k:.1}",
        summary.puts
    );

    // 2. The request path with RGW healthy and stopped, interleaved.
    let (s3, spool) = settings(&b.endpoint, "outage");
    let audit = Arc::new(
        RgwAudit::connect(s3, spool, 1, true)
            .await
            .map_err(|e| e.to_string())?,
    );
    let stats = audit.stats();
    let per_round = b.rate * b.round_secs;
    let pace = Some(Duration::from_secs(b.round_secs));
    let (mut healthy, mut down) = (Vec::new(), Vec::new());
    let mut next = 0;
    for round in 0..b.rounds {
        healthy.extend(load(&audit, next, per_round, 16, pace).await?);
        next += per_round;
        ceph("rgw-stop")?;
        let outage = load(&audit, next, per_round, 16, pace).await;
        next += per_round;
        let backlog = stats.backlog_segments.load(Ordering::Relaxed);
        ceph("rgw-start")?;
        down.extend(outage?);
        println!(
            "  round {}: {} events healthy, {} with RGW stopped (spool backlog then: {backlog} segments)",
            round + 1,
            per_round,
            per_round
        );
    }
    wait_shipped(&stats, next, Duration::from_secs(300)).await?;
    let summary = audit.close(Duration::from_secs(10)).await;
    let (h, d) = (latency(healthy), latency(down));
    println!(
        "request path (deliver, {} events/s, {} rounds of {} s each way):",
        b.rate, b.rounds, b.round_secs
    );
    println!(
        "  RGW healthy: mean {:.0} µs  p50 {:.0} µs  p99 {:.0} µs",
        h.mean, h.p50, h.p99
    );
    println!(
        "  RGW stopped: mean {:.0} µs  p50 {:.0} µs  p99 {:.0} µs",
        d.mean, d.p50, d.p99
    );
    println!(
        "  after RGW came back: all {} events shipped ({} PUTs, {} failed attempts during the outages)",
        summary.shipped, summary.puts, summary.put_failures
    );
    println!(
        "bench audit: events_per_s={events_per_s:.0} outage_latency_ratio={:.3}",
        d.mean / h.mean
    );
    Ok(())
}
