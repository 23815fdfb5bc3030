//! The appointment: a patient's visit to a doctor, and its lifecycle.
//!
//! ```text
//! scheduled ──start──▶ in_progress ──complete──▶ completed
//!     │ ╰──reschedule (new time, stays scheduled)
//!     ╰──cancel (reason)──▶ cancelled
//! ```
//! Anything else is refused with the current status. Overlaps of one doctor's live
//! appointments are refused by PostgreSQL (an exclusion constraint), not here.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{FieldError, ValidationErrors};

pub const MIN_DURATION_MINUTES: i32 = 5;
pub const MAX_DURATION_MINUTES: i32 = 240;
const MAX_REASON_CHARS: usize = 500;
/// Bookings further ahead than this are refused as typos.
const MAX_DAYS_AHEAD: i64 = 2 * 366;

/// Who pays: the compulsory medical insurance (OMS) or the patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Payment {
    Oms,
    Paid,
}

/// A first visit for a complaint, or a follow-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Visit {
    Primary,
    Repeat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppointmentStatus {
    Scheduled,
    InProgress,
    Completed,
    Cancelled,
}

macro_rules! wire_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }

            pub fn parse(raw: &str) -> Option<Self> {
                match raw { $($name => Some($ty::$variant),)+ _ => None }
            }

            /// Every wire name, for error messages.
            pub fn names() -> &'static [&'static str] {
                &[$($name),+]
            }
        }
    };
}

wire_enum!(Payment { Oms => "oms", Paid => "paid" });
wire_enum!(Visit { Primary => "primary", Repeat => "repeat" });
wire_enum!(AppointmentStatus {
    Scheduled => "scheduled",
    InProgress => "in_progress",
    Completed => "completed",
    Cancelled => "cancelled",
});

pub(crate) use wire_enum;

/// A booking request as a client sent it.
#[derive(Debug, Clone)]
pub struct AppointmentFields {
    pub patient_id: Uuid,
    pub doctor_id: Uuid,
    pub starts_at: DateTime<Utc>,
    pub duration_minutes: i64,
    pub payment: String,
    pub visit: String,
}

/// A validated booking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAppointment {
    pub patient_id: Uuid,
    pub doctor_id: Uuid,
    pub starts_at: DateTime<Utc>,
    pub duration_minutes: i32,
    pub payment: Payment,
    pub visit: Visit,
}

fn parse_slot(
    starts_at: DateTime<Utc>,
    duration_minutes: i64,
    now: DateTime<Utc>,
    errors: &mut ValidationErrors,
) -> Option<(DateTime<Utc>, i32)> {
    let starts_at = errors.check(if starts_at < now - Duration::minutes(5) {
        Err(FieldError::new("startsAt", "must not be in the past"))
    } else if starts_at > now + Duration::days(MAX_DAYS_AHEAD) {
        Err(FieldError::new(
            "startsAt",
            "must be within two years from now",
        ))
    } else {
        Ok(starts_at)
    });
    let duration = errors.check(
        i32::try_from(duration_minutes)
            .ok()
            .filter(|d| (MIN_DURATION_MINUTES..=MAX_DURATION_MINUTES).contains(d))
            .ok_or_else(|| FieldError::new("durationMinutes", "must be from 5 to 240")),
    );
    Some((starts_at?, duration?))
}

impl NewAppointment {
    /// Validates every field and reports all invalid ones together.
    pub fn parse(fields: AppointmentFields, now: DateTime<Utc>) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let slot = parse_slot(fields.starts_at, fields.duration_minutes, now, &mut errors);
        let payment = errors.check(
            Payment::parse(&fields.payment)
                .ok_or_else(|| FieldError::new("payment", "must be oms or paid")),
        );
        let visit = errors.check(
            Visit::parse(&fields.visit)
                .ok_or_else(|| FieldError::new("visit", "must be primary or repeat")),
        );
        match (slot, payment, visit) {
            (Some((starts_at, duration_minutes)), Some(payment), Some(visit))
                if errors.is_empty() =>
            {
                Ok(Self {
                    patient_id: fields.patient_id,
                    doctor_id: fields.doctor_id,
                    starts_at,
                    duration_minutes,
                    payment,
                    visit,
                })
            }
            _ => Err(errors),
        }
    }
}

/// An appointment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appointment {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub doctor_id: Uuid,
    pub starts_at: DateTime<Utc>,
    pub duration_minutes: i32,
    pub payment: Payment,
    pub visit: Visit,
    pub status: AppointmentStatus,
    pub cancel_reason: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Appointment {
    pub fn ends_at(&self) -> DateTime<Utc> {
        self.starts_at + Duration::minutes(i64::from(self.duration_minutes))
    }
}

/// A lifecycle action on an appointment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppointmentAction {
    Start,
    Complete,
    Cancel {
        reason: String,
    },
    Reschedule {
        starts_at: DateTime<Utc>,
        duration_minutes: i32,
    },
}

impl AppointmentAction {
    /// Validates a cancellation reason.
    pub fn cancel(reason: &str) -> Result<Self, ValidationErrors> {
        let reason = super::values::line(reason, MAX_REASON_CHARS).map_err(|problem| {
            let message = match problem {
                super::values::LineProblem::Control => "must not contain control characters",
                _ => "must be 1–500 characters",
            };
            ValidationErrors(vec![FieldError::new("reason", message)])
        })?;
        Ok(Self::Cancel { reason })
    }

    /// Validates a new time; the duration stays unless given.
    pub fn reschedule(
        starts_at: DateTime<Utc>,
        duration_minutes: i64,
        now: DateTime<Utc>,
    ) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        match parse_slot(starts_at, duration_minutes, now, &mut errors) {
            Some((starts_at, duration_minutes)) if errors.is_empty() => Ok(Self::Reschedule {
                starts_at,
                duration_minutes,
            }),
            _ => Err(errors),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Complete => "complete",
            Self::Cancel { .. } => "cancel",
            Self::Reschedule { .. } => "reschedule",
        }
    }

    /// What `AppointmentStatusChanged` calls the action (its payload's `action`).
    pub fn event_name(&self) -> &'static str {
        match self {
            Self::Start => "started",
            Self::Complete => "completed",
            Self::Cancel { .. } => "cancelled",
            Self::Reschedule { .. } => "rescheduled",
        }
    }

    /// Every [`AppointmentAction::event_name`].
    pub const EVENT_NAMES: [&'static str; 4] = ["started", "completed", "cancelled", "rescheduled"];

    /// The status after the action, or `None` when the current status does not allow it.
    pub fn next_status(&self, current: AppointmentStatus) -> Option<AppointmentStatus> {
        use AppointmentStatus::*;
        match (self, current) {
            (Self::Start, Scheduled) => Some(InProgress),
            (Self::Complete, InProgress) => Some(Completed),
            (Self::Cancel { .. }, Scheduled) => Some(Cancelled),
            (Self::Reschedule { .. }, Scheduled) => Some(Scheduled),
            _ => None,
        }
    }
}

/// A business event about an appointment (the outbox payload).
#[derive(Debug, Clone)]
pub enum AppointmentEvent {
    Scheduled,
    StatusChanged {
        previous: AppointmentStatus,
        action: &'static str,
    },
}

impl AppointmentEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Scheduled => "AppointmentScheduled",
            Self::StatusChanged { .. } => "AppointmentStatusChanged",
        }
    }

    pub fn audit_action(&self) -> &'static str {
        match self {
            Self::Scheduled => "appointment.create",
            Self::StatusChanged { .. } => "appointment.transition",
        }
    }

    /// The payload the profile fixes: `id`, `patientId`, `doctorId`, `scheduledDate`, `status`
    /// (plus, for a change, the previous status and the action).
    pub fn payload(&self, appointment: &Appointment) -> Value {
        let mut payload = json!({
            "id": appointment.id,
            "patientId": appointment.patient_id,
            "doctorId": appointment.doctor_id,
            "scheduledDate": appointment.starts_at,
            "durationMinutes": appointment.duration_minutes,
            "status": appointment.status.as_str(),
        });
        if let Self::StatusChanged { previous, action } = self {
            payload["previousStatus"] = json!(previous.as_str());
            payload["action"] = json!(action);
            if let Some(reason) = &appointment.cancel_reason {
                payload["reason"] = json!(reason);
            }
        }
        payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AppointmentStatus::*;

    #[test]
    fn only_the_documented_transitions_are_allowed() {
        let now = Utc::now();
        let actions = [
            AppointmentAction::Start,
            AppointmentAction::Complete,
            AppointmentAction::cancel("ill").unwrap(),
            AppointmentAction::reschedule(now + Duration::days(1), 30, now).unwrap(),
        ];
        let allowed: Vec<(&str, AppointmentStatus, AppointmentStatus)> = vec![
            ("start", Scheduled, InProgress),
            ("complete", InProgress, Completed),
            ("cancel", Scheduled, Cancelled),
            ("reschedule", Scheduled, Scheduled),
        ];
        for action in &actions {
            for from in [Scheduled, InProgress, Completed, Cancelled] {
                let expected = allowed
                    .iter()
                    .find(|(name, f, _)| *name == action.name() && *f == from)
                    .map(|(_, _, to)| *to);
                assert_eq!(
                    action.next_status(from),
                    expected,
                    "{} from {from:?}",
                    action.name()
                );
            }
        }
    }

    #[test]
    fn bookings_are_validated_field_by_field() {
        let now = Utc::now();
        let fields = AppointmentFields {
            patient_id: Uuid::new_v4(),
            doctor_id: Uuid::new_v4(),
            starts_at: now - Duration::days(1),
            duration_minutes: 4,
            payment: "free".into(),
            visit: "primary".into(),
        };
        let errors = NewAppointment::parse(fields, now).unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["startsAt", "durationMinutes", "payment"]);
    }
}
