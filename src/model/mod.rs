//! The data every layer shares, at the bottom: it uses nothing of sluice
//! above it.

pub mod ident;
pub mod problem;
pub mod write;
