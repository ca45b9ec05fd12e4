//! Creating the pipeline's topics when they do not exist (`run --create-topics`, the default for
//! local runs): one replica each, as a single local broker has.

use std::time::Duration;

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::KafkaError,
    types::RDKafkaErrorCode,
};

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

/// Creates each `(topic, partitions)` that does not exist yet; one that exists is fine.
pub async fn ensure(brokers: &str, topics: &[(&str, i32)]) -> Result<(), TopicError> {
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
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await.map_err(client_err)? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, code }),
        }
    }
    Ok(())
}
