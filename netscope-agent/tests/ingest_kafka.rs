//! Ingest against a real Kafka broker: dead-lettering, backpressure, at-least-once commits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use netscope_agent::{
    domain::{
        Job,
        targets::{Target, Targets},
    },
    ingest::{
        inflight::InFlightJournal,
        kafka::{
            DLQ_REASON, DLQ_SOURCE, DLQ_TRUNCATED, DLQ_TRUNCATED_BYTES, KafkaIngest, KafkaSettings,
        },
        record::RecordHeader,
        samples,
        schema::{Limits, Normalizer},
    },
};
use rdkafka::Message as _;
use support::kafka::{self, kafka_test, unique};
use tokio::sync::{mpsc, watch};

const TRACEPARENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn samples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/requests")
}

fn normalizer() -> Normalizer {
    Normalizer::new(Targets(vec![Target::example()]), Limits::default())
}

fn valid_message(n: usize) -> Vec<u8> {
    format!(r#"{{"schema_version":1,"method":"GET","url":"http://127.0.0.1:18080/orders/{n}"}}"#)
        .into_bytes()
}

/// Fresh topics (`partitions` for the input, 1 for the DLQ) with `n` valid messages waiting;
/// returns (input topic, dead-letter topic, group).
async fn seed(brokers: &str, partitions: i32, n: usize) -> (String, String, String) {
    let (topic, dlq, group) = (unique("in"), unique("dlq"), unique("group"));
    kafka::create_topics(brokers, &[(&topic, partitions), (&dlq, 1)]).await;
    let producer = kafka::producer(brokers);
    for i in 0..n {
        kafka::produce(
            &producer,
            &topic,
            &i.to_string(),
            Some(&valid_message(i)),
            &[],
        )
        .await;
    }
    (topic, dlq, group)
}

struct Running {
    jobs: mpsc::Receiver<Job>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    tracker: std::sync::Arc<std::sync::Mutex<netscope_agent::ingest::offsets::OffsetTracker>>,
    counters: std::sync::Arc<netscope_agent::ingest::kafka::IngestCounters>,
}

fn start(brokers: &str, group: &str, topic: &str, dlq: &str, capacity: usize) -> Running {
    let settings = KafkaSettings {
        brokers: brokers.to_owned(),
        group_id: group.to_owned(),
        topics: vec![topic.to_owned()],
        dlq_topic: dlq.to_owned(),
    };
    let journal = std::sync::Arc::new(InFlightJournal::disabled());
    let ingest = KafkaIngest::connect(settings, normalizer(), journal).unwrap();
    let (tx, jobs) = mpsc::channel(capacity);
    let (stop, stop_rx) = watch::channel(false);
    let tracker = ingest.tracker();
    let counters = ingest.counters();
    let task = tokio::spawn(async move { ingest.run(tx, stop_rx).await.unwrap() });
    Running {
        jobs,
        stop,
        task,
        tracker,
        counters,
    }
}

impl Running {
    async fn next_job(&mut self) -> Job {
        tokio::time::timeout(Duration::from_secs(30), self.jobs.recv())
            .await
            .expect("a job within 30 s")
            .expect("ingest still running")
    }

    fn finish(&self, job: &Job) {
        self.tracker.lock().unwrap().finished(&job.record);
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("ingest stops within 30 s")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_message_lands_in_the_dlq_with_its_reason_and_offsets_are_committed() {
    let Some(brokers) = kafka_test("dlq") else {
        return;
    };
    let (topic, dlq, group) = (unique("in"), unique("dlq"), unique("group"));
    kafka::create_topics(&brokers, &[(&topic, 3), (&dlq, 1)]).await;
    let producer = kafka::producer(&brokers);
    let corpus = samples::malformed(&samples_dir()).unwrap();
    for case in &corpus {
        let mut headers = vec![RecordHeader {
            name: b"traceparent".to_vec(),
            value: Some(TRACEPARENT.to_vec()),
        }];
        headers.extend(case.headers.iter().cloned());
        kafka::produce_raw(
            &brokers,
            &topic,
            case.name.as_bytes(),
            case.payload.as_deref(),
            &headers,
        );
    }
    for n in 0..3 {
        kafka::produce(
            &producer,
            &topic,
            &format!("valid-{n}"),
            Some(&valid_message(n)),
            &[],
        )
        .await;
    }

    let mut ingest = start(&brokers, &group, &topic, &dlq, 16);
    for _ in 0..3 {
        let job = ingest.next_job().await;
        assert_eq!(job.call.ctx.target.0, "demo");
        assert_eq!(job.call.ctx.route.0, "orders");
        ingest.finish(&job); // its outcome is durable: the offset may move past it
    }
    let dead = kafka::read_all(&brokers, &dlq, 1, corpus.len(), Duration::from_secs(30));
    assert_eq!(
        dead.len(),
        corpus.len(),
        "one dead letter per malformed message"
    );
    for case in &corpus {
        let m = dead
            .iter()
            .find(|m| m.key() == Some(case.name.as_bytes()))
            .unwrap_or_else(|| panic!("no dead letter for {}", case.name));
        let reason = std::str::from_utf8(kafka::header(m, DLQ_REASON).unwrap()).unwrap();
        assert_eq!(reason, case.reason, "{}", case.name);
        assert_eq!(
            m.payload(),
            case.payload.as_deref(),
            "{}: original bytes",
            case.name
        );
        assert_eq!(
            kafka::header(m, "traceparent"),
            Some(TRACEPARENT),
            "original headers kept"
        );
        let source = std::str::from_utf8(kafka::header(m, DLQ_SOURCE).unwrap()).unwrap();
        assert!(source.starts_with(&format!("{topic}/")), "{source}");
    }
    // Every record is durable now: the group's offsets reach the end of every partition.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let counters = std::sync::Arc::clone(&ingest.counters);
    ingest.stop().await;
    assert_eq!(
        kafka::committed(&brokers, &group, &topic, 3),
        kafka::end_offsets(&brokers, &topic, 3)
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>()
    );
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(counters.dead_lettered.load(Relaxed), corpus.len() as u64);
    assert_eq!(counters.accepted.load(Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_pauses_consumption_and_nothing_is_lost() {
    let Some(brokers) = kafka_test("backpressure") else {
        return;
    };
    const MESSAGES: usize = 60;
    let (topic, dlq, group) = seed(&brokers, 2, MESSAGES).await;
    let mut ingest = start(&brokers, &group, &topic, &dlq, 2);
    // Nobody takes jobs: the queue fills and ingest pauses (bounded wait for the group join).
    use std::sync::atomic::Ordering::Relaxed;
    for _ in 0..300 {
        if ingest.counters.backpressure_pauses.load(Relaxed) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ingest.counters.backpressure_pauses.load(Relaxed) >= 1,
        "no pause within 30 s"
    );
    assert!(
        ingest.counters.backpressure_waits.load(Relaxed) >= 1,
        "the queue was full: ingest waited before it paused"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        ingest.counters.consumed.load(Relaxed) <= 3,
        "consumption stopped: 2 queued + 1 waiting"
    );
    let mut seen = BTreeSet::new();
    for _ in 0..MESSAGES {
        let job = ingest.next_job().await;
        assert!(
            seen.insert(job.call.request.url.path().to_owned()),
            "delivered twice"
        );
        ingest.finish(&job);
    }
    assert_eq!(seen.len(), MESSAGES);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_records_are_consumed_again_after_a_restart() {
    let Some(brokers) = kafka_test("restart") else {
        return;
    };
    const MESSAGES: usize = 20;
    let (topic, dlq, group) = seed(&brokers, 1, MESSAGES).await;
    // First run: every job handed out, only the first 8 and the 12th finished.
    let mut first = start(&brokers, &group, &topic, &dlq, 64);
    let mut jobs = Vec::new();
    for _ in 0..MESSAGES {
        jobs.push(first.next_job().await);
    }
    for job in jobs
        .iter()
        .filter(|j| j.record.offset < 8 || j.record.offset == 12)
    {
        first.finish(job);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    first.stop().await;
    assert_eq!(kafka::committed(&brokers, &group, &topic, 1), vec![Some(8)]);

    // Second run: everything from the first unfinished record on comes again, nothing before.
    let mut second = start(&brokers, &group, &topic, &dlq, 64);
    let mut again = Vec::new();
    for _ in 8..MESSAGES {
        let job = second.next_job().await;
        again.push(job.record.offset);
        second.finish(&job);
    }
    again.sort_unstable();
    assert_eq!(again, (8..MESSAGES as i64).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(600)).await;
    second.stop().await;
    assert_eq!(
        kafka::committed(&brokers, &group, &topic, 1),
        vec![Some(MESSAGES as i64)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_the_dlq_topic_is_truncated_not_stalled() {
    let Some(brokers) = kafka_test("dlq-size") else {
        return;
    };
    let (topic, dlq, group) = (unique("in"), unique("dlq"), unique("group"));
    kafka::create_topics(&brokers, &[(&topic, 1)]).await;
    kafka::create_topics_with(&brokers, &[(&dlq, 1)], &[("max.message.bytes", "100000")]).await;
    let producer = kafka::producer(&brokers);
    let big = vec![b'x'; 300_000]; // invalid JSON, too large for the dead-letter topic
    kafka::produce(&producer, &topic, "big", Some(&big), &[]).await;
    kafka::produce(&producer, &topic, "after", Some(&valid_message(1)), &[]).await;

    let mut ingest = start(&brokers, &group, &topic, &dlq, 4);
    let job = ingest.next_job().await; // the partition was not stalled behind the big record
    ingest.finish(&job);
    let dead = kafka::read_all(&brokers, &dlq, 1, 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1);
    let m = &dead[0];
    assert_eq!(kafka::header(m, DLQ_TRUNCATED), Some(&b"300000"[..]));
    assert_eq!(kafka::header(m, DLQ_REASON), Some(&b"invalid_json"[..]));
    assert_eq!(m.payload().map(<[u8]>::len), Some(DLQ_TRUNCATED_BYTES));
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(ingest.counters.dead_letter_truncated.load(Relaxed), 1);
    ingest.stop().await;
}
