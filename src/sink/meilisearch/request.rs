//! Request bodies: documents with their primary key set to the document id,
//! deletes as an array of ids, and the rules Meilisearch has for ids.

use std::sync::Arc;

use crate::lsn::Lsn;
use crate::model::write::{WriteAction, WriteOp};
use crate::postgres::types::write_json_string;

/// Longest document id Meilisearch accepts, in bytes.
pub const MAX_ID_BYTES: usize = 511;

/// What a request does to its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `POST /indexes/{uid}/documents`: add or replace whole documents.
    Replace,
    /// `PUT /indexes/{uid}/documents`: add or update, absent fields keep their value.
    Update,
    /// `POST /indexes/{uid}/documents/delete-batch`.
    Delete,
    /// `DELETE /indexes/{uid}/documents`: a truncate.
    Clear,
    /// `POST /indexes/{uid}/documents/delete` with a filter on
    /// `sluice_table`: a truncate of one of the tables sharing the index (its
    /// one item holds the body).
    ClearTable,
}

impl Kind {
    /// The action name in the failed-message store.
    pub fn action(self) -> &'static str {
        match self {
            Kind::Replace => "upsert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Clear | Kind::ClearTable => "truncate",
        }
    }
}

/// One write of a batch.
#[derive(Debug, Clone)]
pub struct Item {
    pub table: Arc<str>,
    pub id: String,
    pub lsn: Lsn,
    /// The document as sent (with its primary key), for replaces and updates.
    pub doc: Option<Vec<u8>>,
}

/// The writes of one request, to one index.
#[derive(Debug, Clone)]
pub struct Batch {
    pub index: Arc<str>,
    pub kind: Kind,
    pub items: Vec<Item>,
    /// Bytes of the documents or ids.
    pub bytes: usize,
    /// Times it was sent and failed with a retryable error.
    pub attempts: u32,
}

impl Batch {
    pub fn new(index: Arc<str>, kind: Kind) -> Batch {
        Batch {
            index,
            kind,
            items: Vec::new(),
            bytes: 0,
            attempts: 0,
        }
    }

    pub fn push(&mut self, item: Item) {
        self.bytes += item.doc.as_ref().map_or(item.id.len() + 3, |d| d.len() + 1);
        self.items.push(item);
    }

    /// The request body: a JSON array of documents or ids (none for `Clear`,
    /// the filter for `ClearTable`).
    pub fn body(&self) -> Vec<u8> {
        if self.kind == Kind::ClearTable {
            return self
                .items
                .first()
                .and_then(|item| item.doc.clone())
                .unwrap_or_default();
        }
        let mut body = Vec::with_capacity(self.bytes + 2);
        body.push(b'[');
        for (n, item) in self.items.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            match &item.doc {
                Some(doc) => body.extend_from_slice(doc),
                None => write_json_string(item.id.as_bytes(), &mut body),
            }
        }
        body.push(b']');
        body
    }

    /// Splits in two halves, in order (to find the bad documents of a
    /// failed task).
    pub fn split(mut self) -> (Batch, Batch) {
        let tail = self.items.split_off(self.items.len() / 2);
        let mut second = Batch::new(self.index.clone(), self.kind);
        second.attempts = self.attempts;
        for item in tail {
            second.push(item);
        }
        let mut first = Batch::new(self.index, self.kind);
        first.attempts = self.attempts;
        for item in self.items {
            first.push(item);
        }
        (first, second)
    }
}

/// Why a write cannot be sent at all.
pub fn check_id(id: &str) -> Result<(), String> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        return Ok(());
    }
    let mut problem = format!(
        "document id `{id}` cannot be a Meilisearch id: ids are 1 to {MAX_ID_BYTES} bytes of a-z A-Z 0-9 - _"
    );
    if id.contains('|') {
        problem.push_str(
            "; it joins the columns of a composite key with `|`: set pipeline.key_separator = \"-\" (or \"_\")",
        );
    } else {
        problem.push_str(
            "; key the table by a column whose values are such ids, or transform the key",
        );
    }
    Err(problem)
}

/// The truncate of `table` alone from an index tables share: its batch.
pub fn clear_table(index: Arc<str>, table: Arc<str>, lsn: Lsn) -> Batch {
    let filter = format!(
        "{} = {}",
        crate::model::write::TABLE_FIELD,
        serde_json::Value::String(table.to_string())
    );
    let body = serde_json::to_vec(&serde_json::json!({ "filter": filter }))
        .expect("JSON values serialize");
    let mut batch = Batch::new(index, Kind::ClearTable);
    batch.push(Item {
        table,
        id: String::new(),
        lsn,
        doc: Some(body),
    });
    batch
}

/// The batch kind of a write and its document with the primary key field set
/// to the id (a string), or why the document cannot be sent.
pub fn encode(op: &WriteOp, primary_key: &str) -> Result<(Kind, Option<Vec<u8>>), String> {
    let (kind, doc) = match &op.action {
        WriteAction::Upsert {
            doc,
            partial: false,
            ..
        } => (Kind::Replace, doc),
        WriteAction::Upsert {
            doc, partial: true, ..
        } => (Kind::Update, doc),
        WriteAction::Delete => return Ok((Kind::Delete, None)),
        WriteAction::Truncate { .. } => return Ok((Kind::Clear, None)),
    };
    Ok((kind, Some(with_primary_key(doc, primary_key, &op.id)?)))
}

/// `doc` with its primary key field `primary_key` set to `id` (a string).
pub fn with_primary_key(doc: &[u8], primary_key: &str, id: &str) -> Result<Vec<u8>, String> {
    let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(doc)
        .map_err(|e| format!("the document is not a JSON object: {e}"))?;
    object.insert(
        primary_key.to_owned(),
        serde_json::Value::String(id.to_owned()),
    );
    Ok(serde_json::to_vec(&object).expect("JSON values serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_meilisearch_rules() {
        assert!(check_id("abc-DEF_09").is_ok());
        assert!(check_id(&"a".repeat(511)).is_ok());
        assert!(check_id(&"a".repeat(512)).is_err());
        assert!(check_id("").is_err());
        assert!(check_id("é").is_err());
        let composite = check_id("1|2").unwrap_err();
        assert!(composite.contains("key_separator = \"-\""), "{composite}");
    }

    #[test]
    fn documents_get_the_id_as_primary_key() {
        let op = WriteOp {
            index: Arc::from("items"),
            table: Arc::from("public.items"),
            id: "7".into(),
            lsn: Lsn(1),
            action: WriteAction::Upsert {
                doc: br#"{"id":7,"name":"x"}"#.to_vec(),
                partial: true,
                fresh: false,
            },
            routing: None,
        };
        let (kind, doc) = encode(&op, "id").unwrap();
        assert_eq!(kind, Kind::Update);
        let doc: serde_json::Value = serde_json::from_slice(&doc.unwrap()).unwrap();
        assert_eq!(doc, serde_json::json!({"id": "7", "name": "x"}));
        let mut batch = Batch::new(Arc::from("items"), Kind::Delete);
        for id in ["1", "a\"b"] {
            batch.push(Item {
                table: Arc::from("t"),
                id: id.into(),
                lsn: Lsn(1),
                doc: None,
            });
        }
        assert_eq!(batch.body(), br#"["1","a\"b"]"#);
    }
}
