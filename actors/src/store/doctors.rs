//! Doctor rows. Doctors are reference data written rarely, so they take the direct path
//! (no entity actor): the version check in SQL is what serialises concurrent writers.

use serde_json::json;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{
    AuditEntry, Listing, Page, PgStore, StoreError, StoreResult, insert_audit, like_prefix,
};
use crate::context::RequestContext;
use crate::domain::{Doctor, DoctorData, PersonName, Specialty};

/// Which doctors a list returns.
#[derive(Debug, Clone, Default)]
pub struct DoctorFilter {
    pub last_name_prefix: Option<String>,
    pub specialty: Option<String>,
    pub offset: i64,
    pub limit: i64,
}

pub(super) fn doctor_from_row(row: &Row) -> Doctor {
    Doctor {
        id: row.get("id"),
        data: DoctorData {
            first_name: PersonName::from_stored(row.get("first_name")),
            middle_name: row
                .get::<_, Option<String>>("middle_name")
                .map(PersonName::from_stored),
            last_name: PersonName::from_stored(row.get("last_name")),
            specialty: Specialty::from_stored(row.get("specialty")),
        },
        version: row.get("version"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

impl PgStore {
    pub async fn load_doctor(&self, id: Uuid) -> StoreResult<Option<Doctor>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(include_str!("sql/doctor_select.sql"))
            .await?;
        Ok(client
            .query_opt(&statement, &[&id])
            .await?
            .as_ref()
            .map(doctor_from_row))
    }

    pub async fn list_doctors(&self, filter: &DoctorFilter) -> StoreResult<Page<Doctor>> {
        let prefix = filter.last_name_prefix.as_deref().map(like_prefix);
        let listing = Listing {
            page_sql: include_str!("sql/doctor_list.sql").into(),
            count_sql: include_str!("sql/doctor_count.sql"),
        };
        self.query_page(
            listing,
            &[&prefix, &filter.specialty],
            filter.offset,
            filter.limit,
            |row| Ok(doctor_from_row(row)),
        )
        .await
    }

    /// Inserts a doctor with its audit row.
    pub async fn insert_doctor(
        &self,
        data: &DoctorData,
        ctx: &RequestContext,
    ) -> StoreResult<Doctor> {
        let id = Uuid::now_v7();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = tx
            .prepare_cached(include_str!("sql/doctor_insert.sql"))
            .await?;
        let middle_name = data.middle_name.as_ref().map(PersonName::as_str);
        let row = tx
            .query_one(
                &statement,
                &[
                    &id,
                    &data.first_name.as_str(),
                    &middle_name,
                    &data.last_name.as_str(),
                    &data.specialty.as_str(),
                ],
            )
            .await?;
        let doctor = doctor_from_row(&row);
        audit_doctor(&tx, ctx, "doctor.create", &doctor).await?;
        tx.commit().await?;
        Ok(doctor)
    }

    /// Replaces a doctor's data; with `expected_version`, only if it is still current.
    pub async fn update_doctor(
        &self,
        id: Uuid,
        expected_version: Option<i64>,
        data: &DoctorData,
        ctx: &RequestContext,
    ) -> StoreResult<Doctor> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = tx
            .prepare_cached(include_str!("sql/doctor_update.sql"))
            .await?;
        let middle_name = data.middle_name.as_ref().map(PersonName::as_str);
        let row = tx
            .query_opt(
                &statement,
                &[
                    &id,
                    &expected_version,
                    &data.first_name.as_str(),
                    &middle_name,
                    &data.last_name.as_str(),
                    &data.specialty.as_str(),
                ],
            )
            .await?;
        let Some(row) = row else {
            let exists = tx
                .query_opt("SELECT 1 FROM doctors WHERE id = $1", &[&id])
                .await?
                .is_some();
            return Err(if exists {
                StoreError::VersionConflict
            } else {
                StoreError::NotFound
            });
        };
        let doctor = doctor_from_row(&row);
        audit_doctor(&tx, ctx, "doctor.update", &doctor).await?;
        tx.commit().await?;
        Ok(doctor)
    }
}

async fn audit_doctor(
    tx: &deadpool_postgres::Transaction<'_>,
    ctx: &RequestContext,
    action: &str,
    doctor: &Doctor,
) -> StoreResult<()> {
    let entry = AuditEntry {
        action,
        object_type: "doctor",
        object_id: Some(doctor.id),
        details: json!({ "version": doctor.version }),
    };
    insert_audit(tx, ctx, entry).await
}
