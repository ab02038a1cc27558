//! Talking to the API: authenticated requests, classification of answers, and
//! retries with jittered, capped exponential backoff that honour `Retry-After`.

use std::time::Duration;

use bytes::Bytes;

use super::config::TurbopufferConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::retry::backoff;

/// Longest `Retry-After` honoured; a longer one is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// How a request ended, once retries are over.
#[derive(Debug)]
pub enum Outcome {
    /// 2xx: applied.
    Done,
    /// 404: no such namespace.
    NotFound,
    /// The API refused the request itself (4xx other than 401/403/404/413/429):
    /// retrying will not help. The engine's error text.
    Rejected(String),
    /// 429, 5xx, timeouts or network trouble, `max_retries` times over: the
    /// last problem and the attempts made.
    Exhausted(String, u32),
}

/// The HTTP side of a sink.
pub struct Client {
    pub name: String,
    pub config: TurbopufferConfig,
    http: reqwest::Client,
    base: String,
    authorization: String,
}

/// One attempt's result.
enum Attempt {
    Final(Outcome),
    Retry {
        problem: String,
        retry_after: Option<Duration>,
    },
}

impl Client {
    pub fn new(config: &TurbopufferConfig) -> Result<Client> {
        let key = std::env::var(&config.api_key_env).map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "sink {}: environment variable {} (the API key) is not set",
                    config.name, config.api_key_env
                ),
            )
        })?;
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
            authorization: format!("Bearer {key}"),
            config: config.clone(),
            http,
        })
    }

    /// `POST /v2/namespaces/:namespace` with a JSON body, retried.
    pub async fn write(&self, namespace: &str, body: Bytes) -> Result<Outcome> {
        self.with_retries(|| {
            self.request(reqwest::Method::POST, namespace)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
    }

    /// `DELETE /v2/namespaces/:namespace`, retried.
    pub async fn delete_namespace(&self, namespace: &str) -> Result<Outcome> {
        self.with_retries(|| self.request(reqwest::Method::DELETE, namespace))
            .await
    }

    fn request(&self, method: reqwest::Method, namespace: &str) -> reqwest::RequestBuilder {
        // Namespaces are `[A-Za-z0-9-_.]`: safe in a path as they are.
        self.http
            .request(method, format!("{}/v2/namespaces/{namespace}", self.base))
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
    }

    async fn with_retries(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<Outcome> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (problem, retry_after) = match self.attempt(build()).await? {
                Attempt::Final(outcome) => return Ok(outcome),
                Attempt::Retry {
                    problem,
                    retry_after,
                } => (problem, retry_after),
            };
            if attempt > self.config.max_retries {
                return Ok(Outcome::Exhausted(
                    format!("failed {attempt} times; last: {problem}"),
                    attempt,
                ));
            }
            let mut delay = backoff(
                Duration::from_millis(self.config.retry_initial_backoff_ms),
                Duration::from_millis(self.config.retry_max_backoff_ms),
                attempt,
            );
            if let Some(after) = retry_after {
                delay = delay.max(after.min(MAX_RETRY_AFTER));
            }
            metrics::counter!("sluice_sink_retries_total", "sink" => self.name.clone())
                .increment(1);
            tracing::warn!(sink = %self.name, attempt, retry_in_ms = delay.as_millis() as u64, "{problem}");
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends once and classifies the answer.
    async fn attempt(&self, request: reqwest::RequestBuilder) -> Result<Attempt> {
        let retry = |problem: String| Attempt::Retry {
            problem,
            retry_after: None,
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Ok(retry(format!("request failed: {}", error_chain(&e)))),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64())));
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => {
                return Ok(retry(format!(
                    "reading the answer failed: {}",
                    error_chain(&e)
                )))
            }
        };
        metrics::counter!("sluice_sink_requests_total", "sink" => self.name.clone(), "status" => status.as_str().to_owned())
            .increment(1);
        let text = || format!("{status}: {}", error_text(&body));
        Ok(match status.as_u16() {
            200..=299 => Attempt::Final(Outcome::Done),
            404 => Attempt::Final(Outcome::NotFound),
            408 | 429 | 500..=599 => Attempt::Retry {
                problem: text(),
                retry_after,
            },
            401 | 403 => {
                return Err(
                    Error::new(ErrorKind::Sink, format!("sink {}: {}", self.name, text()))
                        .hint("check the API key in the sink's api_key_env and its region's url"),
                )
            }
            413 => {
                return Err(Error::new(
                    ErrorKind::Sink,
                    format!("sink {}: request too large: {}", self.name, text()),
                )
                .hint("lower the sink's batch_max_bytes"))
            }
            _ => Attempt::Final(Outcome::Rejected(text())),
        })
    }
}

/// The `error` of an API error body (`{"status":"error","error":"…"}`), or
/// the start of the body.
fn error_text(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => parsed.error,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read() {
        assert_eq!(
            error_text(br#"{"status":"error","error":"invalid id type"}"#),
            "invalid id type"
        );
        assert_eq!(
            error_text(b"<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
    }
}
