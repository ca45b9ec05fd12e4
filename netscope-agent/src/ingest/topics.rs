//! Creating the pipeline's topics when they do not exist (`run --create-topics`, the default for
//! local runs), with `--topic-replication-factor` replicas each (1, as a single local broker
//! has, by default; a DaemonSet leaves topic creation to the cluster's operator).

use std::time::Duration;

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::KafkaError,
    types::RDKafkaErrorCode,
};
use tokio::sync::watch;
use tracing::warn;

use super::counters::KafkaHealth;
use crate::backoff::Backoff;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("Kafka admin client for {brokers}: {source}")]
    Client { brokers: String, source: KafkaError },
    #[error("creating topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Creates each `(topic, partitions)` that does not exist yet, with `replicas` replicas; one
/// that exists is fine.
pub async fn ensure(
    brokers: &str,
    topics: &[(&str, i32)],
    replicas: i32,
) -> Result<(), TopicError> {
    let client_err = |source| TopicError::Client {
        brokers: brokers.to_owned(),
        source,
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(client_err)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(replicas))
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await.map_err(client_err)? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, code }),
        }
    }
    Ok(())
}

/// [`ensure`], retried with backoff until it succeeds (or `stop`: `false`). Meanwhile the agent
/// is up — server, probe — and `/readyz` says what it waits for: a broker that is down when the
/// node starts is an outage to wait out, not a reason to crash-loop.
pub async fn ensure_with_retry(
    brokers: &str,
    topics: &[(&str, i32)],
    replicas: i32,
    health: &KafkaHealth,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut backoff = Backoff::redelivery();
    health.topics_set_up(Some("creating them".to_owned()));
    while !*stop.borrow() {
        match ensure(brokers, topics, replicas).await {
            Ok(()) => {
                health.topics_set_up(None);
                return true;
            }
            Err(e) => {
                warn!(error = %e, "setting up the topics failed; retrying");
                health.topics_set_up(Some(e.to_string()));
            }
        }
        tokio::select! {
            _ = stop.changed() => return false,
            () = tokio::time::sleep(backoff.next_delay().max(Duration::from_millis(500))) => {}
        }
    }
    false
}
