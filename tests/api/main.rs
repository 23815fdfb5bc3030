//! End-to-end tests against the real application, PostgreSQL and broker (see `scripts/test`).

mod actors;
mod appointments;
mod audit;
mod auth;
mod bus;
mod cdc;
mod doctors;
mod documents;
mod graphql;
mod helpers;
mod openapi;
mod operations;
mod patients;
mod resilience;
mod subscriptions;
mod validation;
