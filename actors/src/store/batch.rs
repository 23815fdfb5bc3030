//! Batched reads for GraphQL's DataLoaders: one statement answers for many parents, so a page
//! of patients with their appointments and documents costs a constant number of queries.

use std::collections::HashMap;

use uuid::Uuid;

use super::appointments::appointment_from_row;
use super::doctors::doctor_from_row;
use super::documents::summary_from_row;
use super::patients::patient_from_row;
use super::{DocumentSummary, PgStore, StoreResult};
use crate::domain::{Appointment, Doctor, Patient};

/// Which parent a batch of children hangs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentParent {
    Patient,
    Appointment,
}

impl PgStore {
    /// The patients with these ids (archived ones too), by id.
    pub async fn patients_by_ids(&self, ids: &[Uuid]) -> StoreResult<HashMap<Uuid, Patient>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, first_name, middle_name, last_name, birth_date, email, snils,
                        oms_policy, archived_at, version, created_at, updated_at
                   FROM patients WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
        Ok(rows
            .iter()
            .map(patient_from_row)
            .map(|p| (p.id, p))
            .collect())
    }

    /// The doctors with these ids, by id.
    pub async fn doctors_by_ids(&self, ids: &[Uuid]) -> StoreResult<HashMap<Uuid, Doctor>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, first_name, middle_name, last_name, specialty, version,
                        created_at, updated_at
                   FROM doctors WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
        Ok(rows
            .iter()
            .map(doctor_from_row)
            .map(|d| (d.id, d))
            .collect())
    }

    /// Each patient's appointments, latest `per_parent` by start time (newest first).
    pub async fn appointments_of_patients(
        &self,
        patient_ids: &[Uuid],
        per_parent: i64,
    ) -> StoreResult<HashMap<Uuid, Vec<Appointment>>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT * FROM (
                     SELECT a.*, row_number() OVER (PARTITION BY patient_id
                                                    ORDER BY starts_at DESC, id) AS n
                       FROM appointments a WHERE patient_id = ANY($1)) ranked
                  WHERE n <= $2
                  ORDER BY starts_at DESC, id",
                &[&patient_ids, &per_parent],
            )
            .await?;
        let mut by_patient: HashMap<Uuid, Vec<Appointment>> = HashMap::new();
        for row in &rows {
            let appointment = appointment_from_row(row)?;
            by_patient
                .entry(appointment.patient_id)
                .or_default()
                .push(appointment);
        }
        Ok(by_patient)
    }

    /// Each parent's documents (summaries), latest `per_parent` first.
    pub async fn documents_of(
        &self,
        parent: DocumentParent,
        ids: &[Uuid],
        per_parent: i64,
    ) -> StoreResult<HashMap<Uuid, Vec<DocumentSummary>>> {
        let column = match parent {
            DocumentParent::Patient => "patient_id",
            DocumentParent::Appointment => "appointment_id",
        };
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT * FROM (
                         SELECT id, patient_id, appointment_id, author_id, doc_type, title,
                                content_version, status, signed_by, signed_at, registry_id,
                                version, created_at, updated_at,
                                row_number() OVER (PARTITION BY {column}
                                                   ORDER BY created_at DESC, id) AS n
                           FROM documents WHERE {column} = ANY($1)) ranked
                      WHERE n <= $2
                      ORDER BY created_at DESC, id"
                ),
                &[&ids, &per_parent],
            )
            .await?;
        let mut by_parent: HashMap<Uuid, Vec<DocumentSummary>> = HashMap::new();
        for row in &rows {
            let summary = summary_from_row(row)?;
            let key = match parent {
                DocumentParent::Patient => Some(summary.patient_id),
                DocumentParent::Appointment => summary.appointment_id,
            };
            if let Some(key) = key {
                by_parent.entry(key).or_default().push(summary);
            }
        }
        Ok(by_parent)
    }
}
