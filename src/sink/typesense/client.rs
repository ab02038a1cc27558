//! Talking to Typesense: requests with the API key, classification of
//! answers, and the four calls the sink makes (import, delete by filter,
//! truncate, create collection).

use std::time::Duration;

use bytes::Bytes;

use super::config::TypesenseConfig;
use super::request::{self, Kind};
use super::response::{self, Outcome};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::retry::backoff;

/// Why a request got no usable answer.
pub enum SendError {
    /// Network trouble, timeouts, 429 and 5xx: try again.
    Retryable(String),
    /// Credentials or a request too large: no write can succeed.
    Fatal(Error),
}

/// The HTTP side of a sink.
pub struct Client {
    pub name: String,
    pub config: TypesenseConfig,
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl Client {
    pub fn new(config: &TypesenseConfig) -> Result<Client> {
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
            api_key: config.api_key(),
            config: config.clone(),
            http,
        })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url> {
        reqwest::Url::parse(&format!("{}/{path}", self.base)).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("sink {}: bad URL for {path}: {e}", self.name),
            )
        })
    }

    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, url);
        if let Some(key) = &self.api_key {
            request = request.header("X-TYPESENSE-API-KEY", key);
        }
        request
    }

    /// Sends a request and reads the answer, classifying failures.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> std::result::Result<(u16, Bytes), SendError> {
        let response = request
            .send()
            .await
            .map_err(|e| SendError::Retryable(format!("request failed: {}", error_chain(&e))))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| {
            SendError::Retryable(format!("reading the answer failed: {}", error_chain(&e)))
        })?;
        metrics::counter!("sluice_sink_requests_total", "sink" => self.name.clone(), "status" => status.to_string())
            .increment(1);
        match status {
            408 | 429 | 500..=599 => Err(SendError::Retryable(format!(
                "{status}: {}",
                response::error_text(&body)
            ))),
            401 | 403 => Err(SendError::Fatal(
                Error::new(
                    ErrorKind::Sink,
                    format!(
                        "sink {}: {status}: {}",
                        self.name,
                        response::error_text(&body)
                    ),
                )
                .hint("check the sink's api_key_env: the key must exist and allow writes"),
            )),
            413 => Err(SendError::Fatal(
                Error::new(
                    ErrorKind::Sink,
                    format!("sink {}: request too large", self.name),
                )
                .hint("lower the sink's batch_max_bytes"),
            )),
            _ => Ok((status, body)),
        }
    }

    /// Imports `lines` (JSONL) into `collection`; one outcome per line.
    pub async fn import(
        &self,
        collection: &str,
        kind: Kind,
        body: Vec<u8>,
        lines: usize,
    ) -> Result<Vec<Outcome>> {
        let mut url = self.url(&format!(
            "collections/{}/documents/import",
            request::path_segment(collection)
        ))?;
        let action = kind.import_action().unwrap_or("upsert");
        url.query_pairs_mut().append_pair("action", action);
        let request = self
            .request(reqwest::Method::POST, url)
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .body(body);
        let all = |outcome: Outcome| Ok(vec![outcome; lines]);
        match self.send(request).await {
            Ok((200, answer)) => Ok(response::parse_import(&answer, lines)
                .unwrap_or_else(|problem| vec![Outcome::Retry(problem); lines])),
            Ok((404, answer)) => all(Outcome::Failed(format!(
                "404: {} (create collection {collection} or set the sink's schema)",
                response::error_text(&answer)
            ))),
            Ok((status, answer)) => all(response::classify(status, &response::error_text(&answer))),
            Err(SendError::Retryable(problem)) => all(Outcome::Retry(problem)),
            Err(SendError::Fatal(e)) => Err(e),
        }
    }

    /// Deletes the documents matching `filter`: all done, or all not.
    pub async fn delete_by_filter(&self, collection: &str, filter: &str) -> Result<Outcome> {
        let mut url = self.url(&format!(
            "collections/{}/documents",
            request::path_segment(collection)
        ))?;
        url.query_pairs_mut().append_pair("filter_by", filter);
        self.delete(url).await
    }

    /// Deletes one document by its id (for ids no filter can express).
    pub async fn delete_one(&self, collection: &str, id: &str) -> Result<Outcome> {
        let url = self.url(&format!(
            "collections/{}/documents/{}",
            request::path_segment(collection),
            request::path_segment(id)
        ))?;
        self.delete(url).await
    }

    async fn delete(&self, url: reqwest::Url) -> Result<Outcome> {
        match self.send(self.request(reqwest::Method::DELETE, url)).await {
            // 404: no such collection or document, so nothing to delete.
            Ok((200 | 404, _)) => Ok(Outcome::Done),
            Ok((status, answer)) => Ok(response::classify(status, &response::error_text(&answer))),
            Err(SendError::Retryable(problem)) => Ok(Outcome::Retry(problem)),
            Err(SendError::Fatal(e)) => Err(e),
        }
    }

    /// Removes every document of `collection`, keeping the collection.
    pub async fn truncate(&self, collection: &str) -> Result<()> {
        let mut url = self.url(&format!(
            "collections/{}/documents",
            request::path_segment(collection)
        ))?;
        url.query_pairs_mut().append_pair("truncate", "true");
        self.with_retries(
            "truncating a collection",
            || self.request(reqwest::Method::DELETE, url.clone()),
            |status| status == 200 || status == 404,
        )
        .await
    }

    /// Creates `collection` with `schema` unless it exists.
    pub async fn create_collection(&self, collection: &str, schema: &toml::Table) -> Result<()> {
        let mut body = serde_json::to_value(schema).unwrap_or_default();
        body["name"] = serde_json::Value::String(collection.to_owned());
        let body = serde_json::to_vec(&body).expect("JSON values serialize");
        let url = self.url("collections")?;
        self.with_retries(
            "creating a collection",
            || {
                self.request(reqwest::Method::POST, url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            },
            // 409: it exists already.
            |status| matches!(status, 200 | 201 | 409),
        )
        .await
    }

    /// Sends a request until `ok` holds for its status, with backoff.
    async fn with_retries(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
        ok: impl Fn(u16) -> bool,
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let problem = match self.send(build()).await {
                Ok((status, _)) if ok(status) => return Ok(()),
                Ok((status, body)) => {
                    return Err(Error::new(
                        ErrorKind::Sink,
                        format!(
                            "sink {}: {what} failed: {status}: {}",
                            self.name,
                            response::error_text(&body)
                        ),
                    ))
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
            let delay = self.backoff(attempt);
            tracing::warn!(sink = %self.name, attempt, retry_in_ms = delay.as_millis() as u64, "{what}: {problem}");
            tokio::time::sleep(delay).await;
        }
    }

    /// The delay before retry number `attempt`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff(
            Duration::from_millis(self.config.retry_initial_backoff_ms),
            Duration::from_millis(self.config.retry_max_backoff_ms),
            attempt,
        )
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
