//! `RegistrySubmitter`: sends each signed document to the federal registry.
//!
//! ```text
//! DocumentSigned ─► RegistrySubmitter ─► DocumentActor: sent
//!                        │  POST <registry.url> (mutual TLS, timeout)
//!                        ├─ 200/201 {registryId} ─► DocumentActor: accepted  (DocumentRegistryAccepted)
//!                        ├─ 400/422 {reason}     ─► DocumentActor: rejected  (DocumentRegistryRejected), no retry
//!                        ├─ timeout, 408, 429, 5xx, unreachable ─► transient: the retry schedule
//!                        └─ other 4xx (credentials, wrong endpoint) ─► permanent: dead letter
//!                   every attempt ─► document_exchange_events
//! ```
//!
//! The registry's wire contract as medflow speaks it (the stand-in in the tests implements
//! it; see the README): `POST <url>` with a JSON body (below) and `Idempotency-Key: <document
//! id>`; success `200`/`201` `{"registryId": "…"}`; a validation refusal `400`/`422`
//! `{"reason": "…"}` (or a problem document's `detail`).
//!
//! Idempotent: a document already accepted or rejected is skipped; one already `sent` (an
//! earlier attempt) is submitted again under the same idempotency key.

use std::time::{Duration, Instant};

use base64::Engine;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::consume::{Handler, HandlerError, Inbound, Outcomes};
use crate::domain::{Document, DocumentStatus, RegistryOutcome};
use crate::{Documents, Error, PgStore, RequestContext};

/// The consumer group's name (the topic prefix is added).
pub const GROUP: &str = "medflow.registry-submitter";

/// Characters of a registry answer kept in the exchange log and in errors.
const MAX_DETAIL: usize = 2000;

/// How medflow reaches the registry.
#[derive(Debug, Clone)]
pub struct RegistryClientSettings {
    pub url: String,
    pub timeout: Duration,
    /// PEM: client certificate chain and private key.
    pub client_identity_pem: Option<Vec<u8>>,
    /// PEM: extra trusted CA certificates.
    pub ca_pem: Option<Vec<u8>>,
}

pub struct RegistrySubmitter {
    client: reqwest::Client,
    url: String,
    documents: Documents,
    store: PgStore,
}

impl RegistrySubmitter {
    pub fn new(
        settings: &RegistryClientSettings,
        documents: Documents,
        store: PgStore,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("medflow/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &settings.client_identity_pem {
            let identity = reqwest::Identity::from_pem(pem).map_err(|error| {
                anyhow::anyhow!("registry.client_identity_file is not a PEM certificate chain with its key: {error}")
            })?;
            builder = builder.identity(identity);
        }
        if let Some(pem) = &settings.ca_pem {
            for certificate in reqwest::Certificate::from_pem_bundle(pem).map_err(|error| {
                anyhow::anyhow!("registry.ca_file is not a PEM certificate bundle: {error}")
            })? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(Self {
            client: builder.build()?,
            url: settings.url.clone(),
            documents,
            store,
        })
    }

    async fn submit(&self, message: &Inbound) -> Result<(), HandlerError> {
        let event: SignedEvent = message
            .payload
            .as_deref()
            .ok_or_else(|| HandlerError::permanent("DocumentSigned without a value"))
            .and_then(|payload| {
                serde_json::from_slice(payload)
                    .map_err(|error| HandlerError::permanent(format!("not an event: {error}")))
            })?;
        let id: Uuid = event
            .aggregate_id
            .parse()
            .map_err(|_| HandlerError::permanent("aggregateId is not a UUID"))?;
        let ctx = RequestContext::system("registry-submitter");
        let document = self.documents.get(id).await.map_err(actor_error)?;
        match document.status {
            DocumentStatus::Accepted | DocumentStatus::Rejected => {
                tracing::debug!(document = %id, "already answered by the registry; skipped");
                return Ok(());
            }
            DocumentStatus::Draft => {
                return Err(HandlerError::permanent("the document is not signed"));
            }
            DocumentStatus::Signed => {
                self.documents
                    .record_registry_outcome(id, RegistryOutcome::Sent, &ctx)
                    .await
                    .map_err(actor_error)?;
            }
            DocumentStatus::Sent => {}
        }
        let attempt = message.attempt as i32 + 1;
        let started = Instant::now();
        let response = self
            .client
            .post(&self.url)
            .header("Idempotency-Key", id.to_string())
            .json(&submission(&document))
            .send()
            .await;
        let elapsed = started.elapsed();
        let answer = match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                Answer::classify(status, &text)
            }
            Err(error) if error.is_timeout() => Answer::Transient {
                status: None,
                detail: format!("no answer within the timeout ({} ms)", elapsed.as_millis()),
            },
            Err(error) => Answer::Transient {
                status: None,
                detail: format!("unreachable: {}", error_chain(&error)),
            },
        };
        let (outcome, status, registry_id, detail) = match &answer {
            Answer::Accepted {
                status,
                registry_id,
            } => ("accepted", Some(*status), Some(registry_id.as_str()), None),
            Answer::Rejected { status, reason } => {
                ("rejected", Some(*status), None, Some(reason.as_str()))
            }
            Answer::Transient { status, detail } | Answer::Refused { status, detail } => {
                ("failed", *status, None, Some(detail.as_str()))
            }
        };
        self.store
            .record_exchange_event(
                id,
                message.event_id(),
                attempt,
                outcome,
                status.map(i32::from),
                registry_id,
                detail,
                elapsed,
            )
            .await
            .map_err(|error| HandlerError::transient(format!("exchange log: {error}")))?;
        match answer {
            Answer::Accepted { registry_id, .. } => {
                tracing::info!(document = %id, registry_id = %registry_id, attempt, "accepted by the registry");
                self.record(id, RegistryOutcome::Accepted { registry_id }, &ctx)
                    .await
            }
            Answer::Rejected { reason, .. } => {
                tracing::info!(document = %id, attempt, "rejected by the registry");
                self.record(id, RegistryOutcome::Rejected { reason }, &ctx)
                    .await
            }
            Answer::Transient { detail, .. } => Err(HandlerError::Transient(detail)),
            Answer::Refused { detail, .. } => Err(HandlerError::Permanent(detail)),
        }
    }

    async fn record(
        &self,
        id: Uuid,
        outcome: RegistryOutcome,
        ctx: &RequestContext,
    ) -> Result<(), HandlerError> {
        match self
            .documents
            .record_registry_outcome(id, outcome, ctx)
            .await
        {
            Ok(_) => Ok(()),
            // Recorded already (a redelivery after a crash between the answer and our commit).
            Err(Error::InvalidTransition {
                current_status: "accepted" | "rejected",
                ..
            }) => Ok(()),
            Err(error) => Err(actor_error(error)),
        }
    }
}

fn actor_error(error: Error) -> HandlerError {
    match error {
        Error::NotFound { .. } | Error::Invalid(_) => HandlerError::permanent(error),
        other => HandlerError::transient(other),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedEvent {
    aggregate_id: String,
}

/// What medflow sends the registry.
fn submission(document: &Document) -> Value {
    let signature = document.signature.as_ref();
    json!({
        "documentId": document.id,
        "patientId": document.patient_id,
        "authorId": document.author_id,
        "appointmentId": document.appointment_id,
        "type": document.doc_type.as_str(),
        "title": document.title,
        "body": &*document.body,
        "contentVersion": document.content_version,
        "signerId": signature.map(|s| s.signer_id),
        "signedAt": signature.map(|s| s.signed_at),
        "signature": signature.map(|s| base64::engine::general_purpose::STANDARD.encode(&s.signature)),
        "certificateThumbprint": signature.map(|s| s.certificate_thumbprint.clone()),
        "checksum": signature.map(|s| hex::encode(s.checksum)),
    })
}

/// The registry's answer, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Accepted {
        status: u16,
        registry_id: String,
    },
    /// A validation refusal: final.
    Rejected {
        status: u16,
        reason: String,
    },
    /// Worth retrying.
    Transient {
        status: Option<u16>,
        detail: String,
    },
    /// Refused for a reason retrying will not fix (credentials, endpoint): dead letter.
    Refused {
        status: Option<u16>,
        detail: String,
    },
}

impl Answer {
    fn classify(status: u16, body: &str) -> Answer {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let short = |text: &str| text.chars().take(MAX_DETAIL).collect::<String>();
        match status {
            200 | 201 => match json["registryId"]
                .as_str()
                .filter(|id| !id.trim().is_empty())
            {
                Some(id) => Answer::Accepted {
                    status,
                    registry_id: short(id),
                },
                None => Answer::Transient {
                    status: Some(status),
                    detail: "success without a registryId".into(),
                },
            },
            400 | 422 => Answer::Rejected {
                status,
                reason: short(
                    json["reason"]
                        .as_str()
                        .or_else(|| json["detail"].as_str())
                        .filter(|reason| !reason.trim().is_empty())
                        .unwrap_or("refused by the registry without a reason"),
                ),
            },
            // The body of a failure is not kept: it could echo the submitted document.
            408 | 429 | 500..=599 => Answer::Transient {
                status: Some(status),
                detail: format!("registry answered {status}"),
            },
            _ => Answer::Refused {
                status: Some(status),
                detail: format!("registry answered {status}"),
            },
        }
    }
}

impl Handler for RegistrySubmitter {
    fn handle<'a>(&'a self, batch: &'a [Inbound]) -> BoxFuture<'a, Outcomes> {
        async move {
            let mut outcomes = Vec::with_capacity(batch.len());
            for message in batch {
                outcomes.push(self.submit(message).await);
            }
            outcomes
        }
        .boxed()
    }
}

/// Loads the PEM files named in the configuration (empty path: none).
pub fn read_pem(path: &std::path::Path, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    std::fs::read(path)
        .map(Some)
        .map_err(|error| anyhow::anyhow!("cannot read {key} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_as_the_contract_says() {
        assert_eq!(
            Answer::classify(201, r#"{"registryId":"R-1"}"#),
            Answer::Accepted {
                status: 201,
                registry_id: "R-1".into()
            }
        );
        assert_eq!(
            Answer::classify(422, r#"{"reason":"СНИЛС не найден"}"#),
            Answer::Rejected {
                status: 422,
                reason: "СНИЛС не найден".into()
            }
        );
        assert!(matches!(
            Answer::classify(400, "not json"),
            Answer::Rejected { .. }
        ));
        assert!(matches!(
            Answer::classify(503, ""),
            Answer::Transient { .. }
        ));
        assert!(matches!(
            Answer::classify(429, ""),
            Answer::Transient { .. }
        ));
        assert!(matches!(
            Answer::classify(200, "{}"),
            Answer::Transient { .. }
        ));
        assert!(matches!(Answer::classify(403, ""), Answer::Refused { .. }));
    }
}
