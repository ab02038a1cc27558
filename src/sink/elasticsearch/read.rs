//! Reading an index back (`verify`): every document through a point in
//! time, page after page with `search_after` in `_shard_doc` order (a
//! consistent view that writes meanwhile do not shift); documents by id
//! through `_mget`, which reads in real time, refreshed or not, with each
//! document's routing when its table has one.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::client::Client;
use super::config::ElasticsearchConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::http::path_segment;
use crate::sink::read::{IndexReader, RoutingOf, StoredDoc};

/// Documents per page, and ids per `_mget`.
const PAGE: usize = 1000;
/// How long a point in time lives between two pages.
const KEEP_ALIVE: &str = "5m";

pub struct Reader {
    client: Client,
    index: String,
    /// The point in time being read, once opened.
    pit: Option<String>,
    /// The sort values of the last document read.
    after: Option<Box<RawValue>>,
    done: bool,
    /// The routing of the documents, when their table has one.
    routing: Option<RoutingOf>,
}

#[derive(Deserialize)]
struct Hit {
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "_source")]
    source: Option<Box<RawValue>>,
    #[serde(default)]
    sort: Option<Box<RawValue>>,
    #[serde(default = "found")]
    found: bool,
}

fn found() -> bool {
    true
}

#[derive(Deserialize)]
struct Hits {
    hits: Vec<Hit>,
}

#[derive(Deserialize)]
struct SearchAnswer {
    pit_id: Option<String>,
    hits: Hits,
}

#[derive(Deserialize)]
struct MgetAnswer {
    docs: Vec<Hit>,
}

impl Reader {
    pub fn new(config: &ElasticsearchConfig, index: &str) -> Result<Reader> {
        Ok(Reader {
            client: Client::new(config)?,
            index: index.to_owned(),
            pit: None,
            after: None,
            done: false,
            routing: None,
        })
    }

    fn unexpected(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorKind::Sink,
            format!(
                "sink {}: unexpected answer to {what} of index {}: {e}",
                self.client.name, self.index
            ),
        )
    }

    async fn close(&mut self) {
        if let Some(pit) = self.pit.take() {
            // A point in time left open expires by itself.
            let _ = self
                .client
                .read(reqwest::Method::DELETE, "_pit", &json!({ "id": pit }))
                .await;
        }
    }
}

/// A page of a search in a point in time: its point in time's id (it may
/// change), its documents, and the sort values of its last hit (`None`
/// without hits).
pub(crate) struct SearchPage {
    pub pit: Option<String>,
    pub docs: Vec<StoredDoc>,
    pub last_sort: Option<Box<RawValue>>,
}

/// Reads the answer to a search in a point in time.
pub(crate) fn parse_search(body: &[u8]) -> std::result::Result<SearchPage, String> {
    let answer: SearchAnswer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let last_sort = match answer.hits.hits.last() {
        None => None,
        Some(last) => Some(last.sort.clone().ok_or("hits without sort values")?),
    };
    Ok(SearchPage {
        pit: answer.pit_id,
        docs: answer.hits.hits.into_iter().filter_map(stored).collect(),
        last_sort,
    })
}

/// The body of an `_mget` of documents by id, each with its routing where
/// it has one (a document is found by id only on the shard it routes to).
pub(crate) fn mget_body<R: AsRef<str>>(
    docs: impl Iterator<Item = (impl AsRef<str>, Option<R>)>,
) -> Value {
    let docs: Vec<Value> = docs
        .map(|(id, routing)| match routing {
            Some(routing) => json!({ "_id": id.as_ref(), "routing": routing.as_ref() }),
            None => json!({ "_id": id.as_ref() }),
        })
        .collect();
    json!({ "docs": docs })
}

/// Reads the answer to an `_mget`: the documents found.
pub(crate) fn parse_mget(body: &[u8]) -> std::result::Result<Vec<StoredDoc>, String> {
    let answer: MgetAnswer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(answer.docs.into_iter().filter_map(stored).collect())
}

fn stored(hit: Hit) -> Option<StoredDoc> {
    let source = hit.source.filter(|_| hit.found)?;
    Some(StoredDoc {
        id: hit.id,
        source: source.get().as_bytes().to_vec(),
    })
}

#[async_trait::async_trait]
impl IndexReader for Reader {
    async fn page(&mut self) -> Result<Option<Vec<StoredDoc>>> {
        if self.done {
            return Ok(None);
        }
        let pit = match &self.pit {
            Some(pit) => pit.clone(),
            None => {
                let path = format!("{}/_pit?keep_alive={KEEP_ALIVE}", path_segment(&self.index));
                let Some(body) = self
                    .client
                    .read(reqwest::Method::POST, &path, &json!({}))
                    .await?
                else {
                    // No such index: it holds nothing.
                    self.done = true;
                    return Ok(None);
                };
                let opened: Value = serde_json::from_slice(&body)
                    .map_err(|e| self.unexpected("a point in time", e))?;
                let id = opened["id"]
                    .as_str()
                    .ok_or_else(|| self.unexpected("a point in time", "no id"))?
                    .to_owned();
                self.pit = Some(id.clone());
                id
            }
        };
        let mut request = json!({
            "size": PAGE,
            "pit": { "id": pit, "keep_alive": KEEP_ALIVE },
            "sort": [{ "_shard_doc": "asc" }],
            "track_total_hits": false,
        });
        if let Some(after) = &self.after {
            request["search_after"] = serde_json::from_str(after.get()).expect("JSON it sent");
        }
        let body = self
            .client
            .read(reqwest::Method::POST, "_search", &request)
            .await?
            .ok_or_else(|| self.unexpected("a search", "404"))?;
        let page = parse_search(&body).map_err(|e| self.unexpected("a search", e))?;
        if let Some(id) = page.pit {
            self.pit = Some(id);
        }
        if page.last_sort.is_none() {
            self.done = true;
            self.close().await;
            return Ok(None);
        }
        self.after = page.last_sort;
        Ok(Some(page.docs))
    }

    async fn fetch(&mut self, ids: &[String]) -> Result<Vec<StoredDoc>> {
        let mut found = Vec::new();
        let path = format!("{}/_mget", path_segment(&self.index));
        for batch in ids.chunks(PAGE) {
            let request = match &self.routing {
                None => json!({ "ids": batch }),
                Some(routing_of) => mget_body(batch.iter().map(|id| (id.as_str(), routing_of(id)))),
            };
            let Some(body) = self
                .client
                .read(reqwest::Method::POST, &path, &request)
                .await?
            else {
                return Ok(found);
            };
            found.extend(parse_mget(&body).map_err(|e| self.unexpected("an _mget", e))?);
        }
        Ok(found)
    }

    fn route_by(&mut self, routing: RoutingOf) {
        self.routing = Some(routing);
    }
}
