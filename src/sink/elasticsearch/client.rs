//! Talking to the cluster: requests with authentication, classification of
//! answers, and delivery of one bulk request with retries of only what failed.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::config::ElasticsearchConfig;
use super::request::{self, BulkAction};
use super::response::{self, Outcome};
use crate::error::Result;
use crate::lsn::Lsn;
pub use crate::sink::http::SendError;
use crate::sink::http::{body_text, Answers, HttpClient};

/// A buffered bulk item.
#[derive(Debug)]
pub struct Pending {
    /// Its lines in the body.
    pub range: Range<usize>,
    pub action: BulkAction,
    pub index: Arc<str>,
    pub table: Arc<str>,
    pub id: String,
    pub routing: Option<Box<str>>,
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

/// How the cluster's answers are read.
const ANSWERS: Answers = Answers {
    retry_timeout: false,
    error_text: body_text,
    credentials_hint:
        "check the sink's credentials (api_key_env, username/password_env, bearer_token_env)",
    too_large_refuses: true,
};

/// The HTTP side of a sink; shared by its in-flight requests.
pub struct Client {
    pub name: String,
    pub config: ElasticsearchConfig,
    http: HttpClient,
}

impl Client {
    /// Whether the cluster answers and takes the credentials, without
    /// writing (`GET /`; a 403 there only means the key may not monitor).
    pub async fn probe(&self) -> std::result::Result<(), String> {
        self.http.probe("", &[401], ANSWERS.credentials_hint).await
    }

    pub fn new(config: &ElasticsearchConfig) -> Result<Client> {
        let authorization = config
            .authorization()
            .map(|value| (reqwest::header::AUTHORIZATION, value));
        Ok(Client {
            name: config.name.clone(),
            http: HttpClient::new(&config.http(), authorization)?,
            config: config.clone(),
        })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.http.url(path))
    }

    /// Sends a request and reads the answer, classifying failures.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Bytes), SendError> {
        let answer = self.http.send(request, &ANSWERS).await?;
        Ok((answer.status, answer.body))
    }

    /// A request that reads (`verify`), sent again after an answer a retry
    /// may fix, as writes are; the answer's body, or `None` for a 404.
    pub async fn read(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Option<Bytes>> {
        let body = serde_json::to_vec(body).expect("JSON values serialize");
        let build = || {
            self.request(method.clone(), path)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        };
        self.http.read(path, &ANSWERS, build).await
    }

    /// Sends a request until `ok` holds for its answer, with backoff.
    pub async fn with_retries(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
        ok: impl Fn(reqwest::StatusCode, &[u8]) -> bool,
    ) -> Result<()> {
        self.http.with_retries(what, &ANSWERS, build, ok).await
    }

    /// Delivers a bulk request: every item ends written, superseded, or
    /// returned to be parked (permanent failures and exhausted retries). A
    /// request refused as a whole (413, a malformed body) is split in halves
    /// until the items the engine refuses are found; those alone are parked
    /// with its answer.
    pub async fn deliver(self: Arc<Self>, job: Job) -> Result<Vec<Parked>> {
        let mut parked = Vec::new();
        let park = |mut item: Pending, problem: &str, body: &Bytes, parked: &mut Vec<Parked>| {
            if !problem.is_empty() {
                item.attempts += 1;
                item.last_error = problem.to_owned();
            }
            let lines = String::from_utf8_lossy(&body[item.range.clone()]).into_owned();
            parked.push(Parked { item, lines });
        };
        // Rounds still to send, the next on top: the halves of a refused
        // request and the retries of a round go before what came after them.
        let mut rounds = vec![(job.body, job.items)];
        while let Some((body, round)) = rounds.pop() {
            let actions: Vec<BulkAction> = round.iter().map(|p| p.action).collect();
            let outcomes = match self.send_bulk(body.clone()).await {
                Ok(answer) => response::parse(&answer, &actions)
                    .unwrap_or_else(|e| vec![Outcome::Retry(e); round.len()]),
                Err(SendError::Retryable(problem)) => vec![Outcome::Retry(problem); round.len()],
                Err(SendError::Refused(problem)) => {
                    if round.len() == 1 {
                        for item in round {
                            park(item, &problem, &body, &mut parked);
                        }
                    } else {
                        tracing::warn!(
                            sink = %self.name,
                            items = round.len(),
                            "a bulk request was refused, sending it in halves to find the writes it refuses: {problem}"
                        );
                        let mut first = round;
                        let second = first.split_off(first.len() / 2);
                        rounds.push(rebuilt(&body, second));
                        rounds.push(rebuilt(&body, first));
                    }
                    continue;
                }
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
                            park(item, "", &body, &mut parked);
                        } else {
                            first_problem.get_or_insert_with(|| item.last_error.clone());
                            held.insert(key);
                            again.push(item);
                        }
                    }
                    Outcome::Failed(problem) => park(item, &problem, &body, &mut parked),
                }
            }
            if again.is_empty() {
                continue;
            }
            let attempt = again.iter().map(|p| p.attempts).max().unwrap_or(1).max(1);
            let problem = format!(
                "{} write(s) to retry: {}",
                again.len(),
                first_problem.unwrap_or_default()
            );
            self.http.wait(attempt, &problem).await;
            rounds.push(rebuilt(&body, again));
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
        if status.is_success() {
            Ok(answer)
        } else {
            Err(SendError::Refused(format!(
                "{status}: {}",
                body_text(&answer)
            )))
        }
    }
}

/// The body of `items` alone, their ranges moved to match.
fn rebuilt(body: &Bytes, mut items: Vec<Pending>) -> (Bytes, Vec<Pending>) {
    let (next, ranges) = request::rebuild(body, items.iter().map(|p| p.range.clone()));
    for (item, range) in items.iter_mut().zip(ranges) {
        item.range = range;
    }
    (Bytes::from(next), items)
}
