//! The envelope every batch between stages travels in.

use std::sync::Arc;

use crate::lsn::Lsn;
use crate::model::change::Scope;
use crate::model::flow::Credit;

/// Items with what the stages after need to know of them: how far the
/// stream they come from is complete, the credits of their WAL bytes, and
/// which sinks they are for.
#[derive(Debug, Clone)]
pub struct Batch<I> {
    pub items: I,
    /// Every change at or below this position is in this batch or an earlier one.
    pub upto: Lsn,
    /// Flow-control credits for the WAL bytes this batch came from; they
    /// return to the budget when the last piece of the batch is dropped.
    pub credits: Vec<Arc<Credit>>,
    /// The last batch before shutdown: flush and acknowledge everything.
    pub last: bool,
    pub scope: Scope,
}

impl<I: Default> Default for Batch<I> {
    fn default() -> Self {
        Batch {
            items: I::default(),
            upto: Lsn::ZERO,
            credits: Vec::new(),
            last: false,
            scope: Scope::All,
        }
    }
}
