//! `netscope-agent send`: demo requests for the local pipeline — successes, retried failures,
//! a non-idempotent call, slow calls, and two malformed messages for the dead-letter topic.

use std::time::Duration;

use clap::Args;
use rdkafka::{
    ClientConfig,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use serde_json::json;

use super::AppError;
use crate::config::{DEFAULT_BROKERS, DEFAULT_REQUESTS_TOPIC};

#[derive(Args, Clone, Debug)]
pub struct SendArgs {
    /// How many rounds of demo requests (8 messages each).
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    #[arg(long, env = "NETSCOPE_KAFKA_BROKERS", default_value = DEFAULT_BROKERS)]
    pub brokers: String,
    #[arg(
        long,
        env = "NETSCOPE_REQUESTS_TOPIC",
        default_value = DEFAULT_REQUESTS_TOPIC
    )]
    pub topic: String,
    /// The demo upstream's base URL.
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    pub upstream: String,
}

/// Sends the demo messages; returns how many.
pub async fn send_demo(args: &SendArgs) -> Result<u32, AppError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("acks", "all")
        .create()?;
    let u = &args.upstream;
    let mut sent = 0;
    for round in 0..args.rounds {
        let messages = [
            json!({"schema_version": 1, "method": "GET", "url": format!("{u}/orders/{round}"), "timeout_ms": 2000}).to_string(),
            json!({"schema_version": 1, "method": "POST", "url": format!("{u}/payments"), "body": "{\"amount\":1250}",
                "headers": {"content-type": "application/json"}, "idempotency_key": format!("pay-{round}")}).to_string(),
            json!({"schema_version": 1, "method": "GET", "url": format!("{u}/flaky/2/503?r={round}")}).to_string(),
            json!({"schema_version": 1, "method": "POST", "url": format!("{u}/status/503")}).to_string(),
            json!({"schema_version": 1, "method": "GET", "url": format!("{u}/delay/150")}).to_string(),
            json!({"schema_version": 1, "method": "GET", "url": format!("{u}/bytes/100000")}).to_string(),
            "{\"schema_version\": 1, \"method\": ".to_owned(),
            json!({"schema_version": 1, "method": "GET", "url": "http://169.254.169.254/latest/meta-data/"}).to_string(),
        ];
        for (i, payload) in messages.iter().enumerate() {
            let request_id = format!("demo-{round}-{i}");
            let traceparent = format!(
                "00-{:032x}-{:016x}-01",
                (u128::from(round) << 8) | i as u128 | 1 << 100,
                0xabcd_u64
            );
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "x-request-id",
                    value: Some(&request_id),
                })
                .insert(Header {
                    key: "traceparent",
                    value: Some(&traceparent),
                });
            let record = FutureRecord::to(&args.topic)
                .key(&request_id)
                .payload(payload)
                .headers(headers);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| AppError::Kafka(e))?;
            sent += 1;
        }
    }
    Ok(sent)
}
