//! `Documents`: the typed API the transports use to reach document actors.

use std::sync::Arc;

use uuid::Uuid;

use crate::context::RequestContext;
use crate::document_actor::{DocumentActor, DocumentMessage};
use crate::domain::{Document, DraftEdit, NewDocument, RegistryOutcome, SignatureInput};
use crate::entity_host::{EntityClient, Retry};
use crate::error::{Error, Result};
use crate::store::PgStore;

#[derive(Clone)]
pub struct Documents {
    client: EntityClient<DocumentActor>,
    store: PgStore,
}

impl Documents {
    pub fn new(client: EntityClient<DocumentActor>, store: PgStore) -> Self {
        Self { client, store }
    }

    /// Creates a draft with a fresh id (no actor needed: nobody knows the id yet).
    pub async fn create(&self, draft: &NewDocument, ctx: &RequestContext) -> Result<Arc<Document>> {
        self.store
            .insert_document(Uuid::now_v7(), draft, ctx)
            .await
            .map(Arc::new)
            .map_err(|error| Error::from_store("document", error))
    }

    /// Returns `document` unless `committed` (its committed version, read after the read
    /// began) is newer; then the actor reloads and answers the committed row.
    pub async fn at_least(
        &self,
        document: Arc<Document>,
        committed: Option<i64>,
    ) -> Result<Arc<Document>> {
        match committed {
            Some(at_least) if at_least > document.version => {
                self.client
                    .ask(document.id, Retry::Idempotent, |reply| {
                        DocumentMessage::Get {
                            at_least: Some(at_least),
                            reply,
                        }
                    })
                    .await
            }
            _ => Ok(document),
        }
    }

    pub async fn get(&self, id: Uuid) -> Result<Arc<Document>> {
        self.client
            .ask(id, Retry::Idempotent, |reply| DocumentMessage::Get {
                at_least: None,
                reply,
            })
            .await
    }

    pub async fn edit(
        &self,
        id: Uuid,
        edit: DraftEdit,
        if_match: Option<i64>,
        ctx: &RequestContext,
    ) -> Result<Arc<Document>> {
        self.client
            .ask(id, Retry::OnlyIfUndelivered, |reply| {
                DocumentMessage::Edit {
                    edit: edit.clone(),
                    if_match,
                    ctx: ctx.clone(),
                    reply,
                }
            })
            .await
    }

    pub async fn sign(
        &self,
        id: Uuid,
        signature: SignatureInput,
        if_match: Option<i64>,
        ctx: &RequestContext,
    ) -> Result<Arc<Document>> {
        self.client
            .ask(id, Retry::OnlyIfUndelivered, |reply| {
                DocumentMessage::Sign {
                    signature: signature.clone(),
                    if_match,
                    ctx: ctx.clone(),
                    reply,
                }
            })
            .await
    }

    pub async fn record_registry_outcome(
        &self,
        id: Uuid,
        outcome: RegistryOutcome,
        ctx: &RequestContext,
    ) -> Result<Arc<Document>> {
        self.client
            .ask(id, Retry::OnlyIfUndelivered, |reply| {
                DocumentMessage::Registry {
                    outcome: outcome.clone(),
                    ctx: ctx.clone(),
                    reply,
                }
            })
            .await
    }
}
