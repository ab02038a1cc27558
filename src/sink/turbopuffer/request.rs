//! Write requests: rows from writes, one state per document, and the JSON body
//! of `POST /v2/namespaces/:namespace`.
//!
//! A write request is applied atomically, its parts (`upsert_rows`,
//! `patch_rows`, `deletes`) each as a whole, in the API's order, not in the
//! order the writes arrived. So a batch never holds two writes to one
//! document: a later write is folded into the one buffered, into the state
//! the two leave behind together (an upsert or a delete replaces anything; a
//! patch merges into a buffered upsert or patch and is void after a buffered
//! delete, as the API ignores patches of missing rows). Every document then
//! appears once per request, and the order of the parts cannot reorder it.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::config::IdType;
use crate::lsn::Lsn;
use crate::model::write::{WriteAction, WriteOp};

/// The buffered state of one document.
#[derive(Debug, Clone, PartialEq)]
pub enum RowWrite {
    /// Replace the whole row (`upsert_rows`).
    Upsert(Map<String, Value>),
    /// Set these attributes of an existing row (`patch_rows`).
    Patch(Map<String, Value>),
    /// Remove the row (`deletes`).
    Delete,
}

impl RowWrite {
    pub fn name(&self) -> &'static str {
        match self {
            RowWrite::Upsert(_) => "upsert",
            RowWrite::Patch(_) => "update",
            RowWrite::Delete => "delete",
        }
    }

    /// The state after `self` then `next`.
    fn then(self, next: RowWrite) -> RowWrite {
        match (self, next) {
            (RowWrite::Upsert(mut row), RowWrite::Patch(patch)) => {
                row.extend(patch);
                RowWrite::Upsert(row)
            }
            (RowWrite::Patch(mut row), RowWrite::Patch(patch)) => {
                row.extend(patch);
                RowWrite::Patch(row)
            }
            (RowWrite::Delete, RowWrite::Patch(_)) => RowWrite::Delete,
            (_, next) => next,
        }
    }
}

/// One document of a batch.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The document id as the router made it.
    pub id: String,
    /// The id as JSON, typed per `id_type`.
    pub id_json: String,
    /// `schema.table` of the last write folded in.
    pub table: Arc<str>,
    /// Commit position of the last write folded in.
    pub lsn: Lsn,
    /// Writes folded into this entry.
    pub writes: u32,
    pub write: RowWrite,
}

/// The buffered writes of one namespace, one entry per document.
#[derive(Debug)]
pub struct Batch {
    pub namespace: Arc<str>,
    pub entries: Vec<Entry>,
    by_id: HashMap<String, usize>,
    /// Approximate size of the rows, in bytes of JSON.
    pub bytes: u64,
}

impl Batch {
    pub fn new(namespace: Arc<str>) -> Batch {
        Batch {
            namespace,
            entries: Vec::new(),
            by_id: HashMap::new(),
            bytes: 0,
        }
    }

    /// Adds a write, folding it into the document's buffered state.
    pub fn push(&mut self, op: &WriteOp, id_json: String, write: RowWrite, size: u64) {
        self.bytes += size + id_json.len() as u64 + 16;
        if let Some(&at) = self.by_id.get(&op.id) {
            let entry = &mut self.entries[at];
            let before = std::mem::replace(&mut entry.write, RowWrite::Delete);
            entry.write = before.then(write);
            entry.table = op.table.clone();
            entry.lsn = op.lsn;
            entry.writes += 1;
            return;
        }
        self.by_id.insert(op.id.clone(), self.entries.len());
        self.entries.push(Entry {
            id: op.id.clone(),
            id_json,
            table: op.table.clone(),
            lsn: op.lsn,
            writes: 1,
            write,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes the entries out, leaving the batch empty.
    pub fn take(&mut self) -> Vec<Entry> {
        self.by_id.clear();
        self.bytes = 0;
        std::mem::take(&mut self.entries)
    }
}

/// How documents become rows.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub id_type: IdType,
    /// Where a document's own `id` field goes; empty drops it.
    pub id_attribute: String,
    pub distance_metric: Option<String>,
}

impl Encoder {
    /// The id of `op` as JSON, or why the API would refuse it.
    pub fn id_json(&self, id: &str) -> Result<String, String> {
        match self.id_type {
            IdType::String if id.len() > 64 => Err(format!(
                "the id `{id}` is {} bytes; the API takes string ids of at most 64 bytes",
                id.len()
            )),
            IdType::String => Ok(serde_json::to_string(id).expect("strings serialize")),
            IdType::U64 => id.parse::<u64>().map(|n| n.to_string()).map_err(|_| {
                format!("the id `{id}` is not an unsigned 64-bit integer (id_type = \"u64\")")
            }),
            IdType::Uuid if is_uuid(id) => Ok(format!("\"{}\"", id.to_ascii_lowercase())),
            IdType::Uuid => Err(format!("the id `{id}` is not a UUID (id_type = \"uuid\")")),
        }
    }

    /// What `op` does to its row, and its size; `None` for truncates.
    pub fn row_write(&self, op: &WriteOp) -> Option<Result<(RowWrite, u64), String>> {
        let (doc, partial) = match &op.action {
            WriteAction::Upsert { doc, partial, .. } => (doc, *partial),
            WriteAction::Delete => return Some(Ok((RowWrite::Delete, 0))),
            WriteAction::Truncate { .. } => return None,
        };
        let row = match self.attributes(doc) {
            Ok(row) => row,
            Err(e) => return Some(Err(e)),
        };
        let size = doc.len() as u64;
        Some(Ok((
            if partial {
                RowWrite::Patch(row)
            } else {
                RowWrite::Upsert(row)
            },
            size,
        )))
    }

    /// A document's attributes: its fields, its own `id` moved to
    /// `id_attribute`.
    fn attributes(&self, doc: &[u8]) -> Result<Map<String, Value>, String> {
        let mut row: Map<String, Value> = serde_json::from_slice(doc)
            .map_err(|e| format!("the document is not a JSON object: {e}"))?;
        if let Some(own_id) = row.remove("id") {
            if !self.id_attribute.is_empty() {
                row.insert(self.id_attribute.clone(), own_id);
            }
        }
        Ok(row)
    }

    /// The row `doc` becomes with `id`, as a query returns it: `id`, then
    /// the attributes; `None` when the API would refuse it.
    pub fn row(&self, doc: &[u8], id: &str) -> Option<Vec<u8>> {
        let id: Value = serde_json::from_str(&self.id_json(id).ok()?).ok()?;
        let mut row = Map::new();
        row.insert("id".to_owned(), id);
        row.extend(self.attributes(doc).ok()?);
        Some(serde_json::to_vec(&row).expect("JSON values serialize"))
    }

    /// The body of a write request for `entries`.
    pub fn body(&self, entries: &[Entry]) -> Vec<u8> {
        let mut body = Vec::with_capacity(256);
        body.push(b'{');
        let mut first_part = true;
        let mut part = |body: &mut Vec<u8>, name: &str| {
            if !first_part {
                body.push(b',');
            }
            first_part = false;
            body.extend_from_slice(format!("\"{name}\":[").as_bytes());
        };
        let mut upserts = entries
            .iter()
            .filter(|e| matches!(e.write, RowWrite::Upsert(_)))
            .peekable();
        if upserts.peek().is_some() {
            part(&mut body, "upsert_rows");
            write_rows(&mut body, upserts);
        }
        let mut patches = entries
            .iter()
            .filter(|e| matches!(e.write, RowWrite::Patch(_)))
            .peekable();
        if patches.peek().is_some() {
            part(&mut body, "patch_rows");
            write_rows(&mut body, patches);
        }
        let mut deletes = entries
            .iter()
            .filter(|e| e.write == RowWrite::Delete)
            .peekable();
        if deletes.peek().is_some() {
            part(&mut body, "deletes");
            for (i, entry) in deletes.enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(entry.id_json.as_bytes());
            }
            body.push(b']');
        }
        let writes_rows = entries.iter().any(|e| e.write != RowWrite::Delete);
        if writes_rows {
            if let Some(metric) = &self.distance_metric {
                body.extend_from_slice(b",\"distance_metric\":");
                serde_json::to_writer(&mut body, metric).expect("writing to memory");
            }
            if self.id_type == IdType::Uuid {
                body.extend_from_slice(br#","schema":{"id":"uuid"}"#);
            }
        }
        body.push(b'}');
        body
    }
}

/// Rows as `[{"id":…, attributes…}, …]` (the closing bracket included).
fn write_rows<'a>(body: &mut Vec<u8>, entries: impl Iterator<Item = &'a Entry>) {
    for (i, entry) in entries.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let (RowWrite::Upsert(row) | RowWrite::Patch(row)) = &entry.write else {
            continue;
        };
        body.extend_from_slice(b"{\"id\":");
        body.extend_from_slice(entry.id_json.as_bytes());
        for (key, value) in row {
            body.push(b',');
            serde_json::to_writer(&mut *body, key).expect("writing to memory");
            body.push(b':');
            serde_json::to_writer(&mut *body, value).expect("writing to memory");
        }
        body.push(b'}');
    }
    body.push(b']');
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Whether the API takes `name` as a namespace: `[A-Za-z0-9-_.]{1,128}`.
pub fn valid_namespace(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: &str, action: WriteAction) -> WriteOp {
        WriteOp {
            index: Arc::from("items"),
            table: Arc::from("public.items"),
            id: id.into(),
            lsn: Lsn(7),
            action,
            routing: None,
        }
    }

    fn upsert(doc: &str, partial: bool) -> WriteAction {
        WriteAction::Upsert {
            doc: doc.as_bytes().to_vec(),
            partial,
            fresh: false,
        }
    }

    fn encoder(id_type: IdType) -> Encoder {
        Encoder {
            id_type,
            id_attribute: "row_id".into(),
            distance_metric: None,
        }
    }

    fn add(batch: &mut Batch, encoder: &Encoder, op: &WriteOp) {
        let (write, size) = encoder.row_write(op).unwrap().unwrap();
        batch.push(op, encoder.id_json(&op.id).unwrap(), write, size);
    }

    #[test]
    fn writes_to_one_document_fold_into_its_final_state() {
        let e = encoder(IdType::String);
        let mut batch = Batch::new(Arc::from("items"));
        add(
            &mut batch,
            &e,
            &op("a", upsert(r#"{"id":1,"x":1,"y":1}"#, false)),
        );
        add(&mut batch, &e, &op("a", upsert(r#"{"y":2}"#, true)));
        add(&mut batch, &e, &op("b", WriteAction::Delete));
        add(&mut batch, &e, &op("b", upsert(r#"{"y":3}"#, true)));
        add(&mut batch, &e, &op("c", upsert(r#"{"y":4}"#, true)));
        add(&mut batch, &e, &op("c", upsert(r#"{"z":5}"#, true)));
        add(&mut batch, &e, &op("d", upsert(r#"{"z":6}"#, false)));
        add(&mut batch, &e, &op("d", WriteAction::Delete));
        add(&mut batch, &e, &op("d", upsert(r#"{"z":7}"#, false)));
        assert_eq!(batch.entries.len(), 4);
        let body = String::from_utf8(e.body(&batch.entries)).unwrap();
        assert_eq!(
            body,
            concat!(
                r#"{"upsert_rows":[{"id":"a","row_id":1,"x":1,"y":2},{"id":"d","z":7}],"#,
                r#""patch_rows":[{"id":"c","y":4,"z":5}],"deletes":["b"]}"#
            )
        );
        serde_json::from_str::<Value>(&body).unwrap();
    }

    #[test]
    fn ids_are_typed_and_checked() {
        assert_eq!(encoder(IdType::U64).id_json("42").unwrap(), "42");
        assert!(encoder(IdType::U64)
            .id_json("4x")
            .unwrap_err()
            .contains("u64"));
        assert!(encoder(IdType::U64).id_json("-1").is_err());
        let uuid = encoder(IdType::Uuid);
        assert_eq!(
            uuid.id_json("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11")
                .unwrap(),
            "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
        );
        assert!(uuid.id_json("a0eebc99").is_err());
        assert_eq!(
            encoder(IdType::String).id_json("a\"b").unwrap(),
            r#""a\"b""#
        );
        assert!(encoder(IdType::String).id_json(&"x".repeat(65)).is_err());
        let mut batch = Batch::new(Arc::from("items"));
        add(
            &mut batch,
            &uuid,
            &op("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", upsert("{}", false)),
        );
        assert!(String::from_utf8(uuid.body(&batch.entries))
            .unwrap()
            .ends_with(r#","schema":{"id":"uuid"}}"#));
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(valid_namespace("public.items-2_x"));
        assert!(!valid_namespace(""));
        assert!(!valid_namespace("a/b"));
        assert!(!valid_namespace(&"a".repeat(129)));
    }
}
