//! The page in a real Chromium, against a real `run` agent: calls appear as rows as they
//! happen, a target's card turns open when its circuit opens, and the connection indicator
//! reconnects after the agent restarts. A screenshot is saved under `target/screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{process::Child, time::Duration};

use netscope_agent::demo::upstream::Upstream;
use support::{
    agent::{Setup, request},
    browser::{browser_test, screenshot_dir},
    kafka::kafka_test,
    kernel_test, wait_api_addr,
};

/// A circuit that opens after 5 failures in 10 and stays open for a minute; no retries.
const TRIPPABLE: &str = "max_attempts = 1\ncircuit_window = 10\ncircuit_min_calls = 5\n\
                         failure_rate = 0.5\nopen_wait_ms = 60000\n";

const WAIT: Duration = Duration::from_secs(30);

/// The agent's HTTP address, failing at once if the agent exits first.
fn wait_listening(s: &Setup, agent: &mut Child) -> std::net::SocketAddr {
    wait_api_addr(&s.dir.join("agent.log"), WAIT, || {
        agent.try_wait().unwrap().is_none()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_calls_live_turns_a_card_open_and_reconnects_after_a_restart() {
    let Some(brokers) = kafka_test("page") else {
        return;
    };
    // With the probe (root), the rows carry the kernel's connect latency and bytes.
    let Some(_kernel) = kernel_test("page") else {
        return;
    };
    let Some(mut browser) = browser_test("page").await else {
        return;
    };
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", up.addr);
    let s = Setup::with_policy("page", brokers, &[up.addr.port()], TRIPPABLE).await;
    // A fixed port, so that the restarted agent serves the page where it was.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--listen", listen.as_str()];
    let mut agent = s.start(&args);
    let api = wait_listening(&s, &mut agent);
    assert_eq!(api.port(), port);

    browser.navigate(&format!("http://{api}/")).await;
    browser
        .wait_for(
            "live indicator",
            "document.querySelector('#conn').className === 'up'",
            WAIT,
        )
        .await;

    let good: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("page-ok-{i}"),
                request(&base, "GET", &format!("/orders/{i}"), None, None),
            )
        })
        .collect();
    s.send(&good).await;
    let ids: Vec<String> = good.iter().map(|(id, _)| id.clone()).collect();
    let all_rows = format!(
        "(() => {{ const seen = new Set([...document.querySelectorAll('#calls tr')].map(r => r.dataset.requestId)); \
         return {}.every(id => seen.has(id)); }})()",
        serde_json::to_string(&ids).unwrap()
    );
    browser
        .wait_for("every request id as a row", &all_rows, WAIT)
        .await;

    let failing: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            (
                format!("page-fail-{i}"),
                request(&base, "GET", &format!("/status/503?i={i}"), None, None),
            )
        })
        .collect();
    s.send(&failing).await;
    browser
        .wait_for(
            "the target's card turns open",
            "document.querySelector('.card[data-target=\"up\"]')?.dataset.circuit === 'open'",
            WAIT,
        )
        .await;
    browser
        .wait_for(
            "a chart line (three seconds of stats)",
            "series.length >= 3",
            WAIT,
        )
        .await;
    let shot = screenshot_dir().join("page-run.png");
    browser.screenshot(&shot).await;
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real screenshot"
    );

    // The server side goes away: the indicator says so, then reconnects to the new agent.
    agent.kill().unwrap();
    agent.wait().unwrap();
    browser
        .wait_for(
            "indicator down",
            "document.querySelector('#conn').className === 'down'",
            WAIT,
        )
        .await;
    let mut agent = s.start(&args);
    wait_listening(&s, &mut agent);
    browser
        .wait_for(
            "indicator reconnected",
            "document.querySelector('#conn').className === 'up'",
            WAIT,
        )
        .await;
    s.stop(agent);
}
