//! `Appointments`: the typed API the transports use to reach appointment actors.

use std::sync::Arc;

use uuid::Uuid;

use crate::appointment_actor::{AppointmentActor, AppointmentMessage};
use crate::context::RequestContext;
use crate::domain::{Appointment, AppointmentAction, NewAppointment};
use crate::entity_host::{EntityClient, Retry};
use crate::error::{Error, Result};
use crate::store::PgStore;

#[derive(Clone)]
pub struct Appointments {
    client: EntityClient<AppointmentActor>,
    store: PgStore,
}

impl Appointments {
    pub fn new(client: EntityClient<AppointmentActor>, store: PgStore) -> Self {
        Self { client, store }
    }

    /// Books an appointment with a fresh id. Like a patient's creation, this needs no actor:
    /// nobody knows the id yet, and PostgreSQL arbitrates overlapping bookings.
    pub async fn create(
        &self,
        booking: &NewAppointment,
        ctx: &RequestContext,
    ) -> Result<Arc<Appointment>> {
        self.store
            .insert_appointment(Uuid::now_v7(), booking, ctx)
            .await
            .map(Arc::new)
            .map_err(|error| Error::from_store("appointment", error))
    }

    /// Returns `appointment` unless `committed` (its committed version, read after the read
    /// began) is newer; then the actor reloads and answers the committed row.
    pub async fn at_least(
        &self,
        appointment: Arc<Appointment>,
        committed: Option<i64>,
    ) -> Result<Arc<Appointment>> {
        match committed {
            Some(at_least) if at_least > appointment.version => {
                self.client
                    .ask(appointment.id, Retry::Idempotent, |reply| {
                        AppointmentMessage::Get {
                            at_least: Some(at_least),
                            reply,
                        }
                    })
                    .await
            }
            _ => Ok(appointment),
        }
    }

    pub async fn get(&self, id: Uuid) -> Result<Arc<Appointment>> {
        self.client
            .ask(id, Retry::Idempotent, |reply| AppointmentMessage::Get {
                at_least: None,
                reply,
            })
            .await
    }

    pub async fn act(
        &self,
        id: Uuid,
        action: AppointmentAction,
        if_match: Option<i64>,
        ctx: &RequestContext,
    ) -> Result<Arc<Appointment>> {
        self.client
            .ask(id, Retry::OnlyIfUndelivered, |reply| {
                AppointmentMessage::Act {
                    action: action.clone(),
                    if_match,
                    ctx: ctx.clone(),
                    reply,
                }
            })
            .await
    }
}
