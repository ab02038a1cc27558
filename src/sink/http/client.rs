//! The HTTP side every sink shares: one authenticated client per sink,
//! answers read and classified the same way, and waits between retries.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName};
use reqwest::StatusCode;

use super::HttpSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::retry::backoff;

/// Why a request got no usable answer.
pub enum SendError {
    /// Network trouble, timeouts, 429 and 5xx: try again.
    Retryable(String),
    /// Credentials or a request too large: no write can succeed.
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
    /// What to do about a 413; `None` reads a 413 as an answer like any other.
    pub too_large_hint: Option<&'static str>,
}

impl Answer {
    /// Classifies the answer as every sink does: 429 and 5xx (and 408 where
    /// the engine says so) are retryable; 401, 403 and 413 are fatal; any
    /// other answer is the caller's to read.
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
            413 => match answers.too_large_hint {
                Some(hint) => Err(SendError::Fatal(
                    Error::new(
                        ErrorKind::Sink,
                        format!("sink {sink}: request too large: {}", text()),
                    )
                    .hint(hint),
                )),
                None => Ok(self),
            },
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
    pub async fn fetch(&self, request: reqwest::RequestBuilder) -> Result<Answer, String> {
        let response = request
            .send()
            .await
            .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading the answer failed: {}", error_chain(&e)))?;
        Ok(Answer {
            status,
            headers,
            body,
        })
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
