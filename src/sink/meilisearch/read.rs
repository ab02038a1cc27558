//! Reading an index back (`verify`): `documents/fetch`, page by page by
//! offset, and by ids. Offsets can shift while documents are written: a
//! document then comes twice or not at all, which `verify` looks at again
//! by id, as any difference.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::client::Client;
use super::config::MeilisearchConfig;
use super::request::with_primary_key;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::read::{IndexReader, StoredDoc};

/// Documents per page, and ids per fetch.
const PAGE: usize = 1000;

pub struct Reader {
    client: Client,
    index: String,
    offset: usize,
    done: bool,
}

#[derive(Deserialize)]
struct Page {
    results: Vec<Map<String, Value>>,
}

impl Reader {
    pub fn new(config: &MeilisearchConfig, index: &str) -> Result<Reader> {
        Ok(Reader {
            client: Client::new(config)?,
            index: index.to_owned(),
            offset: 0,
            done: false,
        })
    }

    /// The documents `body` fetches; `None` without the index.
    async fn documents(&self, body: Value) -> Result<Option<Vec<StoredDoc>>> {
        let Some(answer) = self.client.fetch_documents(&self.index, &body).await? else {
            return Ok(None);
        };
        let unexpected = |e: &dyn std::fmt::Display| {
            Error::new(
                ErrorKind::Sink,
                format!(
                    "sink {}: unexpected answer to a documents fetch of index {}: {e}",
                    self.client.name, self.index
                ),
            )
        };
        let page: Page = serde_json::from_slice(&answer).map_err(|e| unexpected(&e))?;
        let key = &self.client.config.primary_key;
        page.results
            .into_iter()
            .map(|doc| {
                let id = match doc.get(key) {
                    Some(Value::String(id)) => id.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => {
                        return Err(unexpected(&format!(
                            "a document without its primary key {key}"
                        )))
                    }
                };
                let source = serde_json::to_vec(&doc).expect("JSON values serialize");
                Ok(StoredDoc { id, source })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// Reads a page of `documents/fetch`, each document's id from its
/// `primary_key` field.
pub(crate) fn parse_page(
    body: &[u8],
    primary_key: &str,
) -> std::result::Result<Vec<StoredDoc>, String> {
    let page: Page = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    page.results
        .into_iter()
        .map(|doc| {
            let id = match doc.get(primary_key) {
                Some(Value::String(id)) => id.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(format!("a document without its primary key {primary_key}")),
            };
            let source = serde_json::to_vec(&doc).expect("JSON values serialize");
            Ok(StoredDoc { id, source })
        })
        .collect()
}

#[async_trait::async_trait]
impl IndexReader for Reader {
    async fn page(&mut self) -> Result<Option<Vec<StoredDoc>>> {
        if self.done {
            return Ok(None);
        }
        let body = json!({ "offset": self.offset, "limit": PAGE });
        let page = self.documents(body).await?.unwrap_or_default();
        self.offset += page.len();
        if page.is_empty() {
            self.done = true;
            return Ok(None);
        }
        Ok(Some(page))
    }

    async fn fetch(&mut self, ids: &[String]) -> Result<Vec<StoredDoc>> {
        let mut found = Vec::new();
        for batch in ids.chunks(PAGE) {
            let body = json!({ "ids": batch, "limit": batch.len() });
            found.extend(self.documents(body).await?.unwrap_or_default());
        }
        Ok(found)
    }

    fn as_stored<'a>(&self, doc: &'a [u8], id: &str) -> Cow<'a, [u8]> {
        match with_primary_key(doc, &self.client.config.primary_key, id) {
            Ok(stored) => Cow::Owned(stored),
            // Not an object: never written, so it differs from what is held.
            Err(_) => Cow::Borrowed(doc),
        }
    }
}
