//! What ingest counts (for the run summary, `/metrics` and `/api/v1/status`) and what it
//! knows of its health (for `/readyz`): partitions assigned, brokers up (from librdkafka's
//! statistics), consumption paused.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use strum::{EnumCount as _, IntoEnumIterator as _};

use super::schema::RejectReason;
use crate::domain::{Check, CounterSource, HealthCheck, Sample};

/// What ingest did.
#[derive(Debug)]
pub struct IngestCounters {
    pub consumed: AtomicU64,
    pub accepted: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dead_letter_retries: AtomicU64,
    pub dead_letter_truncated: AtomicU64,
    pub traceparent_invalid: AtomicU64,
    pub request_id_generated: AtomicU64,
    /// Times the job queue was full (consumption waited, prefetched records kept).
    pub backpressure_waits: AtomicU64,
    /// Times the queue stayed full past `PAUSE_AFTER` and the partitions were paused.
    pub backpressure_pauses: AtomicU64,
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    /// The partitions are paused now.
    pub paused: AtomicBool,
    rejected: [AtomicU64; RejectReason::COUNT],
}

impl Default for IngestCounters {
    fn default() -> Self {
        let zero = || AtomicU64::new(0);
        Self {
            consumed: zero(),
            accepted: zero(),
            dead_lettered: zero(),
            dead_letter_retries: zero(),
            dead_letter_truncated: zero(),
            traceparent_invalid: zero(),
            request_id_generated: zero(),
            backpressure_waits: zero(),
            backpressure_pauses: zero(),
            commits: zero(),
            commit_errors: zero(),
            paused: AtomicBool::new(false),
            // `Default` stops at arrays of 32; there are more reasons than that.
            rejected: std::array::from_fn(|_| zero()),
        }
    }
}

impl IngestCounters {
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }

    pub(super) fn reject(&self, reason: RejectReason) {
        bump(&self.rejected[reason.index()]);
    }
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl CounterSource for IngestCounters {
    fn component(&self) -> &'static str {
        "ingest"
    }

    fn samples(&self) -> Vec<Sample> {
        const RECORDS: &str = "Kafka records consumed, and what became of them (result)";
        const DLQ: &str = "Records dead-lettered, by reason code";
        let mut out = vec![
            Sample::counter("kafka_records", RECORDS, load(&self.consumed))
                .with("result", "consumed"),
            Sample::counter("kafka_records", RECORDS, load(&self.accepted))
                .with("result", "accepted"),
            Sample::counter("kafka_records", RECORDS, load(&self.dead_lettered))
                .with("result", "dead_lettered"),
        ];
        out.extend(RejectReason::iter().map(|r| {
            Sample::counter("kafka_dead_letters", DLQ, self.rejected(r)).with("reason", r.into())
        }));
        const BP: &str = "Times the job queue was full: ingest waited, or paused its partitions";
        out.extend([
            Sample::counter("kafka_backpressure", BP, load(&self.backpressure_waits))
                .with("action", "wait"),
            Sample::counter("kafka_backpressure", BP, load(&self.backpressure_pauses))
                .with("action", "pause"),
            Sample::gauge(
                "kafka_consumption_paused",
                "1 while the partitions are paused (the job queue stayed full)",
                u64::from(self.paused.load(Ordering::Relaxed)),
            ),
            Sample::counter("kafka_commits", "Offset commits", load(&self.commits)),
            Sample::counter(
                "kafka_commit_errors",
                "Offset commits that failed (retried with the next)",
                load(&self.commit_errors),
            ),
            Sample::counter(
                "kafka_dead_letter_retries",
                "Dead-letter produce retries",
                load(&self.dead_letter_retries),
            ),
            Sample::counter(
                "kafka_traceparent_invalid",
                "Records whose traceparent header was invalid (a new trace was started)",
                load(&self.traceparent_invalid),
            ),
        ]);
        out
    }
}

/// The consumer's view of the group and the brokers, kept by its client context.
#[derive(Debug, Default)]
pub struct KafkaHealth {
    /// Partitions assigned to this member now.
    pub(super) assigned: AtomicUsize,
    /// The member has joined its group and holds its (possibly empty) assignment: librdkafka's
    /// group state `up` with join state `steady`, at the last statistics.
    pub(super) in_group: AtomicBool,
    /// Why the topics are not set up yet (`--create-topics`), while that is retried.
    topics: std::sync::Mutex<Option<String>>,
    /// Brokers (not bootstrap entries) in state `UP` at the last statistics.
    pub(super) brokers_up: AtomicUsize,
    /// Brokers known at the last statistics.
    pub(super) brokers_known: AtomicUsize,
}

impl KafkaHealth {
    /// The topics are set up (`None`), or not yet, and why.
    pub(super) fn topics_set_up(&self, pending: Option<String>) {
        *self
            .topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = pending;
    }

    pub(super) fn statistics(&self, stats: &rdkafka::Statistics) {
        let brokers = stats.brokers.values().filter(|b| b.nodeid >= 0);
        let (known, up) = brokers.fold((0, 0), |(k, u), b| {
            (k + 1, u + usize::from(b.state == "UP"))
        });
        self.brokers_known.store(known, Ordering::Relaxed);
        self.brokers_up.store(up, Ordering::Relaxed);
        let steady = stats
            .cgrp
            .as_ref()
            .is_some_and(|g| g.state == "up" && g.join_state == "steady");
        self.in_group.store(steady, Ordering::Relaxed);
    }
}

/// Ready means able to work: a member of the group with a broker up. Owning a partition is not
/// required — with more agents than partitions some members stand by, and a DaemonSet rollout
/// must not wait for them.
impl HealthCheck for KafkaHealth {
    fn checks(&self) -> Vec<Check> {
        let assigned = self.assigned.load(Ordering::Relaxed);
        let up = self.brokers_up.load(Ordering::Relaxed);
        let known = self.brokers_known.load(Ordering::Relaxed);
        let in_group = self.in_group.load(Ordering::Relaxed);
        let group = match (in_group, assigned) {
            (false, _) => "not (yet) a member of the consumer group".to_owned(),
            (true, 0) => {
                "in the consumer group, 0 partitions assigned (standing by: more members than partitions)"
                    .to_owned()
            }
            (true, n) => format!("in the consumer group, {n} partitions assigned"),
        };
        let topics = self
            .topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let detail = match &topics {
            Some(why) => {
                format!("topics not set up yet ({why}); {group}; {up} of {known} brokers up")
            }
            None => format!("{group}; {up} of {known} brokers up"),
        };
        vec![Check {
            name: "kafka",
            ok: in_group && up > 0 && topics.is_none(),
            required: true,
            detail,
        }]
    }
}
