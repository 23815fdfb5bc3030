//! The medflow application: configuration, telemetry and start-up of every part.
//!
//! See `DESIGN.md` (shared) for the architecture; the crates are `medflow-actors` (domain,
//! store, entity actors), `medflow-supervisors` (the supervision tree) and `medflow-http`
//! (REST, OpenAPI, health, metrics).

pub mod asyncapi;
pub mod channels;
pub mod config;
pub mod startup;
pub mod telemetry;
