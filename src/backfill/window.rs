//! Watermark windows: where a backfill's chunk enters the replication stream,
//! and which of its rows must be left out there.
//!
//! For every chunk the backfill reads the chunk in a snapshot between a low
//! and a high watermark in the WAL (DBLog). The low watermark of a chunk is
//! the high watermark of the chunk before it (or the backfill's start mark):
//! the runner takes each snapshot after that mark is committed, so a window
//! from there holds every change DBLog's own low mark would, and a few more,
//! and each chunk costs one WAL flush instead of two. (An explicit low mark
//! is still honoured.) The decoder sees the watermarks in stream order and
//! inserts the chunk at the high one, leaving out every row that a change in
//! the stream before it may have made stale:
//!
//! - every row changed between the low and the high watermark (DBLog's rule);
//! - every row changed earlier by a transaction the chunk's snapshot does
//!   not see. Such a transaction committed before the low watermark in the
//!   WAL but was not yet visible when the snapshot was taken: a commit record
//!   is written before the transaction becomes visible (while its WAL is
//!   flushed or a synchronous standby confirms it). Changes are recorded
//!   from the backfill's start marker (or the previous high watermark) on,
//!   and the changes of a transaction still invisible are carried over to
//!   the next chunk, until a snapshot sees it.
//!
//! A row left out is not lost: the change that made it stale is in the
//! stream and writes the newer state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::postgres::snapshot::Snapshot;

use crate::model::change::RelationInfo;
use crate::postgres::pgoutput::{ColumnKind, Oid, Tuple};

/// The start of the prefix of the logical decoding messages that carry
/// watermarks (see `prefix`).
pub const PREFIX: &str = "sluice.backfill";

/// The prefix of this deployment's watermarks: another sluice reading the
/// same database (its own slot, its own data directory) numbers its
/// backfills from 1 too, and its marks must not close our windows.
pub fn prefix(slot: &str, deployment: &str) -> String {
    format!("{PREFIX}:{slot}:{deployment}")
}

/// Changes recorded for one window before it gives up (and its next chunk
/// is read again): bounds memory when a backfill stops without its end mark.
const MAX_RECORDED: usize = 1_000_000;

/// Key hash standing for "every row" (a truncate, or a key that could not
/// be read).
const EVERY_ROW: u64 = 0;

/// A watermark, as written with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub backfill: u64,
    pub chunk: u64,
    pub mark: Mark,
    /// With `Start`: the table's OID and its key columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<Oid>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    /// Start recording changes of the table (before the first low mark).
    Start,
    Low,
    High,
    /// Stop recording (the backfill of the table ended or paused).
    End,
}

impl Marker {
    pub fn parse(content: &[u8]) -> Option<Marker> {
        serde_json::from_slice(content).ok()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("markers serialize")
    }
}

/// A hash of a row's key values; `None` when one is missing. Each value is
/// hashed with the hash of those before it as the seed, so values that
/// split the same bytes differently hash differently.
pub fn key_hash(tuple: &Tuple, columns: &[usize]) -> Option<u64> {
    let mut hash = 0;
    for &column in columns {
        if tuple.kind(column) != ColumnKind::Text {
            return None;
        }
        hash = xxhash_rust::xxh3::xxh3_64_with_seed(tuple.value(column)?, hash);
    }
    // 0 is reserved for "every row".
    Some(hash.max(1))
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    key: u64,
    xid: u32,
}

/// One backfill's window over one table.
#[derive(Debug)]
struct Window {
    table: Oid,
    key: Vec<String>,
    /// Key column positions for the relation description last seen.
    columns: Option<(Arc<RelationInfo>, Vec<usize>)>,
    /// Changes since the start mark or the last high mark.
    recorded: Vec<Seen>,
    /// The chunk whose explicit low mark was seen, and where in `recorded`
    /// it came; without one, the window starts where `recorded` does.
    low: Option<(u64, usize)>,
    /// Changes of transactions the last snapshot did not see.
    carried: Vec<Seen>,
    /// Changes were dropped to bound memory: the next chunk is unsafe.
    overflowed: bool,
}

/// What became of a chunk at its high watermark.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Insert the rows whose flag is `true`.
    Insert(Vec<bool>),
    /// The window cannot tell which rows are stale: read the chunk again.
    Retry,
}

/// The open windows, by backfill.
#[derive(Debug, Default)]
pub struct Windows {
    open: HashMap<u64, Window>,
    /// Tables with an open window, for a quick test per change.
    tables: HashSet<Oid>,
}

impl Windows {
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Whether a backfill reads table `table` now.
    pub fn tracks(&self, table: Oid) -> bool {
        self.tables.contains(&table)
    }

    /// Applies a start, low or end mark. High marks go to [`Windows::high`].
    pub fn mark(&mut self, marker: &Marker) {
        match marker.mark {
            Mark::Start => {
                let Some(table) = marker.table else { return };
                self.open.insert(
                    marker.backfill,
                    Window {
                        table,
                        key: marker.key.clone(),
                        columns: None,
                        recorded: Vec::new(),
                        low: None,
                        carried: Vec::new(),
                        overflowed: false,
                    },
                );
            }
            Mark::Low => {
                if let Some(window) = self.open.get_mut(&marker.backfill) {
                    window.low = Some((marker.chunk, window.recorded.len()));
                }
            }
            Mark::End => {
                self.open.remove(&marker.backfill);
            }
            Mark::High => {}
        }
        self.tables = self.open.values().map(|w| w.table).collect();
    }

    /// Records a change of `rel` by transaction `xid` to the rows `rows`
    /// (new and old, at most two), or to every row (a truncate: `None`).
    pub fn record(&mut self, rel: &Arc<RelationInfo>, xid: u32, rows: Option<&[&Tuple]>) {
        if !self.tables.contains(&rel.id) {
            return;
        }
        for window in self.open.values_mut().filter(|w| w.table == rel.id) {
            if window.overflowed {
                continue;
            }
            let columns = window.columns_for(rel);
            let mut keys = [EVERY_ROW; 2];
            let n = match rows {
                Some(rows) => {
                    for (key, tuple) in keys.iter_mut().zip(rows) {
                        *key = key_hash(tuple, columns).unwrap_or(EVERY_ROW);
                    }
                    rows.len().min(keys.len())
                }
                None => 1,
            };
            window
                .recorded
                .extend(keys[..n].iter().map(|&key| Seen { key, xid }));
            if window.recorded.len() > MAX_RECORDED {
                window.recorded = Vec::new();
                window.overflowed = true;
            }
        }
    }

    /// Decides which of a chunk's rows (given by key hash) go into the
    /// stream at the high mark of `backfill`'s chunk `chunk`, read in
    /// `snapshot`, and starts recording for the next chunk.
    pub fn high(
        &mut self,
        backfill: u64,
        chunk: u64,
        snapshot: &Snapshot,
        keys: &[Option<u64>],
    ) -> Verdict {
        let Some(window) = self.open.get_mut(&backfill) else {
            return Verdict::Retry;
        };
        let low = window.low.take();
        let recorded = std::mem::take(&mut window.recorded);
        let overflowed = std::mem::replace(&mut window.overflowed, false);
        let from = match low {
            None => Some(0),
            Some((low_chunk, at)) if low_chunk == chunk => Some(at),
            Some(_) => None,
        };
        let stale: HashSet<u64> = match from {
            Some(at) if !overflowed => recorded
                .iter()
                .enumerate()
                .filter(|(i, seen)| *i >= at || snapshot.hides(seen.xid))
                .chain(
                    window
                        .carried
                        .iter()
                        .enumerate()
                        .filter(|(_, seen)| snapshot.hides(seen.xid)),
                )
                .map(|(_, seen)| seen.key)
                .collect(),
            _ => {
                window.carried.retain(|seen| snapshot.hides(seen.xid));
                return Verdict::Retry;
            }
        };
        window.carried.retain(|seen| snapshot.hides(seen.xid));
        window
            .carried
            .extend(recorded.into_iter().filter(|seen| snapshot.hides(seen.xid)));
        if stale.contains(&EVERY_ROW) {
            return Verdict::Insert(vec![false; keys.len()]);
        }
        Verdict::Insert(
            keys.iter()
                .map(|key| key.is_some_and(|key| !stale.contains(&key)))
                .collect(),
        )
    }
}

impl Window {
    fn columns_for(&mut self, rel: &Arc<RelationInfo>) -> &[usize] {
        let fresh = match &self.columns {
            Some((cached, _)) => !Arc::ptr_eq(cached, rel),
            None => true,
        };
        if fresh {
            let columns = self
                .key
                .iter()
                .filter_map(|name| rel.column_index(name))
                .collect();
            self.columns = Some((rel.clone(), columns));
        }
        &self.columns.as_ref().expect("set above").1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::ColumnInfo;
    use crate::model::ident::TableName;
    use crate::postgres::pgoutput::{ColumnValue, ReplicaIdentity};
    use crate::postgres::types::TypeKind;

    fn rel() -> Arc<RelationInfo> {
        let column = |name: &str, is_key| ColumnInfo {
            name: name.into(),
            type_oid: 23,
            kind: TypeKind::builtin(23).unwrap(),
            is_key,
        };
        Arc::new(RelationInfo {
            id: 42,
            name: TableName {
                schema: "public".into(),
                table: "items".into(),
            },
            qualified: "public.items".into(),
            columns: vec![column("id", true), column("n", false)],
            replica_identity: ReplicaIdentity::Default,
        })
    }

    /// A row of two text columns, `a` and `b`.
    fn pair(a: &str, b: &str) -> Tuple {
        Tuple {
            data: bytes::Bytes::from(format!("{a}{b}")),
            columns: vec![
                ColumnValue {
                    kind: ColumnKind::Text,
                    start: 0,
                    len: a.len() as u32,
                },
                ColumnValue {
                    kind: ColumnKind::Text,
                    start: a.len() as u32,
                    len: b.len() as u32,
                },
            ],
        }
    }

    fn row(id: &str) -> Tuple {
        pair(id, "7")
    }

    fn key(id: &str) -> Option<u64> {
        key_hash(&row(id), &[0])
    }

    #[test]
    fn keys_of_two_columns_differ_where_their_values_split_the_same_bytes_differently() {
        let hash = |a: &str, b: &str| key_hash(&pair(a, b), &[0, 1]);
        let both = |id: &str| hash(id, "7");
        assert_ne!(both("1"), both("17"));
        assert_ne!(both("1"), key("1"));
        assert_eq!(both("1"), both("1"));
        assert_ne!(hash("ab", "c"), hash("a", "bc"));
        assert_ne!(hash("", "x"), hash("x", ""));
    }

    fn start(windows: &mut Windows) {
        windows.mark(&Marker {
            backfill: 1,
            chunk: 0,
            mark: Mark::Start,
            table: Some(42),
            key: vec!["id".into()],
        });
    }

    fn low(windows: &mut Windows, chunk: u64) {
        windows.mark(&Marker {
            backfill: 1,
            chunk,
            mark: Mark::Low,
            table: None,
            key: Vec::new(),
        });
    }

    fn snapshot(xmax: u64, xip: &[u64]) -> Snapshot {
        Snapshot {
            xmin: xip.iter().copied().min().unwrap_or(xmax),
            xmax,
            xip: xip.to_vec(),
        }
    }

    #[test]
    fn markers_and_snapshots_parse() {
        let marker = Marker {
            backfill: 3,
            chunk: 9,
            mark: Mark::Start,
            table: Some(16384),
            key: vec!["a".into(), "b".into()],
        };
        assert_eq!(Marker::parse(marker.to_json().as_bytes()), Some(marker));
        assert_eq!(
            Marker::parse(br#"{"backfill":1,"chunk":2,"mark":"high"}"#)
                .unwrap()
                .mark,
            Mark::High
        );
        assert_eq!(Marker::parse(b"not json"), None);
    }

    #[test]
    fn rows_changed_inside_the_window_are_left_out() {
        let mut windows = Windows::default();
        let rel = rel();
        start(&mut windows);
        // Before the low mark, by a transaction the snapshot sees: harmless.
        windows.record(&rel, 50, Some(&[&row("1")]));
        low(&mut windows, 1);
        windows.record(&rel, 60, Some(&[&row("2")]));
        let keys = [key("1"), key("2"), key("3")];
        assert_eq!(
            windows.high(1, 1, &snapshot(100, &[]), &keys),
            Verdict::Insert(vec![true, false, true])
        );
    }

    #[test]
    fn a_commit_before_the_low_mark_that_the_snapshot_misses_is_caught_and_carried() {
        let mut windows = Windows::default();
        let rel = rel();
        start(&mut windows);
        // xid 95 committed before the low mark, but the snapshot still
        // counts it as running.
        windows.record(&rel, 95, Some(&[&row("1")]));
        low(&mut windows, 1);
        let keys = [key("1"), key("2")];
        let s = snapshot(100, &[95]);
        assert_eq!(
            windows.high(1, 1, &s, &keys),
            Verdict::Insert(vec![false, true])
        );
        // The next chunk's snapshot still misses it: still left out.
        low(&mut windows, 2);
        assert_eq!(
            windows.high(1, 2, &s, &keys),
            Verdict::Insert(vec![false, true])
        );
        // Once a snapshot sees it, the chunk's row is current.
        low(&mut windows, 3);
        assert_eq!(
            windows.high(1, 3, &snapshot(101, &[]), &keys),
            Verdict::Insert(vec![true, true])
        );
    }

    #[test]
    fn without_a_low_mark_the_window_starts_at_the_previous_high_mark() {
        let mut windows = Windows::default();
        let rel = rel();
        start(&mut windows);
        windows.record(&rel, 60, Some(&[&row("1")]));
        let keys = [key("1"), key("2"), key("3")];
        // Since the start mark.
        assert_eq!(
            windows.high(1, 1, &snapshot(100, &[]), &keys),
            Verdict::Insert(vec![false, true, true])
        );
        // Since the last high mark only.
        windows.record(&rel, 61, Some(&[&row("2")]));
        assert_eq!(
            windows.high(1, 2, &snapshot(100, &[]), &keys),
            Verdict::Insert(vec![true, false, true])
        );
        // An explicit low mark narrows the window.
        windows.record(&rel, 62, Some(&[&row("3")]));
        low(&mut windows, 3);
        windows.record(&rel, 63, Some(&[&row("1")]));
        assert_eq!(
            windows.high(1, 3, &snapshot(100, &[]), &keys),
            Verdict::Insert(vec![false, true, true])
        );
    }

    #[test]
    fn truncates_missing_marks_and_overflow_are_handled() {
        let mut windows = Windows::default();
        let rel = rel();
        start(&mut windows);
        low(&mut windows, 1);
        windows.record(&rel, 60, None);
        let keys = [key("1"), None];
        assert_eq!(
            windows.high(1, 1, &snapshot(100, &[]), &keys),
            Verdict::Insert(vec![false, false])
        );
        // A low mark of another chunk.
        low(&mut windows, 3);
        assert_eq!(
            windows.high(1, 4, &snapshot(100, &[]), &keys),
            Verdict::Retry
        );
        // Unknown backfill.
        assert_eq!(
            windows.high(9, 1, &snapshot(100, &[]), &keys),
            Verdict::Retry
        );
        // Too many changes recorded: the chunk is read again.
        low(&mut windows, 5);
        let row = row("1");
        for _ in 0..=MAX_RECORDED {
            windows.record(&rel, 60, Some(&[&row]));
        }
        assert_eq!(
            windows.high(1, 5, &snapshot(100, &[]), &keys),
            Verdict::Retry
        );
        windows.mark(&Marker {
            backfill: 1,
            chunk: 6,
            mark: Mark::End,
            table: None,
            key: Vec::new(),
        });
        assert!(windows.is_empty());
    }
}
