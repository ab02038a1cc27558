//! Backfills: a sink's index hydrated from the rows already in its tables,
//! while the tables keep changing.
//!
//! A backfill reads its tables chunk by chunk in key order ([`chunk`]); each
//! chunk enters the replication stream at its high watermark, without the
//! rows a concurrent change made stale ([`window`]), and goes to its sink
//! only. Once the sink committed the chunk, its cursor is stored in the data
//! directory ([`store`]), so a restart resumes after the last chunk written.
//! The [`Manager`] owns the backfills, starts and stops their [`runner`]s
//! with the pipeline, and serves the management API and the CLI.

pub mod chunk;
pub mod condition;
mod manager;
mod progress;
mod runner;
pub mod seam;
pub mod store;
pub mod window;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use manager::{state_name, Manager, RunContext, View};
pub use progress::Progress;

use crate::error::Result;
use crate::model::ident::TableName;
use crate::postgres::conninfo::ConnInfo;
use store::Store;

use crate::lsn::Lsn;
use crate::model::change::RelationInfo;
use crate::model::flow::Credit;
use crate::model::problem::ConfigProblem;

/// The backfills stored in `store`, run by `runner` once a pipeline
/// generation attaches (`Manager::attach`).
pub fn open(
    store: Store,
    settings: Settings,
    conninfo: ConnInfo,
    sinks: Vec<String>,
    tables: Vec<TableName>,
    watermark_prefix: Arc<str>,
) -> Result<Arc<Manager>> {
    Manager::open(
        store,
        settings,
        conninfo,
        sinks,
        tables,
        watermark_prefix,
        runner::start,
    )
}

/// Default target time of the SELECT of one chunk.
pub const DEFAULT_CHUNK_SELECT_MS: u64 = 100;
/// Default rows of the first chunk of a table.
pub const DEFAULT_MIN_CHUNK_ROWS: usize = 1000;
/// Default cap of the rows of one chunk.
pub const DEFAULT_MAX_CHUNK_ROWS: usize = 10_000;
/// Default number of chunks read ahead of the sink.
pub const DEFAULT_CHUNKS_IN_FLIGHT: usize = 4;
/// Default number of chunks read ahead of a sink whose engine merges the
/// writes waiting in its queue (Meilisearch's auto-batcher): its cost is per
/// batch, so enough must wait for each batch to be large.
pub const DEFAULT_QUEUED_CHUNKS_IN_FLIGHT: usize = 16;

/// `[backfill]`: whether new sinks get a backfill, and how backfills read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillConfig {
    /// Backfill every table into a sink the first time sluice runs with it,
    /// so a new index starts with the rows already in the tables.
    #[serde(default = "default_initial")]
    pub initial: bool,
    /// Chunks grow or shrink so that the SELECT of one takes about this many
    /// milliseconds (it holds a snapshot; keep it short on a busy database).
    #[serde(default = "default_chunk_select_ms")]
    pub chunk_select_ms: u64,
    /// Rows of a table's first chunk, and the fewest a chunk shrinks to.
    #[serde(default = "default_min_chunk_rows")]
    pub min_chunk_rows: usize,
    /// The most rows a chunk grows to. Live changes that arrive behind a
    /// chunk wait until the sink has taken its rows: lower this when the
    /// sink is slow and their latency matters.
    #[serde(default = "default_max_chunk_rows")]
    pub max_chunk_rows: usize,
    /// Chunks read ahead of the sink: the next chunk is read while the sink
    /// takes the last. A restart reads the chunks in flight again, and live
    /// changes wait behind them. Unset: 4, and 16 into Meilisearch.
    #[serde(default)]
    pub chunks_in_flight: Option<usize>,
}

fn default_initial() -> bool {
    true
}
fn default_chunk_select_ms() -> u64 {
    DEFAULT_CHUNK_SELECT_MS
}
fn default_min_chunk_rows() -> usize {
    DEFAULT_MIN_CHUNK_ROWS
}
fn default_max_chunk_rows() -> usize {
    DEFAULT_MAX_CHUNK_ROWS
}

impl Default for BackfillConfig {
    fn default() -> BackfillConfig {
        BackfillConfig {
            initial: true,
            chunk_select_ms: DEFAULT_CHUNK_SELECT_MS,
            min_chunk_rows: DEFAULT_MIN_CHUNK_ROWS,
            max_chunk_rows: DEFAULT_MAX_CHUNK_ROWS,
            chunks_in_flight: None,
        }
    }
}

impl BackfillConfig {
    pub fn validate(&self, problems: &mut Vec<ConfigProblem>) {
        let mut problem = |field: &str, message: &str| {
            problems.push(ConfigProblem {
                field: format!("backfill.{field}"),
                message: message.to_owned(),
            })
        };
        if !(1..=60_000).contains(&self.chunk_select_ms) {
            problem("chunk_select_ms", "must be between 1 and 60000");
        }
        if self.min_chunk_rows == 0 {
            problem("min_chunk_rows", "must be at least 1");
        }
        if self.max_chunk_rows < self.min_chunk_rows || self.max_chunk_rows > 1_000_000 {
            problem(
                "max_chunk_rows",
                "must be at least min_chunk_rows and at most 1000000",
            );
        }
        if self
            .chunks_in_flight
            .is_some_and(|n| !(1..=16).contains(&n))
        {
            problem("chunks_in_flight", "must be between 1 and 16");
        }
    }

    /// The settings, with the chunks read ahead of each sink: those of
    /// `queued_sinks` (engines that merge what waits in their queue) read
    /// further ahead unless `chunks_in_flight` is set.
    pub fn settings(&self, queued_sinks: &[String]) -> Settings {
        let queued = match self.chunks_in_flight {
            Some(_) => HashMap::new(),
            None => queued_sinks
                .iter()
                .map(|sink| (sink.clone(), DEFAULT_QUEUED_CHUNKS_IN_FLIGHT))
                .collect(),
        };
        Settings {
            chunk_select: Duration::from_millis(self.chunk_select_ms),
            min_chunk_rows: self.min_chunk_rows,
            max_chunk_rows: self.max_chunk_rows,
            chunks_in_flight: self.chunks_in_flight.unwrap_or(DEFAULT_CHUNKS_IN_FLIGHT),
            chunks_in_flight_by_sink: queued,
        }
    }
}

/// How backfills read, from `[backfill]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub chunk_select: Duration,
    pub min_chunk_rows: usize,
    pub max_chunk_rows: usize,
    pub chunks_in_flight: usize,
    /// Sinks that read another number of chunks ahead.
    pub chunks_in_flight_by_sink: HashMap<String, usize>,
}

impl Settings {
    /// Chunks read ahead of `sink`.
    pub fn chunks_in_flight(&self, sink: &str) -> usize {
        self.chunks_in_flight_by_sink
            .get(sink)
            .copied()
            .unwrap_or(self.chunks_in_flight)
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            chunk_select: Duration::from_millis(DEFAULT_CHUNK_SELECT_MS),
            min_chunk_rows: DEFAULT_MIN_CHUNK_ROWS,
            max_chunk_rows: DEFAULT_MAX_CHUNK_ROWS,
            chunks_in_flight: DEFAULT_CHUNKS_IN_FLIGHT,
            chunks_in_flight_by_sink: HashMap::new(),
        }
    }
}

/// Where a backfill is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Paused,
    Completed,
    Cancelled,
    Failed,
}

impl State {
    /// Running or paused: it holds its tables.
    pub fn is_active(self) -> bool {
        matches!(self, State::Running | State::Paused)
    }
}

/// One table of a backfill and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableProgress {
    /// `schema.table`.
    pub table: String,
    /// Only rows matching this condition are read (as the user wrote it;
    /// `condition::for_table` renders it for Postgres).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Rows read and committed by the sink.
    pub rows_done: u64,
    /// The planner's estimate of the rows to read, once known.
    #[serde(default)]
    pub rows_estimated: Option<u64>,
    /// The key of the last row committed; reading resumes after it.
    #[serde(default)]
    pub cursor: Option<Vec<String>>,
    pub done: bool,
    /// Only these rows, each by its key, when the backfill retries rows
    /// (parked function calls) rather than reading the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<ExactRows>,
}

/// The rows a backfill of exact rows asks for. A row asked for that is not
/// in the table is gone: its document is removed, in the window of the
/// chunk that did not find it (so a change of the key in the window wins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExactRows {
    /// The columns whose values identify a row: the table's `key`.
    pub columns: Vec<String>,
    /// Each row's values of `columns`, as text.
    pub keys: Vec<Vec<String>>,
    /// How many of `keys`, from the first, are done.
    #[serde(default)]
    pub done: usize,
}

/// A backfill, as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backfill {
    pub id: u64,
    pub sink: String,
    pub state: State,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Started because the sink was new, not on request.
    #[serde(default)]
    pub initial: bool,
    /// Read in turn.
    pub tables: Vec<TableProgress>,
    /// Chunks written.
    #[serde(default)]
    pub chunks: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
}

impl Backfill {
    pub fn rows_done(&self) -> u64 {
        self.tables.iter().map(|t| t.rows_done).sum()
    }

    /// The estimated rows in all, never below what is done.
    pub fn rows_estimated(&self) -> Option<u64> {
        let mut total = 0;
        for table in &self.tables {
            total += match (table.done, table.rows_estimated) {
                (true, _) => table.rows_done,
                (false, Some(estimate)) => estimate.max(table.rows_done),
                (false, None) => return None,
            };
        }
        Some(total)
    }

    /// The table being read, if any.
    pub fn current_table(&self) -> Option<&TableProgress> {
        self.tables.iter().find(|t| !t.done)
    }
}

/// Why a backfill request or a backfill failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackfillError {
    /// No such sink, table or backfill.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot work: a condition that is not valid SQL, a table
    /// without a key, a state change that does not apply.
    #[error("{0}")]
    Invalid(String),
    /// Another backfill holds the table.
    #[error("{0}")]
    Conflict(String),
    /// The database could not be asked; trying again may work.
    #[error("{0}")]
    Database(String),
}

impl BackfillError {
    /// Classifies a Postgres error: errors of the statement itself (syntax,
    /// unknown names, bad values, privileges) are `Invalid`; the rest, such
    /// as a lost connection, may pass.
    pub fn sql(e: tokio_postgres::Error) -> BackfillError {
        match e.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                let text = match db.hint() {
                    Some(hint) => format!("{} ({hint})", db.message()),
                    None => db.message().to_owned(),
                };
                if ["42", "22", "2B", "0A"]
                    .iter()
                    .any(|class| code.starts_with(class))
                {
                    BackfillError::Invalid(text)
                } else {
                    BackfillError::Database(text)
                }
            }
            None => BackfillError::Database(e.to_string()),
        }
    }
}

/// Where a backfill's chunks enter the pipeline (the pipeline sets it: its
/// decoder inserts each chunk at its high watermark); `false` when the
/// pipeline is gone.
pub type ChunkInlet = std::sync::Arc<dyn Fn(Chunk) -> bool + Send + Sync>;

/// A chunk on its way from a runner to the decoder, which inserts it at its
/// high watermark.
#[derive(Debug)]
pub struct Chunk {
    pub backfill: u64,
    pub number: u64,
    /// The sink the rows are for (its position among the sinks).
    pub sink: usize,
    pub rel: Arc<RelationInfo>,
    pub key_columns: Vec<usize>,
    /// The rows as `COPY … TO STDOUT` wrote them. The decoder splits them
    /// when the chunk arrives, off the reader's way to its next chunk.
    pub copy: bytes::Bytes,
    pub snapshot: crate::postgres::snapshot::Snapshot,
    pub credit: Option<Credit>,
    /// For a backfill of exact rows: the rows it asked for and did not
    /// find, each with only its key (their documents are deleted).
    pub gone: Option<Vec<crate::postgres::pgoutput::Tuple>>,
    pub reply: oneshot::Sender<ChunkOutcome>,
}

/// What the decoder did with a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// In the stream at the high watermark's commit position `lsn`, less the
    /// rows left out as stale.
    Delivered { lsn: Lsn, kept: usize },
    /// The window could not vouch for the chunk: read it again.
    Retry,
    /// The rows could not be split (the reason): read it again.
    Unreadable(String),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
