//! The seam where backfill chunks enter the replication stream: the one
//! thing the pipeline's decoder holds of backfills.
//!
//! Runners hand chunks in (`ChunkInlet`); the decoder tells the seam every
//! row change it decodes and every logical message, in stream order. The
//! seam keeps the watermark windows (see `window`) and, at a chunk's high
//! watermark, releases the chunk's rows that no change before it made stale.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::chunk::parse_copy;
use super::window::{self, Mark, Marker, Verdict, Windows};
use super::{Chunk, ChunkOutcome};
use crate::lsn::Lsn;
use crate::model::change::RelationInfo;
use crate::model::flow::Credit;
use crate::model::row::Tuple;

/// The most rows of a backfill's chunk in one batch: the decoder hands a
/// released chunk on in pieces of this many rows, and a shard hands its
/// writes on in pieces of this many, so that the stages after work on a
/// chunk at the same time and live writes go between its pieces.
pub const BACKFILL_PIECE: usize = 512;

/// Windows and the chunks waiting for their high watermark, by backfill
/// and chunk number (a backfill has a few chunks in flight).
pub struct Seam {
    /// This deployment's watermarks' prefix (`window::prefix`); others'
    /// messages are not ours.
    prefix: Arc<str>,
    windows: Windows,
    chunks: BTreeMap<(u64, u64), Waiting>,
}

/// A chunk waiting for its high watermark, split into rows, with the hashes
/// of their keys.
struct Waiting {
    chunk: Chunk,
    rows: Vec<Tuple>,
    keys: Vec<Option<u64>>,
}

/// What a logical message was to the seam.
pub enum Message {
    /// Not one of this deployment's watermarks.
    NotOurs,
    /// A watermark, taken into account; nothing enters the stream.
    Marked,
    /// A watermark that cannot be read.
    Unreadable,
    /// A high watermark that releases a chunk: its rows enter the stream here.
    Released(Released),
}

/// A chunk's rows that enter the stream at its high watermark.
pub struct Released {
    pub rel: Arc<RelationInfo>,
    /// The sink the rows are for.
    pub sink: usize,
    /// The rows as read (`Some` row), then the rows asked for that are gone
    /// (`None` row, `Some` key): their documents are deleted.
    pub rows: Vec<(Option<Tuple>, Option<Tuple>)>,
    /// A backfill of exact rows (a retry of parked function calls).
    pub retry: bool,
    pub credit: Option<Credit>,
    reply: tokio::sync::oneshot::Sender<ChunkOutcome>,
}

impl Released {
    /// Tells the runner its rows entered the stream at `lsn`, `kept` of them.
    pub fn delivered(self, lsn: Lsn, kept: usize) {
        let _ = self.reply.send(ChunkOutcome::Delivered { lsn, kept });
    }
}

impl Seam {
    pub fn new(prefix: Arc<str>) -> Seam {
        Seam {
            prefix,
            windows: Windows::default(),
            chunks: BTreeMap::new(),
        }
    }

    /// A chunk from a runner: it waits for its high watermark. The rows are
    /// split here, off the runner's way to its next chunk.
    pub fn accept(&mut self, chunk: Chunk) {
        // Attempts number their chunks upwards, so chunks of the backfill
        // numbered as high or higher are an earlier attempt's from before a
        // clock step back: they never met their high watermark.
        self.retry_chunks((chunk.backfill, chunk.number)..=(chunk.backfill, u64::MAX));
        match parse_copy(&chunk.copy, chunk.rel.columns.len()) {
            Ok(rows) => {
                let keys = rows
                    .iter()
                    .chain(chunk.gone.iter().flatten())
                    .map(|row| window::key_hash(row, &chunk.key_columns))
                    .collect();
                self.chunks.insert(
                    (chunk.backfill, chunk.number),
                    Waiting { chunk, rows, keys },
                );
            }
            Err(e) => {
                let _ = chunk.reply.send(ChunkOutcome::Unreadable(e.to_string()));
            }
        }
    }

    /// A change of `rows` (its new and old tuples; `None` for a truncate,
    /// which touches every row) by transaction `xid`, in stream order.
    pub fn saw(&mut self, rel: &Arc<RelationInfo>, xid: u32, rows: Option<&[&Tuple]>) {
        if !self.windows.is_empty() {
            self.windows.record(rel, xid, rows);
        }
    }

    /// Whether an update whose new row lacks unchanged TOAST values must
    /// have them read from the table: a backfill reads the table, and may
    /// leave the row's document to this change.
    pub fn needs_unchanged(&self, rel: &RelationInfo, new: &Tuple) -> bool {
        !self.windows.is_empty() && self.windows.tracks(rel.id) && new.has_unchanged()
    }

    /// A logical decoding message, in stream order.
    pub fn message(&mut self, prefix: &str, content: &[u8]) -> Message {
        if prefix != &*self.prefix {
            return Message::NotOurs;
        }
        match Marker::parse(content) {
            Some(marker) if marker.mark == Mark::High => match self.high(&marker) {
                Some(released) => Message::Released(released),
                None => Message::Marked,
            },
            Some(marker) => {
                self.windows.mark(&marker);
                Message::Marked
            }
            None => Message::Unreadable,
        }
    }

    /// Sends the waiting chunks at `at` (backfill, chunk number) back to be
    /// read again.
    fn retry_chunks(&mut self, at: impl std::ops::RangeBounds<(u64, u64)>) {
        let stale: Vec<(u64, u64)> = self.chunks.range(at).map(|(at, _)| *at).collect();
        for at in stale {
            if let Some(old) = self.chunks.remove(&at) {
                let _ = old.chunk.reply.send(ChunkOutcome::Retry);
            }
        }
    }

    /// A high watermark: the chunk it closes, less the rows its window says
    /// are stale.
    fn high(&mut self, marker: &Marker) -> Option<Released> {
        // Earlier chunks of the backfill never met their high watermark.
        self.retry_chunks((marker.backfill, 0)..(marker.backfill, marker.chunk));
        let Some(Waiting {
            mut chunk,
            rows,
            keys,
        }) = self.chunks.remove(&(marker.backfill, marker.chunk))
        else {
            // Its chunk is gone (the backfill stopped), or the watermark is
            // an earlier run's, read again after a restart: close the window.
            self.windows
                .high(marker.backfill, marker.chunk, &Default::default(), &[]);
            return None;
        };
        let keep = match self
            .windows
            .high(marker.backfill, marker.chunk, &chunk.snapshot, &keys)
        {
            Verdict::Insert(keep) => keep,
            Verdict::Retry => {
                let _ = chunk.reply.send(ChunkOutcome::Retry);
                return None;
            }
        };
        let retry = chunk.gone.is_some();
        let gone = chunk.gone.take().unwrap_or_default();
        let rows = (rows.into_iter().map(|row| (Some(row), None)))
            .chain(gone.into_iter().map(|key| (None, Some(key))))
            .zip(keep)
            .filter_map(|(row, keep)| keep.then_some(row))
            .collect();
        Some(Released {
            rel: chunk.rel,
            sink: chunk.sink,
            rows,
            retry,
            credit: chunk.credit,
            reply: chunk.reply,
        })
    }
}
