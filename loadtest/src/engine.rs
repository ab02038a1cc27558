//! A real engine as the far end: the moment a search by id finds a
//! document, seen from outside as a user's application would see it.
//!
//! The harness asks the engine, as soon as its previous answer came back,
//! for the rows with writes committed and not yet found; a row is found when
//! the engine returns a document carrying that write (or a newer one). The
//! moment noted is the one the answer arrived, so a figure includes half a
//! round trip to the engine.
//!
//! For Meilisearch, the `backfill` scenario also loads the same documents
//! straight into an index of their own, as a bulk load would, to compare
//! with sluice's backfill.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};

use crate::toml_string;
use crate::tracker::{Arrival, Tracker};

/// Which engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Elasticsearch,
    Meilisearch,
    Typesense,
}

/// Rows asked for in one search.
const IDS_PER_SEARCH: usize = 1_000;
/// Rows looked for in one round of searches.
const IDS_PER_ROUND: usize = 10_000;
/// The pause when nothing is waiting.
const IDLE: Duration = Duration::from_millis(1);
/// Searches failing in a row before the run gives up.
const MAX_FAILURES: u32 = 50;
/// Documents in one task of the direct load.
pub const DIRECT_TASK_DOCS: usize = 20_000;

pub struct Engine {
    kind: Kind,
    url: String,
    /// The environment variable that holds the API key, for sluice too.
    key_env: Option<String>,
    key: Option<String>,
    http: reqwest::Client,
}

impl Engine {
    pub fn new(kind: Kind, url: &str, key_env: Option<String>) -> anyhow::Result<Engine> {
        let key = match &key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!("--engine-api-key-env names {var}, which is not set")
            })?),
            None => None,
        };
        Ok(Engine {
            kind,
            url: url.trim_end_matches('/').to_owned(),
            key_env,
            key,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    /// The `[[sinks]]` entry that writes into this engine.
    pub fn sink_config(&self) -> String {
        let kind = match self.kind {
            Kind::Elasticsearch => "elasticsearch",
            Kind::Meilisearch => "meilisearch",
            Kind::Typesense => "typesense",
        };
        let mut entry = format!(
            "name = \"engine\"\ntype = \"{kind}\"\nurl = {}",
            toml_string(&self.url)
        );
        if self.kind == Kind::Typesense {
            // Collections created as sluice writes them, every field typed
            // by its first value.
            entry.push_str("\nschema = { fields = [{ name = \".*\", type = \"auto\" }] }");
        }
        if let Some(var) = &self.key_env {
            entry.push_str(&format!("\napi_key_env = {}", toml_string(var)));
        }
        entry
    }

    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.url));
        match (&self.key, self.kind) {
            (Some(key), Kind::Elasticsearch) => {
                request.header("authorization", format!("ApiKey {key}"))
            }
            (Some(key), Kind::Meilisearch) => request.bearer_auth(key),
            (Some(key), Kind::Typesense) => request.header("x-typesense-api-key", key),
            (None, _) => request,
        }
    }

    /// The documents of `ids` that `index` finds now: `(id, seq)` of each.
    async fn find(&self, index: &str, ids: &[i64]) -> anyhow::Result<Vec<(i64, i64)>> {
        if self.kind == Kind::Typesense {
            return self.export(index, ids).await;
        }
        let (path, body) = match self.kind {
            Kind::Elasticsearch => (
                format!("/{index}/_search"),
                json!({
                    "query": { "ids": { "values": ids.iter().map(i64::to_string).collect::<Vec<_>>() } },
                    "size": ids.len(),
                    "_source": ["seq"],
                }),
            ),
            Kind::Meilisearch => (
                format!("/indexes/{index}/documents/fetch"),
                json!({
                    "ids": ids.iter().map(i64::to_string).collect::<Vec<_>>(),
                    "fields": ["id", "seq"],
                    "limit": ids.len(),
                }),
            ),
            Kind::Typesense => unreachable!("Typesense documents are exported"),
        };
        let answer = self
            .request(reqwest::Method::POST, &path)
            .json(&body)
            .send()
            .await?;
        // Before sluice's first write the index does not exist.
        if answer.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let status = answer.status();
        let answer: Value = answer.json().await?;
        anyhow::ensure!(status.is_success(), "a search answered {status}: {answer}");
        let found = match self.kind {
            Kind::Elasticsearch => answer["hits"]["hits"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|hit| {
                    Some((
                        hit["_id"].as_str()?.parse().ok()?,
                        hit["_source"]["seq"].as_i64()?,
                    ))
                })
                .collect(),
            Kind::Typesense => unreachable!("Typesense documents are exported"),
            Kind::Meilisearch => answer["results"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|doc| {
                    // The primary key as the document carries it: a number,
                    // or the document id sluice gave it, a string.
                    let id = match &doc["id"] {
                        Value::String(id) => id.parse().ok()?,
                        id => id.as_i64()?,
                    };
                    Some((id, doc["seq"].as_i64()?))
                })
                .collect(),
        };
        Ok(found)
    }

    /// The documents of `ids` a Typesense collection holds, by its export
    /// of those ids (JSONL).
    async fn export(&self, collection: &str, ids: &[i64]) -> anyhow::Result<Vec<(i64, i64)>> {
        let filter = format!(
            "id:[{}]",
            ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
        );
        let answer = self
            .request(
                reqwest::Method::GET,
                &format!("/collections/{collection}/documents/export"),
            )
            .query(&[("filter_by", filter.as_str()), ("include_fields", "id,seq")])
            .send()
            .await?;
        if answer.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let status = answer.status();
        let text = answer.text().await?;
        anyhow::ensure!(status.is_success(), "an export answered {status}: {text}");
        Ok(text
            .lines()
            .filter_map(|line| {
                let doc: Value = serde_json::from_str(line).ok()?;
                Some((doc["id"].as_str()?.parse().ok()?, doc["seq"].as_i64()?))
            })
            .collect())
    }

    /// Whether row `id` is found in `index` with write `seq` or a newer one.
    pub async fn has(&self, index: &str, id: i64, seq: i64) -> anyhow::Result<bool> {
        Ok(self
            .find(index, &[id])
            .await?
            .iter()
            .any(|&(_, found)| found >= seq))
    }

    /// Looks for every waiting write in `indexes` (the index of table `i`
    /// at `i`, a row's table as `table_of` says) until `stop`.
    pub async fn watch(
        self: Arc<Self>,
        indexes: Vec<String>,
        table_of: impl Fn(i64) -> usize,
        tracker: Arc<Tracker>,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        let mut failures = 0;
        let mut arrivals = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let waiting = tracker.waiting(IDS_PER_ROUND);
            if waiting.is_empty() {
                tokio::time::sleep(IDLE).await;
                continue;
            }
            let oldest: HashMap<i64, i64> = waiting.iter().copied().collect();
            let mut by_index: Vec<Vec<i64>> = vec![Vec::new(); indexes.len()];
            for &(id, _) in &waiting {
                by_index[table_of(id)].push(id);
            }
            for (index, ids) in indexes.iter().zip(&by_index) {
                for ids in ids.chunks(IDS_PER_SEARCH) {
                    match self.find(index, ids).await {
                        Ok(found) => {
                            failures = 0;
                            let at = Instant::now();
                            arrivals.extend(
                                found
                                    .into_iter()
                                    .filter(|(id, seq)| oldest.get(id).is_some_and(|o| seq >= o))
                                    .map(|(id, seq)| Arrival::Write { id, seq }),
                            );
                            tracker.arrived(&arrivals, at);
                            arrivals.clear();
                        }
                        Err(e) => {
                            failures += 1;
                            anyhow::ensure!(
                                failures < MAX_FAILURES,
                                "searches of {index} failed {failures} times in a row: {e:#}"
                            );
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes `index` from the engine; a failure is only reported.
    pub async fn drop_index(&self, index: &str) {
        let path = match self.kind {
            Kind::Elasticsearch => format!("/{index}"),
            Kind::Meilisearch => format!("/indexes/{index}"),
            Kind::Typesense => format!("/collections/{index}"),
        };
        let answer = self.request(reqwest::Method::DELETE, &path).send().await;
        match answer {
            Ok(a) if a.status().is_success() || a.status() == StatusCode::NOT_FOUND => {}
            Ok(a) => eprintln!("could not remove index {index}: {}", a.status()),
            Err(e) => eprintln!("could not remove index {index}: {e}"),
        }
    }

    /// Loads `docs` (JSON objects with an `id`) into `index` as a bulk load
    /// would: every task of [`DIRECT_TASK_DOCS`] documents sent at once, then
    /// waited for. The seconds from the first request until the last task
    /// succeeded. Meilisearch only.
    pub async fn direct_load(&self, index: &str, docs: &[String]) -> anyhow::Result<f64> {
        anyhow::ensure!(
            self.kind == Kind::Meilisearch,
            "a direct load is made only into Meilisearch"
        );
        let started = Instant::now();
        let mut tasks = Vec::new();
        for part in docs.chunks(DIRECT_TASK_DOCS) {
            let body = format!("[{}]", part.join(","));
            let answer = self
                .request(
                    reqwest::Method::POST,
                    &format!("/indexes/{index}/documents?primaryKey=id"),
                )
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            let status = answer.status();
            let task: Value = answer.json().await?;
            anyhow::ensure!(
                status.is_success(),
                "the direct load answered {status}: {task}"
            );
            let uid = task["taskUid"].as_u64().ok_or_else(|| {
                anyhow::anyhow!("the direct load's answer has no taskUid: {task}")
            })?;
            tasks.push(uid);
        }
        for uid in tasks {
            loop {
                let task: Value = self
                    .request(reqwest::Method::GET, &format!("/tasks/{uid}"))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                match task["status"].as_str() {
                    Some("succeeded") => break,
                    Some("failed" | "canceled") => {
                        anyhow::bail!("a task of the direct load failed: {}", task["error"])
                    }
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }
}
