//! medflow's domain: value types and entities, the PostgreSQL store, and the actors that own
//! entities.
//!
//! ```text
//! EntityHost<PatientActor> ── PatientActor(id) …   one actor per live patient
//! Patients (client) ── Lookup ─► host ────── message ─► actor ── transaction ─► PgStore
//! ```

pub mod appointment_actor;
pub mod appointments;
pub mod audit_sealer;
pub mod audit_tree;
pub mod audit_writer;
pub mod backoff;
pub mod bus;
pub mod cdc;
pub mod consume;
pub mod context;
pub mod document_actor;
pub mod documents;
pub mod domain;
pub mod entity_host;
pub mod entity_state;
pub mod error;
pub mod internal_events;
pub mod patient_actor;
pub mod patients;
pub mod registry_submitter;
pub mod search;
pub mod store;
pub mod trace;

pub use appointments::Appointments;
pub use audit_writer::AuditTrail;
pub use context::RequestContext;
pub use documents::Documents;
pub use error::{Error, Result};
pub use patients::Patients;
pub use store::PgStore;

/// The kinds of entity actors (`kind` in the entity metrics).
pub const ENTITY_KINDS: [&str; 3] = [
    <patient_actor::PatientActor as entity_host::EntityActor>::KIND,
    <appointment_actor::AppointmentActor as entity_host::EntityActor>::KIND,
    <document_actor::DocumentActor as entity_host::EntityActor>::KIND,
];
