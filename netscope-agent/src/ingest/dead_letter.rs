//! The dead-letter topic: a rejected record goes there whole — payload, key, its own headers
//! (a name that is not UTF-8 with its bytes escaped as `\xNN`) — plus why it was rejected (`x-netscope-dlq-reason`, a stable [`RejectReason`] code, and the
//! detail) and where it came from (`topic/partition/offset`). The write is retried until the
//! broker acknowledges it, since only then may the record's offset be committed; a record the
//! topic refuses for its size keeps its first [`DLQ_TRUNCATED_BYTES`] bytes of payload and of
//! headers, then only NetScope's headers, and says so.
//!
//! [`RejectReason`]: super::schema::RejectReason

use std::time::Duration;

use rdkafka::{
    ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio::sync::watch;
use tracing::warn;

use super::{
    counters::{IngestCounters, bump},
    record::{ConsumedRecord, escape_name},
    schema::Rejection,
};
use crate::backoff::Backoff;

/// The `source-*` and `dlq-*` headers NetScope adds to a dead-lettered record.
pub const DLQ_REASON: &str = "x-netscope-dlq-reason";
pub const DLQ_DETAIL: &str = "x-netscope-dlq-detail";
pub const DLQ_SOURCE: &str = "x-netscope-source";
/// Present when the dead-letter topic refused the record's size: the value is the original
/// payload length, and only its first [`DLQ_TRUNCATED_BYTES`] are kept (none, when even that
/// was refused).
pub const DLQ_TRUNCATED: &str = "x-netscope-dlq-truncated";
/// Present when the original headers did not all fit in a shortened dead letter: how many of
/// them were left out.
pub const DLQ_DROPPED_HEADERS: &str = "x-netscope-dlq-dropped-headers";
pub const DLQ_TRUNCATED_BYTES: usize = 64 << 10;

/// Where rejected records go, and what counts them.
pub(super) struct DeadLetterTopic<'a> {
    pub producer: &'a FutureProducer,
    pub topic: &'a str,
    pub counters: &'a IngestCounters,
}

/// How much of the original record a dead letter carries. A record the topic refuses for its
/// size is sent again smaller, once per step, never retried as it was: that would stall its
/// partition for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Extent {
    /// Payload, key and every header as they came (names that are not UTF-8 escaped).
    Whole,
    /// The payload's first [`DLQ_TRUNCATED_BYTES`], and the headers that fit in as many bytes.
    Truncated,
    /// Only the key and NetScope's own headers.
    Bare,
}

impl Extent {
    fn smaller(self) -> Option<Self> {
        match self {
            Self::Whole => Some(Self::Truncated),
            Self::Truncated => Some(Self::Bare),
            Self::Bare => None,
        }
    }
}

/// Writes the original record plus the reason to the dead-letter topic, retrying until the
/// broker acknowledges it (or shutdown: then it is consumed again after a restart).
pub(super) async fn write(
    to: &DeadLetterTopic<'_>,
    m: &ConsumedRecord,
    rejection: &Rejection,
    shutdown: &watch::Receiver<bool>,
) -> bool {
    let original_len = m.payload.as_ref().map_or(0, Vec::len);
    let mut extent = Extent::Whole;
    let mut backoff = Backoff::redelivery();
    loop {
        let (payload, headers) = dead_letter(m, rejection, extent);
        let mut record = FutureRecord::to(to.topic).headers(headers);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(k) = &m.key {
            record = record.key(k.as_slice());
        }
        match to.producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => {
                if extent != Extent::Whole {
                    bump(&to.counters.dead_letter_truncated);
                }
                return true;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))
                if extent.smaller().is_some() =>
            {
                let smaller = extent.smaller().unwrap_or(Extent::Bare);
                warn!(bytes = original_len, header_bytes = m.header_bytes(), topic = %to.topic,
                    extent = ?smaller, "dead-letter topic refuses the record's size: sending less of it");
                extent = smaller;
            }
            Err((e, _)) => {
                bump(&to.counters.dead_letter_retries);
                warn!(error = %e, topic = %to.topic, "dead-letter write failed; retrying");
                if *shutdown.borrow() {
                    return false;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// The dead letter's payload and headers: as much of the original as `extent` allows, plus why it
/// was rejected and where it came from.
fn dead_letter<'m>(
    m: &'m ConsumedRecord,
    rejection: &Rejection,
    extent: Extent,
) -> (Option<&'m [u8]>, OwnedHeaders) {
    let payload = m.payload.as_deref();
    let (payload, header_budget) = match extent {
        Extent::Whole => (payload, usize::MAX),
        Extent::Truncated => (
            payload.map(|p| &p[..p.len().min(DLQ_TRUNCATED_BYTES)]),
            DLQ_TRUNCATED_BYTES,
        ),
        Extent::Bare => (None, 0),
    };
    let mut headers = OwnedHeaders::new_with_capacity(m.headers.len().min(64) + 4);
    let mut spent = 0usize;
    let mut dropped = 0usize;
    for h in &m.headers {
        spent = spent.saturating_add(h.len());
        if spent > header_budget {
            dropped += 1;
            continue;
        }
        let name = escape_name(&h.name);
        headers = headers.insert(Header {
            key: &name,
            value: h.value.as_deref(),
        });
    }
    let source = m.source();
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
    if extent != Extent::Whole {
        let len = m.payload.as_ref().map_or(0, Vec::len).to_string();
        headers = headers.insert(Header {
            key: DLQ_TRUNCATED,
            value: Some(&len),
        });
    }
    if dropped > 0 {
        let n = dropped.to_string();
        headers = headers.insert(Header {
            key: DLQ_DROPPED_HEADERS,
            value: Some(&n),
        });
    }
    (payload, headers)
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
