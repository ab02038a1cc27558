//! Reading a Typesense collection back (`verify`): `documents/export`,
//! streamed line by line, and by id through its `filter_by`.

use std::borrow::Cow;

use super::client::Client;
use super::config::TypesenseConfig;
use super::request::{filter_value, id_filter, import_line};
use crate::error::Result;
use crate::sink::read::{IndexReader, JsonLines, StoredDoc};

/// Ids per `filter_by` of a fetch.
const FETCH_BATCH: usize = 250;

pub struct Reader {
    client: Client,
    collection: String,
    lines: Option<JsonLines>,
}

impl Reader {
    pub fn new(config: &TypesenseConfig, collection: &str) -> Result<Reader> {
        Ok(Reader {
            client: Client::new(config)?,
            collection: collection.to_owned(),
            lines: None,
        })
    }

    async fn export(&self, filter: Option<&str>) -> Result<JsonLines> {
        let response = self.client.export(&self.collection, filter).await?;
        Ok(JsonLines::new(
            response,
            format!(
                "collection {} of sink {}",
                self.collection, self.client.name
            ),
        ))
    }
}

#[async_trait::async_trait]
impl IndexReader for Reader {
    async fn page(&mut self) -> Result<Option<Vec<StoredDoc>>> {
        if self.lines.is_none() {
            self.lines = Some(self.export(None).await?);
        }
        self.lines.as_mut().expect("just set").page().await
    }

    async fn fetch(&mut self, ids: &[String]) -> Result<Vec<StoredDoc>> {
        let mut found = Vec::new();
        let (plain, awkward): (Vec<&String>, Vec<&String>) =
            ids.iter().partition(|id| filter_value(id).is_some());
        for batch in plain.chunks(FETCH_BATCH) {
            let values: Vec<String> = batch.iter().filter_map(|id| filter_value(id)).collect();
            let filter = id_filter(values.iter().map(String::as_str));
            let mut lines = self.export(Some(&filter)).await?;
            while let Some(page) = lines.page().await? {
                found.extend(page);
            }
        }
        // No filter can name an id with a backtick: the whole export, once.
        if !awkward.is_empty() {
            let mut lines = self.export(None).await?;
            while let Some(page) = lines.page().await? {
                found.extend(page.into_iter().filter(|d| awkward.contains(&&d.id)));
            }
        }
        Ok(found)
    }

    fn as_stored<'a>(&self, doc: &'a [u8], id: &str) -> Cow<'a, [u8]> {
        Cow::Owned(import_line(doc, id))
    }
}
