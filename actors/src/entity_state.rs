//! `EntityState`: what an entity actor knows of its entity, and the two moves every entity
//! actor makes with it — load on first use, and settle after a write.

use std::future::Future;
use std::sync::Arc;

use ractor::ActorRef;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::store::{StoreError, StoreResult};

/// The state of an entity actor.
#[derive(Debug)]
pub enum EntityState<T> {
    /// Not read yet, or dropped after an uncertain outcome: reload before use.
    Unloaded { id: Uuid },
    /// Equal to the committed row when it was last read or written.
    Live(Arc<T>),
    /// No such entity: the actor answers what is queued and stops.
    Missing { id: Uuid },
}

impl<T> EntityState<T> {
    pub fn new(id: Uuid) -> Self {
        Self::Unloaded { id }
    }

    /// Returns the entity, reading it with `load` first if needed.
    pub async fn loaded<M, F, Fut>(
        &mut self,
        myself: &ActorRef<M>,
        kind: &'static str,
        load: F,
    ) -> Result<Arc<T>>
    where
        M: ractor::Message,
        F: FnOnce(Uuid) -> Fut,
        Fut: Future<Output = StoreResult<Option<T>>>,
    {
        let id = match self {
            Self::Live(entity) => return Ok(entity.clone()),
            Self::Missing { .. } => return Err(Error::NotFound { kind }),
            Self::Unloaded { id } => *id,
        };
        match load(id).await {
            Ok(Some(entity)) => {
                let entity = Arc::new(entity);
                *self = Self::Live(entity.clone());
                Ok(entity)
            }
            Ok(None) => {
                // Nothing to own: answer what is queued, then stop, so probing random ids
                // does not fill memory with empty actors.
                *self = Self::Missing { id };
                let _ = myself.get_cell().drain();
                Err(Error::NotFound { kind })
            }
            Err(error) => Err(Error::from_store(kind, error)),
        }
    }

    /// Takes the outcome of a write of entity `id`: a committed entity becomes the state; a
    /// refusal that rolled back keeps it; anything uncertain (a lost race, an outage) drops
    /// it so the next message reloads the truth.
    pub fn settle(
        &mut self,
        id: Uuid,
        kind: &'static str,
        result: StoreResult<T>,
    ) -> Result<Arc<T>> {
        match result {
            Ok(entity) => {
                let entity = Arc::new(entity);
                *self = Self::Live(entity.clone());
                Ok(entity)
            }
            Err(
                error @ (StoreError::Duplicate { .. }
                | StoreError::Overlap
                | StoreError::Unprocessable { .. }),
            ) => Err(Error::from_store(kind, error)),
            Err(error) => {
                *self = Self::Unloaded { id };
                Err(Error::from_store(kind, error))
            }
        }
    }
}

/// Checks `If-Match` against the current version.
pub fn check_version(if_match: Option<i64>, current: i64) -> Result<()> {
    match if_match {
        Some(expected) if expected != current => {
            Err(Error::PreconditionFailed { expected, current })
        }
        _ => Ok(()),
    }
}
