//! `AppointmentActor`: owns one appointment and serialises its lifecycle actions.
//!
//! Spawned by the appointment [`EntityHost`](crate::entity_host::EntityHost) on first
//! use; loads lazily; answers reads from memory; each action is one transaction (row with
//! version check, outbox row, audit row). A booking is inserted by
//! [`Appointments::create`](crate::Appointments::create) directly. Double-booking is refused
//! by PostgreSQL, so it holds across actors and pods.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::context::RequestContext;
use crate::domain::{Appointment, AppointmentAction, AppointmentEvent};
use crate::entity_host::EntityActor;
use crate::entity_state::{EntityState, check_version};
use crate::error::{Error, Result};
use crate::store::PgStore;

const KIND: &str = "appointment";

#[derive(Debug)]
pub enum AppointmentMessage {
    /// Returns the appointment. With `at_least` (a committed version read after the caller's
    /// read began), a cached state older than that — another instance wrote — is reloaded
    /// first.
    Get {
        at_least: Option<i64>,
        reply: RpcReplyPort<Result<Arc<Appointment>>>,
    },
    Act {
        action: AppointmentAction,
        if_match: Option<i64>,
        ctx: RequestContext,
        reply: RpcReplyPort<Result<Arc<Appointment>>>,
    },
}

#[derive(Debug, Clone)]
pub struct AppointmentActor {
    pub store: PgStore,
}

impl EntityActor for AppointmentActor {
    const KIND: &'static str = KIND;
    type Entity = Appointment;
}

impl Actor for AppointmentActor {
    type Msg = AppointmentMessage;
    type State = EntityState<Appointment>;
    type Arguments = EntityState<Appointment>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        start: EntityState<Appointment>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(start)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: AppointmentMessage,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AppointmentMessage::Get { at_least, reply } => {
                if let Some(at_least) = at_least {
                    state.refresh_below(at_least);
                }
                let answer =
                    Box::pin(state.loaded(&myself, KIND, |id| self.store.load_appointment(id)))
                        .await;
                let _ = reply.send(answer);
            }
            AppointmentMessage::Act {
                action,
                if_match,
                ctx,
                reply,
            } => {
                let answer = Box::pin(self.act(&myself, state, action, if_match, ctx)).await;
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }
}

impl AppointmentActor {
    /// Applies `action`, deciding again on the committed row if a cached state decided
    /// anything but a committed write (see [`EntityState::redo_on_fresh`]).
    async fn act(
        &self,
        myself: &ActorRef<AppointmentMessage>,
        state: &mut EntityState<Appointment>,
        action: AppointmentAction,
        if_match: Option<i64>,
        ctx: RequestContext,
    ) -> Result<Arc<Appointment>> {
        let mut moved = 0;
        loop {
            let cached = state.cached_version();
            let answer = self
                .act_once(myself, state, action.clone(), if_match, ctx.clone())
                .await;
            if !state.redo_on_fresh(cached, &answer, &mut moved) {
                return answer;
            }
        }
    }

    async fn act_once(
        &self,
        myself: &ActorRef<AppointmentMessage>,
        state: &mut EntityState<Appointment>,
        action: AppointmentAction,
        if_match: Option<i64>,
        ctx: RequestContext,
    ) -> Result<Arc<Appointment>> {
        let current = state
            .loaded(myself, KIND, |id| self.store.load_appointment(id))
            .await?;
        check_version(if_match, current.version)?;
        let Some(status) = action.next_status(current.status) else {
            return Err(Error::InvalidTransition {
                message: format!(
                    "cannot {} an appointment that is {}",
                    action.name(),
                    current.status.as_str()
                ),
                current_status: current.status.as_str(),
                current_version: current.version,
            });
        };
        let mut next = (*current).clone();
        next.status = status;
        match &action {
            AppointmentAction::Cancel { reason } => next.cancel_reason = Some(reason.clone()),
            AppointmentAction::Reschedule {
                starts_at,
                duration_minutes,
            } => {
                next.starts_at = *starts_at;
                next.duration_minutes = *duration_minutes;
            }
            AppointmentAction::Start | AppointmentAction::Complete => {}
        }
        let event = AppointmentEvent::StatusChanged {
            previous: current.status,
            action: action.event_name(),
        };
        let result = self
            .store
            .update_appointment(&current, &next, &event, &ctx)
            .await;
        state.settle(current.id, KIND, result)
    }
}
