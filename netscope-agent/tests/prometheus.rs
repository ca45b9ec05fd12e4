//! A real Prometheus scraping a real agent: the target is up, the call and connect series
//! equal the run's own results, `promtool check metrics` accepts a scrape, and flow series
//! stay within the label budget whatever the ports and process names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netscope_agent::demo::upstream::Upstream;
use netscope_agent::metrics::sample_sum as metric_sum;
use serde_json::Value;
use support::{
    NetNs,
    agent::{BIN, Setup, request},
    kafka::{kafka_test, unique},
    kernel_test,
    prometheus::prometheus_test,
    wait_api_addr,
};

/// A scrape of `/metrics`, asking for `accept`.
async fn scrape_as(addr: SocketAddr, accept: &str) -> String {
    let http = netscope_agent::outbound::client::build(Duration::from_secs(5)).unwrap();
    http.get(format!("http://{addr}/metrics"))
        .header("accept", accept)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn scrape(addr: SocketAddr) -> String {
    scrape_as(addr, "application/openmetrics-text").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_running_pipeline_and_its_series_equal_the_runs_results() {
    let Some(brokers) = kafka_test("prom-pipeline") else {
        return;
    };
    let Some(_kernel) = kernel_test("prom-pipeline") else {
        return;
    };
    let Some(prom) = prometheus_test("prom-pipeline").await else {
        return;
    };
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", up.addr);
    let s = Setup::new("prom", brokers, up.addr.port()).await;
    let agent = s.start(&[]);
    let api = s.api_addr();
    let test = unique("prom");
    let _target = prom.scrape(&test, api);

    let mut messages = Vec::new();
    for i in 0..40 {
        let path = match i % 4 {
            0 => format!("/status/503?i={i}"),
            1 => format!("/bytes/{}", 500 * i),
            _ => format!("/orders/{i}"),
        };
        messages.push((format!("p{i}"), request(&base, "GET", &path, None, None)));
    }
    s.send(&messages).await;
    let results: Vec<Value> = s.results(40);
    assert_eq!(results.len(), 40, "{}", s.log());
    let count = |pred: &dyn Fn(&Value) -> bool| results.iter().filter(|r| pred(r)).count() as f64;
    let new_connections = count(&|r| {
        r["network"]["new_connection"] == true && r["network"]["connect_latency_ns"].is_u64()
    });
    let matched = count(&|r| r["network"]["matched"] == true);
    let received: f64 = results
        .iter()
        .filter_map(|r| r["network"]["bytes_received"].as_u64())
        .sum::<u64>() as f64;
    assert!(
        new_connections >= 1.0 && matched == 40.0,
        "the probe saw the calls: {results:?}"
    );

    let q = |expr: &str| expr.replace("T", &format!("test=\"{test}\""));
    assert_eq!(prom.until(&q("up{T}"), 1.0).await, Some(1.0), "target up");
    assert_eq!(
        prom.until(&q("sum(netscope_calls_total{T})"), 40.0).await,
        Some(40.0)
    );
    assert_eq!(
        prom.value(&q("sum(netscope_calls_total{T,status_class=\"5xx\"})"))
            .await,
        Some(count(&|r| r["status"] == 503))
    );
    assert_eq!(
        prom.value(&q("sum(netscope_tcp_connect_duration_seconds_count{T})"))
            .await,
        Some(new_connections),
        "one connect observation per new connection the calls opened"
    );
    assert_eq!(
        prom.value(&q("sum(netscope_correlation_total{T,result=\"matched\"})"))
            .await,
        Some(matched)
    );
    assert_eq!(
        prom.value(&q(
            "sum(netscope_call_tcp_bytes_total{T,kind=\"received\"})"
        ))
        .await,
        Some(received),
        "the kernel's bytes, as the results carry them"
    );
    assert_eq!(
        prom.value(&q(
            "sum(netscope_kernel_ring_events_total{T,result=\"dropped\"})"
        ))
        .await,
        Some(0.0)
    );

    // promtool (2.42) reads the Prometheus text format, which the agent serves to who asks
    // for it and not for OpenMetrics; its linter accepts it.
    let text = scrape_as(api, "text/plain; version=0.0.4").await;
    assert!(
        text.contains("# TYPE netscope_calls_total counter"),
        "{text}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt package prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_series_stay_within_the_label_budget_across_1000_ports_and_300_process_names() {
    let Some(_kernel) = kernel_test("prom-cardinality") else {
        return;
    };
    const PORT: u16 = 7311;
    const BUDGET: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let mut agent = Command::new(BIN)
        .args(["probe", "--dport", &PORT.to_string(), "--poll-ms", "10"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--comm-budget",
            &BUDGET.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let api = wait_api_addr(&log, Duration::from_secs(60), || true);

    let ns = NetNs::new("card");
    let guard = ns.enter();
    let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
    // Room in the accept queue for every connection: with std's 128, 300 threads connecting
    // at once on a busy CI machine overflowed it, and a dropped SYN retried until connect()
    // timed out (~127 s).
    // SAFETY: a valid listening socket; listening again only changes the backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 4096) }, 0);
    let server = std::thread::spawn(move || {
        for _ in 0..1000 {
            let (mut c, _) = listener.accept().unwrap();
            let mut b = [0u8; 8];
            let _ = c.read(&mut b);
        }
    });
    // 300 threads, each with a process name of its own (a thread's comm), 1,000 connections
    // in all, each from a fresh ephemeral port.
    let mut workers = Vec::new();
    for t in 0..300usize {
        let n = if t < 100 { 4 } else { 3 };
        workers.push(
            std::thread::Builder::new()
                .name(format!("nsw-{t:03}"))
                .spawn(move || {
                    let mut ports = Vec::new();
                    for _ in 0..n {
                        let mut c = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
                        ports.push(c.local_addr().unwrap().port());
                        c.write_all(b"x").unwrap();
                    }
                    ports
                })
                .unwrap(),
        );
    }
    let ports: BTreeSet<u16> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    server.join().unwrap();
    drop(guard);
    assert!(
        ports.len() >= 900,
        "mostly distinct source ports: {}",
        ports.len()
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = scrape(api).await;
        if metric_sum(&text, "netscope_flow_connects_total", &[("result", "ok")]) >= 1000.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "1,000 connects never counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let flow_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("netscope_flow_"))
        .collect();
    let comms: BTreeSet<&str> = flow_lines
        .iter()
        .filter_map(|l| l.split("comm=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        comms.len() <= BUDGET + 1,
        "{} process names: {comms:?}",
        comms.len()
    );
    assert!(
        comms.contains("~other"),
        "names past the budget overflow: {comms:?}"
    );
    assert!(metric_sum(&text, "netscope_flow_comm_overflow_total", &[]) > 0.0);
    for port in &ports {
        let needle = format!("\"{port}\"");
        assert!(!text.contains(&needle), "port {port} became a label value");
    }
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series < 5_000, "{series} series in all");
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    assert!(
        agent.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}
