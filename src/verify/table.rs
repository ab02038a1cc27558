//! The table's side of a comparison: its rows, read in one `COPY` (one
//! snapshot, streamed), each made into the document sluice writes for it
//! now, in the table's shape, with the id the router gives it.

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio_postgres::Client;

use crate::backfill::chunk::{self, TableShape};
use crate::backfill::BackfillError;
use crate::error::Result;
use crate::model::ident::{quote_ident, TableName};
use crate::pipeline::document::{DocShape, TransformConfig};
use crate::pipeline::router::{document_id, key_values, TableRoute};
use crate::postgres::pgoutput::Tuple;

/// How one table's rows become documents.
pub struct TableSide {
    pub shape: TableShape,
    doc: DocShape,
    /// The columns whose values make the document id.
    key_columns: Vec<usize>,
    separator: String,
}

impl TableSide {
    pub async fn describe(
        client: &Client,
        table: &TableName,
        transform: &TransformConfig,
        route: &TableRoute,
        separator: &str,
    ) -> std::result::Result<TableSide, BackfillError> {
        let shape = chunk::describe(client, table).await?;
        for (field, column) in transform.named_columns() {
            shape
                .rel
                .require_column(&field, &column)
                .map_err(|e| BackfillError::Invalid(e.to_string()))?;
        }
        let key_columns = match &route.key {
            Some(names) => shape.positions(names)?,
            None => shape.key_columns.clone(),
        };
        let mut doc = DocShape::new(&shape.rel, transform);
        if route.shared {
            doc = doc.tagged(&shape.rel.qualified);
        }
        Ok(TableSide {
            shape,
            doc,
            key_columns,
            separator: separator.to_owned(),
        })
    }

    /// The key columns' names, in the order the id joins their values.
    pub fn key_names(&self) -> Vec<String> {
        self.key_columns
            .iter()
            .map(|&i| self.shape.rel.columns[i].name.clone())
            .collect()
    }

    /// The routing value of a document by its id, when the table's
    /// documents are routed by `column` (one of the key columns).
    pub fn routing_of(&self, column: &str) -> Option<crate::sink::read::RoutingOf> {
        let position = self.key_names().iter().position(|name| name == column)?;
        let (columns, separator) = (self.key_columns.len(), self.separator.clone());
        Some(Box::new(move |id: &str| {
            key_values(id, columns, &separator).map(|mut values| values.swap_remove(position))
        }))
    }

    /// The key values of each of `ids` that can be a row's (one value per
    /// key column).
    pub fn keys_of(&self, ids: &[String]) -> Vec<Vec<String>> {
        ids.iter()
            .filter_map(|id| key_values(id, self.key_columns.len(), &self.separator))
            .collect()
    }

    /// A condition matching the rows with these key values.
    pub fn keys_condition(&self, keys: &[Vec<String>]) -> String {
        self.shape.rows_condition(&self.key_columns, keys)
    }

    /// Reads the rows matching `condition` (SQL sluice rendered; `None`:
    /// every row), handing each row's document id and document to `each`.
    /// Returns how many rows were read. A condition the table's values
    /// refuse (a key value that is not of the key's type) is `Invalid`.
    pub async fn scan(
        &self,
        client: &Client,
        condition: Option<&str>,
        mut each: impl FnMut(&str, &[u8]) -> Result<()>,
    ) -> std::result::Result<u64, BackfillError> {
        let columns: Vec<String> = self
            .shape
            .rel
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let filter = condition
            .map(|c| format!(" WHERE ({c})"))
            .unwrap_or_default();
        let copy = format!(
            "COPY (SELECT {} FROM {}{filter}) TO STDOUT",
            columns.join(", "),
            self.shape.rel.name.quoted()
        );
        let width = columns.len();
        let stream = client
            .copy_out(copy.as_str())
            .await
            .map_err(BackfillError::sql)?;
        let mut stream = std::pin::pin!(stream);
        let mut pending = BytesMut::new();
        let mut rows = 0;
        let mut doc = Vec::with_capacity(1024);
        let mut id = String::new();
        while let Some(part) = stream.next().await {
            pending.extend_from_slice(&part.map_err(BackfillError::sql)?);
            let Some(end) = memchr::memrchr(b'\n', &pending) else {
                continue;
            };
            let whole = pending.split_to(end + 1).freeze();
            for tuple in &chunk::parse_copy(&whole, width)? {
                rows += 1;
                if self.document(tuple, &mut id, &mut doc) {
                    each(&id, &doc).map_err(|e| BackfillError::Database(e.to_string()))?;
                }
            }
        }
        if !pending.is_empty() {
            return Err(BackfillError::Database(format!(
                "the rows of {} ended in the middle of a row",
                self.shape.rel.name
            )));
        }
        Ok(rows)
    }

    /// The id and document of `row`; false for a row without a whole key,
    /// which the pipeline gives no document either.
    fn document(&self, row: &Tuple, id: &mut String, doc: &mut Vec<u8>) -> bool {
        let Some(made) = document_id(row, &self.key_columns, &self.separator) else {
            return false;
        };
        *id = made;
        doc.clear();
        self.doc.encode(row, doc);
        self.doc.tag(doc);
        true
    }
}
