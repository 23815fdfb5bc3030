//! The domain model: value types that parse on construction, so an invalid value cannot exist
//! past the boundary, and the entities built from them.
//!
//! Every parser reports a [`FieldError`] naming the offending field by its wire (camelCase) name;
//! callers collect them into [`ValidationErrors`] so a client learns every problem at once.

pub mod appointment;
mod doctor;
pub mod document;
mod patient;
mod values;

pub use appointment::{
    Appointment, AppointmentAction, AppointmentEvent, AppointmentFields, AppointmentStatus,
    NewAppointment, Payment, Visit,
};
pub use doctor::{Doctor, DoctorData, DoctorFields};
pub use document::{
    Document, DocumentEvent, DocumentFields, DocumentStatus, DocumentType, DraftEdit, NewDocument,
    RegistryOutcome, SignatureInput, SignatureRecord, SignatureVerifier, WellFormedSignature,
};
pub use patient::{
    Patient, PatientData, PatientEvent, PatientFields, PatientPatch, PatientPatchFields,
};
pub use values::{
    BirthDate, EMAIL_MAX_CHARS, EMAIL_PATTERN, Email, OmsPolicy, PersonName, Snils, Specialty,
};

use serde::Serialize;

/// Why a text holding U+0000 is refused: PostgreSQL cannot store that character in text or
/// JSON columns, so it is rejected at every boundary instead of failing in the database.
pub const NUL_REFUSED: &str = "must not contain the NUL character (U+0000)";

/// One invalid field: its wire name (a JSON pointer-like path such as `birthDate`) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every invalid field of one input, in the order the fields were checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// Records the outcome of one field's parse and returns the value when it was valid.
    pub fn check<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.0.push(error);
                None
            }
        }
    }

    /// Records the outcome of an optional field's parse.
    pub fn check_opt<T>(&mut self, result: Option<Result<T, FieldError>>) -> Option<Option<T>> {
        match result {
            None => Some(None),
            Some(result) => self.check(result).map(Some),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result<T>(self, value: impl FnOnce() -> T) -> Result<T, ValidationErrors> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

impl std::fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields: Vec<&str> = self.0.iter().map(|e| e.field.as_str()).collect();
        write!(f, "invalid fields: {}", fields.join(", "))
    }
}

impl std::error::Error for ValidationErrors {}
