//! The streaming pipeline: supervised actors per stage, exchanging batches
//! under a bound on the bytes in flight.
//!
//! ```text
//! reader ─► decoder ─► filter ─► transformer ─► router ─► shards (N) ─► lane + writer per sink ─► acknowledger
//!   ▲                                                                                                │
//!   └──────────────────────────── confirmed position (watch) ◄───────────────────────────────────────┘
//! ```

pub mod ack;
pub mod change;
pub mod decoder;
pub mod document;
pub mod filter;
pub mod lane;
pub mod predicate;
pub mod reader;
pub mod router;
pub mod shard;
pub mod slot;
pub mod spool;
pub mod stats;
pub mod status;
pub mod supervisor;
pub mod tables_watch;
pub mod template;
pub mod transform;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::model::flow::FlowControl;
use crate::postgres::catalog;
use crate::postgres::conninfo::ConnInfo;
use crate::sink::settings::SinkConfig;
use document::TransformConfig;
use filter::Operation;
use router::TableRoute;
use supervisor::PipelineStats;

/// Everything the stages need, resolved from the configuration.
#[derive(Debug)]
pub struct PipelinePlan {
    pub name: String,
    pub conninfo: ConnInfo,
    pub slot: String,
    pub publication: String,
    pub data_dir: PathBuf,
    pub shards: usize,
    pub flow: FlowControl,
    /// Credits of backfill chunks: a budget of their own, so chunks waiting
    /// for their high watermark never hold the credits the reader needs to
    /// read that watermark.
    pub backfill_flow: FlowControl,
    pub batch_max_changes: usize,
    pub batch_max_bytes: u64,
    pub batch_max_age: Duration,
    pub status_interval: Duration,
    pub max_restart_backoff: Duration,
    pub drain_timeout: Duration,
    pub spool_max_bytes: u64,
    pub key_separator: String,
    pub operations: HashMap<String, Vec<Operation>>,
    /// Column predicates by table (`schema.table`); tables without are absent.
    pub predicates: HashMap<String, Vec<predicate::Predicate>>,
    pub transforms: HashMap<String, TransformConfig>,
    pub routes: HashMap<String, TableRoute>,
    pub sinks: Vec<SinkConfig>,
    /// The functions tables use; `None` when no table uses one.
    pub functions: Option<Arc<crate::functions::FunctionPlan>>,
    pub stats: PipelineStats,
    pub status: Arc<status::PipelineStatus>,
    /// The streamed tables' oids (`schema.table` → oid) when the pipeline
    /// was set up: changes of another table of the same name are of one
    /// dropped since, and one created since sets the pipeline up again.
    pub table_oids: Arc<BTreeMap<String, u32>>,
    /// The prefix of this deployment's backfill watermarks in the WAL.
    pub watermark_prefix: Arc<str>,
}

impl PipelinePlan {
    /// Tables without a configured key are keyed by their primary key (or
    /// replica identity index), as the catalog says: with REPLICA IDENTITY FULL
    /// the stream flags every column as part of the identity.
    pub fn resolve_keys(
        &mut self,
        tables: &HashMap<crate::model::ident::TableName, catalog::TableMeta>,
    ) {
        for (name, meta) in tables {
            if let Some(route) = self.routes.get_mut(&name.to_string()) {
                if route.key.is_none() && !meta.identity_columns.is_empty() {
                    route.key = Some(meta.identity_columns.clone());
                }
            }
        }
    }
}

/// Removes every document of `tables` from one sink, and the writes parked
/// for them: before a resync (rows deleted while the slot was lost must not
/// stay), and when a table was created again (the old rows are gone). The
/// backfill that follows writes the rest.
/// `at`: the truncates' position, above every position the sink holds;
/// `commit_at`: the position to commit (for a resync, the new slot's start).
pub async fn empty_tables(
    plan: &PipelinePlan,
    sink: &SinkConfig,
    tables: &[String],
    at: crate::lsn::Lsn,
    commit_at: crate::lsn::Lsn,
) -> Result<()> {
    use change::{WriteAction, WriteOp};
    let mut ops = Vec::new();
    for table in tables {
        let Some(route) = plan.routes.get(table) else {
            continue;
        };
        let truncate = WriteOp {
            index: route.index.as_str().into(),
            table: table.as_str().into(),
            id: String::new(),
            lsn: at,
            action: WriteAction::Truncate {
                barrier: 0,
                scoped: route.shared,
            },
            routing: None,
        };
        match &plan.functions {
            Some(functions) => ops.extend(functions.routes.truncates(&truncate)),
            None => ops.push(truncate),
        }
    }
    let mut target = crate::sink::build(sink, &plan.data_dir)?;
    if let Some(failed) = target.failed() {
        for table in tables {
            failed.discard_table(table, crate::lsn::Lsn(u64::MAX))?;
        }
    }
    target.write(&ops).await?;
    target.commit(commit_at).await?;
    tracing::warn!(sink = %sink.name, tables = %tables.join(", "), "emptied the tables' documents before backfilling them again");
    Ok(())
}
