//! Change data capture: decoding PostgreSQL's logical replication stream (`pgoutput`) and
//! shaping it into Debezium-compatible change records and business events.
//!
//! Built so far: the decoder and the record shapes, both pure and unit-tested. The
//! `CdcReader` actor that streams from the replication slot, snapshots, and confirms LSNs
//! after the producer's acknowledgements is the next step of the event-bus issue.

pub mod envelope;
pub mod pgoutput;
