//! End-to-end tests against the real application, PostgreSQL and broker (see `scripts/test`).

mod actors;
mod auth;
mod doctors;
mod helpers;
mod openapi;
mod operations;
mod patients;
mod validation;
