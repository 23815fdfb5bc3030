//! The crate's error: what an operation on an entity can answer besides success. These are
//! replies to a caller, never reasons to crash an actor.

use std::time::Duration;

use crate::domain::ValidationErrors;
use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("invalid input: {0}")]
    Invalid(ValidationErrors),
    #[error("{kind} not found")]
    NotFound { kind: &'static str },
    /// `If-Match` named a version that is no longer current.
    #[error("version {expected} is not current (current is {current})")]
    PreconditionFailed { expected: i64, current: i64 },
    /// The row changed between the actor's read and its write (another instance wrote in
    /// between). Entity actors decide again on the new row (see
    /// [`crate::entity_state::EntityState::redo_on_fresh`]); only a writer that keeps losing
    /// the race sees it.
    #[error("the {kind} was modified concurrently; reload it and retry")]
    ModifiedConcurrently { kind: &'static str },
    /// The operation conflicts with the entity's state.
    #[error("{message}")]
    Conflict {
        message: String,
        current_version: Option<i64>,
    },
    #[error("a record with this {field} already exists")]
    Duplicate { field: &'static str },
    /// The request is well-formed but names something unusable (an unknown or archived
    /// patient, an unknown doctor): 422 naming the field.
    #[error("{field}: {message}")]
    Unprocessable {
        field: &'static str,
        message: String,
    },
    /// The entity's lifecycle does not allow the action in its current status.
    #[error("{message}")]
    InvalidTransition {
        message: String,
        current_status: &'static str,
        current_version: i64,
    },
    /// A dependency is down or the entity is backing off after crashes; retry later.
    #[error("temporarily unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The outcome of a write is unknown (its actor died while handling it).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            retry_after: None,
        }
    }

    /// Maps a store error met while acting on an entity of `kind`.
    pub fn from_store(kind: &'static str, error: StoreError) -> Self {
        match error {
            StoreError::NotFound => Self::NotFound { kind },
            StoreError::VersionConflict => Self::ModifiedConcurrently { kind },
            StoreError::Duplicate { field } => Self::Duplicate { field },
            StoreError::Overlap => Self::Conflict {
                message: "the doctor already has an appointment overlapping this time".into(),
                current_version: None,
            },
            StoreError::Unprocessable { field, message } => Self::Unprocessable {
                field,
                message: message.into(),
            },
            StoreError::Unstorable => Self::Invalid(crate::domain::ValidationErrors(vec![
                crate::domain::FieldError::new("input", crate::domain::NUL_REFUSED),
            ])),
            StoreError::Unavailable(message) => Self::unavailable(message),
            StoreError::Unexpected(error) => Self::Internal(format!("{error:#}")),
        }
    }
}
