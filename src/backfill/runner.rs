//! One backfill at work: for each of its tables, chunk after chunk, read the
//! chunk, hand it to the decoder, write the high watermark (which is the low
//! watermark of the next chunk, see `window`); once the sink committed the
//! chunk, store the cursor after it.
//! A few chunks are in flight at a time (`chunks_in_flight`), so that
//! reading the next one overlaps the sink taking the last; a restart reads
//! at most those again. Chunks grow or shrink so that their SELECT takes
//! about the configured time, up to the configured most rows.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::chunk::{parse_copy, values_of, ChunkReader, ReadChunk, TableShape};
use super::manager::{estimate, Manager, RunContext};
use super::window::{Mark, Marker};
use super::{condition, BackfillError, Chunk, ChunkOutcome, ExactRows, State};
use crate::lsn::Lsn;
use crate::model::ident::TableName;
use crate::postgres::pgoutput::Tuple;

/// The first wait after a failed attempt; doubles up to `MAX_BACKOFF`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The keys a chunk of a backfill of exact rows asks for.
const KEYS_PER_CHUNK: usize = 1_000;

/// A chunk handed to the decoder, waiting for its high watermark and for the
/// sink to commit it.
struct InFlight {
    number: u64,
    rows: usize,
    /// The cursor after its last row.
    last: Vec<String>,
    outcome: oneshot::Receiver<ChunkOutcome>,
    sent: Instant,
}

/// What became of reading one chunk.
enum Read {
    /// Handed to the decoder; `full` when it has as many rows as asked for.
    Sent { chunk: InFlight, full: bool },
    /// Nothing is left to read.
    Empty,
    /// The pipeline stopped.
    Stopped,
}

/// What became of a chunk in flight.
enum Settled {
    /// The sink committed it.
    Committed,
    /// The window could not vouch for it: read it again.
    Retry,
    /// Its rows could not be split (the reason): resume from the cursor.
    Unreadable(String),
    /// The pipeline stopped.
    Stopped,
}

/// How a run ended.
enum Ended {
    /// Every table is read.
    Completed,
    /// Paused or cancelled by an operator, or the pipeline stopped.
    Stopped,
}

/// Starts the task that runs backfill `id` (see `run`).
pub(super) fn start(manager: Arc<Manager>, id: u64, context: RunContext) -> JoinHandle<()> {
    tokio::spawn(run(manager, id, context))
}

/// Runs backfill `id` until it completes, fails, is paused or cancelled, or
/// the pipeline generation ends (the task is then aborted).
async fn run(manager: Arc<Manager>, id: u64, context: RunContext) {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let started = Instant::now();
        let outcome = attempt(&manager, id, &context).await;
        let result = match outcome {
            Ok(Ended::Completed) => manager.finish(id, State::Completed, None),
            Ok(Ended::Stopped) => Ok(()),
            Err(BackfillError::Database(problem)) => {
                if started.elapsed() > MAX_BACKOFF {
                    backoff = INITIAL_BACKOFF;
                }
                tracing::warn!(
                    backfill = id,
                    retry_in_ms = backoff.as_millis() as u64,
                    "backfill interrupted, resuming from its cursor: {problem}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(e) => manager.finish(id, State::Failed, Some(e.to_string())),
        };
        if let Err(e) = result {
            tracing::error!(backfill = id, "cannot store the backfill's state: {e}");
        }
        return;
    }
}

async fn attempt(manager: &Manager, id: u64, context: &RunContext) -> Result<Ended, BackfillError> {
    let Some(backfill) = manager.current(id) else {
        return Ok(Ended::Stopped);
    };
    let sink = manager.sink_number(&backfill.sink).ok_or_else(|| {
        BackfillError::Invalid(format!("sink {} is no longer configured", backfill.sink))
    })?;
    let client = manager
        .conninfo
        .connect_sql()
        .await
        .map_err(|e| BackfillError::Database(e.to_string()))?;
    let chunks = ChunkReader::new(client).await?;
    // Watermarks flushed at once: the walsender sends only flushed WAL, and a
    // chunk waits in the decoder until its high watermark arrives.
    chunks
        .client()
        .batch_execute("SET synchronous_commit = local")
        .await
        .map_err(BackfillError::sql)?;
    // Estimates first, so progress has a total from the start.
    for (i, table) in backfill.tables.iter().enumerate() {
        if table.rows_estimated.is_none() && !table.done {
            let name = TableName::parse(&table.table).map_err(BackfillError::Invalid)?;
            let sql = match &table.condition {
                Some(text) => Some(condition::for_table(text, &chunks.describe(&name).await?)?),
                None => None,
            };
            let rows = estimate(chunks.client(), &name, sql.as_deref()).await?;
            store(manager.update(id, |b| b.tables[i].rows_estimated = Some(rows)))?;
        }
    }
    let mut reader = TableReader {
        manager,
        id,
        context,
        chunks,
        sink,
        chunk_rows: manager.settings.min_chunk_rows,
        chunk_number: first_chunk_number(),
    };
    for i in 0..backfill.tables.len() {
        let Some(current) = manager.current(id) else {
            return Ok(Ended::Stopped);
        };
        if current.tables[i].done {
            continue;
        }
        if let Ended::Stopped = reader.table(i).await? {
            return Ok(Ended::Stopped);
        }
        store(manager.update(id, |b| {
            let t = &mut b.tables[i];
            t.done = true;
            t.cursor = None;
        }))?;
    }
    Ok(Ended::Completed)
}

/// Where an attempt numbers its chunks from: above every number an earlier
/// attempt (of this process or one before it) used. The decoder matches a
/// chunk to its high watermark by number, and a restarted pipeline replays
/// an earlier attempt's watermarks from the WAL while the new attempt's
/// chunks already wait: numbers used twice would match the wrong ones and
/// send chunks back to be read again. Milliseconds since the epoch (42 bits
/// last until the year 2109), shifted past the 2^21 chunks one attempt
/// numbers before it could reach the next millisecond's range.
fn first_chunk_number() -> u64 {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (millis & ((1 << 42) - 1)) << 21
}

fn store<T>(result: crate::error::Result<T>) -> Result<T, BackfillError> {
    result.map_err(|e| BackfillError::Database(format!("storing the backfill failed: {e}")))
}

struct TableReader<'a> {
    manager: &'a Manager,
    id: u64,
    context: &'a RunContext,
    chunks: ChunkReader,
    sink: usize,
    chunk_rows: usize,
    chunk_number: u64,
}

impl TableReader<'_> {
    /// Reads table number `i` of the backfill from its cursor to its end,
    /// with up to `chunks_in_flight` chunks read ahead of the sink. The
    /// stored cursor follows the chunks the sink committed, in order.
    async fn table(&mut self, i: usize) -> Result<Ended, BackfillError> {
        let Some(backfill) = self.manager.current(self.id) else {
            return Ok(Ended::Stopped);
        };
        let target = &backfill.tables[i];
        let name = TableName::parse(&target.table).map_err(BackfillError::Invalid)?;
        let shape = self.chunks.describe(&name).await?;
        if let Some(rows) = &target.rows {
            return self.exact(i, &shape, rows).await;
        }
        let condition = target
            .condition
            .as_deref()
            .map(|text| condition::for_table(text, &shape))
            .transpose()?;
        // Where the next chunk is read from: after the last one sent.
        let mut next = target.cursor.clone();
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut exhausted = false;
        let mut stopping = false;
        tracing::info!(backfill = self.id, sink = %backfill.sink, table = %name, resumed = next.is_some(), "backfilling table");
        self.mark_start(&shape, &shape.key_columns).await?;
        loop {
            while !exhausted
                && !stopping
                && in_flight.len() < self.manager.settings.chunks_in_flight(&backfill.sink)
            {
                if self.manager.current(self.id).map(|b| b.state) != Some(State::Running) {
                    stopping = true;
                    break;
                }
                match self
                    .read(&shape, next.as_deref(), condition.as_deref())
                    .await?
                {
                    Read::Sent { chunk, full } => {
                        next = Some(chunk.last.clone());
                        exhausted = !full;
                        in_flight.push_back(chunk);
                    }
                    Read::Empty => exhausted = true,
                    Read::Stopped => return Ok(Ended::Stopped),
                }
            }
            let Some(mut head) = in_flight.pop_front() else {
                break;
            };
            match self.settle(&mut head).await {
                Settled::Committed => store(self.manager.chunk_done(
                    self.id,
                    i,
                    head.rows as u64,
                    |t| t.cursor = Some(head.last),
                ))?,
                Settled::Retry => {
                    // Not vouched for: let the chunks after it go (their rows
                    // are harmless, but the cursor cannot pass this one), and
                    // read again from it after a fresh start mark.
                    for later in in_flight.drain(..) {
                        let _ = later.outcome.await;
                    }
                    next = self
                        .manager
                        .current(self.id)
                        .and_then(|b| b.tables[i].cursor.clone());
                    exhausted = false;
                    self.mark_start(&shape, &shape.key_columns).await?;
                }
                Settled::Unreadable(reason) => return Err(BackfillError::Database(reason)),
                Settled::Stopped => return Ok(Ended::Stopped),
            }
        }
        self.mark_chunk(Mark::End, self.chunk_number).await?;
        Ok(if stopping {
            Ended::Stopped
        } else {
            Ended::Completed
        })
    }

    /// Reads the rows of table number `i` that a backfill of exact rows asks
    /// for, `KEYS_PER_CHUNK` keys a chunk, one chunk at a time (such a
    /// backfill retries a few rows). A key whose row the chunk's snapshot
    /// does not hold is handed over as gone: its document is deleted in the
    /// chunk's window, unless a change of that key in the window wins.
    async fn exact(
        &mut self,
        i: usize,
        shape: &TableShape,
        rows: &ExactRows,
    ) -> Result<Ended, BackfillError> {
        let columns = shape.positions(&rows.columns)?;
        let mut done = rows.done;
        tracing::info!(backfill = self.id, table = %shape.rel.name, rows = rows.keys.len() - done.min(rows.keys.len()), "backfilling rows by key");
        // The window tells changes apart by the columns the keys are of.
        self.mark_start(shape, &columns).await?;
        while done < rows.keys.len() {
            if self.manager.current(self.id).map(|b| b.state) != Some(State::Running) {
                self.mark_chunk(Mark::End, self.chunk_number).await?;
                return Ok(Ended::Stopped);
            }
            let keys = &rows.keys[done..(done + KEYS_PER_CHUNK).min(rows.keys.len())];
            self.chunk_number += 1;
            let number = self.chunk_number;
            let started = Instant::now();
            let read = self.read_keys(shape, &columns, keys).await?;
            let at = read.shape.positions(&rows.columns)?;
            let found: HashSet<Vec<String>> = parse_copy(&read.copy, read.shape.rel.columns.len())?
                .iter()
                .map(|row| values_of(row, &at))
                .collect();
            let gone: Vec<Tuple> = keys
                .iter()
                .filter(|key| !found.contains(*key))
                .map(|key| read.shape.key_row(&at, key))
                .collect();
            let handed = self.hand_over(number, read, at, Some(gone), started);
            let Some(mut chunk) = handed.await? else {
                return Ok(Ended::Stopped);
            };
            match self.settle(&mut chunk).await {
                Settled::Committed => {
                    done += keys.len();
                    store(self.manager.chunk_done(self.id, i, keys.len() as u64, |t| {
                        if let Some(rows) = t.rows.as_mut() {
                            rows.done = done;
                        }
                    }))?;
                }
                // Read again, after a fresh start mark.
                Settled::Retry => self.mark_start(shape, &columns).await?,
                Settled::Unreadable(reason) => return Err(BackfillError::Database(reason)),
                Settled::Stopped => return Ok(Ended::Stopped),
            }
        }
        self.mark_chunk(Mark::End, self.chunk_number).await?;
        Ok(Ended::Completed)
    }

    /// Reads the rows of `keys`. Keys the key's type refuses (a document id
    /// no row can have: `abc` for a bigint key) are left out of the read,
    /// so their rows count as gone and their documents are deleted.
    async fn read_keys(
        &mut self,
        shape: &TableShape,
        columns: &[usize],
        keys: &[Vec<String>],
    ) -> Result<ReadChunk, BackfillError> {
        let table = &shape.rel.name;
        let condition = shape.rows_condition(columns, keys);
        let reason = match self
            .chunks
            .read(table, None, Some(&condition), keys.len())
            .await
        {
            Err(BackfillError::Invalid(reason)) => reason,
            read => return read,
        };
        let mut accepted = Vec::new();
        for key in keys {
            let one = shape.rows_condition(columns, std::slice::from_ref(key));
            if !self.chunks.refuses(table, &one).await? {
                accepted.push(key.clone());
            }
        }
        if accepted.len() == keys.len() {
            return Err(BackfillError::Invalid(reason));
        }
        tracing::info!(backfill = self.id, table = %table, refused = keys.len() - accepted.len(), "keys no row can have: their documents are deleted");
        let condition = match accepted.is_empty() {
            true => "false".to_owned(),
            false => shape.rows_condition(columns, &accepted),
        };
        self.chunks
            .read(table, None, Some(&condition), keys.len())
            .await
    }

    /// Reads the chunk after `cursor` and hands it to the decoder between its
    /// low and high watermarks.
    async fn read(
        &mut self,
        shape: &TableShape,
        cursor: Option<&[String]>,
        condition: Option<&str>,
    ) -> Result<Read, BackfillError> {
        self.chunk_number += 1;
        let number = self.chunk_number;
        let limit = self.chunk_rows;
        // No low watermark of its own: the last high watermark (or the
        // start mark), committed before this snapshot, opens its window.
        let started = Instant::now();
        let read = self
            .chunks
            .read(&shape.rel.name, cursor, condition, limit)
            .await?;
        let select = started.elapsed();
        if read.shape.key_names() != shape.key_names() {
            return Err(BackfillError::Invalid(format!(
                "the key of {} changed during the backfill (from {} to {}); start a new backfill",
                shape.rel.name,
                shape.key_names().join(", "),
                read.shape.key_names().join(", ")
            )));
        }
        let rows = read.rows;
        if read.last.is_none() {
            return Ok(Read::Empty);
        }
        self.adapt(select, rows == limit);
        let key_columns = read.shape.key_columns.clone();
        Ok(
            match self
                .hand_over(number, read, key_columns, None, started)
                .await?
            {
                Some(chunk) => Read::Sent {
                    chunk,
                    full: rows == limit,
                },
                None => Read::Stopped,
            },
        )
    }

    /// Hands chunk `number` (its rows as read, and for a backfill of exact
    /// rows those asked for that are `gone`) to the decoder and writes its
    /// high watermark. The window tells the chunk's rows apart by
    /// `key_columns`. `None` when the pipeline stopped.
    async fn hand_over(
        &mut self,
        number: u64,
        read: ReadChunk,
        key_columns: Vec<usize>,
        gone: Option<Vec<Tuple>>,
        started: Instant,
    ) -> Result<Option<InFlight>, BackfillError> {
        let rows = read.rows + gone.as_ref().map_or(0, Vec::len);
        let last = read.last.unwrap_or_default();
        let (credit, _) = self.context.flow.acquire(read.copy.len() as u64).await;
        let (reply, outcome) = oneshot::channel();
        let chunk = Chunk {
            backfill: self.id,
            number,
            sink: self.sink,
            rel: read.shape.rel.clone(),
            key_columns,
            copy: read.copy,
            snapshot: read.snapshot,
            credit: Some(credit),
            gone,
            reply,
        };
        if !(self.context.chunks)(chunk) {
            return Ok(None);
        }
        self.mark_chunk(Mark::High, number).await?;
        tracing::debug!(
            backfill = self.id,
            chunk = number,
            rows,
            select_ms = started.elapsed().as_millis() as u64,
            "chunk read"
        );
        Ok(Some(InFlight {
            number,
            rows,
            last,
            outcome,
            sent: started,
        }))
    }

    /// Waits for a chunk in flight to meet its high watermark and for the
    /// sink to commit it.
    async fn settle(&self, chunk: &mut InFlight) -> Settled {
        let lsn = match (&mut chunk.outcome).await {
            Ok(ChunkOutcome::Delivered { lsn, kept }) => {
                if kept < chunk.rows {
                    tracing::debug!(
                        backfill = self.id,
                        chunk = chunk.number,
                        left_out = chunk.rows - kept,
                        "rows changed while the chunk was read are left to their changes"
                    );
                }
                lsn
            }
            Ok(ChunkOutcome::Retry) => return Settled::Retry,
            Ok(ChunkOutcome::Unreadable(reason)) => return Settled::Unreadable(reason),
            Err(_) => return Settled::Stopped, // the decoder stopped
        };
        if !self.committed_above(lsn).await {
            return Settled::Stopped;
        }
        tracing::debug!(
            backfill = self.id,
            chunk = chunk.number,
            rows = chunk.rows,
            committed_ms = chunk.sent.elapsed().as_millis() as u64,
            "chunk committed"
        );
        Settled::Committed
    }

    /// Waits until the sink committed every backfill row up to `lsn`; `false` when
    /// the pipeline generation ended first.
    async fn committed_above(&self, lsn: Lsn) -> bool {
        let mut positions = self.context.positions.clone();
        let sink = self.sink;
        let reached = positions
            .wait_for(|p| p.get(sink).is_some_and(|committed| *committed > lsn))
            .await
            .is_ok();
        reached
    }

    /// Grows or shrinks the next chunk towards the target SELECT time.
    fn adapt(&mut self, select: Duration, full: bool) {
        let settings = &self.manager.settings;
        let ratio = settings.chunk_select.as_secs_f64() / select.as_secs_f64().max(1e-4);
        let ratio = if full {
            ratio.clamp(0.5, 2.0)
        } else {
            ratio.min(1.0)
        };
        self.chunk_rows = ((self.chunk_rows as f64 * ratio) as usize)
            .clamp(settings.min_chunk_rows, settings.max_chunk_rows);
    }

    /// Opens the window over `shape`'s table, which tells rows apart by
    /// the columns `key_columns`.
    async fn mark_start(
        &mut self,
        shape: &TableShape,
        key_columns: &[usize],
    ) -> Result<(), BackfillError> {
        let marker = Marker {
            backfill: self.id,
            chunk: self.chunk_number,
            mark: Mark::Start,
            table: Some(shape.rel.id),
            key: key_columns
                .iter()
                .map(|&i| shape.rel.columns[i].name.clone())
                .collect(),
        };
        self.emit(&marker).await
    }

    async fn mark_chunk(&mut self, mark: Mark, chunk: u64) -> Result<(), BackfillError> {
        let marker = Marker {
            backfill: self.id,
            chunk,
            mark,
            table: None,
            key: Vec::new(),
        };
        self.emit(&marker).await
    }

    /// Writes a watermark into the WAL, in a transaction of its own (so it
    /// reaches the stream at that transaction's commit).
    async fn emit(&self, marker: &Marker) -> Result<(), BackfillError> {
        self.chunks
            .emit(&self.manager.watermark_prefix, &marker.to_json())
            .await
    }
}
