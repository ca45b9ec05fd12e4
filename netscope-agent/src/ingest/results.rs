//! The results topic: one JSON record per call (context, outcome, attempts, network facts),
//! keyed by request id, with the call's `traceparent`. Delivered means acknowledged by the
//! broker (acks=all, idempotent producer).

use std::{sync::Arc, time::Duration};

use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};

use super::kafka::dlq_producer;
use crate::domain::{
    OutcomeSink, SinkError,
    outcome::{BoxFuture, OutboundResult},
};

pub struct KafkaResults {
    producer: FutureProducer,
    topic: String,
}

impl KafkaResults {
    pub fn new(brokers: &str, topic: &str) -> Result<Self, rdkafka::error::KafkaError> {
        Ok(Self {
            producer: dlq_producer(brokers)?,
            topic: topic.to_owned(),
        })
    }
}

impl OutcomeSink for KafkaResults {
    fn name(&self) -> &'static str {
        "results-topic"
    }

    fn deliver(&self, result: Arc<OutboundResult>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let sink = self.name();
            let payload =
                serde_json::to_vec(result.as_ref()).map_err(|e| SinkError::new(sink, e))?;
            let traceparent = result.ctx.traceparent();
            let headers = OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(&traceparent),
            });
            let record = FutureRecord::to(&self.topic)
                .key(&result.ctx.request_id)
                .payload(&payload)
                .headers(headers);
            self.producer
                .send(record, Duration::from_secs(10))
                .await
                .map(|_| ())
                .map_err(|(e, _)| SinkError::new(sink, e))
        })
    }
}
