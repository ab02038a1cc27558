//! The Meilisearch sink: documents added or replaced (`POST`), partial rows
//! added or updated (`PUT`), deletes batched with `delete-batch`, truncates as
//! a delete of all documents, and every write's task followed until it
//! succeeded or failed before its position is acknowledged.
//!
//! Order. Meilisearch processes the tasks of an index in the order they were
//! enqueued, so batches are enqueued in write order, one request at a time,
//! and a request is resent only when it got no task. Up to
//! `max_tasks_in_flight` tasks are enqueued at once, so the engine can batch
//! them. When a task fails and its writes must be sent again (an internal
//! error, or bad documents to isolate), the later tasks of the same index may
//! already be enqueued: the sink then waits until they finished and sends
//! them again after the failed batch, so the index sees the writes in their
//! order once more. Replace, update and delete are idempotent, and replaying
//! a suffix of the writes in order leaves every document as the full sequence
//! does, so the second pass repairs whatever the first applied out of order.
//! Writes within one request touch distinct ids: a second write to an id
//! closes the open requests of its index first.
//!
//! Meilisearch's cost is per batch of tasks (its auto-batcher merges the
//! enqueued tasks of an index), so a commit does not wait for its tasks: the
//! writer goes on sending while Meilisearch works, and `confirmed` reports a
//! commit once every task before it finished. Requests hold up to 20,000
//! documents (20 MiB) while writes are ready, as a backfill's are; a live
//! change goes as soon as nothing more is ready.
//!
//! A task still enqueued or processing is never a failure and never resent;
//! only `task_timeout_ms` ends the wait, with an error (nothing acknowledged).
//! A request that got no answer (429, 5xx, a timeout, a dropped connection)
//! is sent again before anything after it; if the lost attempt was enqueued
//! after all, its task runs just before the resent one, which is harmless.
//! (The one case this cannot see: a server that enqueues a timed-out request
//! later than the next one; keep `request_timeout_ms` well above the time
//! Meilisearch needs to accept a payload.)
//!
//! Ids Meilisearch refuses (other than 1 to 511 bytes of `a-z A-Z 0-9 - _`,
//! e.g. composite keys joined with `|`) are parked with the fix in the error
//! instead of failing their batch.

mod client;
mod config;
mod queue;
pub mod read;
pub(crate) mod request;
pub(crate) mod tasks;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use client::Client;
pub use config::*;
use request::{Batch, Item, Kind};
use tasks::ApiError;

use crate::error::Result;
use crate::lsn::Lsn;
use crate::model::write::{WriteAction, WriteOp};
use crate::sink::failed::{FailedMessage, FailedStore, WAITING_BEHIND};

/// Requests of one index being filled; their ids are distinct, so they
/// commute and may be enqueued in any order.
#[derive(Default)]
struct Open {
    batches: Vec<Batch>,
    ids: HashSet<String>,
    bytes: usize,
}

/// Where a closed batch is.
enum State {
    /// Not (or no longer) enqueued.
    Unsent,
    Enqueued(u64),
    /// Refused without a task.
    Rejected(ApiError),
    /// Its task succeeded (or it had nothing to do).
    Done,
}

struct Entry {
    batch: Batch,
    state: State,
    /// The commit that makes it durable (counted from 1).
    commit: u64,
}

/// The task at the front of the queue, as the last looks at it found it.
struct FrontLook {
    uid: u64,
    looks: u32,
    since: std::time::Instant,
}

pub struct MeilisearchSink {
    client: Client,
    open: HashMap<Arc<str>, Open>,
    /// Closed batches in write order, until they and all before them are done.
    queue: VecDeque<Entry>,
    failed: FailedStore,
    /// Commits made so far (`commit` and `commit_later`).
    commits: u64,
    front: Option<FrontLook>,
}

impl MeilisearchSink {
    pub fn new(config: &MeilisearchConfig, data_dir: &Path) -> Result<MeilisearchSink> {
        Ok(MeilisearchSink {
            client: Client::new(config)?,
            open: HashMap::new(),
            queue: VecDeque::new(),
            failed: FailedStore::new(data_dir, &config.name),
            commits: 0,
            front: None,
        })
    }

    fn config(&self) -> &MeilisearchConfig {
        &self.client.config
    }

    async fn add(&mut self, op: &WriteOp) -> Result<()> {
        let encoded = request::check_id(&op.id)
            .and_then(|()| request::encode(op, &self.client.config.primary_key));
        let (kind, doc) = match encoded {
            Ok(encoded) => encoded,
            Err(problem) => return self.park_op(op, problem),
        };
        if self
            .open
            .get(&op.index)
            .is_some_and(|open| open.ids.contains(&op.id))
        {
            self.close(&op.index).await?;
        }
        let open = self.open.entry(op.index.clone()).or_default();
        let position = match open.batches.iter().position(|b| b.kind == kind) {
            Some(position) => position,
            None => {
                open.batches.push(Batch::new(op.index.clone(), kind));
                open.batches.len() - 1
            }
        };
        let batch = &mut open.batches[position];
        let before = batch.bytes;
        batch.push(Item {
            table: op.table.clone(),
            id: op.id.clone(),
            lsn: op.lsn,
            doc,
        });
        open.bytes += batch.bytes - before;
        open.ids.insert(op.id.clone());
        if open.ids.len() >= self.client.config.batch_max_docs
            || open.bytes as u64 >= self.client.config.batch_max_bytes
        {
            self.close(&op.index).await?;
        }
        Ok(())
    }

    /// Moves the open requests of `index` to the queue, in write order.
    fn queue_open(&mut self, index: &str) {
        if let Some(open) = self.open.remove(index) {
            let commit = self.commits + 1;
            self.queue
                .extend(open.batches.into_iter().map(|batch| Entry {
                    batch,
                    state: State::Unsent,
                    commit,
                }));
        }
    }

    /// Closes the open requests of `index` and sends them.
    async fn close(&mut self, index: &str) -> Result<()> {
        self.queue_open(index);
        self.send_unsent().await
    }

    async fn close_all(&mut self) -> Result<()> {
        let indexes: Vec<Arc<str>> = self.open.keys().cloned().collect();
        for index in indexes {
            self.queue_open(&index);
        }
        self.send_unsent().await
    }

    /// Parks the writes of entry `i` to documents with a parked write: they
    /// wait behind it (a bad document found while this batch waited).
    fn park_blocked(&mut self, i: usize) -> Result<()> {
        let batch = &self.queue[i].batch;
        if self.failed.is_empty()
            || !batch
                .items
                .iter()
                .any(|item| self.failed.is_blocked(&batch.index, &item.id))
        {
            return Ok(());
        }
        let (index, kind) = (batch.index.clone(), batch.kind);
        let mut batch =
            std::mem::replace(&mut self.queue[i].batch, Batch::new(index.clone(), kind));
        for item in std::mem::take(&mut batch.items) {
            if self.failed.is_blocked(&index, &item.id) {
                self.park(&index, kind, item, WAITING_BEHIND.into(), 0)?;
            } else {
                self.queue[i].batch.push(item);
            }
        }
        self.queue[i].batch.attempts = batch.attempts;
        Ok(())
    }

    fn park_op(&mut self, op: &WriteOp, problem: String) -> Result<()> {
        self.failed
            .park(&FailedMessage::for_op(&self.client.name, op, problem, 0))
    }

    fn park(
        &mut self,
        index: &str,
        kind: Kind,
        item: Item,
        error: String,
        attempts: u32,
    ) -> Result<()> {
        self.failed.park(&FailedMessage {
            key: String::new(),
            sink: self.client.name.clone(),
            index: index.to_owned(),
            table: item.table.to_string(),
            id: item.id,
            routing: None,
            lsn: item.lsn.to_string(),
            action: kind.action().to_owned(),
            document: item.doc.map(|d| String::from_utf8_lossy(&d).into_owned()),
            error,
            attempts,
            failed_at_ms: crate::sink::failed::now_ms(),
        })
    }
}

/// Whether the engine answers and takes the sink's credentials, without
/// writing: the outer error when the client cannot be built (a missing key).
pub async fn probe(config: &MeilisearchConfig) -> Result<std::result::Result<(), String>> {
    let client = Client::new(config)?;
    Ok(client.probe().await)
}

#[async_trait::async_trait]
impl super::Sink for MeilisearchSink {
    fn name(&self) -> &str {
        &self.client.name
    }

    fn failed(&mut self) -> Option<&mut FailedStore> {
        Some(&mut self.failed)
    }

    async fn write(&mut self, ops: &[WriteOp]) -> Result<()> {
        for op in ops {
            if let WriteAction::Truncate { scoped, .. } = op.action {
                // Enqueued after everything before it: Meilisearch applies
                // it after them.
                self.queue_open(&op.index);
                let batch = if scoped {
                    // Only this table's documents, by their table field.
                    self.client
                        .ensure_filterable(&op.index, crate::model::write::TABLE_FIELD)
                        .await?;
                    request::clear_table(op.index.clone(), op.table.clone(), op.lsn)
                } else {
                    Batch::new(op.index.clone(), Kind::Clear)
                };
                self.queue.push_back(Entry {
                    batch,
                    state: State::Unsent,
                    commit: self.commits + 1,
                });
                self.send_unsent().await?;
                continue;
            }
            if self
                .failed
                .screen(&self.client.name, op, self.client.config.max_document_bytes)?
            {
                continue;
            }
            self.add(op).await?;
        }
        metrics::counter!("sluice_sink_writes_total", "sink" => self.client.name.clone())
            .increment(ops.len() as u64);
        Ok(())
    }

    /// Returns once every task of the writes so far succeeded, or their bad
    /// documents are parked.
    async fn commit(&mut self, upto: Lsn) -> Result<()> {
        self.commit_later(upto).await?;
        loop {
            self.send_unsent().await?;
            if !self.settle_oldest().await? {
                break;
            }
        }
        debug_assert!(self.queue.iter().all(|e| matches!(e.state, State::Done)));
        self.queue.clear();
        Ok(())
    }

    /// Enqueues every write so far and returns: Meilisearch merges the tasks
    /// enqueued while it works into its next batch, so the next writes go
    /// while these are processed. `confirmed` follows their tasks.
    async fn commit_later(&mut self, _upto: Lsn) -> Result<bool> {
        self.close_all().await?;
        self.commits += 1;
        let max = self.config().max_parked;
        self.failed.wait_below(&self.client.name, max).await;
        Ok(true)
    }

    /// Looks at the oldest task out (once): every commit before the first
    /// with a task not finished is confirmed.
    async fn confirmed(&mut self) -> Result<super::Confirmed> {
        loop {
            // Batches a failed task put back are enqueued again first.
            self.send_unsent().await?;
            while self
                .queue
                .front()
                .is_some_and(|e| matches!(e.state, State::Done))
            {
                self.queue.pop_front();
            }
            let Some(front) = self.queue.front() else {
                self.front = None;
                return Ok(super::Confirmed {
                    commits: self.commits,
                    look_again: None,
                });
            };
            let waiting = super::Confirmed {
                commits: front.commit - 1,
                look_again: None,
            };
            if let State::Enqueued(uid) = front.state {
                let status = match self.client.look_task(uid).await? {
                    Ok(task) => {
                        self.front = None;
                        self.settle_with(0, Some(task)).await?;
                        continue;
                    }
                    Err(status) => status,
                };
                let look = match self.front.take() {
                    Some(look) if look.uid == uid => FrontLook {
                        looks: look.looks + 1,
                        ..look
                    },
                    _ => FrontLook {
                        uid,
                        looks: 1,
                        since: std::time::Instant::now(),
                    },
                };
                self.client.check_task_age(uid, &status, look.since)?;
                let again = self.client.poll_delay(look.looks);
                self.front = Some(look);
                return Ok(super::Confirmed {
                    look_again: Some(again),
                    ..waiting
                });
            }
            // Refused without a task: acted on at once.
            self.settle_with(0, None).await?;
        }
    }
}
