//! The doctor: a clinician who books appointments, authors and signs documents.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{PersonName, Specialty, ValidationErrors};

/// A doctor's fields as a client sent them, before validation.
#[derive(Debug, Clone, Default)]
pub struct DoctorFields {
    pub first_name: String,
    pub middle_name: Option<String>,
    pub last_name: String,
    pub specialty: String,
}

/// A doctor's validated data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DoctorData {
    pub first_name: PersonName,
    pub middle_name: Option<PersonName>,
    pub last_name: PersonName,
    pub specialty: Specialty,
}

impl DoctorData {
    pub fn parse(fields: DoctorFields) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let first_name = errors.check(PersonName::parse("firstName", &fields.first_name));
        let middle_name = errors.check_opt(
            fields
                .middle_name
                .as_deref()
                .map(|raw| PersonName::parse("middleName", raw)),
        );
        let last_name = errors.check(PersonName::parse("lastName", &fields.last_name));
        let specialty = errors.check(Specialty::parse("specialty", &fields.specialty));
        match (first_name, middle_name, last_name, specialty) {
            (Some(first_name), Some(middle_name), Some(last_name), Some(specialty))
                if errors.is_empty() =>
            {
                Ok(Self {
                    first_name,
                    middle_name,
                    last_name,
                    specialty,
                })
            }
            _ => Err(errors),
        }
    }
}

/// A doctor as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Doctor {
    pub id: Uuid,
    #[serde(flatten)]
    pub data: DoctorData,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
