//! A record that kills the agent (a fault point compiled into the test build aborts the process
//! when that record's call starts, as an OOM kill or a crash in a dependency would): it is not
//! run forever, and a call that may have reached its target is not repeated blindly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::BTreeSet, os::unix::process::ExitStatusExt as _, time::Duration};

use netscope_agent::{demo::upstream::Upstream, ingest::kafka::DLQ_REASON};
use rdkafka::Message as _;
use support::{
    agent::{NO_CIRCUIT, Setup, request, request_id},
    kafka::{self, kafka_test},
};

/// Kills the agent when the call of request `id` starts.
fn abort_on(id: &str) -> String {
    format!("abort-executing=return({id})")
}

/// Runs the agent until the fault point ends it; asserts it died of it.
fn dies(s: &Setup, args: &[&str], fault: &str) {
    let mut agent = s.start_with_env(args, &[("FAILPOINTS", fault)]);
    let status = s.wait_exit(&mut agent, Duration::from_secs(60));
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "{status}: {}",
        s.log()
    );
}

fn dead_letter_reasons(s: &Setup, n: usize) -> Vec<(String, String)> {
    kafka::read_all(&s.brokers, &s.dlq, 1, n, Duration::from_secs(30))
        .iter()
        .map(|m| {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let reason =
                kafka::header(m, DLQ_REASON).map(|r| String::from_utf8_lossy(r).into_owned());
            (key, reason.unwrap_or_default())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_in_flight_at_two_deaths_in_a_row_is_dead_lettered_as_poison_not_run_a_third_time()
{
    let Some(brokers) = kafka_test("poison") else {
        return;
    };
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", up.addr);
    let s = Setup::new("poison", brokers, up.addr.port()).await;
    let mut messages: Vec<_> = (0..10)
        .map(|i| {
            (
                format!("ok-{i}"),
                request(&base, "GET", "/orders/1", None, None),
            )
        })
        .collect();
    messages.push((
        "boom".to_owned(),
        request(&base, "GET", "/orders/2", None, None),
    ));
    s.send(&messages).await;
    let args = ["--no-probe", "--node", "poison"];
    dies(&s, &args, &abort_on("boom"));
    dies(&s, &args, &abort_on("boom"));
    // Still armed: a third run of `boom` would kill the agent again.
    let agent = s.start_with_env(&args, &[("FAILPOINTS", &abort_on("boom"))]);
    let dead = dead_letter_reasons(&s, 1);
    assert_eq!(
        dead,
        vec![("boom".to_owned(), "poison".to_owned())],
        "{}",
        s.log()
    );
    let done: BTreeSet<String> = s
        .results_within(40, Duration::from_secs(10))
        .iter()
        .map(request_id)
        .collect();
    let expected: BTreeSet<String> = (0..10).map(|i| format!("ok-{i}")).collect();
    assert_eq!(done, expected, "every other record has its result");
    s.stop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_a_key_executing_at_a_death_is_not_run_again_unless_its_target_allows_it() {
    let Some(brokers) = kafka_test("maybe-executed") else {
        return;
    };
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", up.addr);
    let args = ["--no-probe", "--node", "maybe"];
    for (replay_unsafe, tag) in [(false, "maybe-no"), (true, "maybe-yes")] {
        let policy = format!("{NO_CIRCUIT}replay_unsafe = {replay_unsafe}\n");
        let s = Setup::with_policy(tag, brokers.clone(), &[up.addr.port()], &policy).await;
        let id = format!("{tag}-pay");
        s.send(&[(
            id.clone(),
            request(&base, "POST", &format!("/payments/{tag}"), None, Some("x")),
        )])
        .await;
        dies(&s, &args, &abort_on(&id));
        let agent = s.start(&args);
        if replay_unsafe {
            let results = s.results(1);
            assert_eq!(
                request_id(&results[0]),
                id,
                "run again: its target allows it"
            );
            assert_eq!(results[0]["status"], 200);
        } else {
            let dead = dead_letter_reasons(&s, 1);
            assert_eq!(
                dead,
                vec![(id.clone(), "maybe_executed".to_owned())],
                "{}",
                s.log()
            );
            assert!(
                s.results_within(1, Duration::from_secs(3)).is_empty(),
                "not executed again"
            );
        }
        s.stop(agent);
    }
}
