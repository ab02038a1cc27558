//! Reading a namespace back (`verify`): queries ranked by id, each page
//! after the last id of the one before, and by ids (`In`).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::client::Client;
use super::config::TurbopufferConfig;
use super::request::Encoder;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::read::{IndexReader, StoredDoc};

/// Rows per query (the API returns at most 1,200).
const PAGE: usize = 1000;

pub struct Reader {
    client: Client,
    encoder: Encoder,
    namespace: String,
    /// The id of the last row read, as the API has it.
    after: Option<Value>,
    done: bool,
}

#[derive(Deserialize)]
struct Rows {
    rows: Vec<Map<String, Value>>,
}

impl Reader {
    pub fn new(config: &TurbopufferConfig, namespace: &str) -> Result<Reader> {
        Ok(Reader {
            client: Client::new(config)?,
            encoder: Encoder {
                id_type: config.id_type,
                id_attribute: config.id_attribute.clone(),
                distance_metric: config.distance_metric.clone(),
            },
            namespace: namespace.to_owned(),
            after: None,
            done: false,
        })
    }

    /// The rows `filters` picks, at most `PAGE`, by id; `None` without the
    /// namespace.
    async fn rows(&self, filters: Option<Value>) -> Result<Option<Vec<Map<String, Value>>>> {
        let mut body = json!({
            "rank_by": ["id", "asc"],
            "top_k": PAGE,
            "include_attributes": true,
        });
        if let Some(filters) = filters {
            body["filters"] = filters;
        }
        let Some(answer) = self.client.query(&self.namespace, &body).await? else {
            return Ok(None);
        };
        parse_rows(&answer).map(Some).map_err(|e| {
            Error::new(
                ErrorKind::Sink,
                format!(
                    "sink {}: unexpected answer to a query of namespace {}: {e}",
                    self.client.name, self.namespace
                ),
            )
        })
    }
}

/// Reads the rows of a query's answer.
pub(crate) fn parse_rows(body: &[u8]) -> std::result::Result<Vec<Map<String, Value>>, String> {
    let rows: Rows = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(rows.rows)
}

/// A row as a document: its id as text, and the row without what the
/// query adds (`$dist`, …).
pub(crate) fn stored(mut row: Map<String, Value>) -> Option<StoredDoc> {
    let id = match row.get("id")? {
        Value::String(id) => id.clone(),
        other => other.to_string(),
    };
    row.retain(|key, _| !key.starts_with('$'));
    Some(StoredDoc {
        id,
        source: serde_json::to_vec(&row).expect("JSON values serialize"),
    })
}

#[async_trait::async_trait]
impl IndexReader for Reader {
    async fn page(&mut self) -> Result<Option<Vec<StoredDoc>>> {
        if self.done {
            return Ok(None);
        }
        let filters = self.after.clone().map(|after| json!(["id", "Gt", after]));
        let rows = self.rows(filters).await?.unwrap_or_default();
        self.after = rows.last().and_then(|row| row.get("id").cloned());
        if rows.len() < PAGE {
            self.done = true;
        }
        let page: Vec<StoredDoc> = rows.into_iter().filter_map(stored).collect();
        Ok((!page.is_empty()).then_some(page))
    }

    async fn fetch(&mut self, ids: &[String]) -> Result<Vec<StoredDoc>> {
        let mut found = Vec::new();
        for batch in ids.chunks(PAGE) {
            let wanted: Vec<Value> = batch
                .iter()
                .filter_map(|id| serde_json::from_str(&self.encoder.id_json(id).ok()?).ok())
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let rows = self.rows(Some(json!(["id", "In", wanted]))).await?;
            found.extend(rows.unwrap_or_default().into_iter().filter_map(stored));
        }
        Ok(found)
    }

    fn as_stored<'a>(&self, doc: &'a [u8], id: &str) -> Cow<'a, [u8]> {
        match self.encoder.row(doc, id) {
            Some(row) => Cow::Owned(row),
            // Refused by the API: never written, so it differs from what is held.
            None => Cow::Borrowed(doc),
        }
    }
}
