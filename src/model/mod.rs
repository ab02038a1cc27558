//! The data every layer shares, at the bottom: it uses nothing of sluice
//! above it.

pub mod batch;
pub mod change;
pub mod flow;
pub mod ident;
pub mod problem;
pub mod row;
pub mod write;
