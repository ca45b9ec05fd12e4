//! The HTTP server over real sockets: every route with good and bad input, the token, the
//! rate limit, size limits, and the live view's slow, fast and surplus clients. The state is
//! built from the agent's real components (flow table, call log, gateway, metrics, bus, live
//! hub); only readiness is a fixed check here (real readiness is tested against Kafka in
//! `pipeline.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use netscope_agent::{
    api::{self, ApiState, StatusInfo, live::LiveHub, middleware::ClientLimiter},
    bus::BroadcastBus,
    config::ApiSettings,
    domain::{
        BusEvent, Check, CounterSource, DestGroups, Flow, FlowId, FlowOutcome, FlowState,
        FlowUpdateKind, HealthCheck, TargetName,
        kernel::{CheckReport, fact},
        outcome::OutboundResult,
    },
    flows::FlowTable,
    metrics::{MetricsBuilder, calls::CallMetrics},
    outbound::{HttpGateway, policy::TargetPolicy},
    recent::RecentCalls,
};
use serde_json::Value;
use tokio::sync::watch;

const TOKEN: &str = "0123456789abcdef-token";

struct Fixed(bool);

impl HealthCheck for Fixed {
    fn checks(&self) -> Vec<Check> {
        vec![Check {
            name: "fixed",
            ok: self.0,
            required: true,
            detail: String::new(),
        }]
    }
}

fn settings() -> ApiSettings {
    ApiSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: None,
        trusted_proxies: Vec::new(),
        rate_per_sec: 1000,
        ws_max_clients: 8,
        recent_calls: 100,
        dest_groups: DestGroups::default(),
        comm_budget: 10,
        series_ttl: Duration::from_secs(60),
    }
}

fn flow(n: u64, port: u16, state: FlowState) -> Flow {
    Flow {
        id: FlowId {
            sock_id: 0xffff_0000 + n,
            start_mono_ns: 1_000 + n,
        },
        state,
        outcome: (state != FlowState::Established).then_some(FlowOutcome::Closed),
        pid: 42,
        tid: 42,
        comm: if n.is_multiple_of(2) { "curl" } else { "java" }.into(),
        cgroup_id: 1,
        local: SocketAddr::from(([127, 0, 0, 1], 40_000 + n as u16)),
        remote: SocketAddr::from(([10, 1, 2, 3], port)),
        start_unix_ns: 1,
        connect_latency_ns: Some(80_000),
        end_unix_ns: None,
        errno: None,
        bytes_sent: 10,
        bytes_received: 20,
        send_calls: Some(1),
        recv_calls: Some(1),
        retransmits: 0,
        resets_sent: 0,
        resets_received: 0,
        srtt_us: Some(50),
        wire: None,
        turns: Default::default(),
    }
}

struct Server {
    base: String,
    addr: SocketAddr,
    bus: BroadcastBus,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(settings: ApiSettings, ready: bool) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let bus = BroadcastBus::new(65_536);
        let table = Arc::new(Mutex::new(FlowTable::new(1000, u64::MAX)));
        for n in 0..30 {
            let (port, state) = if n < 20 {
                (443, FlowState::Closed)
            } else {
                (5432, FlowState::Established)
            };
            table
                .lock()
                .unwrap()
                .apply(FlowUpdateKind::Closed, flow(n, port, state), 1);
        }
        let calls = Arc::new(RecentCalls::new(settings.recent_calls));
        for n in 0..5 {
            calls.push(Arc::new(OutboundResult::example(&format!("req-{n}"))));
        }
        let gateway = Arc::new(
            HttpGateway::new(
                vec![(TargetName("orders".into()), TargetPolicy::default())],
                TargetPolicy::default(),
                64,
                None,
            )
            .unwrap(),
        );
        let live = LiveHub::new(settings.ws_max_clients, 1024, "run", stop_rx.clone());
        tokio::spawn(Arc::clone(&live).feed(bus.subscribe(), Some(gateway.clone())));
        let mut metrics = MetricsBuilder::new();
        let _calls = CallMetrics::register(metrics.registry());
        metrics.source(bus.counter_source());
        metrics.source(Arc::clone(&table) as Arc<dyn CounterSource>);
        metrics.source(Arc::clone(&live) as Arc<dyn CounterSource>);
        let state = Arc::new(ApiState {
            limiter: ClientLimiter::new(settings.rate_per_sec),
            settings,
            mode: "run",
            metrics: metrics.finish(),
            flows: Some(table),
            calls: Some(calls),
            gateway: Some(gateway),
            health: vec![Arc::new(Fixed(ready))],
            liveness: Vec::new(),
            status: StatusInfo {
                kernel: "test".into(),
                programs: vec!["ns_set_state"],
                started_unix_ms: 1,
                kernel_support: Some(CheckReport {
                    kernel: "test".into(),
                    btf: true,
                    ring_buffer: true,
                    tc_mode: "TCX",
                    missing_capabilities: vec![],
                    facts: vec![fact(
                        "bytes per call",
                        false,
                        Some("kprobes tcp_sendmsg/tcp_cleanup_rbuf".into()),
                        None,
                    )],
                }),
            },
            live,
        });
        let listener = api::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(api::serve(listener, state, stop_rx));
        Self {
            base: format!("http://{addr}"),
            addr,
            bus,
            stop,
            task,
        }
    }

    async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.text().await.unwrap())
    }

    async fn json(&self, path: &str) -> (u16, Value) {
        let (status, _, body) = self.get(path).await;
        (
            status,
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
        )
    }

    async fn metric(&self, line_start: &str) -> Option<f64> {
        let (_, _, text) = self.get("/metrics").await;
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    async fn shutdown(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn every_route_answers_good_input() {
    let s = Server::start(settings(), true).await;
    assert_eq!(
        s.json("/healthz").await,
        (200, serde_json::json!({"status": "ok"}))
    );
    let (status, ready) = s.json("/readyz").await;
    assert_eq!((status, &ready["ready"]), (200, &Value::Bool(true)));
    let (status, headers, text) = s.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(text.contains("netscope_flow_table_flows 30"), "{text}");
    assert!(text.ends_with("# EOF\n"));

    let (status, page) = s.json("/api/v1/flows?port=443&limit=7").await;
    assert_eq!(status, 200);
    let flows = page["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 7);
    assert!(flows.iter().all(|f| f["remote"] == "10.1.2.3:443"));
    let cursor = page["next"].as_str().unwrap();
    let (_, rest) = s
        .json(&format!("/api/v1/flows?port=443&limit=100&cursor={cursor}"))
        .await;
    assert_eq!(
        rest["flows"].as_array().unwrap().len(),
        13,
        "20 flows to :443 in all"
    );
    assert!(rest["next"].is_null());
    let (_, open) = s
        .json("/api/v1/flows?outcome=open&remote=10.0.0.0/8&comm=curl")
        .await;
    assert_eq!(
        open["flows"].as_array().unwrap().len(),
        5,
        "flows 20..30, even ones are curl"
    );

    let (_, calls) = s.json("/api/v1/calls?request_id=req-3").await;
    assert_eq!(calls["count"], 1);
    assert_eq!(calls["calls"][0]["ctx"]["request_id"], "req-3");
    let (_, calls) = s.json("/api/v1/calls?limit=2&outcome=response").await;
    assert_eq!(calls["count"], 2);

    let (status, r) = s.json("/api/v1/resilience").await;
    assert_eq!(status, 200);
    assert!(
        r["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["target"] == "orders")
    );
    let (status, one) = s.json("/api/v1/resilience/orders").await;
    assert_eq!((status, &one["circuit"]), (200, &Value::from("closed")));
    let (status, st) = s.json("/api/v1/status").await;
    assert_eq!(status, 200);
    assert_eq!(st["mode"], "run");
    assert!(st["counters"]["flow_table"].is_array(), "{st}");
    let per_call = &st["kernel_support"]["facts"][0];
    assert_eq!(
        (&per_call["fact"], &per_call["hook"]),
        (
            &Value::from("bytes per call"),
            &Value::from("kprobes tcp_sendmsg/tcp_cleanup_rbuf")
        ),
        "{st}"
    );
    let (status, headers, html) = s.get("/").await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(html.contains("/ws/live"));
    s.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_400_that_names_the_parameter() {
    let s = Server::start(settings(), true).await;
    for (path, parameter) in [
        ("/api/v1/flows?bogus=1", "bogus"),
        ("/api/v1/flows?remote=10.0.0.0/99", "remote"),
        ("/api/v1/flows?remote=not-an-ip", "remote"),
        ("/api/v1/flows?port=70000", "port"),
        ("/api/v1/flows?limit=0", "limit"),
        ("/api/v1/flows?limit=1001", "limit"),
        ("/api/v1/flows?outcome=exploded", "outcome"),
        ("/api/v1/flows?cursor=garbage", "cursor"),
        ("/api/v1/flows?port=1&port=2", "port"),
        ("/api/v1/calls?outcome=nope", "outcome"),
        ("/api/v1/calls?limit=-1", "limit"),
        ("/healthz?x=1", "x"),
        ("/ws/live?type=everything", "type"),
    ] {
        let (status, body) = s.json(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "bad_parameter", "{path}: {body}");
        assert_eq!(body["parameter"], parameter, "{path}: {body}");
    }
    let (status, body) = s.json("/api/v1/resilience/nobody").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = s.json("/no/such/route").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    s.shutdown().await;
}

#[tokio::test]
async fn readiness_is_503_with_its_checks_when_a_required_one_fails() {
    let s = Server::start(settings(), false).await;
    let (status, body) = s.json("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"][0]["name"], "fixed");
    s.shutdown().await;
}

#[tokio::test]
async fn with_a_token_the_api_and_page_need_it_and_probes_do_not() {
    let s = Server::start(
        ApiSettings {
            token: Some(TOKEN.into()),
            ..settings()
        },
        true,
    )
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str, auth: Option<&str>| {
        let mut r = http.get(format!("{}{path}", s.base));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    for path in ["/api/v1/flows", "/api/v1/status", "/", "/ws/live"] {
        let r = get(path, None).await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers().contains_key("www-authenticate"));
        let r = get(path, Some("Bearer wrong-token-wrong-token"))
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let ok = get("/api/v1/flows", Some(&format!("Bearer {TOKEN}")))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(path, None).await.unwrap().status(), 200, "{path}");
    }
    // The page: opened once with ?token=, it gets a cookie and a redirect to a clean URL.
    let r = get(&format!("/?token={TOKEN}"), None).await.unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let r = http
        .get(format!("{}/api/v1/status", s.base))
        .header("cookie", pair)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the cookie is as good as the header");
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let s = Server::start(
        ApiSettings {
            rate_per_sec: 1,
            ..settings()
        },
        true,
    )
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let (status, headers, _) = s.get("/healthz").await;
        statuses.push(status);
        if status == 429 {
            retry_after = headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
        }
    }
    assert_eq!(&statuses[..2], &[200, 200], "a burst of two: {statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    let wait: u64 = retry_after.expect("retry-after").parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    s.shutdown().await;
}

#[tokio::test]
async fn an_oversized_uri_or_body_is_refused() {
    let s = Server::start(settings(), true).await;
    let long = "x".repeat(3000);
    let (status, body) = s.json(&format!("/api/v1/flows?comm={long}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (414, Some("uri_too_long"))
    );
    let r = reqwest::Client::new()
        .get(format!("{}/healthz", s.base))
        .body(vec![b'a'; 64 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    s.shutdown().await;
}

/// A call result whose JSON is about 8 KiB (a long path), so that a client that never reads
/// fills its socket quickly.
fn big_call(n: usize) -> BusEvent {
    let mut r = OutboundResult::example(&format!("live-{n}"));
    r.request.path = format!("/{}", "p".repeat(8 << 10));
    BusEvent::Call(Arc::new(r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_live_client_is_dropped_while_a_fast_one_gets_every_message() {
    use netscope_agent::domain::EventBus as _;
    let s = Server::start(settings(), true).await;
    let url = format!("ws://{}/ws/live?type=call", s.addr);
    let (mut fast, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    // A session sees what is published after it subscribed, and says `hello` once it has: the
    // upgrade's response alone comes before that (CI once saw 5,999 of 6,000 when the first
    // call was published before the fast session's subscription). After its hello, the slow
    // client never reads again.
    for client in [&mut fast, &mut slow] {
        let hello = client.next().await.unwrap().unwrap();
        assert!(
            hello.to_text().unwrap().contains("\"type\":\"hello\""),
            "{hello}"
        );
    }
    const N: usize = 6_000;
    let reader = tokio::spawn(async move {
        let mut fast = fast;
        let (mut calls, mut lagged) = (0usize, 0usize);
        // One deadline for the whole read: pings alone would keep a per-message timeout
        // from ever firing if calls stopped coming, and the test would hang, not fail.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while calls < N {
            let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, fast.next()).await else {
                break;
            };
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("call") => calls += 1,
                    Some("lagged") => lagged += 1,
                    _ => {}
                }
            }
        }
        (calls, lagged)
    });
    // ~2,000 messages a second (16 MB/s): well within a reading client's pace.
    let started = Instant::now();
    for n in 0..N {
        s.bus.publish(big_call(n));
        if n % 20 == 19 {
            let due = started + Duration::from_micros((n as u64 + 1) * 500);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let (calls, lagged) = reader.await.unwrap();
    assert_eq!((calls, lagged), (N, 0), "the fast client got every message");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let dropped = s
            .metric("netscope_ws_clients_dropped_total")
            .await
            .unwrap_or(0.0);
        if dropped >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow client was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.shutdown().await;
}

#[tokio::test]
async fn one_live_client_past_the_cap_is_refused_and_the_rest_close_cleanly_at_shutdown() {
    let s = Server::start(
        ApiSettings {
            ws_max_clients: 2,
            ..settings()
        },
        true,
    )
    .await;
    let url = format!("ws://{}/ws/live", s.addr);
    let (mut a, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (_b, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 503);
            assert!(r.headers().contains_key("retry-after"));
        }
        other => panic!("a third client was let in: {other:?}"),
    }
    let hello = a.next().await.unwrap().unwrap();
    assert!(
        hello.to_text().unwrap().contains("\"type\":\"hello\""),
        "{hello}"
    );
    let Server { stop, task, .. } = s;
    stop.send(true).unwrap();
    let mut close = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), a.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Close(frame) = m {
            close = frame;
            break;
        }
    }
    assert_eq!(
        close.map(|f| u16::from(f.code)),
        Some(1001),
        "a close frame: going away"
    );
    drop(a);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
