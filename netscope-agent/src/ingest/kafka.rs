//! The Kafka consumer (consumer group, manual commits, at-least-once); rejected records go to
//! the dead-letter topic through [`dead_letter`](super::dead_letter).
//!
//! A record's offset is committed only once its outcome is durable: a dead-letter record
//! acknowledged by the broker, or — for a valid call — the pipeline marking it finished in the
//! shared [`OffsetTracker`] after its result was delivered. When the job queue is full the
//! consumer stops taking records (librdkafka's prefetch, bounded by
//! `queued.max.messages.kbytes`, stays); when it stays full past [`PAUSE_AFTER`], the consumer
//! pauses its partitions and keeps polling. Nothing is dropped.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    time::Duration,
};

use rdkafka::{
    ClientConfig, ClientContext, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::KafkaError,
    producer::FutureProducer,
};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument as _, info, warn};

use super::{
    counters::bump,
    dead_letter,
    inflight::{InFlightJournal, Stage},
    offsets::OffsetTracker,
    record::ConsumedRecord,
    schema::{Incoming, Normalizer, RejectReason},
    trace_context::TraceParentStatus,
};
pub use super::{
    counters::{IngestCounters, KafkaHealth},
    dead_letter::{
        DLQ_DETAIL, DLQ_DROPPED_HEADERS, DLQ_REASON, DLQ_SOURCE, DLQ_TRUNCATED,
        DLQ_TRUNCATED_BYTES, dlq_producer,
    },
};
use crate::{
    clock::now_unix_ms,
    domain::{Job, RecordRef, SourceLog},
};

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

type SharedTracker = Arc<Mutex<OffsetTracker>>;

/// Safe offsets are committed this often (asynchronously) while consuming.
const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// How long a full queue is waited for before the partitions are paused (see
/// [`KafkaIngest::enqueue`]). Below `max.poll.interval.ms` by far, so the group keeps us.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// Ingest stops: shutdown was asked for, or the executor is gone.
struct Stopped;

/// What waiting for room in the job queue needs.
struct Waiting<'q> {
    jobs: &'q mpsc::Sender<Job>,
    tick: &'q mut tokio::time::Interval,
    shutdown: &'q mut watch::Receiver<bool>,
}

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
    journal: Arc<InFlightJournal>,
    health: Arc<KafkaHealth>,
}

impl ClientContext for TrackingContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.health.statistics(&statistics);
    }
}

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
                self.journal.forget(p.topic(), p.partition());
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = match rebalance {
            Rebalance::Assign(tpl) => tpl.count(),
            Rebalance::Revoke(_) | Rebalance::Error(_) => 0,
        };
        self.health.assigned.store(assigned, Ordering::Relaxed);
    }
}

pub struct KafkaIngest {
    consumer: StreamConsumer<TrackingContext>,
    producer: FutureProducer,
    normalizer: Normalizer,
    settings: KafkaSettings,
    tracker: SharedTracker,
    journal: Arc<InFlightJournal>,
    counters: Arc<IngestCounters>,
    health: Arc<KafkaHealth>,
}

impl KafkaIngest {
    /// Creates the consumer (joining `group_id`, subscribed to the topics) and the dead-letter
    /// producer. `journal` remembers the records in flight across a death of the process.
    pub fn connect(
        settings: KafkaSettings,
        normalizer: Normalizer,
        journal: Arc<InFlightJournal>,
    ) -> Result<Self, IngestError> {
        let client_err = |source| IngestError::Client {
            brokers: settings.brokers.clone(),
            source,
        };
        let tracker = SharedTracker::default();
        let health = Arc::new(KafkaHealth::default());
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
            // Broker states for readiness (`KafkaHealth`).
            .set("statistics.interval.ms", "1000")
            .create_with_context(TrackingContext {
                tracker: Arc::clone(&tracker),
                journal: Arc::clone(&journal),
                health: Arc::clone(&health),
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
            journal,
            counters: Arc::default(),
            health,
        })
    }

    pub fn tracker(&self) -> SharedTracker {
        Arc::clone(&self.tracker)
    }

    /// Where the executor says a record runs and is finished: the offsets, and the journal.
    pub fn source_log(&self) -> Arc<dyn SourceLog> {
        Arc::new(RecordLog {
            tracker: Arc::clone(&self.tracker),
            journal: Arc::clone(&self.journal),
        })
    }

    pub fn counters(&self) -> Arc<IngestCounters> {
        Arc::clone(&self.counters)
    }

    /// Partitions assigned and brokers up, for readiness.
    pub fn health(&self) -> Arc<KafkaHealth> {
        Arc::clone(&self.health)
    }

    fn commit(&self, mode: CommitMode) {
        let commits = lock(&self.tracker).to_commit();
        if commits.is_empty() {
            return;
        }
        if let Err(e) = self.consumer.commit(&commit_list(&commits), mode) {
            bump(&self.counters.commit_errors);
            warn!(error = %e, "offset commit failed; it is retried with the next one");
        } else {
            bump(&self.counters.commits);
        }
    }

    /// The run ends without dying: what is still in flight was not what killed it.
    pub fn stopped_cleanly(&self) {
        self.journal.close_clean();
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
        let mut tick = tokio::time::interval(COMMIT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Records fetched before a pause took effect, handed out first, in order.
        let mut held: VecDeque<ConsumedRecord> = VecDeque::new();
        loop {
            let message = match held.pop_front() {
                Some(m) => m,
                None => tokio::select! {
                    biased;
                    _ = shutdown.changed() => break,
                    _ = tick.tick() => { self.commit(CommitMode::Async); continue; }
                    m = self.consumer.recv() => match m {
                        Ok(m) => ConsumedRecord::from_borrowed(&m),
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
            let mut waiting = Waiting {
                jobs: &jobs,
                tick: &mut tick,
                shutdown: &mut shutdown,
            };
            if self.enqueue(job, &mut waiting, &mut held).await.is_err() {
                break;
            }
        }
        self.commit(CommitMode::Sync);
        info!(
            in_flight = lock(&self.tracker).in_flight(),
            "ingest stopped"
        );
        Ok(())
    }

    /// Puts a job in the queue, waiting for room: first without polling, so that what
    /// librdkafka prefetched stays; after [`PAUSE_AFTER`], by pausing the partitions and polling
    /// on (group liveness) until half the queue is free.
    ///
    /// Why not pause at once: librdkafka throws the paused partitions' prefetched records away,
    /// and a resume takes effect only when its fetcher thread next wakes — up to a second later.
    /// Pausing at every full queue capped the pipeline at ~1,200 calls/s.
    async fn enqueue(
        &self,
        job: Job,
        waiting: &mut Waiting<'_>,
        held: &mut VecDeque<ConsumedRecord>,
    ) -> Result<(), Stopped> {
        let job = match waiting.jobs.try_send(job) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Stopped),
            Err(mpsc::error::TrySendError::Full(job)) => job,
        };
        bump(&self.counters.backpressure_waits);
        let room = self.room(1, waiting, None, Some(PAUSE_AFTER)).await?;
        if let Some(permit) = room.and_then(|mut r| r.next()) {
            permit.send(job);
            return Ok(());
        }
        bump(&self.counters.backpressure_pauses);
        let assignment = self.consumer.assignment().unwrap_or_default();
        let _ = self.consumer.pause(&assignment);
        self.counters.paused.store(true, Ordering::Relaxed);
        let room = self.room(1, waiting, Some(held), None).await?;
        if let Some(permit) = room.and_then(|mut r| r.next()) {
            permit.send(job);
        }
        // Hysteresis: a resume costs a refetch and up to a second, so resume only once half
        // the queue is free.
        let low = (waiting.jobs.max_capacity() / 2).max(1);
        self.room(low, waiting, Some(held), None).await?;
        let assignment = self.consumer.assignment().unwrap_or_default();
        let _ = self.consumer.resume(&assignment);
        self.counters.paused.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Waits until the queue has room for `n` jobs (`None` once `limit` has passed first),
    /// committing on the way. With `held`, it polls the consumer meanwhile and keeps what
    /// arrives there, in order.
    async fn room<'q>(
        &self,
        n: usize,
        waiting: &mut Waiting<'q>,
        mut held: Option<&mut VecDeque<ConsumedRecord>>,
        limit: Option<Duration>,
    ) -> Result<Option<mpsc::PermitIterator<'q, Job>>, Stopped> {
        let jobs = waiting.jobs;
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            tokio::select! {
                biased;
                _ = waiting.shutdown.changed() => return Err(Stopped),
                permits = jobs.reserve_many(n) => {
                    return permits.map(Some).map_err(|_| Stopped);
                }
                _ = waiting.tick.tick() => self.commit(CommitMode::Async),
                () = &mut expired => return Ok(None),
                m = self.consumer.recv(), if held.is_some() => {
                    // Fetched before the pause took effect: keep it, in order.
                    if let (Ok(m), Some(held)) = (m, held.as_deref_mut()) {
                        held.push_back(ConsumedRecord::from_borrowed(&m));
                    }
                }
            }
        }
    }

    /// Normalises one record: a valid call comes back as a job; a rejected one is dead-lettered
    /// (durably) and finished here.
    async fn handle(&self, m: &ConsumedRecord, shutdown: &watch::Receiver<bool>) -> Option<Job> {
        let record = m.record_ref();
        let suspect = self.journal.suspect(&record);
        lock(&self.tracker).started(&record);
        self.journal.handling(&record);
        bump(&self.counters.consumed);
        let received_unix_ms = now_unix_ms();
        let incoming = Incoming {
            payload: m.payload.as_deref(),
            headers: &m.headers,
            received_unix_ms,
            record_unix_ms: m.timestamp_ms.and_then(|t| u64::try_from(t).ok()),
        };
        let normalized = match suspect {
            // Two deaths in a row with this record in flight: it is not run a third time.
            Some(s) if s.deaths >= 2 => Err(self.normalizer.refuse(
                &incoming,
                RejectReason::Poison,
                format!("in flight at {} consecutive deaths of the agent", s.deaths),
            )),
            _ => self.normalizer.normalize(&incoming),
        }
        .and_then(|n| match suspect {
            Some(s)
                if s.stage == Stage::Executing
                    && !n.call.request.retryable(&n.call.ctx)
                    && !self.normalizer.replay_unsafe(&n.call.ctx.target) =>
            {
                Err(self.normalizer.refuse(
                    &incoming,
                    RejectReason::MaybeExecuted,
                    format!(
                        "{:?} without an idempotency key was executing when the agent died: it may have reached {}; not run again (replay_unsafe = true on the target allows it)",
                        n.call.request.method, n.call.ctx.target
                    ),
                ))
            }
            _ => Ok(n),
        });
        match normalized {
            Ok(n) => {
                bump(&self.counters.accepted);
                if n.traceparent == TraceParentStatus::Invalid {
                    bump(&self.counters.traceparent_invalid);
                }
                if n.request_id_generated {
                    bump(&self.counters.request_id_generated);
                }
                self.journal.queued(&record);
                Some(Job {
                    call: n.call,
                    record,
                    received_unix_ms,
                    suspect: suspect.is_some(),
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
                    let to = dead_letter::DeadLetterTopic {
                        producer: &self.producer,
                        topic: &self.settings.dlq_topic,
                        counters: &self.counters,
                    };
                    if dead_letter::write(&to, m, &rejection, shutdown).await {
                        bump(&self.counters.dead_lettered);
                        lock(&self.tracker).finished(&record);
                        self.journal.finished(&record);
                    }
                }
                .instrument(span)
                .await;
                None
            }
        }
    }
}

/// The executor's view of the source: offsets to commit, and the in-flight journal.
struct RecordLog {
    tracker: SharedTracker,
    journal: Arc<InFlightJournal>,
}

impl SourceLog for RecordLog {
    fn executing(&self, record: &RecordRef) {
        self.journal.executing(record);
    }

    fn finished(&self, record: &RecordRef) {
        lock(&self.tracker).finished(record);
        self.journal.finished(record);
    }
}
