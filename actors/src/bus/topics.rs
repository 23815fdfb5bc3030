//! Creates the topics medflow writes to, if they are absent.
//!
//! The broker's topic list is read first and only the missing topics are created, so a
//! restart that finds every topic in place makes no admin request a slow broker could hold up.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::KafkaSettings;

/// How long the broker's topic list may take to arrive.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates every topic of `names` (already prefixed) that does not exist yet, with the
/// configured partitions and replication; existing topics are left as they are.
pub async fn ensure_topics(settings: &KafkaSettings, names: &[String]) -> anyhow::Result<()> {
    let missing = missing_topics(settings, names).await?;
    create_topics(settings, &missing).await
}

/// Returns the topics of `names` the broker does not list.
pub async fn missing_topics(
    settings: &KafkaSettings,
    names: &[String],
) -> anyhow::Result<Vec<String>> {
    let admin = Arc::new(admin(settings)?);
    // librdkafka's metadata request blocks its caller.
    let metadata =
        tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, METADATA_TIMEOUT))
            .await?
            .map_err(|error| anyhow::anyhow!("cannot list Kafka topics: {error}"))?;
    let existing: HashSet<&str> = metadata
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none() && !topic.partitions().is_empty())
        .map(|topic| topic.name())
        .collect();
    Ok(names
        .iter()
        .filter(|name| !existing.contains(name.as_str()))
        .cloned()
        .collect())
}

/// Creates `names` with the configured partitions and replication; one that exists already
/// (made meanwhile by another instance) is no error.
pub async fn create_topics(settings: &KafkaSettings, names: &[String]) -> anyhow::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let admin = admin(settings)?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(settings.message_timeout));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(|error| anyhow::anyhow!("cannot create Kafka topics: {error}"))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

fn admin(settings: &KafkaSettings) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    settings
        .client_config()
        .create()
        .map_err(|error| anyhow::anyhow!("cannot create a Kafka admin client: {error}"))
}
