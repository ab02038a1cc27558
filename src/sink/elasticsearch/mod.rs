//! The Elasticsearch / OpenSearch sink: `_bulk` NDJSON with external versions,
//! per-item outcomes, retries of only what failed, and parking of what keeps
//! failing.

mod config;
pub mod request;
mod response;

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use config::{ElasticsearchConfig, IndexDefinition, DEFAULT_BATCH_MAX_DOCS};
use request::BulkAction;
use response::Outcome;

use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::pipeline::change::{WriteAction, WriteOp};
use crate::sink::failed::{FailedMessage, FailedStore};
use crate::sink::retry::backoff;

/// A buffered bulk item.
#[derive(Debug)]
struct Pending {
    /// Its lines in the body.
    range: Range<usize>,
    action: BulkAction,
    index: Arc<str>,
    table: Arc<str>,
    id: String,
    lsn: Lsn,
    attempts: u32,
    last_error: String,
}

/// Why a request got no usable answer.
enum SendError {
    /// Network trouble, timeouts, 429 and 5xx: try again.
    Retryable(String),
    /// Credentials, request too large, or a request the engine rejects.
    Fatal(Error),
}

pub struct ElasticsearchSink {
    name: String,
    config: ElasticsearchConfig,
    client: reqwest::Client,
    base: String,
    authorization: Option<String>,
    body: Vec<u8>,
    pending: Vec<Pending>,
    created: HashSet<Arc<str>>,
    failed: FailedStore,
}

impl ElasticsearchSink {
    pub fn new(config: &ElasticsearchConfig, data_dir: &Path) -> Result<ElasticsearchSink> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("sink {}: cannot build an HTTP client: {e}", config.name),
                )
            })?;
        Ok(ElasticsearchSink {
            name: config.name.clone(),
            base: config.url.trim_end_matches('/').to_owned(),
            authorization: config.authorization(),
            config: config.clone(),
            client,
            body: Vec::with_capacity(config.batch_max_bytes as usize + 64 * 1024),
            pending: Vec::new(),
            created: HashSet::new(),
            failed: FailedStore::new(data_dir, &config.name),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, format!("{}/{path}", self.base));
        if let Some(auth) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, auth);
        }
        request
    }

    /// Sends a request and reads the answer, classifying failures.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), SendError> {
        let response = request
            .send()
            .await
            .map_err(|e| SendError::Retryable(format!("request failed: {}", error_chain(&e))))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            SendError::Retryable(format!("reading the answer failed: {}", error_chain(&e)))
        })?;
        let text = || String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
        match status.as_u16() {
            429 | 500..=599 => Err(SendError::Retryable(format!("{status}: {}", text()))),
            401 | 403 => Err(SendError::Fatal(
                Error::new(ErrorKind::Sink, format!("sink {}: {status}: {}", self.name, text()))
                    .hint("check the sink's credentials (api_key_env, username/password_env, bearer_token_env)"),
            )),
            413 => Err(SendError::Fatal(
                Error::new(ErrorKind::Sink, format!("sink {}: request too large", self.name))
                    .hint("lower the sink's batch_max_bytes below the engine's http.max_content_length"),
            )),
            _ => Ok((status, body.to_vec())),
        }
    }

    /// Creates the index with the configured definition when it is missing.
    async fn ensure_index(&mut self, index: &Arc<str>) -> Result<()> {
        let Some(definition) = self.config.create_index.clone() else {
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
        let path = urlencode(index);
        self.with_retries(
            "creating the index",
            || {
                self.request(reqwest::Method::PUT, &path)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            },
            |status, answer| {
                status.is_success()
                    || String::from_utf8_lossy(answer).contains("resource_already_exists_exception")
            },
        )
        .await?;
        tracing::info!(sink = %self.name, index = %index, "index ready");
        self.created.insert(index.clone());
        Ok(())
    }

    /// Removes every document of `index` (a truncate of its table).
    async fn truncate(&mut self, index: &str) -> Result<()> {
        let path = urlencode(index);
        let ok =
            |status: reqwest::StatusCode, _: &[u8]| status.is_success() || status.as_u16() == 404;
        // Delete-by-query sees what is searchable: make the latest writes so first.
        self.with_retries(
            "refreshing before a truncate",
            || self.request(reqwest::Method::POST, &format!("{path}/_refresh")),
            ok,
        )
        .await?;
        self.with_retries(
            "deleting the documents of a truncated table",
            || {
                self.request(
                    reqwest::Method::POST,
                    &format!("{path}/_delete_by_query?conflicts=proceed&refresh=true"),
                )
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(r#"{"query":{"match_all":{}}}"#)
            },
            ok,
        )
        .await?;
        tracing::info!(sink = %self.name, index, "table truncated: its documents are removed");
        Ok(())
    }

    /// Sends a request until `ok` holds for its answer, with backoff.
    async fn with_retries(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
        ok: impl Fn(reqwest::StatusCode, &[u8]) -> bool,
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let problem = match self.send(build()).await {
                Ok((status, body)) if ok(status, &body) => return Ok(()),
                Ok((status, body)) => {
                    let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
                    return Err(Error::new(
                        ErrorKind::Sink,
                        format!("sink {}: {what} failed: {status}: {text}", self.name),
                    ));
                }
                Err(SendError::Fatal(e)) => return Err(e),
                Err(SendError::Retryable(problem)) => problem,
            };
            if attempt > self.config.max_retries {
                return Err(Error::new(
                    ErrorKind::Sink,
                    format!(
                        "sink {}: {what} failed {attempt} times: {problem}",
                        self.name
                    ),
                ));
            }
            self.wait(attempt, &problem).await;
        }
    }

    async fn wait(&self, attempt: u32, problem: &str) {
        let delay = backoff(
            Duration::from_millis(self.config.retry_initial_backoff_ms),
            Duration::from_millis(self.config.retry_max_backoff_ms),
            attempt,
        );
        metrics::counter!("sluice_sink_retries_total", "sink" => self.name.clone()).increment(1);
        tracing::warn!(sink = %self.name, attempt, retry_in_ms = delay.as_millis() as u64, "{problem}");
        tokio::time::sleep(delay).await;
    }

    /// Sends everything buffered until each item is done or parked.
    async fn flush(&mut self) -> Result<()> {
        let mut body = std::mem::take(&mut self.body);
        let mut round = std::mem::take(&mut self.pending);
        while !round.is_empty() {
            let actions: Vec<BulkAction> = round.iter().map(|p| p.action).collect();
            let outcomes = match self.send_bulk(&body).await {
                Ok(answer) => response::parse(&answer, &actions)
                    .unwrap_or_else(|e| vec![Outcome::Retry(e); round.len()]),
                Err(SendError::Retryable(problem)) => vec![Outcome::Retry(problem); round.len()],
                Err(SendError::Fatal(e)) => return Err(e),
            };
            // Later writes to a document whose earlier write must be retried
            // are sent again after it, so the last one still wins.
            let mut held: HashSet<(Arc<str>, String)> = HashSet::new();
            let mut again = Vec::new();
            let mut first_problem = None;
            for (mut item, outcome) in round.into_iter().zip(outcomes) {
                let key = (item.index.clone(), item.id.clone());
                match outcome {
                    Outcome::Done if held.contains(&key) => again.push(item),
                    Outcome::Done => {}
                    Outcome::Retry(problem) => {
                        item.attempts += 1;
                        item.last_error = problem;
                        if item.attempts > self.config.max_retries {
                            self.park(&item, &body)?;
                        } else {
                            first_problem.get_or_insert_with(|| item.last_error.clone());
                            held.insert(key);
                            again.push(item);
                        }
                    }
                    Outcome::Failed(problem) => {
                        item.attempts += 1;
                        item.last_error = problem;
                        self.park(&item, &body)?;
                    }
                }
            }
            if again.is_empty() {
                break;
            }
            let attempt = again.iter().map(|p| p.attempts).max().unwrap_or(1).max(1);
            self.wait(
                attempt,
                &format!(
                    "{} write(s) to retry: {}",
                    again.len(),
                    first_problem.unwrap_or_default()
                ),
            )
            .await;
            let (next_body, ranges) =
                request::rebuild(&body, again.iter().map(|p| p.range.clone()));
            for (item, range) in again.iter_mut().zip(ranges) {
                item.range = range;
            }
            body = next_body;
            round = again;
        }
        body.clear();
        self.body = body;
        Ok(())
    }

    async fn send_bulk(&self, body: &[u8]) -> Result<Vec<u8>, SendError> {
        let mut request = self
            .request(reqwest::Method::POST, "_bulk")
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson");
        if self.config.gzip {
            use std::io::Write;
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            encoder.write_all(body).expect("writing to memory");
            let compressed = encoder.finish().expect("writing to memory");
            request = request
                .header(reqwest::header::CONTENT_ENCODING, "gzip")
                .body(compressed);
        } else {
            request = request.body(body.to_vec());
        }
        let (status, answer) = self.send(request).await?;
        metrics::counter!("sluice_sink_requests_total", "sink" => self.name.clone(), "status" => status.as_str().to_owned())
            .increment(1);
        if status.is_success() {
            Ok(answer)
        } else {
            let text = String::from_utf8_lossy(&answer[..answer.len().min(500)]).into_owned();
            Err(SendError::Fatal(Error::new(
                ErrorKind::Sink,
                format!(
                    "sink {}: the bulk request was rejected: {status}: {text}",
                    self.name
                ),
            )))
        }
    }

    fn park(&mut self, item: &Pending, body: &[u8]) -> Result<()> {
        let lines = String::from_utf8_lossy(&body[item.range.clone()]).into_owned();
        let document = lines
            .split_once('\n')
            .map(|(_, doc)| doc.trim_end().to_owned())
            .filter(|d| !d.is_empty());
        self.failed.park(&FailedMessage {
            sink: self.name.clone(),
            index: item.index.to_string(),
            table: item.table.to_string(),
            id: item.id.clone(),
            lsn: item.lsn.to_string(),
            action: item.action.name().to_owned(),
            document,
            error: item.last_error.clone(),
            attempts: item.attempts,
            failed_at_ms: crate::sink::failed::now_ms(),
        })
    }
}

#[async_trait::async_trait]
impl super::Sink for ElasticsearchSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, ops: &[WriteOp]) -> Result<()> {
        for op in ops {
            if let WriteAction::Truncate { .. } = op.action {
                self.flush().await?;
                self.truncate(&op.index).await?;
                continue;
            }
            self.ensure_index(&op.index).await?;
            let start = self.body.len();
            if let Some(action) = request::encode(op, &mut self.body) {
                self.pending.push(Pending {
                    range: start..self.body.len(),
                    action,
                    index: op.index.clone(),
                    table: op.table.clone(),
                    id: op.id.clone(),
                    lsn: op.lsn,
                    attempts: 0,
                    last_error: String::new(),
                });
            }
            if self.pending.len() >= self.config.batch_max_docs
                || self.body.len() as u64 >= self.config.batch_max_bytes
            {
                self.flush().await?;
            }
        }
        metrics::counter!("sluice_sink_writes_total", "sink" => self.name.clone())
            .increment(ops.len() as u64);
        Ok(())
    }

    async fn commit(&mut self, _upto: Lsn) -> Result<()> {
        self.flush().await
    }
}

/// An index name as a URL path segment.
fn urlencode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
