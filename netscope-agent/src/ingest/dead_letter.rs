//! The dead-letter topic: a rejected record goes there whole — payload, key, its own headers —
//! plus why it was rejected (`x-netscope-dlq-reason`, a stable [`RejectReason`] code, and the
//! detail) and where it came from (`topic/partition/offset`). The write is retried until the
//! broker acknowledges it, since only then may the record's offset be committed; a record the
//! topic refuses for its size keeps its first [`DLQ_TRUNCATED_BYTES`] bytes and says so.
//!
//! [`RejectReason`]: super::schema::RejectReason

use std::time::Duration;

use rdkafka::{
    ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, Headers, Message, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
};
use tokio::sync::watch;
use tracing::warn;

use super::{
    counters::{IngestCounters, bump},
    schema::Rejection,
};
use crate::backoff::Backoff;

/// The `source-*` and `dlq-*` headers NetScope adds to a dead-lettered record.
pub const DLQ_REASON: &str = "x-netscope-dlq-reason";
pub const DLQ_DETAIL: &str = "x-netscope-dlq-detail";
pub const DLQ_SOURCE: &str = "x-netscope-source";
/// Present when the dead-letter topic refused the record's size: the value is the original
/// payload length, and only its first [`DLQ_TRUNCATED_BYTES`] are kept.
pub const DLQ_TRUNCATED: &str = "x-netscope-dlq-truncated";
pub const DLQ_TRUNCATED_BYTES: usize = 64 << 10;

/// Where rejected records go, and what counts them.
pub(super) struct DeadLetterTopic<'a> {
    pub producer: &'a FutureProducer,
    pub topic: &'a str,
    pub counters: &'a IngestCounters,
}

/// Writes the original record plus the reason to the dead-letter topic, retrying until the
/// broker acknowledges it (or shutdown: then it is consumed again after a restart).
pub(super) async fn write(
    to: &DeadLetterTopic<'_>,
    m: &OwnedMessage,
    rejection: &Rejection,
    shutdown: &watch::Receiver<bool>,
) -> bool {
    let headers = dead_letter_headers(m, rejection);
    let original_len = m.payload().map_or(0, <[u8]>::len);
    let mut truncated = false;
    let mut backoff = Backoff::redelivery();
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
        let mut record = FutureRecord::to(to.topic).headers(headers);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        match to.producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => {
                if truncated {
                    bump(&to.counters.dead_letter_truncated);
                }
                return true;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))
                if !truncated =>
            {
                // Permanent for this record: retrying would stall the partition forever.
                warn!(bytes = original_len, topic = %to.topic,
                    "dead-letter topic refuses the record's size: keeping its first {DLQ_TRUNCATED_BYTES} bytes");
                truncated = true;
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

/// The original record's headers, plus why it was rejected and where it came from.
fn dead_letter_headers(m: &OwnedMessage, rejection: &Rejection) -> OwnedHeaders {
    let source = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
    let mut headers = OwnedHeaders::new();
    if let Some(original) = m.headers() {
        for h in original.iter() {
            headers = headers.insert(h);
        }
    }
    headers
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
        })
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
