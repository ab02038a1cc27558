//! The writes sinks take: the contract between the pipeline and every
//! engine.

use std::sync::Arc;

use crate::lsn::Lsn;

/// The field that names a document's table in an index tables share.
pub const TABLE_FIELD: &str = "sluice_table";

/// A write for a sink.
#[derive(Debug, Clone)]
pub struct WriteOp {
    pub index: Arc<str>,
    /// `schema.table` the document comes from.
    pub table: Arc<str>,
    pub id: String,
    /// Commit LSN of the change (a version for engines that take one).
    pub lsn: Lsn,
    pub action: WriteAction,
    /// Routing value (Elasticsearch/OpenSearch), from a key column.
    pub routing: Option<Box<str>>,
}

/// What a write does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAction {
    /// Insert or replace the document. `partial`: some fields were unchanged
    /// TOAST values and are absent; the sink merges into the stored document.
    /// `fresh`: the change was an insert. Only a hint: no sink may skip
    /// replacing a document on it, as the index can hold the row's document
    /// before its insert is applied (a backfill read the row, or a replay
    /// after a restart).
    Upsert {
        doc: Vec<u8>,
        partial: bool,
        fresh: bool,
    },
    Delete,
    /// Remove every document of `table` from `index`. `scoped`: the index
    /// holds other tables' documents too (`shared_index`): only those whose
    /// `sluice_table` field names `table` go.
    Truncate {
        barrier: u64,
        scoped: bool,
    },
}

/// A hash of a document's index and id, for sets of documents that copy
/// neither (a collision between two documents is possible, if rare).
pub fn doc_hash(index: &str, id: &str) -> u64 {
    let seed = xxhash_rust::xxh3::xxh3_64(index.as_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), seed)
}
