//! The failed-message store: writes that still failed after their retry
//! budget, kept durably in the data directory with the engine's error, so the
//! stream goes on and an operator can list, retry or discard them
//! (`sluice failed …`).
//!
//! One JSON line per message in `<data_dir>/failed/<sink>.jsonl`, appended and
//! synced before the write counts as handled. Later writes to a document with a
//! parked message are parked behind it, so that a retry replays them in order.
//! Every change of the file happens under an exclusive `flock`, so `sluice
//! failed` can edit it while `sluice run` appends.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::change::{WriteAction, WriteOp};

/// The error given to writes parked behind an earlier failed write.
pub const WAITING_BEHIND: &str = "waiting behind an earlier failed write to the same document";

/// One parked write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedMessage {
    /// Identifies the message for `sluice failed retry|discard`.
    #[serde(default)]
    pub key: String,
    pub sink: String,
    pub index: String,
    /// `schema.table` the change came from.
    pub table: String,
    pub id: String,
    /// The document's routing value, when its table has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<String>,
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

/// Where a sink's failed messages are kept.
pub fn store_path(data_dir: &Path, sink: &str) -> PathBuf {
    data_dir.join("failed").join(format!("{sink}.jsonl"))
}

/// The parked messages of one sink, as its writer sees them.
#[derive(Debug)]
pub struct FailedStore {
    path: PathBuf,
    /// (index, id) of every parked message.
    blocked: HashSet<(String, String)>,
    count: usize,
    /// When the file was last read, to notice edits by `sluice failed`.
    seen: Option<SystemTime>,
}

impl FailedStore {
    pub fn new(data_dir: &Path, sink: &str) -> FailedStore {
        let mut store = FailedStore {
            path: store_path(data_dir, sink),
            blocked: HashSet::new(),
            count: 0,
            seen: None,
        };
        store.refresh();
        store
    }

    /// Re-reads the file if someone else changed it (retries, discards).
    pub fn refresh(&mut self) {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified == self.seen && self.seen.is_some() {
            return;
        }
        let messages = read(&self.path).unwrap_or_default();
        self.count = messages.len();
        self.blocked = messages.into_iter().map(|m| (m.index, m.id)).collect();
        self.seen = modified;
    }

    /// Whether a document has a parked write that later writes must wait behind.
    pub fn is_blocked(&self, index: &str, id: &str) -> bool {
        !self.blocked.is_empty() && self.blocked.contains(&(index.to_owned(), id.to_owned()))
    }

    /// How many messages are parked.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Parks a message durably.
    pub fn park(&mut self, message: &FailedMessage) -> Result<()> {
        let mut message = message.clone();
        if message.key.is_empty() {
            message.key = format!("{:016x}", rand::random::<u64>());
        }
        let mut line = serde_json::to_vec(&message).expect("failed messages serialize");
        line.push(b'\n');
        with_lock(&self.path, |file| {
            let mut file = file;
            file.write_all(&line)?;
            file.sync_data()
        })?;
        self.seen = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        self.count += 1;
        self.blocked
            .insert((message.index.clone(), message.id.clone()));
        metrics::counter!("sluice_sink_failed_messages_total", "sink" => message.sink.clone())
            .increment(1);
        metrics::gauge!("sluice_sink_parked_messages", "sink" => message.sink.clone())
            .set(self.count as f64);
        if message.error != WAITING_BEHIND {
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
        }
        Ok(())
    }
}

impl FailedStore {
    /// Parks `op` instead of sending it when its document is larger than
    /// `max_document_bytes` (the document itself is not kept: a retry reads
    /// the row again) or an earlier write to its document is parked. Returns
    /// whether it did.
    pub fn screen(&mut self, sink: &str, op: &WriteOp, max_document_bytes: u64) -> Result<bool> {
        if let WriteAction::Upsert { doc, .. } = &op.action {
            if doc.len() as u64 > max_document_bytes {
                let error = format!(
                    "the document is {} bytes, over the sink's max_document_bytes ({max_document_bytes}): \
                     raise max_document_bytes, or leave the large columns out with the table's `drop`",
                    doc.len()
                );
                self.park(&FailedMessage::without_document(sink, op, error))?;
                return Ok(true);
            }
        }
        self.park_if_blocked(sink, op)
    }

    /// Parks `op` when an earlier write to its document is parked: it waits
    /// behind it, so a retry replays both in order. Returns whether it did.
    pub fn park_if_blocked(&mut self, sink: &str, op: &WriteOp) -> Result<bool> {
        if !self.is_blocked(&op.index, &op.id) {
            return Ok(false);
        }
        self.park(&FailedMessage::for_op(sink, op, WAITING_BEHIND.into(), 0))?;
        Ok(true)
    }

    /// While `max` or more messages are parked, the sink is paused: this
    /// waits (holding back the pipeline, so Postgres keeps the WAL) until an
    /// operator retries or discards some.
    pub async fn wait_below(&mut self, sink: &str, max: usize) {
        self.refresh();
        if self.count < max {
            return;
        }
        metrics::gauge!("sluice_sink_paused", "sink" => sink.to_owned()).set(1.0);
        tracing::error!(
            sink,
            parked = self.count,
            max_parked = max,
            "sink paused: too many parked messages; see them with `sluice failed list --sink {sink}`, then retry or discard them"
        );
        while self.count >= max {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            self.refresh();
        }
        metrics::gauge!("sluice_sink_paused", "sink" => sink.to_owned()).set(0.0);
        tracing::info!(sink, parked = self.count, "sink resumed");
    }
}

impl FailedMessage {
    /// The message for a write.
    pub fn for_op(sink: &str, op: &WriteOp, error: String, attempts: u32) -> FailedMessage {
        let mut message = FailedMessage::without_document(sink, op, error);
        message.attempts = attempts;
        if let WriteAction::Upsert { doc, .. } = &op.action {
            message.document = Some(String::from_utf8_lossy(doc).into_owned());
        }
        message
    }

    /// The message for a write whose document is not kept (too large to).
    pub fn without_document(sink: &str, op: &WriteOp, error: String) -> FailedMessage {
        let action = match &op.action {
            WriteAction::Upsert { partial: true, .. } => "update",
            WriteAction::Upsert { .. } => "upsert",
            WriteAction::Delete => "delete",
            WriteAction::Truncate { .. } => "truncate",
        };
        FailedMessage {
            key: String::new(),
            sink: sink.to_owned(),
            index: op.index.to_string(),
            table: op.table.to_string(),
            id: op.id.clone(),
            routing: op.routing.as_deref().map(str::to_owned),
            lsn: op.lsn.to_string(),
            action: action.to_owned(),
            document: None,
            error,
            attempts: 0,
            failed_at_ms: now_ms(),
        }
    }

    /// The write this message stands for, to send again.
    pub fn to_op(&self) -> Result<WriteOp> {
        let lsn = self
            .lsn
            .parse()
            .map_err(|e| Error::new(ErrorKind::Io, format!("failed message {}: {e}", self.key)))?;
        let doc = || match &self.document {
            Some(document) => Ok(document.clone().into_bytes()),
            None => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "failed message {}: its document was not kept ({}); backfill the row instead",
                    self.key, self.error
                ),
            )),
        };
        let action = match self.action.as_str() {
            "upsert" | "index" => WriteAction::Upsert {
                doc: doc()?,
                partial: false,
                fresh: false,
            },
            "update" => WriteAction::Upsert {
                doc: doc()?,
                partial: true,
                fresh: false,
            },
            "delete" => WriteAction::Delete,
            other => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("failed message {}: unknown action `{other}`", self.key),
                ))
            }
        };
        Ok(WriteOp {
            index: self.index.as_str().into(),
            table: self.table.as_str().into(),
            id: self.id.clone(),
            lsn,
            action,
            routing: self.routing.as_deref().map(Into::into),
        })
    }
}

/// Opens the store file for appending under an exclusive lock and runs `f`.
fn with_lock<T>(path: &Path, f: impl FnOnce(&File) -> std::io::Result<T>) -> Result<T> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    // SAFETY: flock on a descriptor we own; released when `file` closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io(
            format!("locking {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    f(&file).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn read(path: &Path) -> Result<Vec<FailedMessage>> {
    let file = match File::open(path) {
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
                    ErrorKind::Io,
                    format!("bad line in {}: {e}", path.display()),
                )
            })
        })
        .collect()
}

/// The parked messages of a sink, oldest first.
pub fn list(data_dir: &Path, sink: &str) -> Result<Vec<FailedMessage>> {
    read(&store_path(data_dir, sink))
}

/// The sinks that have a failed-message store.
pub fn sinks(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("failed"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".jsonl").map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Removes the messages `select` picks (under the lock) and returns them.
pub fn take(
    data_dir: &Path,
    sink: &str,
    select: impl Fn(&FailedMessage) -> bool,
) -> Result<Vec<FailedMessage>> {
    let path = store_path(data_dir, sink);
    if !path.exists() {
        return Ok(Vec::new());
    }
    with_lock(&path, |file| {
        let messages = read(&path).map_err(|e| std::io::Error::other(e.to_string()))?;
        let (taken, kept): (Vec<_>, Vec<_>) = messages.into_iter().partition(|m| select(m));
        let mut text = Vec::new();
        for message in &kept {
            text.extend(serde_json::to_vec(message).expect("failed messages serialize"));
            text.push(b'\n');
        }
        // Rewrite in place: the lock is on this file, a rename would escape it.
        file.set_len(0)?;
        let mut file = file;
        file.write_all(&text)?;
        file.sync_data()?;
        Ok(taken)
    })
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

    fn message(id: &str) -> FailedMessage {
        FailedMessage {
            key: String::new(),
            sink: "es".into(),
            index: "items".into(),
            table: "public.items".into(),
            id: id.into(),
            routing: None,
            lsn: Lsn(5).to_string(),
            action: "upsert".into(),
            document: Some("{}".into()),
            error: "mapper_parsing_exception: bad".into(),
            attempts: 1,
            failed_at_ms: now_ms(),
        }
    }

    #[test]
    fn park_list_block_and_take() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FailedStore::new(dir.path(), "es");
        assert!(list(dir.path(), "es").unwrap().is_empty());
        for id in ["1", "2", "1"] {
            store.park(&message(id)).unwrap();
        }
        assert!(store.is_blocked("items", "1"));
        assert!(!store.is_blocked("items", "3"));
        let listed = list(dir.path(), "es").unwrap();
        assert_eq!(
            listed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["1", "2", "1"]
        );
        assert!(listed.iter().all(|m| m.key.len() == 16));
        assert_eq!(sinks(dir.path()), ["es"]);

        let taken = take(dir.path(), "es", |m| m.id == "1").unwrap();
        assert_eq!(taken.len(), 2);
        assert_eq!(list(dir.path(), "es").unwrap().len(), 1);
        // The writer notices the edit.
        std::thread::sleep(std::time::Duration::from_millis(20));
        store.refresh();
        assert!(!store.is_blocked("items", "1"));
        assert_eq!(store.len(), 1);
    }
}
