//! Role-based access: the one policy every transport enforces.
//!
//! REST handlers, GraphQL resolvers and subscriptions all ask [`Policy::authorize`] with the
//! caller's [`Principal`], the [`Action`] and the [`Target`] it touches, so a permission is
//! defined once, here, and the README's table is rendered from it (a test keeps the two
//! equal). A principal holding several roles gets the union of their grants.

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use crate::auth::Principal;
use crate::problem::Problem;

/// The roles a token may carry (in its roles claim); unknown role names are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Doctor,
    Registrar,
    Admin,
    Accountant,
    QualityControl,
    Management,
    /// Sees only their own record, named by the token's `patient_id` claim.
    Patient,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Doctor,
        Role::Registrar,
        Role::Admin,
        Role::Accountant,
        Role::QualityControl,
        Role::Management,
        Role::Patient,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Doctor => "doctor",
            Role::Registrar => "registrar",
            Role::Admin => "admin",
            Role::Accountant => "accountant",
            Role::QualityControl => "quality_control",
            Role::Management => "management",
            Role::Patient => "patient",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a caller asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    PatientList,
    PatientRead,
    PatientCreate,
    PatientUpdate,
    PatientArchive,
    DoctorList,
    DoctorRead,
    DoctorCreate,
    DoctorUpdate,
    AppointmentList,
    AppointmentRead,
    AppointmentCreate,
    AppointmentTransition,
    DocumentList,
    DocumentRead,
    DocumentCreate,
    DocumentUpdate,
    DocumentSign,
    DocumentRegistryOutcome,
    AuditList,
    AuditVerify,
    CdcStatus,
    ConsumerAdmin,
}

impl Action {
    pub const ALL: [Action; 23] = [
        Action::PatientList,
        Action::PatientRead,
        Action::PatientCreate,
        Action::PatientUpdate,
        Action::PatientArchive,
        Action::DoctorList,
        Action::DoctorRead,
        Action::DoctorCreate,
        Action::DoctorUpdate,
        Action::AppointmentList,
        Action::AppointmentRead,
        Action::AppointmentCreate,
        Action::AppointmentTransition,
        Action::DocumentList,
        Action::DocumentRead,
        Action::DocumentCreate,
        Action::DocumentUpdate,
        Action::DocumentSign,
        Action::DocumentRegistryOutcome,
        Action::AuditList,
        Action::AuditVerify,
        Action::CdcStatus,
        Action::ConsumerAdmin,
    ];

    /// How the README names the operation.
    pub fn describe(self) -> &'static str {
        match self {
            Action::PatientList => "list patients",
            Action::PatientRead => "read a patient",
            Action::PatientCreate => "create a patient",
            Action::PatientUpdate => "update a patient (PUT, PATCH)",
            Action::PatientArchive => "archive a patient",
            Action::DoctorList => "list doctors",
            Action::DoctorRead => "read a doctor",
            Action::DoctorCreate => "create a doctor",
            Action::DoctorUpdate => "update a doctor",
            Action::AppointmentList => "list appointments",
            Action::AppointmentRead => "read an appointment",
            Action::AppointmentCreate => "book an appointment",
            Action::AppointmentTransition => "start, complete, cancel or reschedule an appointment",
            Action::DocumentList => "list documents",
            Action::DocumentRead => "read a document and its versions",
            Action::DocumentCreate => "create a draft document",
            Action::DocumentUpdate => "edit a draft document",
            Action::DocumentSign => "sign a document (as themself)",
            Action::DocumentRegistryOutcome => "record a registry outcome",
            Action::AuditList => "list the audit log",
            Action::AuditVerify => "verify the audit log",
            Action::CdcStatus => "read the CDC pipeline's status",
            Action::ConsumerAdmin => "inspect consumers, replay dead letters",
        }
    }
}

/// What the action touches, when a grant depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A collection, or an object no ownership rule applies to.
    Any,
    /// One patient's data: the record itself, their appointments and documents, or a list
    /// filtered to that patient.
    Patient(Uuid),
}

/// One role's grant for one action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Deny,
    Allow,
    /// Only when the target is the principal's own patient record.
    OwnRecord,
}

use Grant::{Allow as Y, Deny as N, OwnRecord as OWN};

/// The permission table, columns in [`Role::ALL`] order:
/// doctor, registrar, admin, accountant, quality_control, management, patient.
fn grants(action: Action) -> [Grant; 7] {
    match action {
        Action::PatientList => [Y, Y, Y, Y, Y, N, N],
        Action::PatientRead => [Y, Y, Y, Y, Y, N, OWN],
        Action::PatientCreate => [N, Y, Y, N, N, N, N],
        Action::PatientUpdate => [N, Y, Y, N, N, N, N],
        Action::PatientArchive => [N, N, Y, N, N, N, N],
        Action::DoctorList => [Y, Y, Y, Y, Y, Y, Y],
        Action::DoctorRead => [Y, Y, Y, Y, Y, Y, Y],
        Action::DoctorCreate => [N, N, Y, N, N, N, N],
        Action::DoctorUpdate => [N, N, Y, N, N, N, N],
        Action::AppointmentList => [Y, Y, Y, Y, Y, N, OWN],
        Action::AppointmentRead => [Y, Y, Y, Y, Y, N, OWN],
        Action::AppointmentCreate => [Y, Y, Y, N, N, N, N],
        Action::AppointmentTransition => [Y, Y, Y, N, N, N, N],
        Action::DocumentList => [Y, N, N, N, Y, N, OWN],
        Action::DocumentRead => [Y, N, N, N, Y, N, OWN],
        Action::DocumentCreate => [Y, N, N, N, N, N, N],
        Action::DocumentUpdate => [Y, N, N, N, N, N, N],
        Action::DocumentSign => [Y, N, N, N, N, N, N],
        Action::DocumentRegistryOutcome => [N, N, Y, N, N, N, N],
        Action::AuditList => [N, N, Y, N, N, N, N],
        Action::AuditVerify => [N, N, Y, N, N, N, N],
        Action::CdcStatus => [N, N, Y, N, N, N, N],
        Action::ConsumerAdmin => [N, N, Y, N, N, N, N],
    }
}

/// The access policy. Stateless today; a value so that transports hold and pass one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy;

impl Policy {
    /// Returns whether `principal` may perform `action` on `target`.
    pub fn allows(&self, principal: &Principal, action: Action, target: Target) -> bool {
        let row = grants(action);
        principal.roles.iter().any(|role| match row[role.index()] {
            Grant::Deny => false,
            Grant::Allow => true,
            Grant::OwnRecord => match target {
                Target::Patient(id) => principal.patient_id == Some(id),
                Target::Any => false,
            },
        })
    }

    /// Returns whether `principal` may perform `action` on at least some target: checked
    /// before loading an object whose owner decides, so that a caller who may never see
    /// such objects learns nothing about which exist.
    pub fn allows_some(&self, principal: &Principal, action: Action) -> bool {
        let row = grants(action);
        principal.roles.iter().any(|role| match row[role.index()] {
            Grant::Deny => false,
            Grant::Allow => true,
            Grant::OwnRecord => principal.patient_id.is_some(),
        })
    }

    /// Returns `Ok` when allowed, else the 403 problem (which names the action, not the
    /// data).
    pub fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        target: Target,
    ) -> Result<(), Problem> {
        if self.allows(principal, action, target) {
            return Ok(());
        }
        tracing::info!(action = ?action, subject = %principal.subject, "access denied");
        Err(Problem::forbidden(action.describe()))
    }

    /// Renders the permission table as Markdown, as the README shows it.
    pub fn markdown_table(&self) -> String {
        let mut out = String::from("| operation |");
        for role in Role::ALL {
            out.push_str(&format!(" `{role}` |"));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(Role::ALL.len()));
        out.push('\n');
        for action in Action::ALL {
            out.push_str(&format!("| {} |", action.describe()));
            for grant in grants(action) {
                out.push_str(match grant {
                    Grant::Deny => " – |",
                    Grant::Allow => " ✓ |",
                    Grant::OwnRecord => " own |",
                });
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(roles: &[Role], patient_id: Option<Uuid>) -> Principal {
        Principal {
            subject: "s".into(),
            roles: roles.to_vec(),
            patient_id,
        }
    }

    #[test]
    fn a_patient_reads_only_their_own_record() {
        let own = Uuid::new_v4();
        let patient = principal(&[Role::Patient], Some(own));
        let policy = Policy;
        assert!(policy.allows(&patient, Action::PatientRead, Target::Patient(own)));
        assert!(!policy.allows(
            &patient,
            Action::PatientRead,
            Target::Patient(Uuid::new_v4())
        ));
        assert!(!policy.allows(&patient, Action::PatientList, Target::Any));
        let without_claim = principal(&[Role::Patient], None);
        assert!(!policy.allows(&without_claim, Action::PatientRead, Target::Patient(own)));
    }

    #[test]
    fn roles_combine_and_no_role_means_nothing() {
        let policy = Policy;
        let both = principal(&[Role::Doctor, Role::Admin], None);
        assert!(policy.allows(&both, Action::PatientArchive, Target::Any));
        assert!(policy.allows(&both, Action::PatientList, Target::Any));
        let nobody = principal(&[], None);
        for action in Action::ALL {
            assert!(!policy.allows(&nobody, action, Target::Any), "{action:?}");
        }
    }

    #[test]
    fn the_readme_shows_the_enforced_table() {
        let readme = include_str!("../../README.md");
        let table = Policy.markdown_table();
        assert!(
            readme.contains(&table),
            "README.md must contain the permission table exactly as rendered:\n{table}"
        );
    }
}
