//! The batches that flow between stages.

use std::sync::Arc;

use crate::lsn::Lsn;
pub use crate::model::change::{
    Change, ColumnInfo, Op, RelationInfo, RouteAction, Scope, ANNOTATIONS_PREFIX,
};
use crate::model::flow::Credit;
pub use crate::model::write::{doc_hash, WriteAction, WriteOp};

/// A routed change and the shape of its document.
pub type Routed = crate::model::change::Routed<Arc<crate::pipeline::transform::DocShape>>;

/// A batch of changes crossing stage boundaries.
#[derive(Debug, Default)]
pub struct ChangeBatch {
    pub changes: Vec<Change>,
    /// Every change at or below this position is in this batch or an earlier one.
    pub upto: Lsn,
    /// Flow-control credits for the WAL bytes this batch came from.
    pub credits: Vec<Arc<Credit>>,
    /// The last batch before shutdown: flush and acknowledge everything.
    pub last: bool,
    pub scope: Scope,
}

/// Items of a shard's input, in stream order.
#[derive(Debug)]
pub enum ShardItem {
    Change(Routed),
    /// Empties `index` of `table`'s documents; a barrier across all shards.
    Truncate {
        index: Arc<str>,
        table: Arc<str>,
        /// Other tables share the index (see `WriteAction::Truncate`).
        scoped: bool,
        /// Commit LSN of the truncate (replays below a sink's position are skipped).
        lsn: Lsn,
        barrier: u64,
    },
}

/// A router batch for one shard.
#[derive(Debug, Default)]
pub struct ShardBatch {
    pub items: Vec<ShardItem>,
    pub upto: Lsn,
    pub credits: Vec<Arc<Credit>>,
    pub last: bool,
    pub scope: Scope,
}

/// A shard's output for the writers of every sink.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub shard: usize,
    pub ops: Arc<Vec<WriteOp>>,
    pub upto: Lsn,
    pub credits: Vec<Arc<Credit>>,
    pub last: bool,
    /// The bytes `ops` take in memory, roughly (see `lane::batch_bytes`).
    pub bytes: u64,
    pub scope: Scope,
    /// The commit time of its oldest change (as `Change::commit_time`), for
    /// the latency metrics; 0 when not known (a backfill's rows, writes
    /// read back from the spool).
    pub commit_time: i64,
}
