//! Talking to Meilisearch: requests with the API key, sending a batch until it
//! got a task (only requests without a task are sent again), and following a
//! task until it finished.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::config::MeilisearchConfig;
use super::request::{Batch, Kind};
use super::tasks::{ApiError, Summary, Task};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::retry::backoff;

/// What became of a sent batch.
#[derive(Debug)]
pub enum Sent {
    /// Meilisearch enqueued it as this task.
    Task(u64),
    /// Meilisearch refused the request itself (4xx with an error object).
    Rejected(ApiError),
}

/// Why a request got no usable answer.
enum SendError {
    /// Network trouble, timeouts, 429 and 5xx: nothing was learned.
    Retryable(String),
    Fatal(Error),
}

/// The HTTP side of a sink.
pub struct Client {
    pub name: String,
    pub config: MeilisearchConfig,
    http: reqwest::Client,
    base: String,
    authorization: Option<String>,
}

impl Client {
    pub fn new(config: &MeilisearchConfig) -> Result<Client> {
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

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}/{path}", self.base));
        if let Some(auth) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, auth);
        }
        request
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> std::result::Result<(reqwest::StatusCode, Bytes), SendError> {
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
                    .hint("check the sink's api_key_env: the key needs the documents.add, documents.delete and tasks.get actions"),
            )),
            _ => Ok((status, body)),
        }
    }

    /// Sends a batch until Meilisearch answers it: with a task, or with a
    /// refusal. Only a request that got no answer is sent again.
    pub async fn enqueue(&self, batch: &Batch) -> Result<Sent> {
        let index = urlencode(&batch.index);
        let body = Bytes::from(batch.body());
        let build = || {
            let documents = format!("indexes/{index}/documents");
            let with_key = || {
                format!(
                    "{documents}?primaryKey={}",
                    urlencode(&self.config.primary_key)
                )
            };
            let request = match batch.kind {
                Kind::Replace => self.request(reqwest::Method::POST, &with_key()),
                Kind::Update => self.request(reqwest::Method::PUT, &with_key()),
                Kind::Delete => {
                    self.request(reqwest::Method::POST, &format!("{documents}/delete-batch"))
                }
                Kind::Clear => return self.request(reqwest::Method::DELETE, &documents),
            };
            request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let problem = match self.send(build()).await {
                Ok((status, answer)) => {
                    metrics::counter!("sluice_sink_requests_total", "sink" => self.name.clone(), "status" => status.as_str().to_owned())
                        .increment(1);
                    if status.is_success() {
                        match serde_json::from_slice::<Summary>(&answer) {
                            Ok(summary) => return Ok(Sent::Task(summary.task_uid)),
                            Err(e) => format!("{status} without a task: {e}"),
                        }
                    } else {
                        let error =
                            serde_json::from_slice::<ApiError>(&answer).unwrap_or_else(|_| {
                                ApiError {
                                    message: String::from_utf8_lossy(
                                        &answer[..answer.len().min(500)],
                                    )
                                    .into_owned(),
                                    code: status.as_str().to_owned(),
                                    kind: "invalid_request".into(),
                                    link: None,
                                }
                            });
                        return Ok(Sent::Rejected(error));
                    }
                }
                Err(SendError::Fatal(e)) => return Err(e),
                Err(SendError::Retryable(problem)) => problem,
            };
            if attempt > self.config.max_retries {
                return Err(Error::new(
                    ErrorKind::Sink,
                    format!(
                        "sink {}: sending {} writes to {} failed {attempt} times: {problem}",
                        self.name,
                        batch.items.len().max(1),
                        batch.index
                    ),
                ));
            }
            self.wait(attempt, &problem).await;
        }
    }

    /// Sleeps before retry number `attempt`.
    pub async fn wait(&self, attempt: u32, problem: &str) {
        let delay = backoff(
            Duration::from_millis(self.config.retry_initial_backoff_ms),
            Duration::from_millis(self.config.retry_max_backoff_ms),
            attempt,
        );
        metrics::counter!("sluice_sink_retries_total", "sink" => self.name.clone()).increment(1);
        tracing::warn!(sink = %self.name, attempt, retry_in_ms = delay.as_millis() as u64, "{problem}");
        tokio::time::sleep(delay).await;
    }

    /// Follows a task until it finished, looking at it with growing delays.
    /// A task still enqueued or processing is waited for, never resent; after
    /// `task_timeout_ms` the sink gives up with an error (the pipeline then
    /// resumes from its last acknowledged position).
    pub async fn wait_task(&self, uid: u64) -> Result<Task> {
        let start = Instant::now();
        let timeout = Duration::from_millis(self.config.task_timeout_ms);
        let mut looks = 0;
        loop {
            looks += 1;
            let status = match self
                .send(self.request(reqwest::Method::GET, &format!("tasks/{uid}")))
                .await
            {
                Ok((status, answer)) if status.is_success() => {
                    match serde_json::from_slice::<Task>(&answer) {
                        Ok(task) if task.status.is_finished() => return Ok(task),
                        Ok(task) => format!("{:?}", task.status).to_lowercase(),
                        Err(e) => format!("unreadable ({e})"),
                    }
                }
                Ok((status, answer)) => {
                    let text = String::from_utf8_lossy(&answer[..answer.len().min(500)]);
                    return Err(Error::new(
                        ErrorKind::Sink,
                        format!(
                            "sink {}: looking at task {uid} failed: {status}: {text}",
                            self.name
                        ),
                    ));
                }
                Err(SendError::Fatal(e)) => return Err(e),
                Err(SendError::Retryable(problem)) => format!("unknown ({problem})"),
            };
            if start.elapsed() >= timeout {
                return Err(Error::new(
                    ErrorKind::Sink,
                    format!(
                        "sink {}: task {uid} is still {status} after {} ms",
                        self.name,
                        start.elapsed().as_millis()
                    ),
                )
                .hint("Meilisearch is behind: raise the sink's task_timeout_ms, or look at its task queue (GET /tasks?statuses=enqueued,processing)"));
            }
            let delay = backoff(
                Duration::from_millis(self.config.task_poll_initial_ms),
                Duration::from_millis(self.config.task_poll_max_ms),
                looks,
            );
            tokio::time::sleep(delay.min(timeout.saturating_sub(start.elapsed()))).await;
        }
    }
}

/// A name as a URL path segment or query value.
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
