//! The batches that flow between the pipeline's stages, in stage order.

use std::sync::Arc;

use crate::lsn::Lsn;
pub use crate::model::batch::Batch;
pub use crate::model::change::{
    Change, ColumnInfo, Op, RelationInfo, RouteAction, Scope, ANNOTATIONS_PREFIX,
};
use crate::model::flow::Credit;
pub use crate::model::write::{doc_hash, WriteAction, WriteOp};
use crate::postgres::replication::ReplicationEvent;

use super::document::DocShape;

/// A routed change and the shape of its document.
pub type Routed = crate::model::change::Routed<Arc<DocShape>>;

/// WAL events read together, with the credits for their bytes: the
/// reader's output.
#[derive(Debug)]
pub struct RawBatch {
    pub events: Vec<ReplicationEvent>,
    pub credit: Option<Credit>,
    /// The last batch before shutdown.
    pub last: bool,
}

/// Decoded changes, in stream order.
pub type ChangeBatch = Batch<Vec<Change>>;

/// A change with the shape of its document.
#[derive(Debug)]
pub struct Shaped {
    pub change: Change,
    pub shape: Arc<DocShape>,
}

/// Shaped changes, in stream order.
pub type ShapedBatch = Batch<Vec<Shaped>>;

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
pub type ShardBatch = Batch<Vec<ShardItem>>;

/// A shard's output for the writers of every sink.
pub type WriteBatch = Batch<Writes>;

/// The writes of a shard's batch, shared by the writers of every sink.
#[derive(Debug, Clone, Default)]
pub struct Writes {
    pub shard: usize,
    pub ops: Arc<Vec<WriteOp>>,
    /// The bytes `ops` take in memory, roughly (see `batch_bytes`).
    pub bytes: u64,
    /// The commit time of its oldest change (as `Change::commit_time`), for
    /// the latency metrics; 0 when not known (a backfill's rows, writes
    /// read back from the spool).
    pub commit_time: i64,
}

impl Writes {
    pub fn new(shard: usize, ops: Vec<WriteOp>, commit_time: i64) -> Writes {
        Writes {
            shard,
            bytes: batch_bytes(&ops),
            ops: Arc::new(ops),
            commit_time,
        }
    }
}

/// The bytes a batch's writes take in memory (documents and ids, roughly).
pub fn batch_bytes(ops: &[WriteOp]) -> u64 {
    ops.iter()
        .map(|op| {
            let doc = match &op.action {
                WriteAction::Upsert { doc, .. } => doc.len(),
                _ => 0,
            };
            (doc + op.id.len() + 64) as u64
        })
        .sum()
}
