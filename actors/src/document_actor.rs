//! `DocumentActor`: owns one medical document and serialises its edits, its signing and its
//! registry outcomes.
//!
//! Invariants: only a draft is edited (each edit a new content version) or signed; signing
//! stores the SHA-256 of the canonical content it covers and makes the document immutable;
//! registry outcomes follow the lifecycle in [`crate::domain::document`]. A new draft is
//! inserted by [`Documents::create`](crate::Documents::create) directly.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sha2::{Digest, Sha256};

use crate::context::RequestContext;
use crate::domain::{
    Document, DocumentEvent, DocumentStatus, DraftEdit, RegistryOutcome, SignatureInput,
    SignatureVerifier,
};
use crate::entity_host::EntityActor;
use crate::entity_state::{EntityState, check_version};
use crate::error::{Error, Result};
use crate::store::PgStore;

const KIND: &str = "document";

#[derive(Debug)]
pub enum DocumentMessage {
    /// Returns the document. With `at_least` (a committed version read after the caller's
    /// read began), a cached state older than that — another instance wrote — is reloaded
    /// first.
    Get {
        at_least: Option<i64>,
        reply: RpcReplyPort<Result<Arc<Document>>>,
    },
    Edit {
        edit: DraftEdit,
        if_match: Option<i64>,
        ctx: RequestContext,
        reply: RpcReplyPort<Result<Arc<Document>>>,
    },
    Sign {
        signature: SignatureInput,
        if_match: Option<i64>,
        ctx: RequestContext,
        reply: RpcReplyPort<Result<Arc<Document>>>,
    },
    Registry {
        outcome: RegistryOutcome,
        ctx: RequestContext,
        reply: RpcReplyPort<Result<Arc<Document>>>,
    },
}

#[derive(Debug, Clone)]
pub struct DocumentActor {
    pub store: PgStore,
    pub verifier: Arc<dyn SignatureVerifier>,
}

impl EntityActor for DocumentActor {
    const KIND: &'static str = KIND;
    type Entity = Document;
}

impl Actor for DocumentActor {
    type Msg = DocumentMessage;
    type State = EntityState<Document>;
    type Arguments = EntityState<Document>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        start: EntityState<Document>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(start)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: DocumentMessage,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DocumentMessage::Get { at_least, reply } => {
                if let Some(at_least) = at_least {
                    state.refresh_below(at_least);
                }
                let answer = Box::pin(self.current(&myself, state)).await;
                let _ = reply.send(answer);
            }
            DocumentMessage::Edit {
                edit,
                if_match,
                ctx,
                reply,
            } => {
                let answer =
                    Box::pin(self.command(&myself, state, Command::Edit { edit, if_match }, ctx))
                        .await;
                let _ = reply.send(answer);
            }
            DocumentMessage::Sign {
                signature,
                if_match,
                ctx,
                reply,
            } => {
                let answer = Box::pin(self.command(
                    &myself,
                    state,
                    Command::Sign {
                        signature,
                        if_match,
                    },
                    ctx,
                ))
                .await;
                let _ = reply.send(answer);
            }
            DocumentMessage::Registry {
                outcome,
                ctx,
                reply,
            } => {
                let answer =
                    Box::pin(self.command(&myself, state, Command::Registry { outcome }, ctx))
                        .await;
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }
}

fn immutable(document: &Document, action: &str) -> Error {
    Error::InvalidTransition {
        message: format!(
            "cannot {action} a document that is {}: a signed document is immutable",
            document.status.as_str()
        ),
        current_status: document.status.as_str(),
        current_version: document.version,
    }
}

/// A write command on a document, kept so it can be decided again on a fresh load.
#[derive(Clone)]
enum Command {
    Edit {
        edit: DraftEdit,
        if_match: Option<i64>,
    },
    Sign {
        signature: SignatureInput,
        if_match: Option<i64>,
    },
    Registry {
        outcome: RegistryOutcome,
    },
}

impl DocumentActor {
    /// Runs `command`, deciding again on the committed row if a cached state decided
    /// anything but a committed write (see [`EntityState::redo_on_fresh`]).
    async fn command(
        &self,
        myself: &ActorRef<DocumentMessage>,
        state: &mut EntityState<Document>,
        command: Command,
        ctx: RequestContext,
    ) -> Result<Arc<Document>> {
        let mut moved = 0;
        loop {
            let cached = state.cached_version();
            let ctx = ctx.clone();
            let answer = match command.clone() {
                Command::Edit { edit, if_match } => {
                    self.edit(myself, state, edit, if_match, ctx).await
                }
                Command::Sign {
                    signature,
                    if_match,
                } => self.sign(myself, state, signature, if_match, ctx).await,
                Command::Registry { outcome } => self.registry(myself, state, outcome, ctx).await,
            };
            if !state.redo_on_fresh(cached, &answer, &mut moved) {
                return answer;
            }
        }
    }

    async fn current(
        &self,
        myself: &ActorRef<DocumentMessage>,
        state: &mut EntityState<Document>,
    ) -> Result<Arc<Document>> {
        state
            .loaded(myself, KIND, |id| self.store.load_document(id))
            .await
    }

    async fn edit(
        &self,
        myself: &ActorRef<DocumentMessage>,
        state: &mut EntityState<Document>,
        edit: DraftEdit,
        if_match: Option<i64>,
        ctx: RequestContext,
    ) -> Result<Arc<Document>> {
        let current = self.current(myself, state).await?;
        check_version(if_match, current.version)?;
        if current.status != DocumentStatus::Draft {
            return Err(immutable(&current, "edit"));
        }
        let title = edit.title.unwrap_or_else(|| current.title.clone());
        let body = edit.body.unwrap_or_else(|| current.body.to_string());
        let mut fields = Vec::new();
        if title != current.title {
            fields.push("title");
        }
        if *body != *current.body {
            fields.push("body");
        }
        if fields.is_empty() {
            return Ok(current);
        }
        let event = DocumentEvent::Edited { fields };
        let result = self
            .store
            .edit_document(&current, &title, &body, &event, &ctx)
            .await;
        state.settle(current.id, KIND, result)
    }

    async fn sign(
        &self,
        myself: &ActorRef<DocumentMessage>,
        state: &mut EntityState<Document>,
        signature: SignatureInput,
        if_match: Option<i64>,
        ctx: RequestContext,
    ) -> Result<Arc<Document>> {
        let current = self.current(myself, state).await?;
        check_version(if_match, current.version)?;
        if current.status != DocumentStatus::Draft {
            return Err(immutable(&current, "sign"));
        }
        let canonical = current.canonical_content();
        if let Err(reason) = self.verifier.verify(&canonical, &signature) {
            return Err(Error::Unprocessable {
                field: "signature",
                message: reason,
            });
        }
        let checksum: [u8; 32] = Sha256::digest(&canonical).into();
        let result = self
            .store
            .sign_document(&current, &signature, &checksum, &ctx)
            .await;
        state.settle(current.id, KIND, result)
    }

    async fn registry(
        &self,
        myself: &ActorRef<DocumentMessage>,
        state: &mut EntityState<Document>,
        outcome: RegistryOutcome,
        ctx: RequestContext,
    ) -> Result<Arc<Document>> {
        let current = self.current(myself, state).await?;
        let Some(next) = outcome.next_status(current.status) else {
            return Err(Error::InvalidTransition {
                message: format!(
                    "a registry outcome cannot apply to a document that is {}",
                    current.status.as_str()
                ),
                current_status: current.status.as_str(),
                current_version: current.version,
            });
        };
        let result = self
            .store
            .record_registry_outcome(&current, &outcome, next, &ctx)
            .await;
        state.settle(current.id, KIND, result)
    }
}
