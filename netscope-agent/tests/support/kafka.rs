//! Real-broker plumbing for the Kafka tests: a gate, topics of their own, produce and read back.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::TcpStream,
    time::{Duration, Instant, SystemTime},
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    message::{Header, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
};

pub fn brokers() -> String {
    std::env::var("NETSCOPE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// The broker's address when one answers; otherwise explains the skip, or fails when
/// `NETSCOPE_REQUIRE_KAFKA_TESTS=1` (set by `xtask test`, which starts the broker).
pub fn kafka_test(name: &str) -> Option<String> {
    let brokers = brokers();
    let first = brokers.split(',').next().unwrap_or_default().to_owned();
    let up = first
        .parse()
        .ok()
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok());
    let required = std::env::var("NETSCOPE_REQUIRE_KAFKA_TESTS").is_ok_and(|v| v == "1");
    if !up {
        assert!(
            !required,
            "{name}: Kafka is required but {brokers} does not answer"
        );
        eprintln!("{name}: SKIPPED: no Kafka broker at {brokers} (scripts/kafka.sh start)");
        return None;
    }
    Some(brokers)
}

/// A topic name no other test or run uses.
pub fn unique(tag: &str) -> String {
    let nanos = netscope_agent::clock::unix_ns(SystemTime::now());
    format!("nstest-{tag}-{}-{nanos}", std::process::id())
}

pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    create_topics_with(brokers, topics, &[]).await;
}

/// Creates topics with topic-level configuration (e.g. `max.message.bytes`).
pub async fn create_topics_with(brokers: &str, topics: &[(&str, i32)], config: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            config.iter().fold(
                NewTopic::new(name, *partitions, TopicReplication::Fixed(1)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("message.max.bytes", "4194304")
        .create()
        .unwrap()
}

pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: Option<&[u8]>,
    headers: &[(&str, &[u8])],
) -> (i32, i64) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record = FutureRecord::to(topic).key(key).headers(h);
    if let Some(p) = payload {
        record = record.payload(p);
    }
    // The error carries the whole message back: keep only the error.
    let delivered = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    (delivered.partition, delivered.offset)
}

/// Reads `n` records of `topic` from the beginning (a fresh reader outside any group).
pub fn read_all(
    brokers: &str,
    topic: &str,
    partitions: i32,
    n: usize,
    limit: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

/// The group's committed offset per partition, read by a client that does not join the group.
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

/// (low, high) watermarks per partition.
pub fn end_offsets(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

pub fn header<'a>(m: &'a OwnedMessage, name: &str) -> Option<&'a [u8]> {
    use rdkafka::message::Headers as _;
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

/// Makes the broker unreachable for one uid's sockets (nftables, root only): every packet
/// they send to `port` gets a TCP reset, so that uid's clients see the broker down while
/// every other test keeps it. Removed on drop.
pub struct BrokerCut {
    table: String,
}

impl BrokerCut {
    pub fn new(uid: u32, port: u16) -> Self {
        let table = format!("netscope_cut_{}", std::process::id());
        super::nft_with(
            &[],
            &format!(
                "table inet {table} {{\n chain out {{\n type filter hook output priority 0;\n \
             meta skuid {uid} tcp dport {port} reject with tcp reset\n }}\n}}\n"
            ),
        );
        Self { table }
    }
}

impl Drop for BrokerCut {
    fn drop(&mut self) {
        super::nft_with(&[], &format!("delete table inet {}", self.table));
    }
}
