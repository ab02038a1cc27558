//! Talking to Typesense: requests with the API key, classification of
//! answers, and the four calls the sink makes (import, delete by filter,
//! truncate, create collection).

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderName;

use super::config::TypesenseConfig;
use super::request::Kind;
use super::response::{self, Outcome};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::http::{path_segment, Answers, HttpClient, SendError};

/// How Typesense's answers are read.
const ANSWERS: Answers = Answers {
    retry_timeout: true,
    error_text: response::error_text,
    credentials_hint: "check the sink's api_key_env: the key must exist and allow writes",
    too_large_refuses: true,
};

/// The HTTP side of a sink.
pub struct Client {
    pub name: String,
    pub config: TypesenseConfig,
    http: HttpClient,
}

impl Client {
    /// Whether the cluster answers and takes the key, without writing
    /// (`GET /collections/{collection}`; a missing one is fine).
    pub async fn probe(&self, collection: &str) -> std::result::Result<(), String> {
        let path = format!("collections/{}", path_segment(collection));
        self.http
            .probe(&path, &[401, 403], ANSWERS.credentials_hint)
            .await
    }

    pub fn new(config: &TypesenseConfig) -> Result<Client> {
        let api_key = config
            .api_key()
            .map(|key| (HeaderName::from_static("x-typesense-api-key"), key));
        Ok(Client {
            name: config.name.clone(),
            http: HttpClient::new(&config.http(), api_key)?,
            config: config.clone(),
        })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url> {
        reqwest::Url::parse(&self.http.url(path)).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("sink {}: bad URL for {path}: {e}", self.name),
            )
        })
    }

    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.http.request(method, url)
    }

    /// Sends a request and reads the answer, classifying failures.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> std::result::Result<(u16, Bytes), SendError> {
        let answer = self
            .http
            .fetch(request)
            .await
            .map_err(SendError::Retryable)?;
        let status = answer.status.as_u16();
        let answer = answer.check(&self.name, &ANSWERS)?;
        Ok((status, answer.body))
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
            path_segment(collection)
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
            Ok((status, answer)) => all(refused(response::classify(
                status,
                &response::error_text(&answer),
            ))),
            Err(SendError::Retryable(problem)) => all(Outcome::Retry(problem)),
            Err(SendError::Refused(problem)) => all(Outcome::Refused(problem)),
            Err(SendError::Fatal(e)) => Err(e),
        }
    }

    /// Deletes the documents matching `filter`: all done, or all not.
    pub async fn delete_by_filter(&self, collection: &str, filter: &str) -> Result<Outcome> {
        let mut url = self.url(&format!(
            "collections/{}/documents",
            path_segment(collection)
        ))?;
        url.query_pairs_mut().append_pair("filter_by", filter);
        self.delete(url).await
    }

    /// Deletes one document by its id (for ids no filter can express).
    pub async fn delete_one(&self, collection: &str, id: &str) -> Result<Outcome> {
        let url = self.url(&format!(
            "collections/{}/documents/{}",
            path_segment(collection),
            path_segment(id)
        ))?;
        self.delete(url).await
    }

    async fn delete(&self, url: reqwest::Url) -> Result<Outcome> {
        match self.send(self.request(reqwest::Method::DELETE, url)).await {
            // 404: no such collection or document, so nothing to delete.
            Ok((200 | 404, _)) => Ok(Outcome::Done),
            Ok((status, answer)) => Ok(refused(response::classify(
                status,
                &response::error_text(&answer),
            ))),
            Err(SendError::Retryable(problem)) => Ok(Outcome::Retry(problem)),
            Err(SendError::Refused(problem)) => Ok(Outcome::Refused(problem)),
            Err(SendError::Fatal(e)) => Err(e),
        }
    }

    /// Removes every document of `collection`, keeping the collection; or
    /// only those of `table` when tables share it (by `sluice_table`).
    pub async fn truncate(&self, collection: &str, table: Option<&str>) -> Result<()> {
        let mut url = self.url(&format!(
            "collections/{}/documents",
            path_segment(collection)
        ))?;
        match table {
            Some(table) => {
                let filter = format!(
                    "{}:=`{}`",
                    crate::model::write::TABLE_FIELD,
                    table.replace('`', "")
                );
                url.query_pairs_mut().append_pair("filter_by", &filter);
            }
            None => {
                url.query_pairs_mut().append_pair("truncate", "true");
            }
        }
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
        self.http
            .with_retries(what, &ANSWERS, build, |status, _| ok(status.as_u16()))
            .await
    }

    /// `documents/export` of `collection` (the documents matching `filter`,
    /// else all) as it streams, for reading back; `None` when the
    /// collection does not exist. The body may take long: only the answer's
    /// start waits for the request timeout.
    pub async fn export(
        &self,
        collection: &str,
        filter: Option<&str>,
    ) -> Result<Option<reqwest::Response>> {
        let mut url = self.url(&format!(
            "collections/{}/documents/export",
            path_segment(collection)
        ))?;
        if let Some(filter) = filter {
            url.query_pairs_mut().append_pair("filter_by", filter);
        }
        let failed = |e: String| {
            Error::new(
                ErrorKind::Sink,
                format!(
                    "sink {}: cannot export collection {collection}: {e}",
                    self.name
                ),
            )
        };
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        // An unavailable node is waited out a while, as writes are.
        let mut attempt = 0;
        loop {
            let request = self
                .request(reqwest::Method::GET, url.clone())
                .timeout(Duration::from_secs(24 * 3600));
            let problem = match tokio::time::timeout(timeout, request.send()).await {
                Err(_) => format!("no answer within {} ms", timeout.as_millis()),
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(response)) => match response.status().as_u16() {
                    200 => return Ok(Some(response)),
                    404 => return Ok(None),
                    status => {
                        let body = response.bytes().await.unwrap_or_default();
                        let problem = format!("{status}: {}", response::error_text(&body));
                        if !matches!(status, 408 | 429 | 500..=599) {
                            return Err(failed(problem));
                        }
                        problem
                    }
                },
            };
            attempt += 1;
            if attempt > self.config.max_retries {
                return Err(failed(problem));
            }
            self.http.wait(attempt, &problem).await;
        }
    }

    /// The delay before retry number `attempt`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.http.backoff(attempt)
    }
}

/// A whole request's answer that no retry fixes refuses the request, not
/// each of its writes: smaller requests find the writes it refuses.
fn refused(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Failed(problem) => Outcome::Refused(problem),
        other => other,
    }
}
