//! `/healthz` means "not wedged": with records pending and none finished for `--stall-secs`,
//! and no outage that readiness reports to explain it, the agent answers 503 for the kubelet
//! to restart it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::{
    agent::Setup,
    kafka::{kafka_test, unique},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_that_refuses_every_write_wedges_the_pipeline_and_healthz_says_so() {
    let Some(brokers) = kafka_test("liveness-wedged") else {
        return;
    };
    let mut s = Setup::new("wedged", brokers, 9).await;
    // A dead-letter topic that does not exist (the broker creates none on its own): every
    // dead letter is refused, retried, and the record never finishes.
    s.dlq = unique("missing-dlq");
    let agent = s.start(&["--no-probe", "--stall-secs", "10"]);
    let http = netscope_agent::outbound::client::build(Duration::from_secs(2)).unwrap();
    s.wait_ready(&http, 200, "ready", |_| true).await;
    let healthz = || s.get(&http, "/healthz");
    assert_eq!(healthz().await.0, 200, "alive before anything is pending");
    s.send(&[("poison-dlq".to_owned(), b"{not json".to_vec())])
        .await;
    let started = Instant::now();
    let (status, body) = loop {
        let (status, body) = healthz().await;
        if status != 200 {
            break (status, body);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never reported wedged: {body}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("wedged") && body.contains("pipeline_progress"),
        "{body}"
    );
    let (ready, _) = s.readyz(&http).await;
    assert_eq!(ready, 503, "a wedged agent is not ready either");
    s.stop(agent);
}
