//! Patient rows: read, list, and the three writes (create, update, archive), each one
//! transaction with its audit and outbox rows.

use chrono::NaiveDate;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{
    ChangeRecord, Direction, Listing, Page, PgStore, StoreError, StoreResult, like_prefix,
    record_change, reordered,
};
use crate::context::RequestContext;
use crate::domain::{
    BirthDate, Email, OmsPolicy, Patient, PatientData, PatientEvent, PersonName, Snils,
};

/// What a patient list is ordered by (ties broken by id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PatientOrder {
    /// Last name, then first name, case-insensitively.
    #[default]
    Name,
    BirthDate,
    CreatedAt,
}

/// Which patients a list returns.
#[derive(Debug, Clone, Default)]
pub struct PatientFilter {
    pub last_name_prefix: Option<String>,
    pub birth_date: Option<NaiveDate>,
    /// Born on or after / on or before.
    pub born_from: Option<NaiveDate>,
    pub born_to: Option<NaiveDate>,
    pub include_archived: bool,
    pub order: PatientOrder,
    pub direction: Direction,
    pub offset: i64,
    pub limit: i64,
}

pub(super) fn patient_from_row(row: &Row) -> Patient {
    Patient {
        id: row.get("id"),
        data: PatientData {
            first_name: PersonName::from_stored(row.get("first_name")),
            middle_name: row
                .get::<_, Option<String>>("middle_name")
                .map(PersonName::from_stored),
            last_name: PersonName::from_stored(row.get("last_name")),
            birth_date: BirthDate::from_stored(row.get("birth_date")),
            email: row
                .get::<_, Option<String>>("email")
                .map(Email::from_stored),
            snils: row
                .get::<_, Option<String>>("snils")
                .map(Snils::from_stored),
            oms_policy: row
                .get::<_, Option<String>>("oms_policy")
                .map(OmsPolicy::from_stored),
        },
        archived_at: row.get("archived_at"),
        version: row.get("version"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

fn data_params(data: &PatientData) -> [Box<dyn ToSql + Sync + Send>; 7] {
    [
        Box::new(data.first_name.as_str().to_owned()),
        Box::new(data.middle_name.as_ref().map(|v| v.as_str().to_owned())),
        Box::new(data.last_name.as_str().to_owned()),
        Box::new(data.birth_date.date()),
        Box::new(data.email.as_ref().map(|v| v.as_str().to_owned())),
        Box::new(data.snils.as_ref().map(|v| v.as_str().to_owned())),
        Box::new(data.oms_policy.as_ref().map(|v| v.as_str().to_owned())),
    ]
}

impl PgStore {
    /// Returns the patient with `id`, archived or not.
    pub async fn load_patient(&self, id: Uuid) -> StoreResult<Option<Patient>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(include_str!("sql/patient_select.sql"))
            .await?;
        let row = client.query_opt(&statement, &[&id]).await?;
        Ok(row.as_ref().map(patient_from_row))
    }

    /// Returns one page of patients matching `filter`, ordered by name.
    pub async fn list_patients(&self, filter: &PatientFilter) -> StoreResult<Page<Patient>> {
        let prefix = filter.last_name_prefix.as_deref().map(like_prefix);
        let listing = Listing {
            page_sql: reordered(
                include_str!("sql/patient_list.sql"),
                "lower(last_name), lower(first_name), id",
                match filter.order {
                    PatientOrder::Name => &["lower(last_name)", "lower(first_name)", "id"],
                    PatientOrder::BirthDate => &["birth_date", "id"],
                    PatientOrder::CreatedAt => &["created_at", "id"],
                },
                filter.direction,
            ),
            count_sql: include_str!("sql/patient_count.sql"),
        };
        self.query_page(
            listing,
            &[
                &prefix,
                &filter.birth_date,
                &filter.include_archived,
                &filter.born_from,
                &filter.born_to,
            ],
            filter.offset,
            filter.limit,
            |row| Ok(patient_from_row(row)),
        )
        .await
    }

    /// Inserts a new patient with its audit and `PatientCreated` outbox rows.
    pub async fn insert_patient(
        &self,
        id: Uuid,
        data: &PatientData,
        ctx: &RequestContext,
    ) -> StoreResult<Patient> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = tx
            .prepare_cached(include_str!("sql/patient_insert.sql"))
            .await?;
        let data_params = data_params(data);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id];
        params.extend(
            data_params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync)),
        );
        let row = tx.query_one(&statement, &params).await?;
        let patient = patient_from_row(&row);
        record_patient_event(&tx, ctx, &patient, &PatientEvent::Created).await?;
        tx.commit().await?;
        Ok(patient)
    }

    /// Replaces the data of `current` if its version is still current in the database.
    pub async fn update_patient(
        &self,
        current: &Patient,
        next: &PatientData,
        ctx: &RequestContext,
    ) -> StoreResult<Patient> {
        let event = PatientEvent::Updated {
            updated_fields: next.changed_fields(&current.data),
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = tx
            .prepare_cached(include_str!("sql/patient_update.sql"))
            .await?;
        let data_params = data_params(next);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&current.id, &current.version];
        params.extend(
            data_params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync)),
        );
        let row = tx
            .query_opt(&statement, &params)
            .await?
            .ok_or(StoreError::VersionConflict)?;
        let patient = patient_from_row(&row);
        record_patient_event(&tx, ctx, &patient, &event).await?;
        tx.commit().await?;
        Ok(patient)
    }

    /// Archives `current` (patients are retained, never deleted).
    pub async fn archive_patient(
        &self,
        current: &Patient,
        ctx: &RequestContext,
    ) -> StoreResult<Patient> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = tx
            .prepare_cached(include_str!("sql/patient_archive.sql"))
            .await?;
        let row = tx
            .query_opt(&statement, &[&current.id, &current.version])
            .await?
            .ok_or(StoreError::VersionConflict)?;
        let patient = patient_from_row(&row);
        record_patient_event(&tx, ctx, &patient, &PatientEvent::Deleted).await?;
        tx.commit().await?;
        Ok(patient)
    }
}

async fn record_patient_event(
    tx: &deadpool_postgres::Transaction<'_>,
    ctx: &RequestContext,
    patient: &Patient,
    event: &PatientEvent,
) -> StoreResult<()> {
    record_change(
        tx,
        ctx,
        ChangeRecord {
            aggregate_type: "patient",
            aggregate_id: patient.id,
            patient_id: patient.id,
            event_type: event.event_type(),
            audit_action: event.audit_action(),
            version: patient.version,
            payload: event.payload(patient),
        },
    )
    .await
}
