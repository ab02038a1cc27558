//! Talking to the cluster: requests with authentication, classification of
//! answers, and delivery of one bulk request with retries of only what failed.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::config::ElasticsearchConfig;
use super::request::{self, BulkAction};
use super::response::{self, Outcome};
use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::sink::retry::backoff;

/// A buffered bulk item.
#[derive(Debug)]
pub struct Pending {
    /// Its lines in the body.
    pub range: Range<usize>,
    pub action: BulkAction,
    pub index: Arc<str>,
    pub table: Arc<str>,
    pub id: String,
    pub lsn: Lsn,
    pub attempts: u32,
    pub last_error: String,
}

/// One bulk request's worth of items.
#[derive(Debug)]
pub struct Job {
    pub body: Bytes,
    pub items: Vec<Pending>,
}

/// An item that will not be written, with its lines, for the failed store.
#[derive(Debug)]
pub struct Parked {
    pub item: Pending,
    pub lines: String,
}

/// Why a request got no usable answer.
pub enum SendError {
    /// Network trouble, timeouts, 429 and 5xx: try again.
    Retryable(String),
    /// Credentials, request too large, or a request the engine rejects.
    Fatal(Error),
}

/// The HTTP side of a sink; shared by its in-flight requests.
pub struct Client {
    pub name: String,
    pub config: ElasticsearchConfig,
    http: reqwest::Client,
    base: String,
    authorization: Option<String>,
}

impl Client {
    pub fn new(config: &ElasticsearchConfig) -> Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("sink {}: cannot build an HTTP client: {e}", config.name),
                )
            })?;
        Ok(Client {
            name: config.name.clone(),
            base: config.url.trim_end_matches('/').to_owned(),
            authorization: config.authorization(),
            config: config.clone(),
            http,
        })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}/{path}", self.base));
        if let Some(auth) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, auth);
        }
        request
    }

    /// Sends a request and reads the answer, classifying failures.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Bytes), SendError> {
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
            _ => Ok((status, body)),
        }
    }

    /// Sends a request until `ok` holds for its answer, with backoff.
    pub async fn with_retries(
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

    /// Delivers a bulk request: every item ends written, superseded, or
    /// returned to be parked (permanent failures and exhausted retries).
    pub async fn deliver(self: Arc<Self>, job: Job) -> Result<Vec<Parked>> {
        let Job {
            mut body,
            items: mut round,
        } = job;
        let mut parked = Vec::new();
        let park = |item: Pending, body: &Bytes, parked: &mut Vec<Parked>| {
            let lines = String::from_utf8_lossy(&body[item.range.clone()]).into_owned();
            parked.push(Parked { item, lines });
        };
        while !round.is_empty() {
            let actions: Vec<BulkAction> = round.iter().map(|p| p.action).collect();
            let outcomes = match self.send_bulk(body.clone()).await {
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
                            park(item, &body, &mut parked);
                        } else {
                            first_problem.get_or_insert_with(|| item.last_error.clone());
                            held.insert(key);
                            again.push(item);
                        }
                    }
                    Outcome::Failed(problem) => {
                        item.attempts += 1;
                        item.last_error = problem;
                        park(item, &body, &mut parked);
                    }
                }
            }
            if again.is_empty() {
                break;
            }
            let attempt = again.iter().map(|p| p.attempts).max().unwrap_or(1).max(1);
            let problem = format!(
                "{} write(s) to retry: {}",
                again.len(),
                first_problem.unwrap_or_default()
            );
            self.wait(attempt, &problem).await;
            let (next_body, ranges) =
                request::rebuild(&body, again.iter().map(|p| p.range.clone()));
            for (item, range) in again.iter_mut().zip(ranges) {
                item.range = range;
            }
            body = Bytes::from(next_body);
            round = again;
        }
        Ok(parked)
    }

    async fn send_bulk(&self, body: Bytes) -> Result<Bytes, SendError> {
        let mut request = self
            .request(reqwest::Method::POST, "_bulk")
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson");
        if self.config.gzip {
            use std::io::Write;
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            encoder.write_all(&body).expect("writing to memory");
            let compressed = encoder.finish().expect("writing to memory");
            request = request
                .header(reqwest::header::CONTENT_ENCODING, "gzip")
                .body(compressed);
        } else {
            request = request.body(body);
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
