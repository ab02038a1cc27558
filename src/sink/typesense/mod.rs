//! The Typesense sink: `documents/import` JSONL (`upsert`, `emplace` for
//! partial rows) with every answer line checked, deletes batched as
//! `filter_by=id:[…]`, truncates, optional collection creation, retries of
//! only what failed, and parking of what keeps failing.
//!
//! Typesense has no versioned writes, so order comes from the sink: per
//! document only its oldest waiting write may be sent, and only while no
//! other write to it is in flight; up to `concurrency` requests of disjoint
//! documents run at once. A write waiting for a retry holds back later writes
//! to its document while other documents flow on.

mod client;
mod config;
mod queue;
pub mod read;
pub mod request;
pub(crate) mod response;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinHandle;

pub use crate::sink::http::{DEFAULT_BATCH_MAX_DOCS, DEFAULT_FLUSH_INTERVAL_MS};
use client::Client;
pub use config::TypesenseConfig;
use queue::{Item, Limits, Queue};
use request::Kind;
use response::Outcome;

use crate::error::Result;
use crate::lsn::Lsn;
use crate::model::write::{WriteAction, WriteOp};
use crate::sink::failed::{FailedMessage, FailedStore, WAITING_BEHIND};

pub struct TypesenseSink {
    client: Arc<Client>,
    queue: Queue,
    /// Requests in flight: the queue numbers of their writes and the outcomes.
    running: FuturesUnordered<JoinHandle<Sent>>,
    created: HashSet<Arc<str>>,
    failed: FailedStore,
}

/// A finished request: its writes' queue numbers, one outcome each.
type Sent = (Vec<u64>, Result<Vec<Outcome>>);

/// What one request carries, owned, to be sent from a task.
enum Request {
    Import {
        kind: Kind,
        body: Vec<u8>,
        lines: usize,
    },
    Delete {
        ids: Vec<String>,
    },
}

impl Drop for TypesenseSink {
    fn drop(&mut self) {
        // A request of a stopped pipeline must not land after the writes of
        // the next one.
        for task in self.running.iter() {
            task.abort();
        }
    }
}

impl TypesenseSink {
    pub fn new(config: &TypesenseConfig, data_dir: &Path) -> Result<TypesenseSink> {
        Ok(TypesenseSink {
            client: Arc::new(Client::new(config)?),
            queue: Queue::default(),
            running: FuturesUnordered::new(),
            created: HashSet::new(),
            failed: FailedStore::new(data_dir, &config.name),
        })
    }

    fn config(&self) -> &TypesenseConfig {
        &self.client.config
    }

    fn limits(&self) -> Limits {
        Limits {
            max_docs: self.config().batch_max_docs,
            max_bytes: self.config().batch_max_bytes,
            max_filter_bytes: self.config().delete_max_filter_bytes,
        }
    }

    fn full(&self) -> bool {
        self.queue.len() >= self.config().batch_max_docs
            || self.queue.bytes() >= self.config().batch_max_bytes
    }

    /// Creates the collection with the configured schema when it is missing.
    async fn ensure_collection(&mut self, collection: &Arc<str>) -> Result<()> {
        if self.created.contains(collection) {
            return Ok(());
        }
        if let Some(schema) = &self.client.config.schema {
            self.client.create_collection(collection, schema).await?;
            tracing::info!(sink = %self.client.name, collection = %collection, "collection ready");
        }
        self.created.insert(collection.clone());
        Ok(())
    }

    /// Sends requests, up to `concurrency` at once, until `done` holds or
    /// nothing waits; every write ends applied or parked.
    async fn drive(&mut self, done: impl Fn(&Self) -> bool) -> Result<()> {
        loop {
            self.launch()?;
            if self.queue.is_empty() || done(self) {
                return Ok(());
            }
            if let Some(finished) = self.running.next().await {
                let (seqs, outcomes) = finished.map_err(|e| {
                    crate::error::Error::new(
                        crate::error::ErrorKind::Sink,
                        format!("sink {}: a request task failed: {e}", self.client.name),
                    )
                })?;
                self.settle(&seqs, outcomes?)?;
            } else if let Some(at) = self.queue.next_retry() {
                tokio::time::sleep_until(at.into()).await;
            } else {
                return Ok(()); // nothing can go and nothing runs
            }
        }
    }

    /// Starts requests while fewer than `concurrency` run and writes can go.
    fn launch(&mut self) -> Result<()> {
        while self.running.len() < self.config().concurrency {
            let picked = self.queue.next_request(Instant::now(), self.limits());
            // A document with a parked write: its later writes park behind it.
            let blocked: Vec<usize> = picked
                .iter()
                .copied()
                .filter(|&n| {
                    let item = self.queue.get(n);
                    self.failed.is_blocked(&item.collection, &item.id)
                })
                .collect();
            if !blocked.is_empty() {
                for mut item in self.queue.remove(&blocked) {
                    item.last_error = WAITING_BEHIND.into();
                    self.park(item)?;
                }
                continue;
            }
            if picked.is_empty() {
                return Ok(());
            }
            let first = self.queue.get(picked[0]);
            let (kind, collection) = (first.kind, first.collection.clone());
            let request = if kind == Kind::Delete {
                let ids = picked.iter().map(|&n| self.queue.get(n).id.clone());
                Request::Delete { ids: ids.collect() }
            } else {
                let mut body = Vec::new();
                for &n in &picked {
                    body.extend_from_slice(&self.queue.get(n).line);
                    body.push(b'\n');
                }
                Request::Import {
                    kind,
                    body,
                    lines: picked.len(),
                }
            };
            let mut seqs = Vec::with_capacity(picked.len());
            for &n in &picked {
                let item = self.queue.get_mut(n);
                item.in_flight = true;
                seqs.push(item.seq);
            }
            let client = self.client.clone();
            self.running.push(tokio::spawn(async move {
                (seqs, send(&client, &collection, request).await)
            }));
        }
        Ok(())
    }

    /// Applies the outcomes of a request: done writes leave the queue, failed
    /// ones are parked, retryable ones wait for their backoff.
    fn settle(&mut self, seqs: &[u64], outcomes: Vec<Outcome>) -> Result<()> {
        let now = Instant::now();
        // Queue numbers are ascending, so are their positions.
        let picked: Vec<usize> = seqs
            .iter()
            .map(|&seq| {
                self.queue
                    .position(seq)
                    .expect("a write in flight stays queued")
            })
            .collect();
        for &n in &picked {
            self.queue.get_mut(n).in_flight = false;
        }
        // Positions leaving the queue (ascending, as `picked`), and whether
        // each is parked rather than applied.
        let mut leaving = Vec::new();
        let mut parking = Vec::new();
        let mut retrying = 0;
        let mut refused = false;
        let mut problem = None;
        let max_retries = self.client.config.max_retries;
        let size = picked.len();
        for (&n, outcome) in picked.iter().zip(outcomes) {
            let item = self.queue.get_mut(n);
            let (error, permanent) = match outcome {
                Outcome::Done => {
                    leaving.push(n);
                    parking.push(false);
                    continue;
                }
                Outcome::Refused(error) if size > 1 => {
                    // Sent again in a request of half the size.
                    item.most = size.div_ceil(2);
                    item.last_error = error;
                    refused = true;
                    continue;
                }
                Outcome::Refused(error) => (error, true),
                Outcome::Retry(error) => (error, false),
                Outcome::Failed(error) => (error, true),
            };
            item.attempts += 1;
            item.last_error = error;
            if permanent || item.attempts > max_retries {
                leaving.push(n);
                parking.push(true);
            } else {
                item.not_before = Some(now + self.client.backoff(item.attempts));
                problem.get_or_insert_with(|| item.last_error.clone());
                retrying += 1;
            }
        }
        if refused {
            tracing::warn!(
                sink = %self.client.name,
                writes = size,
                "a request was refused, sending it in halves to find the writes it refuses: {}",
                self.queue.get(picked[0]).last_error
            );
        }
        if retrying > 0 {
            metrics::counter!("sluice_sink_retries_total", "sink" => self.client.name.clone())
                .increment(retrying);
            tracing::warn!(
                sink = %self.client.name,
                "{retrying} write(s) to retry: {}",
                problem.unwrap_or_default()
            );
        }
        for (item, park) in self.queue.remove(&leaving).into_iter().zip(parking) {
            if park {
                self.park(item)?;
            }
        }
        Ok(())
    }

    fn park(&mut self, item: Item) -> Result<()> {
        let document = (!item.line.is_empty()).then(|| String::from_utf8_lossy(&item.line).into());
        self.failed.park(&FailedMessage {
            key: String::new(),
            sink: self.client.name.clone(),
            index: item.collection.to_string(),
            table: item.table.to_string(),
            id: item.id,
            routing: None,
            lsn: item.lsn.to_string(),
            action: item.kind.name().to_owned(),
            document,
            error: item.last_error,
            attempts: item.attempts,
            failed_at_ms: crate::sink::failed::now_ms(),
        })
    }
}

/// Sends the writes of one request (one kind, one collection).
async fn send(client: &Client, collection: &str, request: Request) -> Result<Vec<Outcome>> {
    let ids = match request {
        Request::Import { kind, body, lines } => {
            return client.import(collection, kind, body, lines).await
        }
        Request::Delete { ids } => ids,
    };
    let mut values = Vec::with_capacity(ids.len());
    let mut outcomes = vec![Outcome::Done; ids.len()];
    for (slot, id) in ids.iter().enumerate() {
        match request::filter_value(id) {
            Some(value) => values.push(value),
            // An id with a backtick: no filter can name it.
            None => outcomes[slot] = client.delete_one(collection, id).await?,
        }
    }
    if !values.is_empty() {
        let filter = request::id_filter(values.iter().map(String::as_str));
        let outcome = client.delete_by_filter(collection, &filter).await?;
        for (slot, id) in ids.iter().enumerate() {
            if request::filter_value(id).is_some() {
                outcomes[slot] = outcome.clone();
            }
        }
    }
    Ok(outcomes)
}

/// Whether the engine answers and takes the sink's credentials, without
/// writing: the outer error when the client cannot be built (a missing key).
pub async fn probe(
    config: &TypesenseConfig,
    collection: &str,
) -> Result<std::result::Result<(), String>> {
    let client = Client::new(config)?;
    Ok(client.probe(collection).await)
}

#[async_trait::async_trait]
impl super::Sink for TypesenseSink {
    fn name(&self) -> &str {
        &self.client.name
    }

    fn failed(&mut self) -> Option<&mut FailedStore> {
        Some(&mut self.failed)
    }

    async fn write(&mut self, ops: &[WriteOp]) -> Result<()> {
        for op in ops {
            let Some((kind, line)) = request::encode(op) else {
                // A truncate: everything before it lands first, nothing after
                // it is sent before it.
                self.drive(|_| false).await?;
                let scoped = matches!(op.action, WriteAction::Truncate { scoped: true, .. });
                self.client
                    .truncate(&op.index, scoped.then_some(&*op.table))
                    .await?;
                tracing::info!(sink = %self.client.name, collection = %op.index, "table truncated: its documents are removed");
                continue;
            };
            if self
                .failed
                .screen(&self.client.name, op, self.client.config.max_document_bytes)?
            {
                continue;
            }
            self.ensure_collection(&op.index).await?;
            self.queue.push(Item {
                collection: op.index.clone(),
                table: op.table.clone(),
                id: op.id.clone(),
                lsn: op.lsn,
                kind,
                line,
                attempts: 0,
                last_error: String::new(),
                not_before: None,
                seq: 0,
                in_flight: false,
                most: usize::MAX,
            });
            if self.full() {
                self.drive(|sink| !sink.full()).await?;
            }
        }
        metrics::counter!("sluice_sink_writes_total", "sink" => self.client.name.clone())
            .increment(ops.len() as u64);
        Ok(())
    }

    async fn commit(&mut self, _upto: Lsn) -> Result<()> {
        self.drive(|_| false).await?;
        let max = self.config().max_parked;
        self.failed.wait_below(&self.client.name, max).await;
        Ok(())
    }
}
