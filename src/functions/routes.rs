//! Where route functions sent each table's documents: the indexes a table's
//! route named, kept in `<data_dir>/routes.json`, so a TRUNCATE of the table
//! reaches every one of them (and only that table's documents there).
//!
//! A shard notes an index before it hands the first write to it to a sink,
//! and the note is on disk (replaced atomically, synced) before that: a
//! document an index holds is always in the record. A truncate reads the
//! record once every shard passed it, so every earlier write is noted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::model::write::WriteOp;

/// The file in the data directory.
pub const ROUTES_FILE: &str = "routes.json";

#[derive(Debug)]
pub struct RouteRecord {
    path: PathBuf,
    /// The tables with a route function.
    routed: BTreeSet<String>,
    /// Table (`schema.table`) -> the indexes its route named.
    indexes: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

impl RouteRecord {
    /// The record of the data directory `data_dir` (empty when there is
    /// none), for the tables `routed` (those with a route function).
    pub fn open(data_dir: &Path, routed: BTreeSet<String>) -> Result<RouteRecord> {
        let path = data_dir.join(ROUTES_FILE);
        let indexes = match std::fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text).map_err(|e| {
                Error::new(
                    crate::error::ErrorKind::Io,
                    format!("{} is not a route record: {e}", path.display()),
                )
                .hint("it lists the indexes route functions wrote to; restore it, or remove it and truncate those indexes by hand")
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        Ok(RouteRecord {
            path,
            routed,
            indexes: Mutex::new(indexes),
        })
    }

    /// Whether `table` has a route function.
    pub fn is_routed(&self, table: &str) -> bool {
        self.routed.contains(table)
    }

    /// Notes that `table`'s route sent a document to `index`; on disk before
    /// it returns, the first time.
    pub fn note(&self, table: &str, index: &str) -> Result<()> {
        let mut indexes = self.indexes.lock().unwrap_or_else(PoisonError::into_inner);
        if indexes
            .get(table)
            .is_some_and(|known| known.contains(index))
        {
            return Ok(());
        }
        indexes
            .entry(table.to_owned())
            .or_default()
            .insert(index.to_owned());
        let text = serde_json::to_vec_pretty(&*indexes).expect("the record serializes");
        crate::data_dir::replace_file(&self.path, &text)
    }

    /// The truncates that empty `truncate`'s table: one per index its route
    /// sent documents to when it has a route, else `truncate` itself.
    pub fn truncates(&self, truncate: &WriteOp) -> Vec<WriteOp> {
        if !self.is_routed(&truncate.table) {
            return vec![truncate.clone()];
        }
        self.indexes(&truncate.table)
            .into_iter()
            .map(|index| WriteOp {
                index: index.into(),
                ..truncate.clone()
            })
            .collect()
    }

    /// The indexes `table`'s route sent documents to.
    pub fn indexes(&self, table: &str) -> Vec<String> {
        let indexes = self.indexes.lock().unwrap_or_else(PoisonError::into_inner);
        indexes
            .get(table)
            .map(|known| known.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noted_indexes_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let routed = BTreeSet::from(["public.products".to_owned()]);
        let record = RouteRecord::open(dir.path(), routed.clone()).unwrap();
        assert!(record.is_routed("public.products") && !record.is_routed("public.other"));
        assert!(record.indexes("public.products").is_empty());
        for index in ["products_b", "products_a", "products_b"] {
            record.note("public.products", index).unwrap();
        }
        let again = RouteRecord::open(dir.path(), routed.clone()).unwrap();
        assert_eq!(
            again.indexes("public.products"),
            ["products_a", "products_b"]
        );
        std::fs::write(dir.path().join(ROUTES_FILE), "{").unwrap();
        assert!(RouteRecord::open(dir.path(), routed).is_err());
    }
}
