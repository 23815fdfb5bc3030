//! End-to-end tests against the real application, PostgreSQL and broker (see `scripts/test`).

mod actors;
mod appointments;
mod asyncapi;
mod audit;
mod auth;
mod browser;
mod bus;
mod cdc;
#[cfg(feature = "chaos")]
mod chaos;
mod consumers;
mod contract;
mod doctors;
mod documents;
mod graphql;
mod helpers;
mod instances;
mod openapi;
mod operations;
mod own_postgres;
mod patients;
mod registry;
mod resilience;
mod rollout;
mod search;
mod standins;
mod subscriptions;
mod switchover;
mod tracing;
mod validation;
