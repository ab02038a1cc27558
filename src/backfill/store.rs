//! Backfills on disk: one JSON file per backfill under
//! `data_dir/backfills/`, replaced atomically (written aside, synced,
//! renamed), and the list of sinks that were set up (`sinks.json`), which
//! tells a new sink from a known one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::Backfill;
use crate::error::{Error, Result};

/// Per sink, per table (`schema.table`), the table's OID when its initial
/// backfill was started.
pub type Setup = BTreeMap<String, BTreeMap<String, u32>>;

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store> {
        let dir = data_dir.join("backfills");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        Ok(Store { dir })
    }

    /// Every stored backfill, by id. A file that cannot be read is an error:
    /// silently dropping it would forget where a backfill was.
    pub fn load(&self) -> Result<BTreeMap<u64, Backfill>> {
        let mut out = BTreeMap::new();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("cannot read {}", self.dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let is_backfill = path.extension().is_some_and(|e| e == "json")
                && path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| s.parse::<u64>().is_ok());
            if !is_backfill {
                continue;
            }
            let text = std::fs::read(&path)
                .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
            let backfill: Backfill = serde_json::from_slice(&text).map_err(|e| {
                Error::new(
                    crate::error::ErrorKind::Io,
                    format!("{} is not a backfill record: {e}", path.display()),
                )
                .hint("restore the file, or delete it to forget that backfill")
            })?;
            out.insert(backfill.id, backfill);
        }
        Ok(out)
    }

    pub fn save(&self, backfill: &Backfill) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(backfill).expect("backfills serialize");
        self.write(&format!("{}.json", backfill.id), &bytes)
    }

    /// Names of the sinks that were set up before.
    pub fn known_sinks(&self) -> Result<Vec<String>> {
        let path = self.dir.join("sinks.json");
        match std::fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text).map_err(|e| {
                Error::new(
                    crate::error::ErrorKind::Io,
                    format!("{} is not a list of sinks: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
        }
    }

    /// The tables set up in each sink, with the OID each had then (a table
    /// dropped and created again has another); `None` before the first run
    /// that kept them.
    pub fn setup(&self) -> Result<Option<Setup>> {
        let path = self.dir.join("setup.json");
        match std::fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text).map(Some).map_err(|e| {
                Error::new(
                    crate::error::ErrorKind::Io,
                    format!("{} is not a list of set-up tables: {e}", path.display()),
                )
                .hint("restore the file, or delete it: the sinks in sinks.json are then taken as set up with every configured table")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
        }
    }

    pub fn save_setup(&self, setup: &Setup) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(setup).expect("set-up tables serialize");
        self.write("setup.json", &bytes)
    }

    pub fn save_known_sinks(&self, sinks: &[String]) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(sinks).expect("names serialize");
        self.write("sinks.json", &bytes)
    }

    /// Replaces a file atomically and durably. Called from async code: the
    /// runtime is told this thread blocks (on the fsync) meanwhile.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(|| self.write_now(name, bytes))
        } else {
            self.write_now(name, bytes)
        }
    }

    fn write_now(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        let aside = self.dir.join(format!(".{name}.tmp"));
        let io = |e| Error::io(format!("cannot write {}", path.display()), e);
        let mut file = std::fs::File::create(&aside).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&aside, &path).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backfill::{State, TableProgress};

    #[test]
    fn backfills_and_known_sinks_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.load().unwrap().is_empty());
        assert!(store.known_sinks().unwrap().is_empty());
        let backfill = Backfill {
            id: 7,
            sink: "search".into(),
            state: State::Running,
            reason: None,
            initial: true,
            tables: vec![TableProgress {
                table: "public.items".into(),
                condition: Some("id > 10".into()),
                rows_done: 1500,
                rows_estimated: Some(10_000),
                cursor: Some(vec!["1510".into()]),
                done: false,
                rows: None,
            }],
            chunks: 3,
            created_at_ms: 1,
            updated_at_ms: 2,
            finished_at_ms: None,
        };
        store.save(&backfill).unwrap();
        store.save_known_sinks(&["search".into()]).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap()[&7], backfill);
        assert_eq!(store.known_sinks().unwrap(), ["search"]);

        std::fs::write(dir.path().join("backfills/8.json"), b"{").unwrap();
        let error = store.load().unwrap_err();
        assert!(error.to_string().contains("8.json"), "{error}");
    }
}
