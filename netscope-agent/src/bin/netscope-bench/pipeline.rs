//! `netscope-bench pipeline`: the pipeline's throughput and per-call latency against a bare
//! reqwest loop hitting the same upstream with the same concurrency, in one run, for each
//! upstream latency asked for (0 ms: pure overhead; 20 ms: a typical external service). Ends
//! with `bench pipeline: throughput_ratio=<x> p99_ratio=<y>` for the last latency.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use clap::Parser;
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

struct Stats {
    per_sec: f64,
    p50: f64,
    p95: f64,
    p99: f64,
}

fn stats(mut latencies_ms: Vec<f64>, elapsed: Duration, calls: usize) -> Stats {
    latencies_ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies_ms[((latencies_ms.len() as f64 * q) as usize).min(latencies_ms.len() - 1)]
    };
    Stats {
        per_sec: calls as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

/// `calls` GETs with `concurrency` tasks on one reqwest client built like the gateway's.
async fn bare(base: &str, path: &str, calls: usize, concurrency: usize) -> Result<Stats, String> {
    let http = client::build(Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let started = Instant::now();
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
    Ok(stats(all, started.elapsed(), calls))
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
    let running = tokio::spawn(pipeline.run(stop_rx, settings.queue));
    // Throughput between the first and the last result: the group join is not the pipeline's.
    let mut latencies = Vec::with_capacity(calls);
    let mut first = None;
    let mut matched = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    while latencies.len() < calls && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), bus.recv()).await {
            Ok(Some(BusEvent::Call(r))) => {
                first.get_or_insert_with(Instant::now);
                latencies.push(r.duration_ms);
                matched += usize::from(r.network.matched);
            }
            Ok(Some(BusEvent::Flow(_))) | Err(_) => {}
            Ok(None) => break,
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    let _ = stop_tx.send(true);
    let _ = running.await;
    let _ = std::fs::remove_dir_all(&dir);
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
    Ok((stats(latencies, elapsed, calls - 1), with_probe))
}

pub fn bench(
    calls: usize,
    concurrency: usize,
    queue: usize,
    brokers: &str,
    delays_ms: &[u64],
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let up = Upstream::start("127.0.0.1:0".parse().map_err(|_| "addr")?)
            .await
            .map_err(|e| e.to_string())?;
        let base = format!("http://{}", up.addr);
        eprintln!("bench pipeline: {calls} calls, concurrency {concurrency}, upstream {base}");
        println!(
            "{:<10} {:<24} {:>10} {:>9} {:>9} {:>9}",
            "upstream", "run", "calls/s", "p50 ms", "p95 ms", "p99 ms"
        );
        let mut last = None;
        for &delay in delays_ms {
            let path = format!("/delay/{delay}");
            let baseline = bare(&base, &path, calls, concurrency).await?;
            let (piped, with_probe) = through_pipeline(
                &base,
                &path,
                up.addr.port(),
                calls,
                concurrency,
                queue,
                brokers,
            )
            .await?;
            let name = if with_probe {
                "pipeline (with probe)"
            } else {
                "pipeline (no probe)"
            };
            for (run, s) in [("bare reqwest loop", &baseline), (name, &piped)] {
                println!(
                    "{:<10} {run:<24} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
                    format!("{delay} ms"),
                    s.per_sec,
                    s.p50,
                    s.p95,
                    s.p99
                );
            }
            let ratios = (piped.per_sec / baseline.per_sec, piped.p99 / baseline.p99);
            println!(
                "upstream {delay} ms: throughput_ratio={:.3} p99_ratio={:.2}",
                ratios.0, ratios.1
            );
            last = Some(ratios);
        }
        let (throughput, p99) = last.ok_or("no upstream delay given")?;
        println!("bench pipeline: throughput_ratio={throughput:.3} p99_ratio={p99:.2}");
        Ok(())
    })
}
