//! sluice keeps search indexes in sync with Postgres tables in real time.
//!
//! See `ARCHITECTURE.md` for the tour: the replication client and pgoutput
//! decoder live in [`postgres`], the actor pipeline in [`pipeline`], the
//! destinations in [`sink`].

pub mod api;
pub mod backfill;
pub mod cli;
pub mod config;
pub mod data_dir;
pub mod demo;
pub mod error;
pub mod functions;
#[doc(hidden)]
pub mod fuzzing;
pub mod local_pg;
pub mod lsn;
pub mod model;
pub mod pipeline;
pub mod postgres;
pub mod service;
pub mod sink;
pub mod telemetry;
pub mod verify;
