//! `netscope-bench api`: the live view and `/metrics` under the pipeline's load. The pipeline
//! runs at its delayed-upstream rate (20 ms, 128 workers) twice: alone, then with 50 WebSocket
//! clients of `/ws/live` attached — 49 that read, one that never does. Then, with the flow
//! metrics filled to the process-name budget (as root, with the probe), `/metrics` is scraped
//! repeatedly. Ends with
//! `bench api: delivered_ratio=<fast clients' received ÷ sent> p99_ms=<event → client>
//! scrape_ms=<p99 /metrics> pipeline_ratio=<with clients ÷ without>`.
//!
//! "Event → client" is measured from the message's `at_unix_ms` (the hub took the durable
//! result off the bus and serialised it) to the client's receipt. The clients run on a runtime
//! of their own (thread "clients"); on this 2-core machine they still compete with the agent
//! for CPU, which remote browsers would not.

use std::{
    net::{SocketAddr, TcpStream},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use netscope_agent::{app::Pipeline, app::serve, clock::now_unix_ms};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    pipeline::{Prepared, RunSpec, Stats, collect, runtimes, through_pipeline},
    stats::Sample,
};

pub struct ApiBench {
    pub calls: usize,
    pub delay_ms: u64,
    pub workers: usize,
    pub clients: usize,
    pub scrapes: usize,
    pub queue: usize,
    pub brokers: String,
}

/// What one reading client saw.
#[derive(Default)]
struct Seen {
    calls: usize,
    latencies_ms: Vec<f64>,
}

/// A number after `"key":` in a JSON text (the hub's messages are flat where it matters).
fn number_after(text: &str, key: &str) -> Option<f64> {
    let at = text.find(key)? + key.len();
    let rest = &text[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// Reads call messages until `calls` arrived or the socket is quiet for 10 s.
async fn read_calls(addr: SocketAddr, calls: usize) -> Result<Seen, String> {
    let url = format!("ws://{addr}/ws/live?type=call");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .map_err(|e| e.to_string())?;
    let mut seen = Seen::default();
    while seen.calls < calls {
        let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await else {
            break;
        };
        let Message::Text(t) = m else { continue };
        if !t.starts_with("{\"type\":\"call\"") {
            continue;
        }
        seen.calls += 1;
        if let Some(at) = number_after(&t, "\"at_unix_ms\":") {
            seen.latencies_ms.push((now_unix_ms() as f64 - at).max(0.0));
        }
    }
    Ok(seen)
}

/// Connections from `names` distinct thread names to `port` (the probe's port filter), so
/// that the flow metrics hold a series per name up to the budget.
fn fill_comm_budget(port: u16, names: usize) {
    let workers: Vec<_> = (0..names)
        .filter_map(|i| {
            std::thread::Builder::new()
                .name(format!("bench-{i:03}"))
                .spawn(move || TcpStream::connect(("127.0.0.1", port)).map(drop))
                .ok()
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

/// `n` scrapes of `/metrics`, one after the other: their durations in ms, and the series count.
async fn scrapes(addr: SocketAddr, n: usize) -> Result<(Sample, usize), String> {
    let http = netscope_agent::outbound::client::build(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let mut took = Vec::with_capacity(n);
    let mut series = 0;
    for _ in 0..n {
        let t0 = Instant::now();
        let text = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        took.push(t0.elapsed().as_secs_f64() * 1e3);
        series = text.lines().filter(|l| !l.starts_with('#')).count();
    }
    Ok((Sample::new(took), series))
}

/// The figures of the run with clients attached.
struct Attached {
    pipeline: Stats,
    delivered_ratio: f64,
    p99_ms: f64,
    scrape: Sample,
    series: usize,
}

async fn with_clients(
    b: &ApiBench,
    spec: &RunSpec<'_>,
    clients: &tokio::runtime::Handle,
) -> Result<Attached, String> {
    let prepared = Prepared::new(spec).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut pipeline = Pipeline::build(&prepared.settings, stop_rx.clone())
        .await
        .map_err(|e| e.to_string())?;
    let view = pipeline.take_view().ok_or("no view")?;
    let (addr, server) = serve::start(&prepared.settings.api, "run", view, stop_rx.clone())
        .await
        .map_err(|e| e.to_string())?;
    let readers: Vec<_> = (1..b.clients)
        .map(|_| clients.spawn(read_calls(addr, spec.calls)))
        .collect();
    // The one that never reads: connected, then left alone.
    let (_stalled, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/live"))
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(300)).await; // every reader subscribed
    let bus = pipeline.bus().subscribe();
    let counters = pipeline.counters();
    let running = tokio::spawn(pipeline.run(stop_rx));
    let collected = collect(bus, spec.calls).await;
    let mut received = 0;
    let mut latencies = Vec::new();
    for r in readers {
        let seen = r.await.map_err(|e| e.to_string())??;
        received += seen.calls;
        latencies.extend(seen.latencies_ms);
    }
    if prepared.with_probe {
        fill_comm_budget(spec.port, 150);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (scrape, series) = scrapes(addr, b.scrapes).await?;
    let _ = stop_tx.send(true);
    let _ = running.await;
    serve::stop(server).await;
    let with_probe = prepared.with_probe;
    prepared.cleanup().await;
    let finished = counters.finished.load(Ordering::Relaxed) as usize;
    let pipeline = collected.figures(spec.calls, finished, with_probe, "api")?;
    Ok(Attached {
        pipeline,
        delivered_ratio: received as f64 / ((b.clients - 1) * spec.calls) as f64,
        p99_ms: Sample::new(latencies).quantile(0.99),
        scrape,
        series,
    })
}

pub fn bench(b: &ApiBench) -> Result<(), String> {
    let (up, rt) = runtimes()?;
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("clients")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let base = format!("http://{}", up.addr);
    let path = format!("/delay/{}", b.delay_ms);
    rt.block_on(async {
        let spec = RunSpec {
            base: &base,
            path: &path,
            port: up.addr.port(),
            calls: b.calls,
            concurrency: b.workers,
            queue: b.queue,
            brokers: &b.brokers,
        };
        eprintln!(
            "bench api: {} calls per run at {} ms upstream, {} workers; {} live clients",
            b.calls, b.delay_ms, b.workers, b.clients
        );
        let (alone, _) = through_pipeline(&spec).await?;
        let with = with_clients(b, &spec, clients.handle()).await?;
        println!(
            "{:<34} {:>9} {:>8} {:>8}",
            "run", "calls/s", "p50 ms", "p99 ms"
        );
        println!(
            "{:<34} {:>9.0} {:>8.2} {:>8.2}",
            "pipeline alone", alone.per_sec, alone.p50, alone.p99
        );
        let label = format!("pipeline + {} live clients", b.clients);
        println!(
            "{label:<34} {:>9.0} {:>8.2} {:>8.2}",
            with.pipeline.per_sec, with.pipeline.p50, with.pipeline.p99
        );
        println!(
            "/metrics: {} series, {} scrapes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            with.series,
            b.scrapes,
            with.scrape.median(),
            with.scrape.quantile(0.99),
            with.scrape.max()
        );
        println!(
            "bench api: delivered_ratio={:.4} p99_ms={:.1} scrape_ms={:.2} pipeline_ratio={:.3}",
            with.delivered_ratio,
            with.p99_ms,
            with.scrape.quantile(0.99),
            with.pipeline.per_sec / alone.per_sec
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_after_their_key() {
        let t = r#"{"type":"call","at_unix_ms":1700,"duration_ms":2.5,"x":1}"#;
        assert_eq!(number_after(t, "\"at_unix_ms\":"), Some(1700.0));
        assert_eq!(number_after(t, "\"duration_ms\":"), Some(2.5));
        assert_eq!(number_after(t, "\"nope\":"), None);
    }
}
