//! Change data capture: decoding PostgreSQL's logical replication stream (`pgoutput`) and
//! shaping it into Debezium-compatible change records and business events.
//!
//! [`reader::CdcReader`] streams from the replication slot, snapshots, and confirms LSNs
//! only after the producer's acknowledgements; [`pgoutput`] decodes the stream and
//! [`envelope`] shapes the records.

pub mod envelope;
pub mod pgoutput;
pub mod reader;
