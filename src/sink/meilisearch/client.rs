//! Talking to Meilisearch: requests with the API key, sending a batch until it
//! got a task (only requests without a task are sent again), and following a
//! task until it finished.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::config::MeilisearchConfig;
use super::request::{Batch, Kind};
use super::tasks::{ApiError, Summary, Task};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::http::{body_text, path_segment, Answers, HttpClient, SendError};
use crate::sink::retry::backoff;

/// What became of a sent batch.
#[derive(Debug)]
pub enum Sent {
    /// Meilisearch enqueued it as this task.
    Task(u64),
    /// Meilisearch refused the request itself (4xx with an error object).
    Rejected(ApiError),
    /// No answer after `max_retries` tries (500s, timeouts, dropped
    /// connections; an outage is waited out without counting): the writes
    /// are to be parked with this problem.
    Unanswered(String),
}

/// How Meilisearch's answers are read (a 413 is a refusal like any other).
const ANSWERS: Answers = Answers {
    retry_timeout: false,
    error_text: body_text,
    credentials_hint: "check the sink's api_key_env: the key needs the documents.add, documents.delete and tasks.get actions",
    too_large_refuses: false,
};

/// The HTTP side of a sink.
pub struct Client {
    pub name: String,
    pub config: MeilisearchConfig,
    http: HttpClient,
}

impl Client {
    /// Whether the instance answers and takes the key, without writing
    /// (`GET /tasks?limit=1`, which needs the tasks.get action sluice uses).
    pub async fn probe(&self) -> std::result::Result<(), String> {
        self.http
            .probe("tasks?limit=1", &[401, 403], ANSWERS.credentials_hint)
            .await
    }

    pub fn new(config: &MeilisearchConfig) -> Result<Client> {
        let authorization = config
            .authorization()
            .map(|value| (reqwest::header::AUTHORIZATION, value));
        Ok(Client {
            name: config.name.clone(),
            http: HttpClient::new(&config.http(), authorization)?,
            config: config.clone(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.http.url(path))
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> std::result::Result<(reqwest::StatusCode, Bytes), SendError> {
        let answer = self.http.send(request, &ANSWERS).await?;
        Ok((answer.status, answer.body))
    }

    /// Sends a batch until Meilisearch answers it: with a task, or with a
    /// refusal. Only a request that got no answer is sent again, at most
    /// `max_retries` times.
    pub async fn enqueue(&self, batch: &Batch) -> Result<Sent> {
        let index = path_segment(&batch.index);
        let body = Bytes::from(batch.body());
        let build = || {
            let documents = format!("indexes/{index}/documents");
            let with_key = || {
                format!(
                    "{documents}?primaryKey={}",
                    path_segment(&self.config.primary_key)
                )
            };
            let request = match batch.kind {
                Kind::Replace => self.request(reqwest::Method::POST, &with_key()),
                Kind::Update => self.request(reqwest::Method::PUT, &with_key()),
                Kind::Delete => {
                    self.request(reqwest::Method::POST, &format!("{documents}/delete-batch"))
                }
                Kind::Clear => return self.request(reqwest::Method::DELETE, &documents),
                Kind::ClearTable => {
                    self.request(reqwest::Method::POST, &format!("{documents}/delete"))
                }
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
                    if status.is_success() {
                        match serde_json::from_slice::<Summary>(&answer) {
                            Ok(summary) => return Ok(Sent::Task(summary.task_uid)),
                            Err(e) => format!("{status} without a task: {e}"),
                        }
                    } else {
                        let error =
                            serde_json::from_slice::<ApiError>(&answer).unwrap_or_else(|_| {
                                ApiError {
                                    message: body_text(&answer),
                                    code: status.as_str().to_owned(),
                                    kind: "invalid_request".into(),
                                    link: None,
                                }
                            });
                        return Ok(Sent::Rejected(error));
                    }
                }
                Err(SendError::Fatal(e)) => return Err(e),
                Err(SendError::Refused(problem)) => {
                    return Err(Error::new(
                        ErrorKind::Sink,
                        format!("sink {}: {problem}", self.name),
                    ))
                }
                Err(SendError::Retryable(problem)) => problem,
            };
            if attempt > self.config.max_retries {
                return Ok(Sent::Unanswered(format!(
                    "sending failed {attempt} times: {problem}"
                )));
            }
            self.http.wait(attempt, &problem).await;
        }
    }

    /// Makes `field` filterable in `index` (keeping the attributes that are),
    /// so documents can be deleted by it; waits for the settings task.
    pub async fn ensure_filterable(&self, index: &str, field: &str) -> Result<()> {
        let path = format!(
            "indexes/{}/settings/filterable-attributes",
            path_segment(index)
        );
        let failed = |what: &str, problem: String| {
            Error::new(
                ErrorKind::Sink,
                format!("sink {}: {what} of index {index}: {problem}", self.name),
            )
        };
        let (status, answer) = self
            .send(self.request(reqwest::Method::GET, &path))
            .await
            .map_err(|e| failed("reading the filterable attributes", send_problem(e)))?;
        if status.as_u16() == 404 {
            return Ok(()); // no index, nothing to delete
        }
        if !status.is_success() {
            return Err(failed(
                "reading the filterable attributes",
                format!("{status}: {}", body_text(&answer)),
            ));
        }
        let mut attributes: Vec<serde_json::Value> = serde_json::from_slice(&answer)
            .map_err(|e| failed("reading the filterable attributes", e.to_string()))?;
        let covers = |pattern: &serde_json::Value| match pattern {
            serde_json::Value::String(name) => name == field || name == "*",
            // Granular form: {"attributePatterns": [...], "features": {...}}.
            other => other["attributePatterns"]
                .as_array()
                .is_some_and(|p| p.iter().any(|n| n == field || n == "*")),
        };
        if attributes.iter().any(covers) {
            return Ok(());
        }
        attributes.push(serde_json::Value::String(field.to_owned()));
        let body = serde_json::to_vec(&attributes).expect("JSON values serialize");
        let (status, answer) = self
            .send(
                self.request(reqwest::Method::PUT, &path)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body),
            )
            .await
            .map_err(|e| failed("making the table field filterable", send_problem(e)))?;
        let summary: Summary = match serde_json::from_slice(&answer) {
            Ok(summary) if status.is_success() => summary,
            _ => {
                return Err(failed(
                    "making the table field filterable",
                    format!("{status}: {}", body_text(&answer)),
                ))
            }
        };
        let task = self.wait_task(summary.task_uid).await?;
        match task.error {
            None => Ok(()),
            Some(error) => Err(failed(
                "making the table field filterable",
                error.to_string(),
            )),
        }
    }

    /// `POST indexes/{index}/documents/fetch` with `body` (`verify`), sent
    /// again after an answer a retry may fix; `None` for a missing index.
    pub async fn fetch_documents(
        &self,
        index: &str,
        body: &serde_json::Value,
    ) -> Result<Option<Bytes>> {
        let path = format!("indexes/{}/documents/fetch", path_segment(index));
        let body = serde_json::to_vec(body).expect("JSON values serialize");
        let build = || {
            self.request(reqwest::Method::POST, &path)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        };
        self.http.read(&path, &ANSWERS, build).await
    }

    /// Counts, logs and sleeps before retry number `attempt`.
    pub async fn wait(&self, attempt: u32, problem: &str) {
        self.http.wait(attempt, problem).await;
    }

    /// Follows a task until it finished, looking at it with growing delays.
    /// A task still enqueued or processing is waited for, never resent; after
    /// `task_timeout_ms` the sink gives up with an error (the pipeline then
    /// resumes from its last acknowledged position).
    pub async fn wait_task(&self, uid: u64) -> Result<Task> {
        let start = Instant::now();
        let mut looks = 0;
        loop {
            looks += 1;
            let status = match self.look_task(uid).await? {
                Ok(task) => return Ok(task),
                Err(status) => status,
            };
            self.check_task_age(uid, &status, start)?;
            let timeout = Duration::from_millis(self.config.task_timeout_ms);
            let delay = self.poll_delay(looks);
            tokio::time::sleep(delay.min(timeout.saturating_sub(start.elapsed()))).await;
        }
    }

    /// Looks at a task once: the task when it finished, else where it is
    /// (`enqueued`, `processing`, or why the look got no answer).
    pub async fn look_task(&self, uid: u64) -> Result<std::result::Result<Task, String>> {
        let status = match self
            .send(self.request(reqwest::Method::GET, &format!("tasks/{uid}")))
            .await
        {
            Ok((status, answer)) if status.is_success() => {
                match serde_json::from_slice::<Task>(&answer) {
                    Ok(task) if task.status.is_finished() => return Ok(Ok(task)),
                    Ok(task) => format!("{:?}", task.status).to_lowercase(),
                    Err(e) => format!("unreadable ({e})"),
                }
            }
            Ok((status, answer)) => {
                return Err(Error::new(
                    ErrorKind::Sink,
                    format!(
                        "sink {}: looking at task {uid} failed: {status}: {}",
                        self.name,
                        body_text(&answer)
                    ),
                ));
            }
            Err(SendError::Fatal(e)) => return Err(e),
            Err(SendError::Refused(problem)) => {
                return Err(Error::new(
                    ErrorKind::Sink,
                    format!("sink {}: {problem}", self.name),
                ))
            }
            Err(SendError::Retryable(problem)) => format!("unknown ({problem})"),
        };
        Ok(Err(status))
    }

    /// The error once a task followed since `since` is still `status` after
    /// `task_timeout_ms`.
    pub fn check_task_age(&self, uid: u64, status: &str, since: Instant) -> Result<()> {
        if since.elapsed() < Duration::from_millis(self.config.task_timeout_ms) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Sink,
            format!(
                "sink {}: task {uid} is still {status} after {} ms",
                self.name,
                since.elapsed().as_millis()
            ),
        )
        .hint("Meilisearch is behind: raise the sink's task_timeout_ms, or look at its task queue (GET /tasks?statuses=enqueued,processing)"))
    }

    /// The wait before the next look at a task looked at `looks` times.
    pub fn poll_delay(&self, looks: u32) -> Duration {
        backoff(
            Duration::from_millis(self.config.task_poll_initial_ms),
            Duration::from_millis(self.config.task_poll_max_ms),
            looks,
        )
    }
}

/// The text of a request that got no usable answer.
fn send_problem(e: SendError) -> String {
    match e {
        SendError::Retryable(problem) | SendError::Refused(problem) => problem,
        SendError::Fatal(e) => e.to_string(),
    }
}
