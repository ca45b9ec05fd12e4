//! Several agents in one consumer group (a DaemonSet on several nodes, one broker): the
//! partitions split between them, a killed agent's partitions move to the others, and nothing
//! is lost — every message has a result, every result its audit event, each node's audit
//! numbering gap-free.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use netscope_agent::demo::upstream::Upstream;
use serde_json::json;
use support::{
    agent::{Setup, audit_verify, partitions_assigned, request, request_id, rgw_node_args},
    ceph::{ceph_test, stored_events},
    kafka::{self, kafka_test},
};

/// The audit trail of a node: RGW through a spool of its own, batches closed every 200 ms.
fn node_args<'a>(node: &'a str, bucket: &'a str, spool: &'a str) -> Vec<&'a str> {
    let mut args = rgw_node_args(node, bucket, spool);
    args.extend(["--workers", "4", "--audit-batch-age-ms", "200"]);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_split_the_partitions_and_a_killed_ones_move_to_the_other_losing_nothing() {
    let Some(brokers) = kafka_test("group-two-agents") else {
        return;
    };
    let Some((_rgw, s3)) = ceph_test("group-two-agents") else {
        return;
    };
    const N: usize = 400;
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", up.addr);
    let a = Setup::new("group-a", brokers, up.addr.port()).await;
    let b = a.peer("group-b");
    let (spool_a, spool_b) = (a.dir.join("spool"), b.dir.join("spool"));
    let args_a = node_args("node-a", &s3.bucket, spool_a.to_str().unwrap());
    let args_b = node_args("node-b", &s3.bucket, spool_b.to_str().unwrap());
    let http = netscope_agent::outbound::client::build(Duration::from_secs(2)).unwrap();
    let from = netscope_agent::clock::now_unix_ms() - 60_000;

    // Both join; the three partitions split between them before any message is sent.
    let mut agent_a = a.start(&args_a);
    a.wait_ready(&http, 200, "a alone holds all 3", |r| {
        partitions_assigned(r) == Some(3)
    })
    .await;
    let agent_b = b.start(&args_b);
    let held_b = b
        .wait_ready(&http, 200, "b holds a share", |r| {
            partitions_assigned(r).is_some_and(|n| n >= 1)
        })
        .await;
    let held_a = a
        .wait_ready(&http, 200, "a gave some up", |r| {
            partitions_assigned(r).is_some_and(|n| (1..3).contains(&n))
        })
        .await;
    assert_eq!(
        partitions_assigned(&held_a).unwrap() + partitions_assigned(&held_b).unwrap(),
        3,
        "a: {held_a}\nb: {held_b}"
    );

    // Keyed POSTs (a duplicate is then visible, and harmless, upstream), 250 ms each: the
    // kill lands mid-stream.
    let messages: Vec<_> = (0..N)
        .map(|i| {
            let id = format!("g{i}");
            (
                id.clone(),
                request(&base, "POST", "/delay/250", Some(&id), Some("x")),
            )
        })
        .collect();
    let placed = a.send(&messages).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.results_within(60, Duration::from_secs(1)).len() < 60 {
        assert!(Instant::now() < deadline, "no progress: {}", a.log());
    }
    agent_a.kill().unwrap(); // SIGKILL: no commit, no revocation, an open audit segment
    agent_a.wait().unwrap();
    let committed_at_kill = kafka::committed(&a.brokers, &a.group, &a.requests, 3);
    let before = a.results_within(N, Duration::from_secs(1)).len();
    assert!(before < N, "the kill came too late ({before} results)");

    // Once the group's session with a times out, b owns every partition and finishes the job
    // alone.
    b.wait_ready(&http, 200, "b took a's partitions", |r| {
        partitions_assigned(r) == Some(3)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let results = loop {
        let results = a.results_within(N + 400, Duration::from_secs(2));
        let distinct: BTreeSet<String> = results.iter().map(request_id).collect();
        if distinct.len() == N {
            break results;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {N} with a dead: {}",
            distinct.len(),
            b.log()
        );
    };

    // a comes back on its node (same spool), ships what it had spooled, and both stop cleanly.
    let agent_a = a.start(&args_a);
    a.wait_ready(&http, 200, "a back in the group", |r| {
        partitions_assigned(r).is_some_and(|n| n >= 1)
    })
    .await;
    a.stop(agent_a);
    b.stop(agent_b);
    let results = {
        // Whatever the second rebalance ran again is read too.
        let more = a.results_within(results.len() + 400, Duration::from_secs(3));
        if more.len() > results.len() {
            more
        } else {
            results
        }
    };

    // At-least-once, exactly as designed: a record ran twice only if its offset was not
    // committed when a died (a rebalance commits what is durable first, so it only repeats
    // records past that). A run shows as a result, an audit event, or both: the kill may land
    // after one sink took its outcome and before the other did.
    let events = stored_events(&s3).await;
    let mut runs: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in &results {
        runs.entry(request_id(r)).or_default().0 += 1;
    }
    for e in &events {
        runs.entry(e.context.request_id.clone()).or_default().1 += 1;
    }
    assert_eq!(runs.len(), N, "only the messages sent ran");
    for (id, (results, audits)) in &runs {
        assert!(
            *results >= 1 && *audits >= 1,
            "{id}: {results} results, {audits} audit events"
        );
        let (partition, offset) = placed[id];
        let committed = committed_at_kill[partition as usize].unwrap_or(0);
        assert!(
            (*results, *audits) == (1, 1) || offset >= committed,
            "{id} ran again ({results} results, {audits} audit events), but offset {offset} of partition {partition} was committed (up to {committed}) at the kill"
        );
    }

    // Each node numbered from 1 without a gap, and both nodes did part of the work.
    for node in ["node-a", "node-b"] {
        let report = audit_verify(&s3, node, from);
        let n = &report["nodes"][node];
        assert_eq!(n["gaps"], json!([]), "{report}");
        assert_eq!(n["duplicates"], json!([]), "{report}");
        assert_eq!(n["first_sequence"], 1, "{report}");
        let by_node = events.iter().filter(|e| e.node == node).count();
        assert!(by_node > 0, "{node} did none of the work");
        assert_eq!(n["events"], json!(by_node), "{report}");
    }
}

/// A DaemonSet with more nodes than the requests topic has partitions: every agent is Ready
/// (a member standing by is able to work), and the group still processes every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_agents_on_three_partitions_are_all_ready_and_every_message_gets_its_result() {
    let Some(brokers) = kafka_test("group-four-agents") else {
        return;
    };
    const N: usize = 60;
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", up.addr);
    let first = Setup::new("group4-0", brokers, up.addr.port()).await;
    let nodes: Vec<Setup> = std::iter::once(first.clone())
        .chain((1..4).map(|i| first.peer(&format!("group4-{i}"))))
        .collect();
    let agents: Vec<_> = nodes.iter().map(|s| s.start(&["--no-probe"])).collect();
    let http = netscope_agent::outbound::client::build(Duration::from_secs(2)).unwrap();
    let mut held = Vec::new();
    for (i, s) in nodes.iter().enumerate() {
        let body = s
            .wait_ready(&http, 200, &format!("agent {i} ready"), |r| {
                partitions_assigned(r).is_some()
            })
            .await;
        held.push(partitions_assigned(&body).unwrap());
    }
    // Rebalances may still move partitions: wait until the group has settled on all three.
    let deadline = Instant::now() + Duration::from_secs(60);
    while held.iter().sum::<usize>() != 3 {
        assert!(Instant::now() < deadline, "partitions held: {held:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        held.clear();
        for s in &nodes {
            let (status, body) = s.readyz(&http).await;
            assert_eq!(status, 200, "every member stays ready: {body}");
            held.push(partitions_assigned(&body).unwrap_or(0));
        }
    }
    assert!(held.contains(&0), "one member stands by: {held:?}");

    let messages: Vec<_> = (0..N)
        .map(|i| {
            let id = format!("q{i}");
            (id.clone(), request(&base, "GET", "/orders/1", None, None))
        })
        .collect();
    first.send(&messages).await;
    let results = first.results(N);
    let distinct: BTreeSet<String> = results.iter().map(request_id).collect();
    assert_eq!(distinct.len(), N, "{}", first.log());
    for (s, agent) in nodes.iter().zip(agents) {
        s.stop(agent);
    }
}
