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

/// Counts a raw producer's deliveries.
#[derive(Default)]
pub struct Deliveries {
    ok: std::sync::atomic::AtomicUsize,
    failed: std::sync::Mutex<Vec<String>>,
}

impl rdkafka::ClientContext for Deliveries {}

impl rdkafka::producer::ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err((e, _)) => self.failed.lock().unwrap().push(e.to_string()),
        }
    }
}

/// Produces one record whose header names are raw bytes — rdkafka's safe API only takes `&str`
/// names, but Kafka's wire format allows any — through librdkafka's `rd_kafka_produceva`, and
/// waits until the broker acknowledged it.
pub fn produce_raw(
    brokers: &str,
    topic: &str,
    key: &[u8],
    payload: Option<&[u8]>,
    headers: &[netscope_agent::ingest::record::RecordHeader],
) {
    use rdkafka::bindings as rd;
    let producer: rdkafka::producer::BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("message.max.bytes", "4194304")
        .create_with_context(Deliveries::default())
        .unwrap();
    let topic = std::ffi::CString::new(topic).unwrap();
    // SAFETY: a fresh header list; every name and value is copied in by librdkafka.
    let hdrs = unsafe { rd::rd_kafka_headers_new(headers.len()) };
    for h in headers {
        let (value, len) = h.value.as_ref().map_or((std::ptr::null(), 0), |v| {
            (v.as_ptr().cast(), v.len() as isize)
        });
        // SAFETY: `hdrs` is live; name and value are valid for their lengths.
        let err = unsafe {
            rd::rd_kafka_header_add(
                hdrs,
                h.name.as_ptr().cast(),
                h.name.len() as isize,
                value,
                len,
            )
        };
        assert_eq!(
            err,
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
        );
    }
    let vu = |vtype, u| rd::rd_kafka_vu_t { vtype, u };
    let mem = |b: &[u8]| rd::rd_kafka_vu_s__bindgen_ty_1 {
        mem: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
            ptr: b.as_ptr().cast_mut().cast(),
            size: b.len(),
        },
    };
    let mut vus = vec![
        vu(
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_TOPIC,
            rd::rd_kafka_vu_s__bindgen_ty_1 {
                cstr: topic.as_ptr(),
            },
        ),
        vu(
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
            rd::rd_kafka_vu_s__bindgen_ty_1 {
                i: rd::RD_KAFKA_MSG_F_COPY,
            },
        ),
        vu(rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY, mem(key)),
        vu(
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADERS,
            rd::rd_kafka_vu_s__bindgen_ty_1 { headers: hdrs },
        ),
    ];
    if let Some(p) = payload {
        vus.push(vu(rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE, mem(p)));
    }
    // SAFETY: a live producer and a vector of valid argument unions; on success librdkafka
    // owns `hdrs`, on failure the caller still does.
    let error =
        unsafe { rd::rd_kafka_produceva(producer.client().native_ptr(), vus.as_ptr(), vus.len()) };
    if !error.is_null() {
        // SAFETY: the error and the header list are ours to free.
        let message = unsafe {
            let m = std::ffi::CStr::from_ptr(rd::rd_kafka_error_string(error))
                .to_string_lossy()
                .into_owned();
            rd::rd_kafka_error_destroy(error);
            rd::rd_kafka_headers_destroy(hdrs);
            m
        };
        panic!("produceva: {message}");
    }
    use rdkafka::producer::Producer as _;
    producer.flush(Duration::from_secs(30)).unwrap();
    let ctx = producer.context();
    assert_eq!(
        ctx.ok.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "delivery failed: {:?}",
        ctx.failed.lock().unwrap()
    );
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
        Self::matching(&format!("meta skuid {uid}"), port)
    }

    /// For the sockets of one group id (a root agent run in that group).
    pub fn of_group(gid: u32, port: u16) -> Self {
        Self::matching(&format!("meta skgid {gid}"), port)
    }

    fn matching(sockets: &str, port: u16) -> Self {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let table = format!("netscope_cut_{}_{n}", std::process::id());
        super::nft_with(
            &[],
            &format!(
                "table inet {table} {{\n chain out {{\n type filter hook output priority 0;\n \
             {sockets} tcp dport {port} reject with tcp reset\n }}\n}}\n"
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
