//! The soak's Kafka side: its topics, the paced producer of the message mix (recording where
//! each message landed), a reader that follows the results and dead-letter topics for the
//! whole run, and the group's committed offsets.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use netscope_agent::ingest::samples::Malformed;
use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
    message::{Headers as _, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use serde_json::json;
use tokio::task::JoinSet;

use super::plan::TARGETS;

pub const REQUEST_PARTITIONS: i32 = 6;
pub const RESULT_PARTITIONS: i32 = 3;

/// What a produced message was meant to test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Malformed,
    /// A call: its method, target and whether it carries an idempotency key.
    Call {
        method: &'static str,
        target: usize,
        keyed: bool,
    },
}

/// Message `i` of the mix: 2 % malformed (the stored corpus); the calls spread over the
/// targets — 40 % GET, 20 % PUT, 25 % POST with an idempotency key, 15 % POST without.
pub fn kind(i: usize) -> Kind {
    if i % 50 == 25 {
        return Kind::Malformed;
    }
    let target = i % TARGETS.len();
    let (method, keyed) = match (i / TARGETS.len()) % 20 {
        0..8 => ("GET", false),
        8..12 => ("PUT", false),
        12..17 => ("POST", true),
        _ => ("POST", false),
    };
    Kind::Call {
        method,
        target,
        keyed,
    }
}

pub fn request_id(i: usize) -> String {
    format!("soak-{i}")
}

/// The payload of message `i` (`ports[t]` is target `t`'s port).
fn payload(i: usize, ports: &[u16], corpus: &[Malformed]) -> Option<Vec<u8>> {
    match kind(i) {
        Kind::Malformed => corpus[(i / 50) % corpus.len()].payload.clone(),
        Kind::Call {
            method,
            target,
            keyed,
        } => {
            let path = if i.is_multiple_of(10) {
                format!("/bytes/4096?i={i}")
            } else {
                format!("/delay/5?i={i}")
            };
            let mut m = json!({
                "schema_version": 1,
                "method": method,
                "url": format!("http://127.0.0.1:{}{path}", ports[target]),
                "timeout_ms": 5000,
            });
            if method != "GET" {
                m["body"] = json!(format!("payload of {i}"));
            }
            if keyed {
                m["idempotency_key"] = json!(format!("key-{i}"));
            }
            Some(m.to_string().into_bytes())
        }
    }
}

/// Where a produced message landed.
#[derive(Clone, Copy, Debug)]
pub struct Placed {
    pub partition: i32,
    pub offset: i64,
}

/// Produces `messages` at `rate` per second; `placed[i]` is message `i`'s place once the
/// broker acknowledged it (the producer retries through a broker outage).
pub async fn produce(
    brokers: String,
    topic: String,
    messages: usize,
    rate: f64,
    ports: Vec<u16>,
    corpus: Vec<Malformed>,
    acked: Arc<AtomicUsize>,
) -> Result<Vec<Placed>, String> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "600000")
        .set("linger.ms", "5")
        .create()
        .map_err(|e| format!("producer: {e}"))?;
    let placed = Arc::new(Mutex::new(vec![None; messages]));
    let mut pending = JoinSet::new();
    let start = tokio::time::Instant::now();
    for i in 0..messages {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        while pending.len() >= 20_000 {
            pending.join_next().await;
        }
        let id = request_id(i);
        let mut headers = OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "x-request-id",
            value: Some(&id),
        });
        if kind(i) != Kind::Malformed {
            let traceparent = format!("00-{:032x}-{:016x}-01", i + 1, i + 1);
            headers = headers.insert(rdkafka::message::Header {
                key: "traceparent",
                value: Some(&traceparent),
            });
        }
        let body = payload(i, &ports, &corpus);
        let mut record = FutureRecord::to(&topic).key(&id).headers(headers);
        if let Some(b) = &body {
            record = record.payload(b);
        }
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| format!("producing {id}: {e}"))?;
        let (placed, acked) = (Arc::clone(&placed), Arc::clone(&acked));
        pending.spawn(async move {
            if let Ok(Ok(d)) = delivery.await {
                placed.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(Placed {
                    partition: d.partition,
                    offset: d.offset,
                });
                acked.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while pending.join_next().await.is_some() {}
    let placed = std::mem::take(&mut *placed.lock().unwrap_or_else(PoisonError::into_inner));
    let lost = placed.iter().filter(|p| p.is_none()).count();
    if lost > 0 {
        return Err(format!("the broker never acknowledged {lost} messages"));
    }
    Ok(placed.into_iter().flatten().collect())
}

/// A record read back: whose it is (its request id), and when it was written.
#[derive(Clone, Debug)]
pub struct Seen {
    pub request_id: String,
    pub timestamp_unix_ms: u64,
    /// A dead letter's reason code (`x-netscope-dlq-reason`).
    pub reason: Option<String>,
}

/// What the reader has seen so far, per topic kind.
#[derive(Default)]
pub struct Collected {
    pub results: Vec<Seen>,
    pub dlq: Vec<Seen>,
    /// One past the last offset read, per (topic, partition).
    pub next: BTreeMap<(String, i32), i64>,
    /// Records that could not be attributed to a request id.
    pub unreadable: usize,
}

/// Follows the results and dead-letter topics from their beginning until `stop`.
pub fn follow(
    brokers: &str,
    results: &str,
    dlq: &str,
    collected: Arc<Mutex<Collected>>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("soak-reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("reader: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..RESULT_PARTITIONS {
        let _ = tpl.add_partition_offset(results, p, Offset::Beginning);
    }
    let _ = tpl.add_partition_offset(dlq, 0, Offset::Beginning);
    consumer.assign(&tpl).map_err(|e| format!("reader: {e}"))?;
    let results = results.to_owned();
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let timestamp_unix_ms = m.timestamp().to_millis().unwrap_or(0).max(0) as u64;
            let is_result = m.topic() == results;
            let header = |name: &str| {
                m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
            };
            let (id, reason) = if is_result {
                let id = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .and_then(|v| v["ctx"]["request_id"].as_str().map(str::to_owned));
                (id, None)
            } else {
                (header("x-request-id"), header("x-netscope-dlq-reason"))
            };
            let mut c = collected.lock().unwrap_or_else(PoisonError::into_inner);
            c.next
                .insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
            match id {
                Some(request_id) => {
                    let seen = Seen {
                        request_id,
                        timestamp_unix_ms,
                        reason,
                    };
                    if is_result {
                        c.results.push(seen);
                    } else {
                        c.dlq.push(seen);
                    }
                }
                None => c.unreadable += 1,
            }
        }
    }))
}

/// The high watermark of every partition of the results and dead-letter topics.
pub fn ends(
    brokers: &str,
    results: &str,
    dlq: &str,
) -> Result<BTreeMap<(String, i32), i64>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let mut ends = BTreeMap::new();
    let parts = (0..RESULT_PARTITIONS)
        .map(|p| (results, p))
        .chain(std::iter::once((dlq, 0)));
    for (topic, p) in parts {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| format!("{topic}/{p}: {e}"))?;
        ends.insert((topic.to_owned(), p), high);
    }
    Ok(ends)
}

/// Reads the group's committed offsets, as a client that does not join it.
pub struct Commits {
    consumer: BaseConsumer,
    topic: String,
}

impl Commits {
    pub fn new(brokers: &str, group: &str, topic: &str) -> Result<Self, String> {
        let consumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| format!("commits reader: {e}"))?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
        })
    }

    /// The committed offset of each request partition (`None`: nothing committed yet);
    /// `None` when the broker does not answer within 2 s.
    pub fn now(&self) -> Option<Vec<Option<i64>>> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..REQUEST_PARTITIONS {
            tpl.add_partition(&self.topic, p);
        }
        let got = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(2))
            .ok()?;
        Some(
            (0..REQUEST_PARTITIONS)
                .map(
                    |p| match got.find_partition(&self.topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => Some(o),
                        _ => None,
                    },
                )
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_has_every_kind_in_its_share() {
        let kinds: Vec<Kind> = (0..6000).map(kind).collect();
        let share = |f: &dyn Fn(&Kind) -> bool| {
            kinds.iter().filter(|k| f(k)).count() as f64 / kinds.len() as f64
        };
        assert!((share(&|k| *k == Kind::Malformed) - 0.02).abs() < 0.001);
        let call = |m: &'static str, keyed: bool| move |k: &Kind| matches!(k, Kind::Call { method, keyed: kk, .. } if *method == m && *kk == keyed);
        assert!(share(&call("GET", false)) > 0.35);
        assert!(share(&call("PUT", false)) > 0.15);
        assert!(share(&call("POST", true)) > 0.2);
        assert!(share(&call("POST", false)) > 0.1);
        for t in 0..TARGETS.len() {
            assert!(share(&|k| matches!(k, Kind::Call { target, .. } if *target == t)) > 0.3);
        }
    }
}
