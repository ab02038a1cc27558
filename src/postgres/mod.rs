//! Postgres protocol code: connection settings and TLS, the replication
//! connection, the pgoutput decoder, the type mapping and catalog queries.

pub mod catalog;
pub mod conninfo;
pub mod pgoutput;
pub mod replication;
pub mod snapshot;
pub mod tls;
pub mod types;
