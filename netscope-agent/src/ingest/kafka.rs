//! The Kafka consumer (consumer group, manual commits, at-least-once) and the dead-letter
//! producer.
//!
//! A record's offset is committed only once its outcome is durable: a dead-letter record
//! acknowledged by the broker, or — for a valid call — the pipeline marking it finished in the
//! shared [`OffsetTracker`] after its result was delivered. When the job queue is full the
//! consumer pauses its partitions and keeps polling; nothing is dropped.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rdkafka::{
    ClientConfig, ClientContext, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, Headers, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument as _, info, warn};

use super::{
    offsets::{OffsetTracker, RecordRef},
    schema::{Incoming, Normalizer, RejectReason, Rejection},
    trace_context::TraceParentStatus,
};
use crate::domain::CallRequest;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    pub dlq_topic: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("Kafka client for {brokers}: {source}")]
    Client { brokers: String, source: KafkaError },
    #[error("subscribing to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: KafkaError,
    },
    #[error("consuming: {0}")]
    Consume(KafkaError),
}

/// A valid call, with the record it came from (to be marked finished once its outcome is
/// durable).
#[derive(Clone, Debug)]
pub struct Job {
    pub call: CallRequest,
    pub record: RecordRef,
    pub received_unix_ms: u64,
}

/// What ingest did, for metrics and tests.
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub consumed: AtomicU64,
    pub accepted: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dead_letter_retries: AtomicU64,
    pub dead_letter_truncated: AtomicU64,
    pub traceparent_invalid: AtomicU64,
    pub request_id_generated: AtomicU64,
    pub backpressure_pauses: AtomicU64,
    pub commit_errors: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
}

impl IngestCounters {
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.rejected[i].load(Ordering::Relaxed))
    }

    fn reject(&self, reason: RejectReason) {
        if let Some(i) = RejectReason::ALL.iter().position(|r| *r == reason) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

type SharedTracker = Arc<Mutex<OffsetTracker>>;

fn lock(t: &SharedTracker) -> std::sync::MutexGuard<'_, OffsetTracker> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

fn commit_list(commits: &[(String, i32, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in commits {
        // Offsets come from the broker's own records: always valid.
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    tpl
}

/// Commits what is safe before partitions go, then forgets them: their unfinished records will
/// be consumed again by the next owner (at-least-once), and late outcomes change nothing here.
pub struct TrackingContext {
    tracker: SharedTracker,
}

impl ClientContext for TrackingContext {}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let mut tracker = lock(&self.tracker);
            let commits = tracker.to_commit();
            if !commits.is_empty()
                && let Err(e) = consumer.commit(&commit_list(&commits), CommitMode::Sync)
            {
                warn!(error = %e, "commit before revocation failed; records will be consumed again");
            }
            for p in revoked.elements() {
                tracker.forget(p.topic(), p.partition());
            }
        }
    }
}

pub struct KafkaIngest {
    consumer: StreamConsumer<TrackingContext>,
    producer: FutureProducer,
    normalizer: Normalizer,
    settings: KafkaSettings,
    tracker: SharedTracker,
    counters: Arc<IngestCounters>,
}

/// The `source-*` and `dlq-*` headers NetScope adds to a dead-lettered record.
pub const DLQ_REASON: &str = "x-netscope-dlq-reason";
pub const DLQ_DETAIL: &str = "x-netscope-dlq-detail";
pub const DLQ_SOURCE: &str = "x-netscope-source";
/// Present when the dead-letter topic refused the record's size: the value is the original
/// payload length, and only its first [`DLQ_TRUNCATED_BYTES`] are kept.
pub const DLQ_TRUNCATED: &str = "x-netscope-dlq-truncated";
pub const DLQ_TRUNCATED_BYTES: usize = 64 << 10;

impl KafkaIngest {
    /// Creates the consumer (joining `group_id`, subscribed to the topics) and the dead-letter
    /// producer.
    pub fn connect(settings: KafkaSettings, normalizer: Normalizer) -> Result<Self, IngestError> {
        let client_err = |source| IngestError::Client {
            brokers: settings.brokers.clone(),
            source,
        };
        let tracker = SharedTracker::default();
        let consumer: StreamConsumer<TrackingContext> = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("queued.max.messages.kbytes", "16384")
            // One fetch is outstanding per broker: a long poll for an idle partition would hold
            // back the partitions just resumed after backpressure for up to this long.
            .set("fetch.wait.max.ms", "50")
            .create_with_context(TrackingContext {
                tracker: Arc::clone(&tracker),
            })
            .map_err(client_err)?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| IngestError::Subscribe {
                topics: settings.topics.clone(),
                source,
            })?;
        let producer = dlq_producer(&settings.brokers).map_err(client_err)?;
        Ok(Self {
            consumer,
            producer,
            normalizer,
            settings,
            tracker,
            counters: Arc::default(),
        })
    }

    pub fn tracker(&self) -> SharedTracker {
        Arc::clone(&self.tracker)
    }

    pub fn counters(&self) -> Arc<IngestCounters> {
        Arc::clone(&self.counters)
    }

    fn commit(&self, mode: CommitMode) {
        let commits = lock(&self.tracker).to_commit();
        if commits.is_empty() {
            return;
        }
        if let Err(e) = self.consumer.commit(&commit_list(&commits), mode) {
            bump(&self.counters.commit_errors);
            warn!(error = %e, "offset commit failed; it is retried with the next one");
        }
    }

    /// Commits, synchronously, every offset that is safe now.
    pub fn commit_now(&self) {
        self.commit(CommitMode::Sync);
    }

    /// Consumes until `shutdown` turns true, then commits what is durable (call
    /// [`commit_now`](Self::commit_now) again once the calls in flight are done). Records handed
    /// out but not finished are consumed again after a restart.
    pub async fn run(
        &self,
        jobs: mpsc::Sender<Job>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), IngestError> {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held: VecDeque<OwnedMessage> = VecDeque::new();
        'consume: loop {
            let message = match held.pop_front() {
                Some(m) => m,
                None => tokio::select! {
                    biased;
                    _ = shutdown.changed() => break 'consume,
                    _ = tick.tick() => { self.commit(CommitMode::Async); continue; }
                    m = self.consumer.recv() => match m {
                        Ok(m) => m.detach(),
                        Err(e) => {
                            warn!(error = %e, "consumer error");
                            continue;
                        }
                    },
                },
            };
            let Some(job) = self.handle(&message, &shutdown).await else {
                continue;
            };
            match jobs.try_send(job) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => break 'consume,
                Err(mpsc::error::TrySendError::Full(job)) => {
                    // Backpressure: stop fetching, keep polling (group liveness), wait for room.
                    bump(&self.counters.backpressure_pauses);
                    let assignment = self.consumer.assignment().unwrap_or_default();
                    let _ = self.consumer.pause(&assignment);
                    loop {
                        tokio::select! {
                            biased;
                            _ = shutdown.changed() => break 'consume,
                            permit = jobs.reserve() => {
                                match permit {
                                    Ok(p) => p.send(job),
                                    Err(_) => break 'consume,
                                }
                                break;
                            }
                            _ = tick.tick() => self.commit(CommitMode::Async),
                            m = self.consumer.recv() => {
                                // Fetched before the pause took effect: keep it, in order.
                                if let Ok(m) = m {
                                    held.push_back(m.detach());
                                }
                            }
                        }
                    }
                    // Hysteresis: resume once half the queue is free. Resuming at every free
                    // slot would refetch from the broker for every record (pausing discards
                    // what was prefetched): measured 16× slower on a backlog.
                    let low = (jobs.max_capacity() / 2).max(1);
                    loop {
                        tokio::select! {
                            biased;
                            _ = shutdown.changed() => break 'consume,
                            permits = jobs.reserve_many(low) => {
                                if permits.is_err() {
                                    break 'consume;
                                }
                                break;
                            }
                            _ = tick.tick() => self.commit(CommitMode::Async),
                            m = self.consumer.recv() => {
                                if let Ok(m) = m {
                                    held.push_back(m.detach());
                                }
                            }
                        }
                    }
                    let assignment = self.consumer.assignment().unwrap_or_default();
                    let _ = self.consumer.resume(&assignment);
                }
            }
        }
        self.commit(CommitMode::Sync);
        info!(
            in_flight = lock(&self.tracker).in_flight(),
            "ingest stopped"
        );
        Ok(())
    }

    /// Normalises one record: a valid call comes back as a job; a rejected one is dead-lettered
    /// (durably) and finished here.
    async fn handle(&self, m: &OwnedMessage, shutdown: &watch::Receiver<bool>) -> Option<Job> {
        let record = RecordRef {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
        };
        lock(&self.tracker).started(&record);
        bump(&self.counters.consumed);
        let headers: Vec<(&str, Option<&[u8]>)> = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let received_unix_ms = now_unix_ms();
        let incoming = Incoming {
            payload: m.payload(),
            headers: &headers,
            received_unix_ms,
        };
        match self.normalizer.normalize(&incoming) {
            Ok(n) => {
                bump(&self.counters.accepted);
                if n.traceparent == TraceParentStatus::Invalid {
                    bump(&self.counters.traceparent_invalid);
                }
                if n.request_id_generated {
                    bump(&self.counters.request_id_generated);
                }
                Some(Job {
                    call: n.call,
                    record,
                    received_unix_ms,
                })
            }
            Err(rejection) => {
                self.counters.reject(rejection.reason);
                let span = tracing::warn_span!(
                    "rejected",
                    trace_id = %rejection.trace.trace_id,
                    request_id = %rejection.request_id,
                );
                async {
                    warn!(reason = rejection.reason.code(), detail = %rejection.detail,
                        topic = %record.topic, partition = record.partition, offset = record.offset,
                        "message rejected: dead-lettered");
                    if self.dead_letter(m, &rejection, shutdown).await {
                        bump(&self.counters.dead_lettered);
                        lock(&self.tracker).finished(&record);
                    }
                }
                .instrument(span)
                .await;
                None
            }
        }
    }

    /// Writes the original record plus the reason to the dead-letter topic, retrying until the
    /// broker acknowledges it (or shutdown: then it is consumed again after a restart).
    async fn dead_letter(
        &self,
        m: &OwnedMessage,
        rejection: &Rejection,
        shutdown: &watch::Receiver<bool>,
    ) -> bool {
        let source = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
        let mut headers = OwnedHeaders::new();
        if let Some(original) = m.headers() {
            for h in original.iter() {
                headers = headers.insert(h);
            }
        }
        headers = headers
            .insert(Header {
                key: DLQ_REASON,
                value: Some(rejection.reason.code()),
            })
            .insert(Header {
                key: DLQ_DETAIL,
                value: Some(&rejection.detail),
            })
            .insert(Header {
                key: DLQ_SOURCE,
                value: Some(&source),
            });
        let original_len = m.payload().map_or(0, <[u8]>::len);
        let mut truncated = false;
        let mut backoff = Duration::from_millis(100);
        loop {
            let (payload, headers) = if truncated {
                let len = original_len.to_string();
                let h = headers.clone().insert(Header {
                    key: DLQ_TRUNCATED,
                    value: Some(&len),
                });
                (
                    m.payload().map(|p| &p[..p.len().min(DLQ_TRUNCATED_BYTES)]),
                    h,
                )
            } else {
                (m.payload(), headers.clone())
            };
            let mut record = FutureRecord::to(&self.settings.dlq_topic).headers(headers);
            if let Some(p) = payload {
                record = record.payload(p);
            }
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            match self.producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => {
                    if truncated {
                        bump(&self.counters.dead_letter_truncated);
                    }
                    return true;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))
                    if !truncated =>
                {
                    // Permanent for this record: retrying would stall the partition forever.
                    warn!(bytes = original_len, topic = %self.settings.dlq_topic,
                        "dead-letter topic refuses the record's size: keeping its first {DLQ_TRUNCATED_BYTES} bytes");
                    truncated = true;
                }
                Err((e, _)) => {
                    bump(&self.counters.dead_letter_retries);
                    warn!(error = %e, topic = %self.settings.dlq_topic, "dead-letter write failed; retrying");
                    if *shutdown.borrow() {
                        return false;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// A producer that waits for all in-sync replicas and never duplicates on its own retries.
pub fn dlq_producer(brokers: &str) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        // Any record the broker delivered, plus NetScope's headers (the broker still applies
        // its own topic limit).
        .set("message.max.bytes", "16777216")
        .create()
}
