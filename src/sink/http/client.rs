//! The HTTP side every sink shares: one authenticated client per sink,
//! answers read and classified the same way, and waits between retries.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName};
use reqwest::StatusCode;

use super::HttpSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::retry::backoff;

/// How long `probe` waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest `Retry-After` honoured; a longer one is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Why a request got no usable answer.
pub enum SendError {
    /// Timeouts, dropped connections, 500 (and 408 where the engine says so):
    /// try again, within the write's retry budget.
    Retryable(String),
    /// The engine refused the request as a whole (too large, malformed): the
    /// status and the engine's answer. Retrying the same request cannot
    /// succeed; smaller ones may.
    Refused(String),
    /// Credentials: no write can succeed.
    Fatal(Error),
}

/// An answer, read in full.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What differs between engines in reading an answer.
pub struct Answers {
    /// 408 Request Timeout is retried too, rather than read as an answer.
    pub retry_timeout: bool,
    /// The readable text of an error body.
    pub error_text: fn(&[u8]) -> String,
    /// What to do about a 401 or 403.
    pub credentials_hint: &'static str,
    /// Whether a 413 refuses the request (`SendError::Refused`) rather than
    /// being read as an answer like any other.
    pub too_large_refuses: bool,
}

impl Answer {
    /// Classifies the answer as every sink does: 429 and 5xx (and 408 where
    /// the engine says so) are retryable (`fetch` already waited out 429,
    /// 502, 503 and 504 unless the request could not be cloned); 401 and 403
    /// are fatal, 413 refuses the request; any other answer is the caller's
    /// to read.
    pub fn check(self, sink: &str, answers: &Answers) -> Result<Answer, SendError> {
        let status = self.status;
        let text = || format!("{status}: {}", (answers.error_text)(&self.body));
        match status.as_u16() {
            408 if answers.retry_timeout => Err(SendError::Retryable(text())),
            429 | 500..=599 => Err(SendError::Retryable(text())),
            401 | 403 => Err(SendError::Fatal(
                Error::new(ErrorKind::Sink, format!("sink {sink}: {}", text()))
                    .hint(answers.credentials_hint),
            )),
            413 if answers.too_large_refuses => Err(SendError::Refused(text())),
            _ => Ok(self),
        }
    }
}

/// The HTTP side of a sink: its base URL, credentials and retry delays.
pub struct HttpClient {
    name: String,
    http: reqwest::Client,
    base: String,
    authorization: Option<(HeaderName, String)>,
    retry_initial_backoff: Duration,
    retry_max_backoff: Duration,
    max_retries: u32,
}

impl HttpClient {
    /// A client for the sink `settings` describe, sending `authorization` (a
    /// header and its value) with every request.
    pub fn new(
        settings: &HttpSettings,
        authorization: Option<(HeaderName, String)>,
    ) -> Result<HttpClient> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("sink {}: cannot build an HTTP client: {e}", settings.name),
                )
            })?;
        Ok(HttpClient {
            name: settings.name.to_owned(),
            http,
            base: settings.url.trim_end_matches('/').to_owned(),
            authorization,
            retry_initial_backoff: Duration::from_millis(settings.retry_initial_backoff_ms),
            retry_max_backoff: Duration::from_millis(settings.retry_max_backoff_ms),
            max_retries: settings.max_retries,
        })
    }

    /// The URL of `path` below the base URL.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// A request with the sink's credentials.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: impl reqwest::IntoUrl,
    ) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.authorization {
            Some((header, value)) => request.header(header, value),
            None => request,
        }
    }

    /// Sends a request and reads the whole answer; failing to do either is a
    /// retryable problem.
    ///
    /// While the engine is unavailable (it refuses connections, or answers
    /// 429, 502, 503 or 504) the request is sent again, with backoff and
    /// honouring `Retry-After`, for as long as it takes: an outage or an
    /// overloaded engine is waited out, never counted against a write's retry
    /// budget, so it never parks writes that are fine.
    pub async fn fetch(&self, request: reqwest::RequestBuilder) -> Result<Answer, String> {
        let mut outage = 0;
        let mut request = request;
        loop {
            let again = request.try_clone();
            let (problem, retry_after) = match self.fetch_once(request).await {
                Fetched::Answer(answer) => {
                    if outage > 0 {
                        tracing::info!(sink = %self.name, attempts = outage + 1, "the engine is available again");
                        self.set_available(true);
                    }
                    return Ok(answer);
                }
                Fetched::Failed(problem) => return Err(problem),
                Fetched::Unavailable(problem, retry_after) => (problem, retry_after),
            };
            let Some(next) = again else {
                return Err(problem);
            };
            outage += 1;
            if outage == 1 {
                self.set_available(false);
            }
            let mut delay = self.backoff(outage);
            if let Some(after) = retry_after {
                delay = delay.max(after);
            }
            // Every try is counted; the log says so at the start of an
            // outage and then ever more rarely.
            metrics::counter!("sluice_sink_retries_total", "sink" => self.name.clone())
                .increment(1);
            if outage.is_power_of_two() || outage % 100 == 0 {
                tracing::warn!(
                    sink = %self.name,
                    attempt = outage,
                    retry_in_ms = delay.as_millis() as u64,
                    "the engine is unavailable, waiting: {problem}"
                );
            }
            tokio::time::sleep(delay).await;
            request = next;
        }
    }

    /// Asks the engine one read-only question, once and without waiting out
    /// an outage: whether it answers and takes the credentials. A status in
    /// `refusals` means the credentials are refused.
    pub async fn probe(&self, path: &str, refusals: &[u16], hint: &str) -> Result<(), String> {
        let url = self.url(path);
        let request = self
            .request(reqwest::Method::GET, &url)
            .timeout(PROBE_TIMEOUT);
        match self.fetch_once(request).await {
            Fetched::Answer(answer) => {
                let status = answer.status;
                if refusals.contains(&status.as_u16()) {
                    Err(format!(
                        "refuses the credentials ({status} to GET {url}): {}; {hint}",
                        body_text(&answer.body)
                    ))
                } else if status.is_server_error() {
                    Err(format!(
                        "is not well ({status} to GET {url}): {}",
                        body_text(&answer.body)
                    ))
                } else {
                    Ok(())
                }
            }
            Fetched::Failed(problem) | Fetched::Unavailable(problem, _) => {
                Err(format!("does not answer at {}: {problem}", self.base))
            }
        }
    }

    async fn fetch_once(&self, request: reqwest::RequestBuilder) -> Fetched {
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                self.count(crate::telemetry::request_status(None));
                let problem = format!("request failed: {}", error_chain(&e));
                return if e.is_connect() {
                    Fetched::Unavailable(problem, None)
                } else {
                    Fetched::Failed(problem)
                };
            }
        };
        let status = response.status();
        self.count(crate::telemetry::request_status(Some(status.as_u16())));
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => {
                return Fetched::Failed(format!("reading the answer failed: {}", error_chain(&e)))
            }
        };
        if matches!(status.as_u16(), 429 | 502..=504) {
            let problem = format!("{status}: {}", body_text(&body));
            return Fetched::Unavailable(problem, retry_after(&headers));
        }
        Fetched::Answer(Answer {
            status,
            headers,
            body,
        })
    }

    fn count(&self, status: &'static str) {
        metrics::counter!("sluice_sink_requests_total", "sink" => self.name.clone(), "status" => status)
            .increment(1);
    }

    fn set_available(&self, available: bool) {
        metrics::gauge!("sluice_sink_available", "sink" => self.name.clone()).set(if available {
            1.0
        } else {
            0.0
        });
    }

    /// Fetches and checks an answer.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        answers: &Answers,
    ) -> Result<Answer, SendError> {
        let answer = self.fetch(request).await.map_err(SendError::Retryable)?;
        answer.check(&self.name, answers)
    }

    /// Sends a request until `ok` holds for its answer, with backoff, at
    /// most `max_retries` times over; any other answer is an error.
    pub async fn with_retries(
        &self,
        what: &str,
        answers: &Answers,
        build: impl Fn() -> reqwest::RequestBuilder,
        ok: impl Fn(StatusCode, &[u8]) -> bool,
    ) -> Result<()> {
        self.answer_with_retries(what, answers, build, ok)
            .await
            .map(drop)
    }

    /// A request that reads (`verify`), sent again as `with_retries` does;
    /// the answer's body, or `None` for a 404.
    pub async fn read(
        &self,
        what: &str,
        answers: &Answers,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Option<Bytes>> {
        let ok = |status: StatusCode, _: &[u8]| status.is_success() || status.as_u16() == 404;
        let answer = self.answer_with_retries(what, answers, build, ok).await?;
        Ok((answer.status.as_u16() != 404).then_some(answer.body))
    }

    async fn answer_with_retries(
        &self,
        what: &str,
        answers: &Answers,
        build: impl Fn() -> reqwest::RequestBuilder,
        ok: impl Fn(StatusCode, &[u8]) -> bool,
    ) -> Result<Answer> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let problem = match self.send(build(), answers).await {
                Ok(answer) if ok(answer.status, &answer.body) => return Ok(answer),
                Ok(answer) => {
                    return Err(Error::new(
                        ErrorKind::Sink,
                        format!(
                            "sink {}: {what} failed: {}: {}",
                            self.name,
                            answer.status,
                            (answers.error_text)(&answer.body)
                        ),
                    ));
                }
                Err(SendError::Fatal(e)) => return Err(e),
                Err(SendError::Refused(problem)) => {
                    return Err(Error::new(
                        ErrorKind::Sink,
                        format!("sink {}: {what} was refused: {problem}", self.name),
                    ))
                }
                Err(SendError::Retryable(problem)) => problem,
            };
            if attempt > self.max_retries {
                return Err(Error::new(
                    ErrorKind::Sink,
                    format!(
                        "sink {}: {what} failed {attempt} times: {problem}",
                        self.name
                    ),
                ));
            }
            self.wait(attempt, &format!("{what}: {problem}")).await;
        }
    }

    /// The delay before retry number `attempt`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.retry_initial_backoff, self.retry_max_backoff, attempt)
    }

    /// Counts and logs retry number `attempt` and sleeps its backoff.
    pub async fn wait(&self, attempt: u32, problem: &str) {
        self.wait_for(attempt, self.backoff(attempt), problem).await;
    }

    /// Counts and logs retry number `attempt` and sleeps `delay`.
    pub async fn wait_for(&self, attempt: u32, delay: Duration, problem: &str) {
        metrics::counter!("sluice_sink_retries_total", "sink" => self.name.clone()).increment(1);
        tracing::warn!(sink = %self.name, attempt, retry_in_ms = delay.as_millis() as u64, "{problem}");
        tokio::time::sleep(delay).await;
    }
}

/// How one try of a request ended.
enum Fetched {
    Answer(Answer),
    /// No answer: worth another try within the write's budget.
    Failed(String),
    /// The engine is not there or asks to wait: the problem and how long it
    /// asked to wait.
    Unavailable(String, Option<Duration>),
}

/// The wait a `Retry-After` header asks for (in seconds), capped.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// The start of a body, as text for a message.
pub fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned()
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
