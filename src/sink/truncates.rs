//! The truncates a sink applied, kept in the data directory so that a
//! restart does not apply one twice.
//!
//! After a restart Postgres sends again everything above the slot's
//! confirmed position, which may lie before a truncate the sink already
//! applied, and before the writes that came after it. Applied again, the
//! truncate would remove those later documents; for an engine with
//! versioned writes their replays then carry the same versions as the
//! deletes' tombstones hold, or lower, and are refused as stale: the
//! documents would stay gone. So a truncate is recorded, synced, before
//! any later write goes, and a replayed write of the table older than its
//! last truncate is left out: that truncate erased it anyway.
//!
//! Writes are compared by commit position: the writes of the truncate's
//! own transaction (the common `TRUNCATE` then `INSERT` reload) share it
//! and are never left out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::model::write::{WriteAction, WriteOp};

/// The last truncate applied to each (index, table) of one sink.
#[derive(Debug)]
pub struct TruncateRecord {
    path: PathBuf,
    /// index → table → the commit position of its last truncate.
    last: HashMap<String, HashMap<String, Lsn>>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    index: String,
    table: String,
    /// The truncate's commit position, as a number.
    lsn: u64,
}

/// Where the record of `sink` lives.
pub fn record_path(data_dir: &Path, sink: &str) -> PathBuf {
    data_dir.join("truncates").join(format!("{sink}.json"))
}

impl TruncateRecord {
    /// The record of `sink`: empty when it never truncated.
    pub fn open(data_dir: &Path, sink: &str) -> Result<TruncateRecord> {
        let path = record_path(data_dir, sink);
        let last = match std::fs::read(&path) {
            Ok(bytes) => {
                let entries: Vec<Entry> = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::new(
                        ErrorKind::Io,
                        format!("{} is not a record of truncates: {e}", path.display()),
                    )
                    .hint("restore the file from a backup, or delete it and empty the sink's indexes (a full backfill)")
                })?;
                let mut last: HashMap<String, HashMap<String, Lsn>> = HashMap::new();
                for e in entries {
                    last.entry(e.index).or_default().insert(e.table, Lsn(e.lsn));
                }
                last
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        Ok(TruncateRecord { path, last })
    }

    /// Whether `op` is a replay that a truncate applied since erased: a
    /// write of its table older than the table's last truncate, or that
    /// truncate itself.
    pub fn erased(&self, op: &WriteOp) -> bool {
        if self.last.is_empty() {
            return false;
        }
        let Some(&at) = self
            .last
            .get(&*op.index)
            .and_then(|tables| tables.get(&*op.table))
        else {
            return false;
        };
        match op.action {
            WriteAction::Truncate { .. } => op.lsn <= at,
            _ => op.lsn < at,
        }
    }

    /// Records that the truncate `op` was applied, durably, before the
    /// writes after it go.
    pub fn applied(&mut self, op: &WriteOp) -> Result<()> {
        let at = self
            .last
            .entry(op.index.to_string())
            .or_default()
            .entry(op.table.to_string())
            .or_insert(op.lsn);
        *at = (*at).max(op.lsn);
        let mut entries: Vec<Entry> = self
            .last
            .iter()
            .flat_map(|(index, tables)| {
                tables.iter().map(|(table, &lsn)| Entry {
                    index: index.clone(),
                    table: table.clone(),
                    lsn: lsn.0,
                })
            })
            .collect();
        entries.sort_by(|a, b| (&a.index, &a.table).cmp(&(&b.index, &b.table)));
        let bytes = serde_json::to_vec_pretty(&entries).expect("entries serialize");
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        }
        crate::data_dir::replace_file(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn op(table: &str, lsn: u64, action: WriteAction) -> WriteOp {
        WriteOp {
            index: Arc::from("items"),
            table: Arc::from(table),
            id: "1".into(),
            lsn: Lsn(lsn),
            action,
            routing: None,
        }
    }

    fn upsert() -> WriteAction {
        WriteAction::Upsert {
            doc: b"{}".to_vec(),
            partial: false,
            fresh: true,
        }
    }

    fn truncate() -> WriteAction {
        WriteAction::Truncate {
            barrier: 0,
            scoped: false,
        }
    }

    #[test]
    fn replays_older_than_an_applied_truncate_are_erased_and_it_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = TruncateRecord::open(dir.path(), "es").unwrap();
        assert!(!record.erased(&op("public.items", 5, upsert())));
        record
            .applied(&op("public.items", 100, truncate()))
            .unwrap();

        let record = TruncateRecord::open(dir.path(), "es").unwrap();
        // The truncate again, and what it erased.
        assert!(record.erased(&op("public.items", 100, truncate())));
        assert!(record.erased(&op("public.items", 99, upsert())));
        assert!(record.erased(&op("public.items", 99, WriteAction::Delete)));
        // Its own transaction's writes, later writes and truncates, other tables.
        assert!(!record.erased(&op("public.items", 100, upsert())));
        assert!(!record.erased(&op("public.items", 101, upsert())));
        assert!(!record.erased(&op("public.items", 101, truncate())));
        assert!(!record.erased(&op("public.other", 99, upsert())));
        // Another sink has a record of its own.
        let other = TruncateRecord::open(dir.path(), "ts").unwrap();
        assert!(!other.erased(&op("public.items", 99, upsert())));
    }

    #[test]
    fn a_record_that_is_not_one_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_path(dir.path(), "es");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "not json").unwrap();
        let e = TruncateRecord::open(dir.path(), "es").unwrap_err();
        assert!(e.to_string().contains("truncates/es.json"), "{e}");
    }
}
