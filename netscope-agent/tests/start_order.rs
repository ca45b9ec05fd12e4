//! A node whose agent starts while the broker is unreachable (root: the agent runs its probe,
//! and nftables cuts the broker off for its sockets alone): it comes up anyway — alive, serving,
//! probing — says in `/readyz` that Kafka is what it waits for, and sets up its topics and works
//! once the broker answers. No crash loop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use netscope_agent::demo::upstream::Upstream;
use support::{
    agent::{Setup, request},
    kafka::{self, kafka_test, unique},
};

/// The group id the agent runs in: the cut matches its sockets by it.
const AGENT_GID: u32 = 61_237;

/// A plain test holding the kernel tests' lock, driving a runtime of its own.
#[test]
fn an_agent_started_without_its_broker_is_alive_probing_not_ready_and_works_once_it_is_back() {
    let Some(brokers) = kafka_test("start-without-broker") else {
        return;
    };
    let Some(_kernel) = support::kernel_test("start-without-broker") else {
        return;
    };
    support::runtime().block_on(start_without_broker(brokers));
}

async fn start_without_broker(brokers: String) {
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut s = Setup::new("startorder", brokers, up.addr.port()).await;
    // Topics the agent must create itself, once it reaches the broker.
    (s.requests, s.results, s.dlq) = (unique("req-so"), unique("res-so"), unique("dlq-so"));
    let port: u16 = s.brokers.rsplit(':').next().unwrap().parse().unwrap();
    let cut = kafka::BrokerCut::of_group(AGENT_GID, port);
    let agent = s.start_in_group(&["--create-topics", "true"], AGENT_GID);
    let http = netscope_agent::outbound::client::build(Duration::from_secs(2)).unwrap();
    let body = s
        .wait_ready(&http, 503, "up but not ready without its broker", |b| {
            b["checks"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "kafka" && c["ok"] == false))
        })
        .await;
    let kafka = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kafka")
        .unwrap();
    assert!(
        kafka["detail"]
            .as_str()
            .unwrap()
            .contains("topics not set up yet"),
        "{body}"
    );
    let (alive, _) = s.get(&http, "/healthz").await;
    assert_eq!(alive, 200, "alive while waiting for the broker");

    // The probe runs meanwhile: a connection made now shows up among the flows.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = std::net::TcpStream::connect(up.addr).unwrap();
        let (_, text) = s
            .get(&http, &format!("/api/v1/flows?port={}", up.addr.port()))
            .await;
        let page: serde_json::Value = serde_json::from_str(&text).unwrap();
        if page["flows"].as_array().is_some_and(|f| !f.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no flow seen: {page}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        agent_running(&s, &http).await,
        "still the same process, no crash: {}",
        s.log()
    );

    // The broker answers: topics set up, group joined, work done.
    drop(cut);
    s.wait_ready(&http, 200, "ready once the broker answers", |_| true)
        .await;
    let base = format!("http://{}", up.addr);
    let messages: Vec<_> = (0..5)
        .map(|i| {
            (
                format!("so{i}"),
                request(&base, "GET", "/orders/1", None, None),
            )
        })
        .collect();
    s.send(&messages).await;
    // The results topic the agent created has three partitions.
    let results = kafka::read_all(&s.brokers, &s.results, 3, 5, Duration::from_secs(60));
    assert_eq!(results.len(), 5, "{}", s.log());
    s.stop(agent);
}

/// The agent started by this test still answers on the address it logged at start.
async fn agent_running(s: &Setup, http: &reqwest::Client) -> bool {
    s.get(http, "/healthz").await.0 == 200
}
