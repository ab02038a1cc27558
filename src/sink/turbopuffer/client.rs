//! Talking to the API: authenticated requests, classification of answers, and
//! retries with jittered, capped exponential backoff that honour `Retry-After`.

use bytes::Bytes;

use super::config::TurbopufferConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::http::{body_text, Answers, HttpClient, SendError};

/// How the API's answers are read.
const ANSWERS: Answers = Answers {
    retry_timeout: true,
    error_text,
    credentials_hint: "check the API key in the sink's api_key_env and its region's url",
    too_large_refuses: true,
};

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
    /// 500, timeouts or dropped connections, `max_retries` times over: the
    /// last problem and the attempts made.
    Exhausted(String, u32),
}

/// The HTTP side of a sink.
pub struct Client {
    pub name: String,
    pub config: TurbopufferConfig,
    http: HttpClient,
}

/// One attempt's result.
enum Attempt {
    Final(Outcome),
    Retry(String),
}

impl Client {
    /// Whether the region answers and takes the key, without writing
    /// (`GET /v1/namespaces?page_size=1`).
    pub async fn probe(&self) -> std::result::Result<(), String> {
        self.http
            .probe(
                "v1/namespaces?page_size=1",
                &[401, 403],
                ANSWERS.credentials_hint,
            )
            .await
    }

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
        let authorization = (reqwest::header::AUTHORIZATION, format!("Bearer {key}"));
        Ok(Client {
            name: config.name.clone(),
            http: HttpClient::new(&config.http(), Some(authorization))?,
            config: config.clone(),
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

    /// `POST /v2/namespaces/:namespace/query` with `body` (`verify`), sent
    /// again after an answer a retry may fix; `None` for a missing namespace.
    pub async fn query(&self, namespace: &str, body: &serde_json::Value) -> Result<Option<Bytes>> {
        let body = serde_json::to_vec(body).expect("JSON values serialize");
        let url = self.http.url(&format!("v2/namespaces/{namespace}/query"));
        let build = || {
            self.http
                .request(reqwest::Method::POST, url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        };
        self.http.read("a query", &ANSWERS, build).await
    }

    fn request(&self, method: reqwest::Method, namespace: &str) -> reqwest::RequestBuilder {
        // Namespaces are `[A-Za-z0-9-_.]`: safe in a path as they are.
        let url = self.http.url(&format!("v2/namespaces/{namespace}"));
        self.http.request(method, url)
    }

    async fn with_retries(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<Outcome> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let problem = match self.attempt(build()).await? {
                Attempt::Final(outcome) => return Ok(outcome),
                Attempt::Retry(problem) => problem,
            };
            if attempt > self.config.max_retries {
                return Ok(Outcome::Exhausted(
                    format!("failed {attempt} times; last: {problem}"),
                    attempt,
                ));
            }
            self.http.wait(attempt, &problem).await;
        }
    }

    /// Sends once and classifies the answer.
    async fn attempt(&self, request: reqwest::RequestBuilder) -> Result<Attempt> {
        let answer = match self.http.fetch(request).await {
            Ok(answer) => answer,
            Err(problem) => return Ok(Attempt::Retry(problem)),
        };
        let status = answer.status;
        let body = match answer.check(&self.name, &ANSWERS) {
            Ok(answer) => answer.body,
            Err(SendError::Retryable(problem)) => return Ok(Attempt::Retry(problem)),
            Err(SendError::Refused(problem)) => {
                return Ok(Attempt::Final(Outcome::Rejected(problem)))
            }
            Err(SendError::Fatal(e)) => return Err(e),
        };
        Ok(Attempt::Final(match status.as_u16() {
            200..=299 => Outcome::Done,
            404 => Outcome::NotFound,
            _ => Outcome::Rejected(format!("{status}: {}", error_text(&body))),
        }))
    }
}

/// The `error` of an API error body (`{"status":"error","error":"…"}`), or
/// the start of the body.
pub(crate) fn error_text(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => parsed.error,
        Err(_) => body_text(body),
    }
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
