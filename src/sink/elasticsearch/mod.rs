//! The Elasticsearch / OpenSearch sink: `_bulk` NDJSON with external versions,
//! per-item outcomes, retries of only what failed, and parking of what keeps
//! failing. Up to `concurrency` bulk requests are in flight; versions make
//! their order irrelevant. Every write is versioned: a partial document
//! (unchanged TOAST columns) is merged into the stored one, read in real
//! time once the writes before it are in, and written whole.

mod client;
mod config;
pub mod read;
pub mod request;
pub(crate) mod response;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;

pub use crate::sink::http::DEFAULT_BATCH_MAX_DOCS;
use client::{Client, Job, Parked, Pending};
pub use config::{ElasticsearchConfig, IndexDefinition};

use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::model::write::{WriteAction, WriteOp};
use crate::sink::failed::{FailedMessage, FailedStore};
use crate::sink::http::path_segment;
use crate::sink::truncates::TruncateRecord;

pub struct ElasticsearchSink {
    client: Arc<Client>,
    body: Vec<u8>,
    pending: Vec<Pending>,
    /// The documents `pending` and `partials` write (by `doc_hash`), and
    /// whether one of their writes is partial.
    pending_docs: HashMap<u64, bool>,
    /// Partial documents to merge into the stored ones at the next flush.
    partials: Vec<WriteOp>,
    in_flight: VecDeque<JoinHandle<Result<Vec<Parked>>>>,
    created: HashSet<Arc<str>>,
    failed: FailedStore,
    /// Truncates applied: a restart neither applies one again nor replays
    /// what it erased (see `truncates`).
    truncates: TruncateRecord,
}

impl Drop for ElasticsearchSink {
    fn drop(&mut self) {
        // A request of a stopped pipeline must not be sent after the writes
        // of the next one (one already sent is ordered by its version).
        for task in &self.in_flight {
            task.abort();
        }
    }
}

impl ElasticsearchSink {
    pub fn new(config: &ElasticsearchConfig, data_dir: &Path) -> Result<ElasticsearchSink> {
        Ok(ElasticsearchSink {
            client: Arc::new(Client::new(config)?),
            body: Vec::new(),
            pending: Vec::new(),
            pending_docs: HashMap::new(),
            partials: Vec::new(),
            in_flight: VecDeque::new(),
            created: HashSet::new(),
            failed: FailedStore::new(data_dir, &config.name),
            truncates: TruncateRecord::open(data_dir, &config.name)?,
        })
    }

    fn config(&self) -> &ElasticsearchConfig {
        &self.client.config
    }

    /// Creates the index with the configured definition when it is missing.
    async fn ensure_index(&mut self, index: &Arc<str>) -> Result<()> {
        let Some(definition) = self.config().create_index.clone() else {
            return Ok(());
        };
        if self.created.contains(index) {
            return Ok(());
        }
        let mut body = serde_json::Map::new();
        if let Some(settings) = definition.settings {
            body.insert(
                "settings".into(),
                serde_json::to_value(settings).unwrap_or_default(),
            );
        }
        if let Some(mappings) = definition.mappings {
            body.insert(
                "mappings".into(),
                serde_json::to_value(mappings).unwrap_or_default(),
            );
        }
        let body = serde_json::to_vec(&body).expect("JSON values serialize");
        let path = path_segment(index);
        self.client
            .with_retries(
                "creating the index",
                || {
                    self.client
                        .request(reqwest::Method::PUT, &path)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone())
                },
                |status, answer| {
                    status.is_success()
                        || String::from_utf8_lossy(answer)
                            .contains("resource_already_exists_exception")
                },
            )
            .await?;
        tracing::info!(sink = %self.client.name, index = %index, "index ready");
        self.created.insert(index.clone());
        Ok(())
    }

    /// Removes every document of `index` (a truncate of its table), or
    /// only those of `table` when the index is shared.
    async fn truncate(&mut self, index: &str, table: Option<&str>) -> Result<()> {
        let path = path_segment(index);
        let query = match table {
            // A keyword field, or a text field with its `.keyword` (the
            // dynamic mapping of a string).
            Some(table) => {
                let value = serde_json::Value::String(table.to_owned());
                format!(
                    r#"{{"query":{{"bool":{{"should":[{{"term":{{"{field}":{value}}}}},{{"term":{{"{field}.keyword":{value}}}}}],"minimum_should_match":1}}}}}}"#,
                    field = crate::model::write::TABLE_FIELD
                )
            }
            None => r#"{"query":{"match_all":{}}}"#.to_owned(),
        };
        let ok =
            |status: reqwest::StatusCode, _: &[u8]| status.is_success() || status.as_u16() == 404;
        // Delete-by-query sees what is searchable: make the latest writes so first.
        self.client
            .with_retries(
                "refreshing before a truncate",
                || {
                    self.client
                        .request(reqwest::Method::POST, &format!("{path}/_refresh"))
                },
                ok,
            )
            .await?;
        self.client
            .with_retries(
                "deleting the documents of a truncated table",
                || {
                    self.client
                        .request(
                            reqwest::Method::POST,
                            &format!("{path}/_delete_by_query?conflicts=proceed&refresh=true"),
                        )
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(query.clone())
                },
                ok,
            )
            .await?;
        tracing::info!(sink = %self.client.name, index, table, "table truncated: its documents are removed");
        Ok(())
    }

    /// Hands what is buffered to a bulk request.
    async fn flush(&mut self) -> Result<()> {
        if !self.partials.is_empty() {
            self.merge_partials().await?;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pending_docs.clear();
        let job = Job {
            body: Bytes::from(std::mem::take(&mut self.body)),
            items: std::mem::take(&mut self.pending),
        };
        while self.in_flight.len() >= self.config().concurrency {
            self.join_oldest().await?;
        }
        self.in_flight
            .push_back(tokio::spawn(self.client.clone().deliver(job)));
        Ok(())
    }

    /// Merges the partial documents into the stored ones and buffers them
    /// as whole, versioned writes. The writes before them are in flight or
    /// done (a partial document never shares a request with another write
    /// of its document): once they are all in, the stored documents are
    /// read in real time.
    async fn merge_partials(&mut self) -> Result<()> {
        self.drain().await?;
        let partials = std::mem::take(&mut self.partials);
        // index → id → the stored source.
        let mut stored: HashMap<Arc<str>, HashMap<String, Vec<u8>>> = HashMap::new();
        let mut by_index: HashMap<Arc<str>, Vec<&WriteOp>> = HashMap::new();
        for op in &partials {
            by_index.entry(op.index.clone()).or_default().push(op);
        }
        for (index, ops) in by_index {
            let path = format!("{}/_mget", path_segment(&index));
            let body = read::mget_body(ops.iter().map(|op| (&op.id, op.routing.as_deref())));
            let Some(answer) = self
                .client
                .read(reqwest::Method::POST, &path, &body)
                .await?
            else {
                continue;
            };
            let found = read::parse_mget(&answer).map_err(|e| {
                Error::new(
                    ErrorKind::Sink,
                    format!(
                        "sink {}: unexpected answer to an _mget of index {index}: {e}",
                        self.client.name
                    ),
                )
            })?;
            let docs = stored.entry(index).or_default();
            docs.extend(found.into_iter().map(|doc| (doc.id, doc.source)));
        }
        for mut op in partials {
            if let WriteAction::Upsert { doc, partial, .. } = &mut op.action {
                let held = stored.get(&op.index).and_then(|docs| docs.get(&op.id));
                *doc = request::merge(held.map(Vec::as_slice), doc);
                *partial = false;
            }
            self.buffer(&op);
        }
        Ok(())
    }

    /// Appends `op` to the request being built.
    fn buffer(&mut self, op: &WriteOp) {
        let start = self.body.len();
        if let Some(action) = request::encode(op, &mut self.body) {
            self.pending.push(Pending {
                range: start..self.body.len(),
                action,
                index: op.index.clone(),
                table: op.table.clone(),
                id: op.id.clone(),
                routing: op.routing.clone(),
                lsn: op.lsn,
                attempts: 0,
                last_error: String::new(),
            });
        }
    }

    /// Waits for every bulk request in flight.
    async fn drain(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.join_oldest().await?;
        }
        Ok(())
    }

    async fn join_oldest(&mut self) -> Result<()> {
        let Some(handle) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let parked = handle.await.map_err(|e| {
            Error::new(
                ErrorKind::Sink,
                format!("sink {}: a bulk request task failed: {e}", self.client.name),
            )
        })??;
        self.park(parked)
    }

    fn park(&mut self, parked: Vec<Parked>) -> Result<()> {
        for Parked { item, lines } in parked {
            let document = lines
                .split_once('\n')
                .map(|(_, doc)| doc.trim_end().to_owned())
                .filter(|d| !d.is_empty());
            self.failed.park(&FailedMessage {
                key: String::new(),
                sink: self.client.name.clone(),
                index: item.index.to_string(),
                table: item.table.to_string(),
                id: item.id,
                routing: item.routing.map(String::from),
                lsn: item.lsn.to_string(),
                action: item.action.name().to_owned(),
                document,
                error: item.last_error,
                attempts: item.attempts,
                failed_at_ms: crate::sink::failed::now_ms(),
            })?;
        }
        Ok(())
    }
}

/// Whether the engine answers and takes the sink's credentials, without
/// writing: the outer error when the client cannot be built (a missing key).
pub async fn probe(config: &ElasticsearchConfig) -> Result<std::result::Result<(), String>> {
    let client = Client::new(config)?;
    Ok(client.probe().await)
}

#[async_trait::async_trait]
impl super::Sink for ElasticsearchSink {
    fn name(&self) -> &str {
        &self.client.name
    }

    fn failed(&mut self) -> Option<&mut FailedStore> {
        Some(&mut self.failed)
    }

    async fn write(&mut self, ops: &[WriteOp]) -> Result<()> {
        for op in ops {
            if self.truncates.erased(op) {
                continue;
            }
            if let WriteAction::Truncate { scoped, .. } = op.action {
                self.flush().await?;
                self.drain().await?;
                self.truncate(&op.index, scoped.then_some(&*op.table))
                    .await?;
                // Versioned writes after it must not meet it a second time.
                self.truncates.applied(op)?;
                continue;
            }
            if self
                .failed
                .screen(&self.client.name, op, self.client.config.max_document_bytes)?
            {
                continue;
            }
            self.ensure_index(&op.index).await?;
            // A partial document is merged into what the index holds once
            // the writes before it are in: it never shares a request with
            // another write of its document.
            let partial = matches!(op.action, WriteAction::Upsert { partial: true, .. });
            let doc = crate::model::write::doc_hash(&op.index, &op.id);
            if self
                .pending_docs
                .get(&doc)
                .is_some_and(|&updated| updated || partial)
            {
                self.flush().await?;
            }
            *self.pending_docs.entry(doc).or_default() |= partial;
            if partial {
                self.partials.push(op.clone());
            } else {
                self.buffer(op);
            }
            if self.pending.len() + self.partials.len() >= self.config().batch_max_docs
                || self.body.len() as u64 >= self.config().batch_max_bytes
            {
                self.flush().await?;
            }
        }
        metrics::counter!("sluice_sink_writes_total", "sink" => self.client.name.clone())
            .increment(ops.len() as u64);
        Ok(())
    }

    async fn commit(&mut self, _upto: Lsn) -> Result<()> {
        self.flush().await?;
        self.drain().await?;
        let max = self.config().max_parked;
        self.failed.wait_below(&self.client.name, max).await;
        Ok(())
    }
}
