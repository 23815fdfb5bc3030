//! medflow's domain: value types and entities, the PostgreSQL store, and the actors that own
//! entities.
//!
//! ```text
//! EntityRegistry<PatientActor> ── PatientActor(id) …   one actor per live patient
//! Patients (client) ── Lookup ─► registry ── message ─► actor ── transaction ─► PgStore
//! ```

pub mod context;
pub mod domain;
pub mod error;
pub mod patient_actor;
pub mod patients;
pub mod registry;
pub mod store;

pub use context::RequestContext;
pub use error::{Error, Result};
pub use patients::Patients;
pub use store::PgStore;
