//! The failed-message store: writes that still failed after their retry
//! budget, kept durably in the data directory with the engine's error, so the
//! stream can go on and an operator can look at them.
//!
//! One JSON line per message in `<data_dir>/failed/<sink>.jsonl`, appended
//! and synced before the write counts as handled.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One parked write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedMessage {
    pub sink: String,
    pub index: String,
    /// `schema.table` the change came from.
    pub table: String,
    pub id: String,
    /// Commit position of the change.
    pub lsn: String,
    /// `upsert`, `update` (partial) or `delete`.
    pub action: String,
    /// The document as sent, for upserts and updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    /// What the engine answered the last time.
    pub error: String,
    pub attempts: u32,
    /// Unix time in milliseconds.
    pub failed_at_ms: u64,
}

/// Appends parked writes of one sink.
#[derive(Debug)]
pub struct FailedStore {
    path: PathBuf,
    file: Option<File>,
}

/// Where a sink's failed messages are kept.
pub fn store_path(data_dir: &Path, sink: &str) -> PathBuf {
    data_dir.join("failed").join(format!("{sink}.jsonl"))
}

impl FailedStore {
    pub fn new(data_dir: &Path, sink: &str) -> FailedStore {
        FailedStore {
            path: store_path(data_dir, sink),
            file: None,
        }
    }

    /// Parks a message durably.
    pub fn park(&mut self, message: &FailedMessage) -> Result<()> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| Error::io(format!("opening {}", self.path.display()), e))?;
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("opened above");
        let mut line = serde_json::to_vec(message).expect("failed messages serialize");
        line.push(b'\n');
        file.write_all(&line)
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))?;
        metrics::counter!("sluice_sink_failed_messages_total", "sink" => message.sink.clone())
            .increment(1);
        tracing::error!(
            sink = %message.sink,
            index = %message.index,
            id = %message.id,
            lsn = %message.lsn,
            error = %message.error,
            "write failed after {} attempt(s); parked in {}",
            message.attempts,
            self.path.display()
        );
        Ok(())
    }
}

/// The parked messages of a sink, oldest first.
pub fn list(data_dir: &Path, sink: &str) -> Result<Vec<FailedMessage>> {
    let path = store_path(data_dir, sink);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    BufReader::new(file)
        .lines()
        .map_while(|line| line.ok())
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(&line).map_err(|e| {
                Error::new(
                    crate::error::ErrorKind::Io,
                    format!("bad line in {}: {e}", path.display()),
                )
            })
        })
        .collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    #[test]
    fn parked_messages_are_listed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FailedStore::new(dir.path(), "es");
        assert!(list(dir.path(), "es").unwrap().is_empty());
        for id in ["1", "2"] {
            store
                .park(&FailedMessage {
                    sink: "es".into(),
                    index: "items".into(),
                    table: "public.items".into(),
                    id: id.into(),
                    lsn: Lsn(5).to_string(),
                    action: "upsert".into(),
                    document: Some("{}".into()),
                    error: "mapper_parsing_exception: bad".into(),
                    attempts: 1,
                    failed_at_ms: now_ms(),
                })
                .unwrap();
        }
        let listed = list(dir.path(), "es").unwrap();
        assert_eq!(
            listed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["1", "2"]
        );
    }
}
