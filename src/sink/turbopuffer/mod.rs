//! The Turbopuffer sink: the v2 namespace write API (`upsert_rows`,
//! `patch_rows`, `deletes`), up to `concurrency` requests in flight, writes
//! parked when the API refuses them or keeps failing.
//!
//! - **Namespaces** come from the router's index name; a name the API would
//!   refuse (`[A-Za-z0-9-_.]{1,128}`) parks its writes.
//! - **Ids** are typed per `id_type`; an id that is not of the type parks its
//!   write. A document field literally named `id` is stored under
//!   `id_attribute` (`row_id` by default), or dropped when that is empty.
//! - **Per-key order**: the API applies a request atomically, part by part, so
//!   a batch holds one state per document (see [`request`]). Requests in
//!   flight at once never share a document: a batch with a document whose
//!   earlier write is still in flight waits for that request to end.
//! - **Partial rows** (unchanged TOAST columns absent) become `patch_rows`,
//!   which keep the attributes they leave out.
//! - **Truncates** delete the namespace (`DELETE /v2/namespaces/:namespace`)
//!   once everything before them is written: one request whatever the size,
//!   with no filter to write for each id type, and the next write creates the
//!   namespace again. Like a truncate on Elasticsearch it empties the whole
//!   index, also of other tables routed to it.
//! - **Failures**: 429, 5xx, timeouts and dropped connections are retried
//!   with jittered, capped exponential backoff (at least `Retry-After` when
//!   the answer has one); after `max_retries` the request's writes are
//!   parked. A request the API refuses (400 and the like) is split in halves
//!   and resent until the refused writes stand alone; those are parked with
//!   the engine's error text and every other write goes through. Later
//!   writes to a document with a parked write are parked behind it; with
//!   `max_parked` writes parked, the sink pauses.

pub(crate) mod client;
mod config;
pub mod read;
pub mod request;

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinHandle;

pub use crate::sink::http::DEFAULT_FLUSH_INTERVAL_MS;
use client::{Client, Outcome};
pub use config::{
    IdType, TurbopufferConfig, DEFAULT_API_KEY_ENV, DEFAULT_BATCH_MAX_BYTES,
    DEFAULT_BATCH_MAX_ROWS, DEFAULT_ID_ATTRIBUTE, DEFAULT_URL,
};
use request::{Batch, Encoder, Entry, RowWrite};

use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::model::write::{WriteAction, WriteOp};
use crate::sink::failed::{FailedMessage, FailedStore, WAITING_BEHIND};

pub struct TurbopufferSink {
    client: Arc<Client>,
    encoder: Arc<Encoder>,
    /// Buffered writes per namespace.
    batches: Vec<Batch>,
    by_namespace: HashMap<Arc<str>, usize>,
    /// Requests in flight, each a task writing distinct documents.
    running: FuturesUnordered<JoinHandle<Result<Delivered>>>,
    /// Hashes of (namespace, id) of the documents in flight. A collision only
    /// makes a batch wait for a request it need not wait for.
    in_flight: HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
    failed: FailedStore,
}

/// A finished request: the documents it carried and the writes that failed.
struct Delivered {
    namespace: Arc<str>,
    keys: Vec<u64>,
    failed: Vec<Failed>,
}

/// A write that failed for good: the entry, the engine's problem and the
/// attempts made.
type Failed = (Entry, String, u32);

impl Drop for TurbopufferSink {
    fn drop(&mut self) {
        // A request of a stopped pipeline must not land after the writes of
        // the next one.
        for task in self.running.iter() {
            task.abort();
        }
    }
}

impl TurbopufferSink {
    pub fn new(config: &TurbopufferConfig, data_dir: &Path) -> Result<TurbopufferSink> {
        Ok(TurbopufferSink {
            client: Arc::new(Client::new(config)?),
            encoder: Arc::new(Encoder {
                id_type: config.id_type,
                id_attribute: config.id_attribute.clone(),
                distance_metric: config.distance_metric.clone(),
            }),
            batches: Vec::new(),
            by_namespace: HashMap::new(),
            running: FuturesUnordered::new(),
            in_flight: HashSet::new(),
            hasher: Default::default(),
            failed: FailedStore::new(data_dir, &config.name),
        })
    }

    fn config(&self) -> &TurbopufferConfig {
        &self.client.config
    }

    /// Buffers one write (not a truncate), flushing its namespace when full.
    async fn buffer(&mut self, op: &WriteOp) -> Result<()> {
        if !request::valid_namespace(&op.index) {
            let error = format!(
                "`{}` is not a valid namespace name ([A-Za-z0-9-_.]{{1,128}})",
                op.index
            );
            return self.park_op(op, error);
        }
        let id_json = match self.encoder.id_json(&op.id) {
            Ok(id) => id,
            Err(error) => return self.park_op(op, error),
        };
        let (write, size) = match self.encoder.row_write(op) {
            Some(Ok(write)) => write,
            Some(Err(error)) => return self.park_op(op, error),
            None => return Ok(()),
        };
        let at = match self.by_namespace.get(&op.index) {
            Some(&at) => at,
            None => {
                self.batches.push(Batch::new(op.index.clone()));
                self.by_namespace
                    .insert(op.index.clone(), self.batches.len() - 1);
                self.batches.len() - 1
            }
        };
        let (max_rows, max_bytes) = (self.config().batch_max_rows, self.config().batch_max_bytes);
        let batch = &mut self.batches[at];
        batch.push(op, id_json, write, size);
        if batch.entries.len() >= max_rows || batch.bytes >= max_bytes {
            let namespace = batch.namespace.clone();
            let entries = batch.take();
            self.launch(namespace, entries).await?;
        }
        Ok(())
    }

    /// Starts requests for every buffered write.
    async fn flush(&mut self) -> Result<()> {
        for at in 0..self.batches.len() {
            if self.batches[at].is_empty() {
                continue;
            }
            let namespace = self.batches[at].namespace.clone();
            let entries = self.batches[at].take();
            self.launch(namespace, entries).await?;
        }
        Ok(())
    }

    /// Sends every buffered write and waits until each is written or parked.
    async fn drain(&mut self) -> Result<()> {
        self.flush().await?;
        while !self.running.is_empty() {
            self.settle_next().await?;
        }
        Ok(())
    }

    fn key(&self, namespace: &str, id: &str) -> u64 {
        self.hasher.hash_one((namespace, id))
    }

    /// Starts a request writing `entries` (distinct documents of one
    /// namespace), once fewer than `concurrency` run and none of them carries
    /// one of these documents.
    async fn launch(&mut self, namespace: Arc<str>, entries: Vec<Entry>) -> Result<()> {
        let mut keys: Vec<u64> = entries
            .iter()
            .map(|e| self.key(&namespace, &e.id))
            .collect();
        let mut waited = false;
        while self.running.len() >= self.config().concurrency
            || keys.iter().any(|key| self.in_flight.contains(key))
        {
            self.settle_next().await?;
            waited = true;
        }
        let mut entries = entries;
        if waited && !self.failed.is_empty() {
            // An earlier write to one of these documents may have been parked
            // meanwhile: the later ones park behind it.
            let mut kept = Vec::with_capacity(entries.len());
            keys.clear();
            for entry in entries {
                if self.failed.is_blocked(&namespace, &entry.id) {
                    self.park_entry(&namespace, entry, WAITING_BEHIND, 0)?;
                } else {
                    keys.push(self.key(&namespace, &entry.id));
                    kept.push(entry);
                }
            }
            entries = kept;
        }
        if entries.is_empty() {
            return Ok(());
        }
        self.in_flight.extend(keys.iter().copied());
        let (client, encoder) = (self.client.clone(), self.encoder.clone());
        self.running.push(tokio::spawn(async move {
            let failed = deliver(&client, &encoder, &namespace, entries).await?;
            Ok(Delivered {
                namespace,
                keys,
                failed,
            })
        }));
        Ok(())
    }

    /// Waits for the next request to end and parks what it could not write.
    async fn settle_next(&mut self) -> Result<()> {
        let Some(finished) = self.running.next().await else {
            return Ok(());
        };
        let delivered = finished.map_err(|e| {
            Error::new(
                ErrorKind::Sink,
                format!("sink {}: a request task failed: {e}", self.client.name),
            )
        })??;
        for key in &delivered.keys {
            self.in_flight.remove(key);
        }
        for (entry, problem, attempts) in delivered.failed {
            let error = format!("turbopuffer refused the write: {problem}");
            self.park_entry(&delivered.namespace, entry, &error, attempts)?;
        }
        Ok(())
    }

    /// Empties `namespace`, after every write before it.
    /// Deletes the namespace (a truncate of its table), or only the rows of
    /// `table` when tables share it (`delete_by_filter` on `sluice_table`).
    async fn truncate(&mut self, namespace: &str, table: Option<&str>) -> Result<()> {
        self.drain().await?;
        if !request::valid_namespace(namespace) {
            return Ok(());
        }
        let outcome = match table {
            Some(table) => {
                let body = serde_json::json!({
                    "delete_by_filter": [crate::model::write::TABLE_FIELD, "Eq", table],
                });
                let body = serde_json::to_vec(&body).expect("JSON values serialize");
                self.client.write(namespace, body.into()).await?
            }
            None => self.client.delete_namespace(namespace).await?,
        };
        let problem = match outcome {
            Outcome::Done | Outcome::NotFound => {
                tracing::info!(sink = %self.client.name, namespace, table, "table truncated: its rows are deleted");
                return Ok(());
            }
            Outcome::Rejected(problem) | Outcome::Exhausted(problem, _) => problem,
        };
        Err(Error::new(
            ErrorKind::Sink,
            format!(
                "sink {}: deleting namespace {namespace} for a truncate failed: {problem}",
                self.client.name
            ),
        ))
    }

    fn park_op(&mut self, op: &WriteOp, error: String) -> Result<()> {
        let message = FailedMessage::for_op(&self.client.name, op, error, 1);
        self.failed.park(&message)
    }

    fn park_entry(
        &mut self,
        namespace: &str,
        entry: Entry,
        error: &str,
        attempts: u32,
    ) -> Result<()> {
        let document = match &entry.write {
            RowWrite::Upsert(row) | RowWrite::Patch(row) => {
                Some(serde_json::to_string(row).expect("JSON values serialize"))
            }
            RowWrite::Delete => None,
        };
        self.failed.park(&FailedMessage {
            key: String::new(),
            sink: self.client.name.clone(),
            index: namespace.to_owned(),
            table: entry.table.to_string(),
            id: entry.id,
            routing: None,
            lsn: entry.lsn.to_string(),
            action: entry.write.name().into(),
            document,
            error: error.to_owned(),
            attempts,
            failed_at_ms: crate::sink::failed::now_ms(),
        })
    }
}

/// Whether the engine answers and takes the sink's credentials, without
/// writing: the outer error when the client cannot be built (a missing key).
pub async fn probe(config: &TurbopufferConfig) -> Result<std::result::Result<(), String>> {
    let client = Client::new(config)?;
    Ok(client.probe().await)
}

#[async_trait::async_trait]
impl super::Sink for TurbopufferSink {
    fn name(&self) -> &str {
        &self.client.name
    }

    fn failed(&mut self) -> Option<&mut FailedStore> {
        Some(&mut self.failed)
    }

    async fn write(&mut self, ops: &[WriteOp]) -> Result<()> {
        for op in ops {
            if let WriteAction::Truncate { scoped, .. } = op.action {
                self.truncate(&op.index, scoped.then_some(&*op.table))
                    .await?;
            } else if !self.failed.screen(
                &self.client.name,
                op,
                self.client.config.max_document_bytes,
            )? {
                self.buffer(op).await?;
            }
        }
        metrics::counter!("sluice_sink_writes_total", "sink" => self.client.name.clone())
            .increment(ops.len() as u64);
        Ok(())
    }

    async fn commit(&mut self, _upto: Lsn) -> Result<()> {
        self.drain().await?;
        let max = self.config().max_parked;
        self.failed.wait_below(&self.client.name, max).await;
        Ok(())
    }
}

/// Writes `entries` (distinct documents of one namespace); returns those that
/// failed for good. A refused request is resent in halves until the refused
/// rows stand alone.
async fn deliver(
    client: &Client,
    encoder: &Encoder,
    namespace: &str,
    entries: Vec<Entry>,
) -> Result<Vec<Failed>> {
    let mut failed = Vec::new();
    let mut groups = vec![entries];
    while let Some(group) = groups.pop() {
        let body = Bytes::from(encoder.body(&group));
        let (problem, attempts) = match client.write(namespace, body).await? {
            Outcome::Done => continue,
            Outcome::Exhausted(problem, attempts) => (problem, attempts),
            Outcome::NotFound => ("404: the namespace was not found".to_owned(), 1),
            Outcome::Rejected(problem) if group.len() > 1 => {
                tracing::warn!(
                    sink = %client.name,
                    namespace,
                    rows = group.len(),
                    "write request refused ({problem}); resending in halves to find the refused rows"
                );
                let mut left = group;
                let right = left.split_off(left.len() / 2);
                groups.push(right);
                groups.push(left);
                continue;
            }
            Outcome::Rejected(problem) => (problem, 1),
        };
        failed.extend(
            group
                .into_iter()
                .map(|entry| (entry, problem.clone(), attempts)),
        );
    }
    Ok(failed)
}
