//! The patient: personal data, archived instead of deleted, versioned for optimistic
//! concurrency.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{BirthDate, Email, FieldError, OmsPolicy, PersonName, Snils, ValidationErrors};

/// A patient's fields as a client sent them, before validation.
#[derive(Debug, Clone, Default)]
pub struct PatientFields {
    pub first_name: String,
    pub middle_name: Option<String>,
    pub last_name: String,
    pub birth_date: NaiveDate,
    pub email: Option<String>,
    pub snils: Option<String>,
    pub oms_policy: Option<String>,
}

/// A patient's validated personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PatientData {
    pub first_name: PersonName,
    pub middle_name: Option<PersonName>,
    pub last_name: PersonName,
    pub birth_date: BirthDate,
    pub email: Option<Email>,
    pub snils: Option<Snils>,
    pub oms_policy: Option<OmsPolicy>,
}

impl PatientData {
    /// Validates every field and reports all invalid ones together.
    pub fn parse(fields: PatientFields, today: NaiveDate) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let first_name = errors.check(PersonName::parse("firstName", &fields.first_name));
        let middle_name = errors.check_opt(
            fields
                .middle_name
                .as_deref()
                .map(|raw| PersonName::parse("middleName", raw)),
        );
        let last_name = errors.check(PersonName::parse("lastName", &fields.last_name));
        let birth_date = errors.check(BirthDate::parse("birthDate", fields.birth_date, today));
        let email = errors.check_opt(
            fields
                .email
                .as_deref()
                .map(|raw| Email::parse("email", raw)),
        );
        let snils = errors.check_opt(
            fields
                .snils
                .as_deref()
                .map(|raw| Snils::parse("snils", raw)),
        );
        let oms_policy = errors.check_opt(
            fields
                .oms_policy
                .as_deref()
                .map(|raw| OmsPolicy::parse("omsPolicy", raw)),
        );
        match (
            first_name,
            middle_name,
            last_name,
            birth_date,
            email,
            snils,
            oms_policy,
        ) {
            (
                Some(first_name),
                Some(middle_name),
                Some(last_name),
                Some(birth_date),
                Some(email),
                Some(snils),
                Some(oms_policy),
            ) if errors.is_empty() => Ok(Self {
                first_name,
                middle_name,
                last_name,
                birth_date,
                email,
                snils,
                oms_policy,
            }),
            _ => Err(errors),
        }
    }

    /// Returns the wire names and new values of the fields that differ from `before`.
    pub fn changed_fields(&self, before: &PatientData) -> Map<String, Value> {
        let (Value::Object(after), Value::Object(before)) = (json!(self), json!(before)) else {
            return Map::new();
        };
        after
            .into_iter()
            .filter(|(key, value)| before.get(key) != Some(value))
            .collect()
    }
}

/// A partial update as a client sent it (JSON merge patch): `None` leaves a field as it is;
/// `Some(None)` clears an optional field.
#[derive(Debug, Clone, Default)]
pub struct PatientPatchFields {
    pub first_name: Option<String>,
    pub middle_name: Option<Option<String>>,
    pub last_name: Option<String>,
    pub birth_date: Option<NaiveDate>,
    pub email: Option<Option<String>>,
    pub snils: Option<Option<String>>,
    pub oms_policy: Option<Option<String>>,
}

/// A validated partial update. Each present field is valid on its own, so applying it to
/// valid data yields valid data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientPatch {
    pub first_name: Option<PersonName>,
    pub middle_name: Option<Option<PersonName>>,
    pub last_name: Option<PersonName>,
    pub birth_date: Option<BirthDate>,
    pub email: Option<Option<Email>>,
    pub snils: Option<Option<Snils>>,
    pub oms_policy: Option<Option<OmsPolicy>>,
}

impl PatientPatch {
    pub fn parse(fields: PatientPatchFields, today: NaiveDate) -> Result<Self, ValidationErrors> {
        fn nullable<T>(
            errors: &mut ValidationErrors,
            raw: Option<Option<String>>,
            parse: impl Fn(&str) -> Result<T, FieldError>,
        ) -> Option<Option<T>> {
            match raw {
                None => None,
                Some(None) => Some(None),
                Some(Some(raw)) => errors.check(parse(&raw)).map(Some),
            }
        }
        let mut errors = ValidationErrors::default();
        let patch = Self {
            first_name: fields
                .first_name
                .and_then(|raw| errors.check(PersonName::parse("firstName", &raw))),
            middle_name: nullable(&mut errors, fields.middle_name, |raw| {
                PersonName::parse("middleName", raw)
            }),
            last_name: fields
                .last_name
                .and_then(|raw| errors.check(PersonName::parse("lastName", &raw))),
            birth_date: fields
                .birth_date
                .and_then(|date| errors.check(BirthDate::parse("birthDate", date, today))),
            email: nullable(&mut errors, fields.email, |raw| Email::parse("email", raw)),
            snils: nullable(&mut errors, fields.snils, |raw| Snils::parse("snils", raw)),
            oms_policy: nullable(&mut errors, fields.oms_policy, |raw| {
                OmsPolicy::parse("omsPolicy", raw)
            }),
        };
        errors.into_result(|| patch)
    }

    /// Returns `data` with this patch applied.
    pub fn apply_to(&self, data: &PatientData) -> PatientData {
        let mut next = data.clone();
        if let Some(value) = &self.first_name {
            next.first_name = value.clone();
        }
        if let Some(value) = &self.middle_name {
            next.middle_name = value.clone();
        }
        if let Some(value) = &self.last_name {
            next.last_name = value.clone();
        }
        if let Some(value) = self.birth_date {
            next.birth_date = value;
        }
        if let Some(value) = &self.email {
            next.email = value.clone();
        }
        if let Some(value) = &self.snils {
            next.snils = value.clone();
        }
        if let Some(value) = &self.oms_policy {
            next.oms_policy = value.clone();
        }
        next
    }
}

/// A patient as stored: identity, data, lifecycle and concurrency metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Patient {
    pub id: Uuid,
    #[serde(flatten)]
    pub data: PatientData,
    pub archived_at: Option<DateTime<Utc>>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Patient {
    pub fn is_archived(&self) -> bool {
        self.archived_at.is_some()
    }
}

/// A business event about a patient, written to the outbox in the same transaction as the
/// change it describes. Payloads follow the integration profile.
#[derive(Debug, Clone, PartialEq)]
pub enum PatientEvent {
    Created,
    Updated { updated_fields: Map<String, Value> },
    Deleted,
}

impl PatientEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Created => "PatientCreated",
            Self::Updated { .. } => "PatientUpdated",
            Self::Deleted => "PatientDeleted",
        }
    }

    /// Returns the audit action recorded with this event.
    pub fn audit_action(&self) -> &'static str {
        match self {
            Self::Created => "patient.create",
            Self::Updated { .. } => "patient.update",
            Self::Deleted => "patient.archive",
        }
    }

    /// Returns the event payload for the patient after the change.
    pub fn payload(&self, patient: &Patient) -> Value {
        match self {
            Self::Created => json!(patient),
            Self::Updated { updated_fields } => {
                json!({ "id": patient.id, "updatedFields": updated_fields })
            }
            Self::Deleted => json!({ "id": patient.id }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
    }

    fn fields() -> PatientFields {
        PatientFields {
            first_name: "Анна".into(),
            middle_name: Some("Сергеевна".into()),
            last_name: "Иванова".into(),
            birth_date: NaiveDate::from_ymd_opt(1985, 3, 14).unwrap(),
            email: Some("anna@example.org".into()),
            snils: Some("11223344595".into()),
            oms_policy: Some("1234567890123456".into()),
        }
    }

    #[test]
    fn valid_fields_parse() {
        let data = PatientData::parse(fields(), today()).unwrap();
        assert_eq!(data.last_name.as_str(), "Иванова");
    }

    #[test]
    fn every_invalid_field_is_reported() {
        let mut raw = fields();
        raw.first_name = " ".into();
        raw.snils = Some("11223344596".into());
        raw.email = Some("nope".into());
        let errors = PatientData::parse(raw, today()).unwrap_err();
        let names: Vec<_> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(names, ["firstName", "email", "snils"]);
    }

    #[test]
    fn patch_applies_and_clears() {
        let data = PatientData::parse(fields(), today()).unwrap();
        let patch = PatientPatch::parse(
            PatientPatchFields {
                last_name: Some("Петрова".into()),
                email: Some(None),
                ..Default::default()
            },
            today(),
        )
        .unwrap();
        let next = patch.apply_to(&data);
        assert_eq!(next.last_name.as_str(), "Петрова");
        assert_eq!(next.email, None);
        let changed = next.changed_fields(&data);
        let mut names: Vec<&String> = changed.keys().collect();
        names.sort();
        assert_eq!(names, ["email", "lastName"]);
        assert_eq!(changed["email"], serde_json::Value::Null);
    }
}
