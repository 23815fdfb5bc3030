//! `EntityState`: what an entity actor knows of its entity, and the moves every entity actor
//! makes with it — load on first use, settle after a write, and redo a command whose answer
//! a cached state decided.
//!
//! Several instances share one database, so a cached entity may be older than the committed
//! row (another instance wrote since). The store checks the row's version on every write, so
//! a write that commits was decided on current state. Any other answer decided on cached
//! state — a refusal (412, 409, an invalid transition) or "nothing to change" — may be wrong:
//! [`EntityState::redo_on_fresh`] drops the cache and the actor decides again on the committed
//! row, once. A cached version never decides a 409 or 412 by itself. A write that loses the
//! race to another instance between its read and its write (the row moved) is decided again
//! on the new row, up to [`MAX_MOVED_REDOS`] times: an unconditional write does not fail
//! because somebody else wrote, and a conditional one answers 412 with the committed version.

use std::future::Future;
use std::sync::Arc;

use ractor::ActorRef;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::internal_events::{EntityStateStale, WriteDecidedAgain, emit};
use crate::store::{StoreError, StoreResult};

/// How often one command is decided again because the row moved under it. Each redo means
/// another writer committed (progress), so a few suffice for any realistic contention.
pub const MAX_MOVED_REDOS: u32 = 8;

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

    /// The entity, if the state holds one (what a passivated actor leaves to its host).
    pub fn into_live(self) -> Option<Arc<T>> {
        match self {
            Self::Live(entity) => Some(entity),
            Self::Unloaded { .. } | Self::Missing { .. } => None,
        }
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

/// An entity with a row version (optimistic concurrency).
pub trait Versioned {
    fn id(&self) -> Uuid;
    fn version(&self) -> i64;
}

macro_rules! versioned {
    ($($entity:ty),*) => {$(
        impl Versioned for $entity {
            fn id(&self) -> Uuid {
                self.id
            }
            fn version(&self) -> i64 {
                self.version
            }
        }
    )*};
}

versioned!(
    crate::domain::Patient,
    crate::domain::Document,
    crate::domain::Appointment
);

impl<T: Versioned> EntityState<T> {
    /// The id of the entity this state is about.
    pub fn id(&self) -> Uuid {
        match self {
            Self::Live(entity) => entity.id(),
            Self::Unloaded { id } | Self::Missing { id } => *id,
        }
    }

    /// The version held in memory (`None`: nothing cached, the next use loads).
    pub fn cached_version(&self) -> Option<i64> {
        match self {
            Self::Live(entity) => Some(entity.version()),
            Self::Unloaded { .. } | Self::Missing { .. } => None,
        }
    }

    /// Drops a cached state older than `version` (the committed row's, read after the
    /// caller's read began), so the next use reloads.
    pub fn refresh_below(&mut self, version: i64) {
        if self.cached_version().is_some_and(|cached| cached < version) {
            emit(EntityStateStale);
            *self = Self::Unloaded { id: self.id() };
        }
    }

    /// Takes the answer to a write command on entity `id` decided on the state cached at
    /// version `cached` (`None`: it was loaded for this command). Unless it is a committed
    /// write, the answer may reflect a cache older than the row: the cache is dropped and
    /// `true` says to decide again on a fresh load. A fresh decision is final, unless the row
    /// moved before the write (`moved` counts those redos, up to [`MAX_MOVED_REDOS`]).
    pub fn redo_on_fresh(
        &mut self,
        cached: Option<i64>,
        answer: &Result<Arc<T>>,
        moved: &mut u32,
    ) -> bool {
        if matches!(answer, Err(Error::ModifiedConcurrently { .. })) {
            if *moved >= MAX_MOVED_REDOS {
                return false;
            }
            *moved += 1;
            emit(WriteDecidedAgain { moved: true });
            *self = Self::Unloaded { id: self.id() };
            return true;
        }
        let Some(cached) = cached else {
            return false;
        };
        let redo = match answer {
            // A write that committed has a new version; the same version wrote nothing.
            Ok(entity) => entity.version() == cached,
            Err(
                Error::PreconditionFailed { .. }
                | Error::Conflict { .. }
                | Error::InvalidTransition { .. }
                | Error::Unprocessable { .. },
            ) => true,
            Err(_) => false,
        };
        if redo {
            emit(WriteDecidedAgain { moved: false });
            *self = Self::Unloaded { id: self.id() };
        }
        redo
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Row(i64);

    impl Versioned for Row {
        fn id(&self) -> Uuid {
            Uuid::nil()
        }

        fn version(&self) -> i64 {
            self.0
        }
    }

    fn live(version: i64) -> EntityState<Row> {
        EntityState::Live(Arc::new(Row(version)))
    }

    #[test]
    fn a_refusal_decided_on_a_cached_state_is_decided_again_once() {
        let mut state = live(3);
        let mut moved = 0;
        let refusal = Err(Error::PreconditionFailed {
            expected: 4,
            current: 3,
        });
        assert!(state.redo_on_fresh(Some(3), &refusal, &mut moved));
        assert!(matches!(state, EntityState::Unloaded { .. }));
        // Decided on a fresh load: final.
        assert!(!state.redo_on_fresh(None, &refusal, &mut moved));
        // A committed write is final; "nothing changed" on a cache is not.
        let mut state = live(3);
        assert!(!state.redo_on_fresh(Some(3), &Ok(Arc::new(Row(4))), &mut moved));
        assert!(state.redo_on_fresh(Some(3), &Ok(Arc::new(Row(3))), &mut moved));
        assert_eq!(moved, 0);
    }

    #[test]
    fn a_row_that_moved_under_a_fresh_decision_is_decided_again_a_bounded_number_of_times() {
        let mut state = live(3);
        let mut moved = 0;
        let lost_race = Err(Error::ModifiedConcurrently { kind: "patient" });
        for _ in 0..MAX_MOVED_REDOS {
            assert!(state.redo_on_fresh(None, &lost_race, &mut moved));
            assert!(matches!(state, EntityState::Unloaded { .. }));
        }
        assert!(!state.redo_on_fresh(None, &lost_race, &mut moved));
        assert_eq!(moved, MAX_MOVED_REDOS);
    }
}
