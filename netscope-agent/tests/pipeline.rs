//! `netscope-agent run` end to end: the real binary, a real Kafka broker, a real upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The RGW test's serial lock is held across awaits: the test drives a runtime of its own.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use netscope_agent::{demo::upstream::Upstream, domain::audit::AuditEvent};
use serde_json::{Value, json};
use support::{
    agent::{Setup, audit_verify, request, request_id, rgw_node_args},
    ceph::{ceph_test, stored_events},
    kafka::{self, kafka_test},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_result_per_consumed_message() {
    let Some(brokers) = kafka_test("pipeline-one") else {
        return;
    };
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", up.addr);
    let s = Setup::new("one", brokers, up.addr.port()).await;
    let mut messages = Vec::new();
    for i in 0..40 {
        let (method, path, key) = match i % 5 {
            0 => ("GET", format!("/orders/{i}"), None),
            1 => ("GET", format!("/status/503?i={i}"), None),
            2 => ("POST", format!("/status/503?i={i}"), None),
            3 => ("POST", format!("/flaky/1/503?i={i}"), Some(format!("k{i}"))),
            _ => ("GET", format!("/bytes/{}", 1000 * i), None),
        };
        messages.push((
            format!("r{i}"),
            request(&base, method, &path, key.as_deref(), None),
        ));
    }
    for i in 0..5 {
        messages.push((format!("bad{i}"), b"{not json".to_vec()));
    }
    let agent = s.start(&["--no-probe"]);
    s.send(&messages).await;
    let results = s.results(40);
    assert_eq!(results.len(), 40, "{}", s.log());
    let ids: BTreeSet<String> = results.iter().map(request_id).collect();
    assert_eq!(ids.len(), 40, "one result per message, no duplicates");
    let mut attempts_total = 0;
    for r in &results {
        let id = request_id(r);
        let n: usize = id[1..].parse().unwrap();
        let attempts = r["attempts"].as_array().unwrap().len();
        attempts_total += attempts;
        match n % 5 {
            1 => assert_eq!(
                (attempts, r["retry_stop"].as_str()),
                (3, Some("max_attempts")),
                "{r}"
            ),
            2 => assert_eq!(
                (attempts, r["retry_stop"].as_str()),
                (1, Some("not_idempotent")),
                "{r}"
            ),
            3 => assert_eq!((attempts, r["status"].as_u64()), (2, Some(200)), "{r}"),
            _ => assert_eq!(r["status"].as_u64(), Some(200), "{r}"),
        }
        assert_eq!(
            r["network"]["matched"], false,
            "--no-probe: nothing invented"
        );
    }
    assert_eq!(
        up.served().len(),
        attempts_total,
        "every attempt reached the upstream once"
    );
    let dead = kafka::read_all(&s.brokers, &s.dlq, 1, 5, Duration::from_secs(30));
    assert_eq!(dead.len(), 5);
    // /metrics says what the results say.
    let api = s.api_addr();
    let http = netscope_agent::outbound::client::build(Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = http
            .get(format!("http://{api}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if netscope_agent::metrics::sample_sum(&text, "netscope_calls_finished_total", &[]) == 40.0
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "calls_finished never reached 40:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let count = |pred: &dyn Fn(&Value) -> bool| results.iter().filter(|r| pred(r)).count() as f64;
    let m = |name: &str, labels: &[(&str, &str)]| {
        netscope_agent::metrics::sample_sum(&text, name, labels)
    };
    assert_eq!(m("netscope_calls_total", &[]), 40.0, "{text}");
    assert_eq!(
        m("netscope_calls_total", &[("status_class", "5xx")]),
        count(&|r| r["status"] == 503)
    );
    assert_eq!(
        m("netscope_calls_total", &[("status_class", "2xx")]),
        count(&|r| r["status"] == 200)
    );
    assert_eq!(
        m("netscope_call_attempts_total", &[]),
        attempts_total as f64
    );
    assert_eq!(
        m("netscope_call_retries_total", &[]),
        (attempts_total - 40) as f64
    );
    assert_eq!(
        m("netscope_kafka_records_total", &[("result", "consumed")]),
        45.0
    );
    assert_eq!(
        m(
            "netscope_kafka_dead_letters_total",
            &[("reason", "invalid_json")]
        ),
        5.0
    );
    assert_eq!(
        m(
            "netscope_call_retry_stops_total",
            &[("kind", "not_idempotent")]
        ),
        count(&|r| r["retry_stop"] == "not_idempotent")
    );
    s.stop(agent);
    let audit = std::fs::read_to_string(s.dir.join("audit.ndjson")).unwrap();
    let events: Vec<AuditEvent> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 40, "one audit event per call");
    let mut seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "gap-free numbering");
    let audited: BTreeSet<String> = events
        .iter()
        .map(|e| e.context.request_id.clone())
        .collect();
    assert_eq!(audited, ids, "the same calls as the results topic");
    assert!(
        events
            .iter()
            .all(|e| e.event_version == 1 && e.request.path.starts_with('/'))
    );
    assert_eq!(
        kafka::committed(&s.brokers, &s.group, &s.requests, 3),
        kafka::end_offsets(&s.brokers, &s.requests, 3)
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>(),
        "everything committed after a clean stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_stream_loses_nothing_and_duplicates_carry_their_key() {
    let Some(brokers) = kafka_test("pipeline-kill") else {
        return;
    };
    const N: usize = 150;
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", up.addr);
    let s = Setup::new("kill", brokers, up.addr.port()).await;
    let messages: Vec<_> = (0..N)
        .map(|i| {
            let id = format!("k{i}");
            (
                id.clone(),
                request(&base, "POST", "/delay/60", Some(&id), Some("x")),
            )
        })
        .collect();
    let placed = s.send(&messages).await;
    let mut committed_at_kill = Vec::new();
    let results = s.killed_midway(N, &["--no-probe", "--workers", "4"], || {
        committed_at_kill = kafka::committed(&s.brokers, &s.group, &s.requests, 3);
    });
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for r in &results {
        assert_eq!(
            r["ctx"]["idempotency_key"].as_str(),
            Some(request_id(r).as_str())
        );
        *per_key.entry(request_id(r)).or_default() += 1;
    }
    assert_eq!(per_key.len(), N, "every message has a result");
    // At-least-once, exactly as designed: a record runs twice only if its offset was not
    // committed when the agent died (and each duplicate carries its key, checked above).
    for (id, count) in &per_key {
        let (partition, offset) = placed[id];
        let committed = committed_at_kill[partition as usize].unwrap_or(0);
        assert!(
            *count == 1 || offset >= committed,
            "{id} ran {count} times, but offset {offset} of partition {partition} was committed (up to {committed}) at the kill"
        );
    }
    // The upstream saw each key at least once; a repeat is visible by its Idempotency-Key.
    let served_keys: BTreeSet<String> = up
        .served()
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_owned())
        .collect();
    assert_eq!(served_keys.len(), N);
}

/// The audit trail in RGW across a SIGKILL that lands while a batch is open in the spool:
/// after the restart every call has its audit event, and no sequence is stored twice or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_batch_loses_no_audit_event_and_stores_none_twice() {
    let Some(brokers) = kafka_test("pipeline-audit-kill") else {
        return;
    };
    let Some((_rgw, s3)) = ceph_test("pipeline-audit-kill") else {
        return;
    };
    const N: usize = 150;
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", up.addr);
    let s = Setup::new("akill", brokers, up.addr.port()).await;
    let messages: Vec<_> = (0..N)
        .map(|i| {
            let id = format!("a{i}");
            (id.clone(), request(&base, "GET", "/delay/20", None, None))
        })
        .collect();
    s.send(&messages).await;
    let from = netscope_agent::clock::now_unix_ms() - 60_000;
    let spool = s.dir.join("spool");
    let spool_arg = spool.to_str().unwrap();
    let mut args = rgw_node_args("akill", &s3.bucket, spool_arg);
    args.extend([
        "--workers",
        "4",
        // No batch closes before the kill (more events than the N calls, a 10-minute age):
        // the kill always finds the first run's events in an open segment, whatever the
        // timing. After the restart that segment is recovered, sealed and shipped.
        "--audit-batch-events",
        "1000",
        "--audit-batch-age-ms",
        "600000",
    ]);
    let results = s.killed_midway(N, &args, || {
        let open: Vec<u64> = std::fs::read_dir(spool.join("akill"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "open"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .collect();
        assert!(
            open.iter().any(|&len| len > 8),
            "the kill found no batch open: {open:?}"
        );
    });

    let report = audit_verify(&s3, "akill", from);
    let node = &report["nodes"]["akill"];
    assert_eq!(node["gaps"], json!([]), "{report}");
    assert_eq!(node["duplicates"], json!([]), "{report}");
    assert_eq!(node["first_sequence"], 1);
    assert!(node["events"].as_u64().unwrap() >= N as u64);

    // Every call has its event in RGW, and the spool was drained at the clean stop.
    let audited: BTreeSet<String> = stored_events(&s3)
        .await
        .into_iter()
        .map(|e| e.context.request_id)
        .collect();
    let called: BTreeSet<String> = results.iter().map(request_id).collect();
    assert_eq!(audited, called);
    let left: Vec<String> = std::fs::read_dir(spool.join("akill"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, vec!["shipped".to_owned()]);
}

/// Root: the agent runs its probe. A plain test holding the kernel tests' lock and driving a
/// runtime of its own (the lock must not be held across an await).
#[test]
fn per_request_bytes_equal_what_the_upstream_received_and_sent() {
    let Some(brokers) = kafka_test("pipeline-bytes") else {
        return;
    };
    let Some(_kernel) = support::kernel_test("pipeline-bytes") else {
        return;
    };
    support::runtime().block_on(bytes_equal(brokers));
}

async fn bytes_equal(brokers: String) {
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", up.addr);
    // An allowed port where nothing listens: its failed connect's errno comes from the kernel.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let s = Setup::with_ports("bytes", brokers, &[up.addr.port(), closed_port]).await;
    let mut messages = Vec::new();
    for i in 0..12 {
        let body = "b".repeat(i * 3000);
        let (method, path, body) = if i % 2 == 0 {
            ("GET", format!("/bytes/{}", i * 7000 + 1), None)
        } else {
            ("PUT", format!("/orders/{i}"), Some(body.as_str()))
        };
        messages.push((format!("n{i}"), request(&base, method, &path, None, body)));
    }
    let refused_url = format!("http://127.0.0.1:{closed_port}");
    messages.push((
        "refused".to_owned(),
        request(&refused_url, "GET", "/", None, None),
    ));
    // One call at a time, so that keep-alive reuses one connection across calls.
    let dports = format!("{},{closed_port}", up.addr.port());
    let agent = s.start(&["--workers", "1", "--dport", &dports]);
    s.send(&messages).await;
    let mut results = s.results(13);
    s.stop(agent);
    assert_eq!(results.len(), 13, "{}", s.log());
    let refused = results
        .iter()
        .position(|r| request_id(r) == "refused")
        .unwrap();
    let refused = results.remove(refused);
    assert_eq!(refused["outcome"], "transport_error", "{refused}");
    assert_eq!(refused["network"]["matched"], true, "{refused}");
    assert_eq!(
        refused["network"]["connect_errno"],
        libc::ECONNREFUSED,
        "{refused}"
    );
    let served = up.served();
    let mut reused = 0;
    for r in &results {
        let id = request_id(r);
        let seen = served
            .iter()
            .find(|x| x.header("x-request-id") == Some(&id))
            .unwrap();
        let net = &r["network"];
        assert_eq!(net["matched"], true, "{r}");
        assert_eq!(
            net["bytes_sent"].as_u64(),
            Some(seen.received_bytes),
            "{id}: {r}"
        );
        assert_eq!(
            net["bytes_received"].as_u64(),
            Some(seen.sent_bytes),
            "{id}: {r}"
        );
        assert_eq!(net["remote"].as_str(), Some(up.addr.to_string().as_str()));
        assert_eq!(net["local"].as_str(), Some(seen.peer.to_string().as_str()));
        if net["new_connection"] == false {
            reused += 1;
        }
    }
    assert!(reused >= 1, "keep-alive reuse was exercised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_while_the_broker_is_unreachable_and_200_when_it_is_back() {
    let Some(brokers) = kafka_test("pipeline-ready") else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: cutting the broker off needs root (nftables)");
        return;
    }
    const NOBODY: u32 = 65_534;
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let s = Setup::new("ready", brokers.clone(), up.addr.port()).await;
    let agent = s.start_as(&["--no-probe"], Some(NOBODY));
    let http = netscope_agent::outbound::client::build(Duration::from_secs(2)).unwrap();
    let body = s
        .wait_ready(&http, 200, "ready once partitions are assigned", |_| true)
        .await;
    assert!(
        body["checks"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("3 partitions assigned"),
        "{body}"
    );
    let port: u16 = brokers.rsplit(':').next().unwrap().parse().unwrap();
    let cut = kafka::BrokerCut::new(NOBODY, port);
    let body = s
        .wait_ready(
            &http,
            503,
            "not ready while the broker is unreachable",
            |_| true,
        )
        .await;
    assert_eq!(body["checks"][0]["name"], "kafka", "{body}");
    assert!(
        body["checks"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("0 of"),
        "{body}"
    );
    drop(cut);
    s.wait_ready(&http, 200, "ready again once the broker is back", |_| true)
        .await;
    // Still working: one message, one result.
    let base = format!("http://{}", up.addr);
    s.send(&[(
        "after".to_owned(),
        request(&base, "GET", "/orders/1", None, None),
    )])
    .await;
    assert_eq!(s.results(1).len(), 1, "{}", s.log());
    s.stop(agent);
}
