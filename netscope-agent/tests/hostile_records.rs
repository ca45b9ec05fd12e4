//! Records no producer should send, read by the real `run` binary from a real broker: none of
//! them may take the agent down, and each is dead-lettered with its reason or processed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::BTreeMap, time::Duration};

use netscope_agent::{
    demo::upstream::Upstream,
    ingest::{
        kafka::{DLQ_DROPPED_HEADERS, DLQ_REASON, DLQ_TRUNCATED},
        record::RecordHeader,
    },
};
use rdkafka::Message as _;
use support::{
    agent::{Setup, request, request_id},
    kafka::{self, kafka_test, unique},
};

fn header(name: &[u8], value: &[u8]) -> RecordHeader {
    RecordHeader {
        name: name.to_vec(),
        value: Some(value.to_vec()),
    }
}

/// One hostile record: its key, payload and headers, and the dead-letter reason it must get
/// (`None`: it is a valid call and must get its result).
struct Hostile {
    key: Vec<u8>,
    payload: Option<Vec<u8>>,
    headers: Vec<RecordHeader>,
    dead_letter: Option<&'static str>,
}

fn hostile_records(valid: &dyn Fn(&str) -> Vec<u8>) -> Vec<(&'static str, Hostile)> {
    let id = |id: &str| header(b"x-request-id", id.as_bytes());
    vec![
        (
            "a header name that is not UTF-8",
            Hostile {
                key: b"bad-name".to_vec(),
                payload: Some(valid("bad-name")),
                headers: vec![id("bad-name"), header(b"x-\xff\xfe-trace", b"1")],
                dead_letter: Some("invalid_record_header"),
            },
        ),
        (
            "header values that are not UTF-8",
            Hostile {
                key: b"bad-value".to_vec(),
                payload: Some(valid("bad-value")),
                headers: vec![
                    id("bad-value"),
                    header(b"x-custom", b"\xff\xfe\x00"),
                    header(b"traceparent", b"00-\xff\xfe"),
                ],
                dead_letter: None,
            },
        ),
        (
            "a key that is not UTF-8",
            Hostile {
                key: b"\xff\xfe-bad-key".to_vec(),
                payload: Some(valid("bad-key")),
                headers: vec![id("bad-key")],
                dead_letter: None,
            },
        ),
        (
            "a null value",
            Hostile {
                key: b"bad-null".to_vec(),
                payload: None,
                headers: vec![id("bad-null")],
                dead_letter: Some("empty_message"),
            },
        ),
        (
            "an empty value",
            Hostile {
                key: b"bad-empty".to_vec(),
                payload: Some(Vec::new()),
                headers: vec![id("bad-empty")],
                dead_letter: Some("empty_message"),
            },
        ),
        (
            "1,000 headers",
            Hostile {
                key: b"bad-many".to_vec(),
                payload: Some(valid("bad-many")),
                headers: (0..1000)
                    .map(|i| header(format!("h{i}").as_bytes(), b"v"))
                    .collect(),
                dead_letter: Some("record_headers_too_large"),
            },
        ),
        (
            "a header of 1 MiB",
            Hostile {
                key: b"bad-big".to_vec(),
                payload: Some(valid("bad-big")),
                headers: vec![id("bad-big"), header(b"x-big", &vec![b'a'; 1 << 20])],
                dead_letter: Some("record_headers_too_large"),
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hostile_record_takes_the_agent_down_and_the_good_record_after_each_gets_its_result() {
    let Some(brokers) = kafka_test("hostile-records") else {
        return;
    };
    let up = Upstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", up.addr);
    let mut s = Setup::new("hostile", brokers, up.addr.port()).await;
    // One partition, so that each good record comes after its hostile one; room for a 1 MiB
    // header. The dead-letter topic has Kafka's default limit (1 MiB): the big one does not fit.
    (s.requests, s.dlq) = (unique("req-hostile"), unique("dlq-hostile"));
    kafka::create_topics_with(
        &s.brokers,
        &[(&s.requests, 1)],
        &[("max.message.bytes", "4194304")],
    )
    .await;
    kafka::create_topics_with(
        &s.brokers,
        &[(&s.dlq, 1)],
        &[("max.message.bytes", "1048576")],
    )
    .await;
    let valid = |id: &str| request(&base, "GET", &format!("/orders/{id}"), None, None);
    let cases = hostile_records(&valid);
    let mut agent = s.start(&["--no-probe"]);
    for (n, (_, h)) in cases.iter().enumerate() {
        kafka::produce_raw(
            &s.brokers,
            &s.requests,
            &h.key,
            h.payload.as_deref(),
            &h.headers,
        );
        let good = format!("good-{n}");
        let id = [header(b"x-request-id", good.as_bytes())];
        kafka::produce_raw(
            &s.brokers,
            &s.requests,
            good.as_bytes(),
            Some(&valid(&good)),
            &id,
        );
    }

    let processed = cases
        .iter()
        .filter(|(_, h)| h.dead_letter.is_none())
        .count();
    let results = s.results(cases.len() + processed);
    let by_id: BTreeMap<String, _> = results.iter().map(|r| (request_id(r), r)).collect();
    for (n, (what, _)) in cases.iter().enumerate() {
        let r = by_id
            .get(&format!("good-{n}"))
            .unwrap_or_else(|| panic!("no result for the record after {what}: {}", s.log()));
        assert_eq!(r["status"], 200, "{r}");
    }
    for (what, h) in cases.iter().filter(|(_, h)| h.dead_letter.is_none()) {
        let id = String::from_utf8_lossy(&h.headers[0].value.clone().unwrap()).into_owned();
        let r = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("{what}: no result"));
        assert_eq!(r["status"], 200, "{what}: {r}");
    }
    assert_eq!(results.len(), cases.len() + processed, "one result each");

    let dead_letters = cases
        .iter()
        .filter(|(_, h)| h.dead_letter.is_some())
        .count();
    let dead = kafka::read_all(&s.brokers, &s.dlq, 1, dead_letters, Duration::from_secs(30));
    assert_eq!(dead.len(), dead_letters, "one dead letter each");
    for (what, h) in cases.iter().filter(|(_, h)| h.dead_letter.is_some()) {
        let m = dead
            .iter()
            .find(|m| m.key() == Some(&h.key[..]))
            .unwrap_or_else(|| panic!("{what}: no dead letter"));
        assert_eq!(
            kafka::header(m, DLQ_REASON),
            h.dead_letter.map(str::as_bytes),
            "{what}"
        );
    }
    let name = dead
        .iter()
        .find(|m| m.key() == Some(&b"bad-name"[..]))
        .unwrap();
    assert_eq!(
        kafka::header(name, "x-\\xff\\xfe-trace"),
        Some(&b"1"[..]),
        "a name that is not UTF-8 is kept, its bytes escaped"
    );
    let big = dead
        .iter()
        .find(|m| m.key() == Some(&b"bad-big"[..]))
        .unwrap();
    assert!(
        kafka::header(big, DLQ_TRUNCATED).is_some() && kafka::header(big, "x-big").is_none(),
        "the 1 MiB header does not fit the dead-letter topic: it is left out, and said so"
    );
    assert_eq!(kafka::header(big, DLQ_DROPPED_HEADERS), Some(&b"1"[..]));

    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent is still running: {}",
        s.log()
    );
    s.stop(agent);
}
