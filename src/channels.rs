//! Every Kafka topic medflow uses under a configuration, and what travels on it: the one
//! list behind the AsyncAPI document (`crate::asyncapi`), `medflow topics`, and the test
//! that keeps `k8s/components/kafka-strimzi` declaring each of them.

use std::time::Duration;

use medflow_actors::cdc::reader::{EVENT_TYPES, PUBLISHED_TABLES};
use medflow_actors::consume::{GroupTopics, RetrySchedule};

use crate::config::Settings;

/// What a topic carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelKind {
    /// Debezium change events of one table (`<server>.public.<table>`), written by the CDC
    /// reader; a tombstone follows each delete.
    Change { table: &'static str },
    /// Debezium transaction metadata (`BEGIN`/`END` records), when
    /// `cdc.provide_transaction_metadata` is on.
    Transaction,
    /// One business event type, routed from the outbox.
    Business { event: &'static str },
    /// A consumer group's retry stage: messages waiting `delay` for their next attempt.
    Retry {
        group: String,
        stage: usize,
        delay: Duration,
    },
    /// A consumer group's dead letters, waiting for a fix and a replay.
    DeadLetter { group: String },
}

/// One topic and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// The topic's full name (with `kafka.topic_prefix`).
    pub address: String,
    pub kind: ChannelKind,
}

/// Every topic medflow writes or reads with `settings`, in a stable order: change topics,
/// the transaction topic, business topics, then each consumer group's retry and dead-letter
/// topics.
pub fn channels(settings: &Settings) -> Vec<Channel> {
    let kafka = settings.kafka();
    let mut channels: Vec<Channel> = PUBLISHED_TABLES
        .iter()
        .map(|table| Channel {
            address: settings.change_topic(table),
            kind: ChannelKind::Change { table },
        })
        .collect();
    if settings.cdc.provide_transaction_metadata {
        channels.push(Channel {
            address: kafka.topic(&format!("{}.transaction", settings.cdc.server_name)),
            kind: ChannelKind::Transaction,
        });
    }
    channels.extend(EVENT_TYPES.iter().map(|event| Channel {
        address: kafka.topic(event),
        kind: ChannelKind::Business { event },
    }));
    for spec in settings.consumer_specs() {
        let topics = GroupTopics::new(&kafka, &spec.name, &spec.retry);
        for (stage, (address, delay)) in topics.retry.iter().zip(&spec.retry.0).enumerate() {
            // A schedule may repeat a delay: its stages share one topic.
            if channels.iter().any(|channel| &channel.address == address) {
                continue;
            }
            channels.push(Channel {
                address: address.clone(),
                kind: ChannelKind::Retry {
                    group: topics.group_id.clone(),
                    stage: stage + 1,
                    delay: *delay,
                },
            });
        }
        channels.push(Channel {
            address: topics.dlq.clone(),
            kind: ChannelKind::DeadLetter {
                group: topics.group_id.clone(),
            },
        });
    }
    channels
}

impl ChannelKind {
    /// A one-line description for documents and listings.
    pub fn describe(&self) -> String {
        match self {
            Self::Change { table } => format!(
                "Debezium change events of table public.{table} (key: the row's primary key; a tombstone follows each delete)"
            ),
            Self::Transaction => {
                "Debezium transaction metadata: a BEGIN and an END record per transaction".into()
            }
            Self::Business { event } => format!(
                "Business event {event} (key: the patient id, so one patient's events keep their order)"
            ),
            Self::Retry {
                group,
                stage,
                delay,
            } => format!(
                "{group}: messages waiting {} for retry attempt {} (the original key, value and headers, plus the retry headers)",
                RetrySchedule::label(*delay),
                stage + 1
            ),
            Self::DeadLetter { group } => format!(
                "{group}: dead letters — messages that failed permanently or exhausted their retries, kept for replay"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn repository_file(path: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path:?}: {error}"))
    }

    fn k8s_settings() -> Settings {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/base/medflow.toml");
        Settings::load_without_env(Some(&path)).expect("k8s/base/medflow.toml is valid")
    }

    /// The values of `key: value` lines (indented anywhere) of a YAML file.
    fn yaml_values(text: &str, key: &str) -> Vec<String> {
        let prefix = format!("{key}:");
        text.lines()
            .filter_map(|line| line.trim_start().strip_prefix(&prefix))
            .map(|value| value.trim().trim_matches('"').to_owned())
            .collect()
    }

    #[test]
    fn the_strimzi_component_declares_every_topic_medflow_uses_on_kubernetes() {
        let settings = k8s_settings();
        let used: BTreeSet<String> = channels(&settings)
            .into_iter()
            .map(|channel| channel.address)
            .collect();
        let declared: BTreeSet<String> = yaml_values(
            &repository_file("k8s/components/kafka-strimzi/topics.yaml"),
            "topicName",
        )
        .into_iter()
        .collect();
        assert_eq!(
            used.difference(&declared).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "topics medflow uses that no KafkaTopic declares"
        );
        assert_eq!(
            declared.difference(&used).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "KafkaTopics medflow does not use"
        );
        // 6 change topics, 11 business events, 2 groups × (4 retry stages + a DLQ).
        assert_eq!(used.len(), 6 + 11 + 2 * 5);
    }

    #[test]
    fn the_longest_shutdown_fits_the_termination_grace_period_of_k8s_base() {
        let settings = k8s_settings();
        let grace: Vec<u64> = yaml_values(
            &repository_file("k8s/base/deployment.yaml"),
            "terminationGracePeriodSeconds",
        )
        .iter()
        .map(|value| value.parse().expect("a number of seconds"))
        .collect();
        let [grace] = grace[..] else {
            panic!("one terminationGracePeriodSeconds, found {grace:?}")
        };
        let longest = settings.longest_shutdown();
        // Room after the actors stop: the pool closes, the last log lines flush.
        assert!(
            longest + Duration::from_secs(5) <= Duration::from_secs(grace),
            "drain + in-flight grace + actors' stop = {longest:?}, the pod is killed after {grace} s"
        );
        assert!(
            settings.http.drain_delay_ms >= 5_000,
            "a drain shorter than the endpoints' propagation drops requests"
        );
    }

    #[test]
    fn a_topic_prefix_and_a_repeated_delay_are_respected() {
        let mut settings = k8s_settings();
        settings.kafka.topic_prefix = "clinic7.".into();
        settings.consumers.retry_schedule_ms = vec![1_000, 1_000, 60_000];
        settings.cdc.provide_transaction_metadata = true;
        let all = channels(&settings);
        assert!(
            all.iter()
                .all(|channel| channel.address.starts_with("clinic7."))
        );
        assert!(
            all.iter()
                .any(|channel| channel.kind == ChannelKind::Transaction
                    && channel.address == "clinic7.medflow.transaction")
        );
        let retries: Vec<&str> = all
            .iter()
            .filter(|channel| matches!(channel.kind, ChannelKind::Retry { .. }))
            .map(|channel| channel.address.as_str())
            .collect();
        assert_eq!(
            retries,
            [
                "clinic7.medflow.search-indexer.retry.1s",
                "clinic7.medflow.search-indexer.retry.1m",
                "clinic7.medflow.registry-submitter.retry.1s",
                "clinic7.medflow.registry-submitter.retry.1m",
            ]
        );
    }
}
