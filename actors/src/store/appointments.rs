//! Appointment rows: booking (with the patient and doctor checks), transitions, listing.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{
    ChangeRecord, Direction, Listing, Page, PgStore, StoreError, StoreResult,
    ensure_active_patient, record_change, reordered,
};
use crate::context::RequestContext;
use crate::domain::{
    Appointment, AppointmentEvent, AppointmentStatus, NewAppointment, Payment, Visit,
};

const KIND: &str = "appointment";

/// Which appointments a list returns, ordered by start time.
#[derive(Debug, Clone, Default)]
pub struct AppointmentFilter {
    pub patient_id: Option<Uuid>,
    pub doctor_id: Option<Uuid>,
    pub status: Option<AppointmentStatus>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// By start time.
    pub direction: Direction,
    pub offset: i64,
    pub limit: i64,
}

pub(super) fn appointment_from_row(row: &Row) -> StoreResult<Appointment> {
    let corrupt = |column: &str| {
        StoreError::Unexpected(anyhow::anyhow!(
            "appointments.{column} holds an unknown value"
        ))
    };
    Ok(Appointment {
        id: row.get("id"),
        patient_id: row.get("patient_id"),
        doctor_id: row.get("doctor_id"),
        starts_at: row.get("starts_at"),
        duration_minutes: row.get("duration_minutes"),
        payment: Payment::parse(row.get("payment")).ok_or_else(|| corrupt("payment"))?,
        visit: Visit::parse(row.get("visit")).ok_or_else(|| corrupt("visit"))?,
        status: AppointmentStatus::parse(row.get("status")).ok_or_else(|| corrupt("status"))?,
        cancel_reason: row.get("cancel_reason"),
        version: row.get("version"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

async fn record_appointment_event(
    tx: &deadpool_postgres::Transaction<'_>,
    ctx: &RequestContext,
    appointment: &Appointment,
    event: &AppointmentEvent,
) -> StoreResult<()> {
    record_change(
        tx,
        ctx,
        ChangeRecord {
            aggregate_type: KIND,
            aggregate_id: appointment.id,
            patient_id: appointment.patient_id,
            event_type: event.event_type(),
            audit_action: event.audit_action(),
            version: appointment.version,
            payload: event.payload(appointment),
        },
    )
    .await
}

impl PgStore {
    /// Books an appointment: the patient must exist and not be archived (its row is locked
    /// against a concurrent archive), the doctor must exist, and the doctor's time must be
    /// free (the exclusion constraint answers [`StoreError::Overlap`]).
    pub async fn insert_appointment(
        &self,
        id: Uuid,
        booking: &NewAppointment,
        ctx: &RequestContext,
    ) -> StoreResult<Appointment> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        ensure_active_patient(
            &tx,
            booking.patient_id,
            "the patient is archived and cannot be booked",
        )
        .await?;
        let doctor = tx
            .prepare_cached(include_str!("sql/doctor_exists.sql"))
            .await?;
        if tx
            .query_opt(&doctor, &[&booking.doctor_id])
            .await?
            .is_none()
        {
            return Err(StoreError::Unprocessable {
                field: "doctorId",
                message: "no such doctor",
            });
        }
        let insert = tx
            .prepare_cached(include_str!("sql/appointment_insert.sql"))
            .await?;
        let ends_at =
            booking.starts_at + chrono::Duration::minutes(i64::from(booking.duration_minutes));
        let row = tx
            .query_one(
                &insert,
                &[
                    &id,
                    &booking.patient_id,
                    &booking.doctor_id,
                    &booking.starts_at,
                    &ends_at,
                    &booking.duration_minutes,
                    &booking.payment.as_str(),
                    &booking.visit.as_str(),
                ],
            )
            .await?;
        let appointment = appointment_from_row(&row)?;
        record_appointment_event(&tx, ctx, &appointment, &AppointmentEvent::Scheduled).await?;
        tx.commit().await?;
        Ok(appointment)
    }

    pub async fn load_appointment(&self, id: Uuid) -> StoreResult<Option<Appointment>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(include_str!("sql/appointment_select.sql"))
            .await?;
        client
            .query_opt(&statement, &[&id])
            .await?
            .as_ref()
            .map(appointment_from_row)
            .transpose()
    }

    /// Writes `next` (derived from `current` by a lifecycle action) if `current` is still
    /// the committed version.
    pub async fn update_appointment(
        &self,
        current: &Appointment,
        next: &Appointment,
        event: &AppointmentEvent,
        ctx: &RequestContext,
    ) -> StoreResult<Appointment> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = tx
            .prepare_cached(include_str!("sql/appointment_update.sql"))
            .await?;
        let row = tx
            .query_opt(
                &statement,
                &[
                    &current.id,
                    &current.version,
                    &next.status.as_str(),
                    &next.starts_at,
                    &next.ends_at(),
                    &next.duration_minutes,
                    &next.cancel_reason,
                ],
            )
            .await?
            .ok_or(StoreError::VersionConflict)?;
        let appointment = appointment_from_row(&row)?;
        record_appointment_event(&tx, ctx, &appointment, event).await?;
        tx.commit().await?;
        Ok(appointment)
    }

    pub async fn list_appointments(
        &self,
        filter: &AppointmentFilter,
    ) -> StoreResult<Page<Appointment>> {
        let status = filter.status.map(AppointmentStatus::as_str);
        let listing = Listing {
            page_sql: reordered(
                include_str!("sql/appointment_list.sql"),
                "starts_at, id",
                &["starts_at", "id"],
                filter.direction,
            ),
            count_sql: include_str!("sql/appointment_count.sql"),
        };
        self.query_page(
            listing,
            &[
                &filter.patient_id,
                &filter.doctor_id,
                &status,
                &filter.from,
                &filter.to,
            ],
            filter.offset,
            filter.limit,
            appointment_from_row,
        )
        .await
    }
}
