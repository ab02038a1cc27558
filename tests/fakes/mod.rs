//! In-process fakes of the search engines sluice writes to, for the engines
//! that cannot be installed on a test machine. Each one speaks the engine's
//! documented HTTP API, keeps state the tests can inspect directly, and can
//! inject the partial failures and rate limits real clusters produce.
//!
//! Integration tests include them with `mod fakes;`; benches with
//! `#[path = "../tests/fakes/mod.rs"] mod fakes;`.

// Every test binary uses only part of the fakes.
#![allow(dead_code)]

pub mod cost;
pub mod elasticsearch;
pub mod meilisearch;
pub mod turbopuffer;
pub mod typesense;
