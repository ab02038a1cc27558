//! The failed-message store: writes that still failed after their retry
//! budget, kept durably in the data directory with the engine's error, so the
//! stream goes on and an operator can list, retry or discard them
//! (`sluice failed …`).
//!
//! One JSON line per message in `<data_dir>/failed/<sink>.jsonl`, appended and
//! synced before the write counts as handled. Later writes to a document with a
//! parked message are parked behind it, so that a retry replays them in order.
//! Every change of the file happens under an exclusive `flock` of
//! `<sink>.jsonl.lock`, so `sluice failed` can edit it while `sluice run`
//! appends. An append cut short by a crash leaves a torn last line: reads skip
//! it (and any other line that is not a message) and say so, and the next
//! append cuts it off first. Removing messages writes the rest to a new file
//! that replaces the old one atomically, so a crash leaves one or the other.
//!
//! A message's key is derived from the write (sink, index, id, position,
//! action), so a write retried and parked again keeps its key.
//!
//! Retries go through the sink's writer, in order with the sink's other
//! writes: `queue_retry` moves the messages of the chosen documents (every
//! parked write of each, oldest first) to `<sink>.retrying.jsonl`; they no
//! longer count as parked, so a paused sink resumes, but their documents stay
//! blocked, so newer writes still wait behind them. The writer then sends
//! them (`replay`), with whatever was parked behind them meanwhile, commits,
//! and empties the journal; a write that fails again is parked again with
//! its key. After a crash the journal is still there and is sent again.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::model::write::{WriteAction, WriteOp};

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
    /// (index, id) of every parked message and every message waiting for
    /// its retry.
    blocked: HashSet<(String, String)>,
    /// `written_hash` of every parked message (not of those waiting for
    /// their retry, which may be parked again).
    parked: HashSet<u64>,
    /// Messages waiting for their retry (in the journal).
    retrying: usize,
    /// The sink's name, for metrics.
    sink: String,
    count: usize,
    /// The file as last read (modified, length, inode), to notice edits by
    /// `sluice failed`.
    seen: Option<(SystemTime, u64, u64, u64)>,
    /// Parked since the last `log_parked`, and the first of them.
    unlogged: usize,
    first_unlogged: Option<FailedMessage>,
}

impl FailedStore {
    pub fn new(data_dir: &Path, sink: &str) -> FailedStore {
        let mut store = FailedStore {
            path: store_path(data_dir, sink),
            blocked: HashSet::new(),
            parked: HashSet::new(),
            retrying: 0,
            sink: sink.to_owned(),
            count: 0,
            seen: None,
            unlogged: 0,
            first_unlogged: None,
        };
        store.refresh();
        store
    }

    /// What tells the file changed: a rewrite replaces it (another inode),
    /// an append grows it.
    fn file_state(&self) -> Option<(SystemTime, u64, u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.path).ok()?;
        // The journal's inode: queueing or finishing a retry replaces it.
        let journal = std::fs::metadata(journal_path(&self.path)).map_or(0, |m| m.ino());
        Some((meta.modified().ok()?, meta.len(), meta.ino(), journal))
    }

    /// Re-reads the file if someone else changed it (retries, discards).
    pub fn refresh(&mut self) {
        let modified = self.file_state();
        if modified == self.seen && self.seen.is_some() {
            return;
        }
        let messages = read(&self.path).unwrap_or_default();
        let retrying = read(&journal_path(&self.path)).unwrap_or_default();
        self.count = messages.len();
        self.retrying = retrying.len();
        // From the start, also after a restart.
        metrics::gauge!("sluice_sink_parked_messages", "sink" => self.sink.clone())
            .set(self.count as f64);
        self.parked = messages.iter().map(FailedMessage::written_hash).collect();
        self.blocked = messages
            .into_iter()
            .chain(retrying)
            .map(|m| (m.index, m.id))
            .collect();
        self.seen = modified;
    }

    /// Discards the writes of `table` parked at positions below `below`:
    /// a truncate (or the table created again) removed their documents, and
    /// retried they would bring them back. Returns how many.
    pub fn discard_table(&mut self, table: &str, below: Lsn) -> Result<usize> {
        self.refresh();
        if self.count == 0 {
            return Ok(0);
        }
        let taken = take_at(&self.path, |m| {
            m.table == table && m.lsn.parse::<Lsn>().is_ok_and(|lsn| lsn < below)
        })?;
        self.refresh();
        if !taken.is_empty() {
            tracing::warn!(sink = %self.sink, table, discarded = taken.len(), "parked writes discarded: their table was emptied since");
        }
        Ok(taken.len())
    }

    /// Whether messages wait in the journal for their retry.
    pub fn has_retries(&mut self) -> bool {
        self.refresh();
        self.retrying > 0
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

    /// Parks a message durably. A write parked already, as it was (read
    /// again after a restart, refused again), is not parked twice.
    pub fn park(&mut self, message: &FailedMessage) -> Result<()> {
        let mut message = message.clone();
        if message.key.is_empty() {
            message.key = message.derived_key();
        }
        let written = message.written_hash();
        // Taken out since (a retry, a discard): parked again.
        self.refresh();
        if self.parked.contains(&written) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(&message).expect("failed messages serialize");
        line.push(b'\n');
        let path = self.path.clone();
        with_lock(&self.path, || {
            let mut file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)?;
            cut_torn_tail(&file, &path)?;
            file.write_all(&line)?;
            file.sync_data()
        })?;
        self.seen = self.file_state();
        self.count += 1;
        self.parked.insert(written);
        self.blocked
            .insert((message.index.clone(), message.id.clone()));
        metrics::counter!("sluice_sink_failed_messages_total", "sink" => message.sink.clone())
            .increment(1);
        metrics::gauge!("sluice_sink_parked_messages", "sink" => message.sink.clone())
            .set(self.count as f64);
        if message.error != WAITING_BEHIND {
            self.unlogged += 1;
            if self.first_unlogged.is_none() {
                self.first_unlogged = Some(message);
            }
        }
        Ok(())
    }

    /// Logs the writes parked since the last call in one line: how many,
    /// and the first of them with the engine's answer.
    pub fn log_parked(&mut self) {
        let Some(first) = self.first_unlogged.take() else {
            return;
        };
        let count = std::mem::take(&mut self.unlogged);
        tracing::error!(
            sink = %first.sink,
            parked = count,
            first_index = %first.index,
            first_id = %first.id,
            first_lsn = %first.lsn,
            first_error = %first.error,
            "{count} write(s) failed and were parked in {} (`sluice failed list --sink {}`)",
            self.path.display(),
            first.sink
        );
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
        self.log_parked();
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
    /// A hash of the write itself: its key and its document. Two writes of
    /// one transaction to one document share a key but not a document.
    fn written_hash(&self) -> u64 {
        let key = match self.key.is_empty() {
            true => std::borrow::Cow::Owned(self.derived_key()),
            false => std::borrow::Cow::Borrowed(&self.key),
        };
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(key.as_bytes());
        match &self.document {
            Some(document) => {
                hasher.update(b"\x01");
                hasher.update(document.as_bytes());
            }
            None => hasher.update(b"\x00"),
        }
        hasher.digest()
    }

    /// The key of the write this message stands for: the same whenever the
    /// same write is parked (retried and parked again, too).
    pub fn derived_key(&self) -> String {
        let text = format!(
            "{}\0{}\0{}\0{}\0{}",
            self.sink, self.index, self.id, self.lsn, self.action
        );
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
    }

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

/// Runs `f` under the exclusive lock of the store at `path` (its `.lock`
/// file, which stays put while the store itself is replaced).
fn with_lock<T>(path: &Path, f: impl FnOnce() -> std::io::Result<T>) -> Result<T> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let lock_path = lock_path(path);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io(
            format!("locking {}", lock_path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    f().map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    path.with_file_name(name)
}

/// Cuts off a last line without its newline: an append a crash cut short
/// (its write was never acknowledged, so it is sent again after a restart).
fn cut_torn_tail(file: &File, path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut reader = file;
    let mut last = [0u8];
    reader.seek(SeekFrom::Start(len - 1))?;
    reader.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    // Find the end of the last whole line.
    let keep = {
        let mut text = Vec::new();
        reader.seek(SeekFrom::Start(0))?;
        reader.read_to_end(&mut text)?;
        text.iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i as u64 + 1)
    };
    tracing::warn!(
        file = %path.display(),
        bytes = len - keep,
        "the last parked message was cut short by a crash; removing its torn line"
    );
    file.set_len(keep)?;
    Ok(())
}

/// The messages in the store at `path`; lines that are not messages (a line
/// torn by a crash) are skipped and reported.
fn read(path: &Path) -> Result<Vec<FailedMessage>> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let mut messages = Vec::new();
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    for (n, line) in lines.into_iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(message) => messages.push(message),
            Err(e) => {
                let torn = if n == last {
                    "a last line cut short by a crash"
                } else {
                    "a line that is not a parked message"
                };
                tracing::warn!(file = %path.display(), line = n + 1, error = %e, "skipping {torn}");
            }
        }
    }
    Ok(messages)
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
/// The rest is written to a new file that replaces the store atomically.
pub fn take(
    data_dir: &Path,
    sink: &str,
    select: impl Fn(&FailedMessage) -> bool,
) -> Result<Vec<FailedMessage>> {
    take_at(&store_path(data_dir, sink), select)
}

fn take_at(path: &Path, select: impl Fn(&FailedMessage) -> bool) -> Result<Vec<FailedMessage>> {
    let path = path.to_owned();
    if !path.exists() {
        return Ok(Vec::new());
    }
    with_lock(&path, || {
        let all = read(&path).map_err(|e| std::io::Error::other(e.to_string()))?;
        let (taken, kept): (Vec<_>, Vec<_>) = all.into_iter().partition(|m| select(m));
        let mut text = Vec::new();
        for message in &kept {
            text.extend(serde_json::to_vec(message).expect("failed messages serialize"));
            text.push(b'\n');
        }
        crate::data_dir::replace_file(&path, &text)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(taken)
    })
}

fn journal_path(store: &Path) -> PathBuf {
    let name = store.file_name().unwrap_or_default().to_string_lossy();
    let name = name.strip_suffix(".jsonl").unwrap_or(&name).to_owned();
    store.with_file_name(format!("{name}.retrying.jsonl"))
}

fn lines(messages: &[FailedMessage]) -> Vec<u8> {
    let mut text = Vec::new();
    for message in messages {
        text.extend(serde_json::to_vec(message).expect("failed messages serialize"));
        text.push(b'\n');
    }
    text
}

/// Moves every parked write of the documents whose messages `select`
/// picks (oldest first) from the store to the retry journal, behind what is
/// already there; returns how many. The sink's writer sends them.
pub fn queue_retry(
    data_dir: &Path,
    sink: &str,
    select: impl Fn(&FailedMessage) -> bool,
) -> Result<usize> {
    let path = store_path(data_dir, sink);
    if !path.exists() {
        return Ok(0);
    }
    let io = |e: Error| std::io::Error::other(e.to_string());
    with_lock(&path, || {
        let all = read(&path).map_err(io)?;
        let documents: HashSet<(String, String)> = all
            .iter()
            .filter(|m| select(m))
            .map(|m| (m.index.clone(), m.id.clone()))
            .collect();
        move_to_journal(&path, all, &documents).map_err(io)
    })
}

/// Moves the messages of `documents` out of `all` (the store at `path`) to
/// the end of the journal: the journal first, so a crash between the two
/// leaves them in both (a retry sends them once more), never in neither.
fn move_to_journal(
    path: &Path,
    all: Vec<FailedMessage>,
    documents: &HashSet<(String, String)>,
) -> Result<usize> {
    let (moved, kept): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|m| documents.contains(&(m.index.clone(), m.id.clone())));
    if moved.is_empty() {
        return Ok(0);
    }
    let journal = journal_path(path);
    let mut queued = read(&journal)?;
    queued.extend(moved.iter().cloned());
    crate::data_dir::replace_file(&journal, &lines(&queued))?;
    crate::data_dir::replace_file(path, &lines(&kept))?;
    Ok(moved.len())
}

impl FailedStore {
    /// Takes the journal's messages for sending, with every write parked
    /// behind them since they were queued (in order); their documents are
    /// no longer blocked, so the sink takes them. `finish_retries` ends it.
    pub fn start_retries(&mut self) -> Result<Vec<FailedMessage>> {
        let journal = journal_path(&self.path);
        let path = self.path.clone();
        let io = |e: Error| std::io::Error::other(e.to_string());
        let messages = with_lock(&self.path, || {
            let queued = read(&journal).map_err(io)?;
            let documents: HashSet<(String, String)> = queued
                .iter()
                .map(|m| (m.index.clone(), m.id.clone()))
                .collect();
            move_to_journal(&path, read(&path).map_err(io)?, &documents).map_err(io)?;
            read(&journal).map_err(io)
        })?;
        self.refresh();
        for message in &messages {
            self.blocked
                .remove(&(message.index.clone(), message.id.clone()));
        }
        Ok(messages)
    }

    /// Empties the journal once its writes were sent and committed (those
    /// that failed again are parked again).
    pub fn finish_retries(&mut self) -> Result<()> {
        let journal = journal_path(&self.path);
        with_lock(&self.path, || match std::fs::remove_file(&journal) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })?;
        self.seen = None;
        self.refresh();
        Ok(())
    }
}

/// Sends the writes waiting in `sink`'s retry journal through it, in order,
/// commits them at `upto` (the sink's committed position) and empties the
/// journal. Returns how many were sent; messages that cannot be sent (their
/// document was not kept) are parked again as they were.
pub async fn replay(sink: &mut dyn super::Sink, upto: crate::lsn::Lsn) -> Result<usize> {
    let name = sink.name().to_owned();
    let Some(store) = sink.failed() else {
        return Ok(0);
    };
    if !store.has_retries() {
        return Ok(0);
    }
    let messages = store.start_retries()?;
    let mut ops = Vec::with_capacity(messages.len());
    let mut unsendable = Vec::new();
    for message in messages {
        match message.to_op() {
            Ok(op) => ops.push(op),
            Err(_) => unsendable.push(message),
        }
    }
    for message in &unsendable {
        store.park(message)?;
    }
    tracing::info!(sink = %name, writes = ops.len(), "retrying parked writes");
    sink.write(&ops).await?;
    sink.commit(upto).await?;
    if let Some(store) = sink.failed() {
        store.finish_retries()?;
        store.log_parked();
    }
    Ok(ops.len())
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
        for (id, lsn) in [("1", 5), ("2", 5), ("1", 6)] {
            store
                .park(&FailedMessage {
                    lsn: Lsn(lsn).to_string(),
                    ..message(id)
                })
                .unwrap();
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

    #[test]
    fn a_torn_append_is_skipped_then_cut_and_rewrites_replace_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FailedStore::new(dir.path(), "es");
        store.park(&message("1")).unwrap();
        let path = store_path(dir.path(), "es");
        // A crash in the middle of an append, and a line that is not a message.
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(b"not a message\n{\"key\":\"abc\",\"sink\":\"e");
        std::fs::write(&path, &text).unwrap();
        let listed = list(dir.path(), "es").unwrap();
        assert_eq!(listed.len(), 1, "the bad and torn lines are skipped");

        // The next append starts on a line of its own.
        store.park(&message("2")).unwrap();
        let listed = list(dir.path(), "es").unwrap();
        assert_eq!(
            listed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["1", "2"]
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with('\n') && !text.contains("\"sink\":\"e{"),
            "{text}"
        );

        // Removing writes a new file; nothing is left beside it.
        let taken = take(dir.path(), "es", |m| m.id == "1").unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(list(dir.path(), "es").unwrap().len(), 1);
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("failed"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["es.jsonl", "es.jsonl.lock"]);
    }

    #[test]
    fn a_write_read_again_after_a_restart_is_not_parked_twice() {
        let dir = tempfile::tempdir().unwrap();
        FailedStore::new(dir.path(), "es")
            .park(&message("1"))
            .unwrap();
        // After a restart the stream sends the write again.
        let mut store = FailedStore::new(dir.path(), "es");
        store.park(&message("1")).unwrap();
        store
            .park(&FailedMessage {
                error: WAITING_BEHIND.into(),
                ..message("1")
            })
            .unwrap();
        assert_eq!(list(dir.path(), "es").unwrap().len(), 1);
        assert_eq!(store.len(), 1);
        // A later write of the same transaction to the document is another write.
        store
            .park(&FailedMessage {
                document: Some(r#"{"v":2}"#.into()),
                ..message("1")
            })
            .unwrap();
        assert_eq!(list(dir.path(), "es").unwrap().len(), 2);
    }

    #[test]
    fn a_write_parked_again_keeps_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FailedStore::new(dir.path(), "es");
        store.park(&message("1")).unwrap();
        let first = list(dir.path(), "es").unwrap()[0].key.clone();
        let taken = take(dir.path(), "es", |_| true).unwrap();
        // Retried and refused again: parked from its write, without a key.
        let op = taken[0].to_op().unwrap();
        store
            .park(&FailedMessage::for_op("es", &op, "bad again".into(), 2))
            .unwrap();
        let again = list(dir.path(), "es").unwrap();
        assert_eq!(again[0].key, first);
        assert_ne!(message("2").derived_key(), first);
    }
}
