//! Bulk request bodies: NDJSON action and source lines, written straight from
//! the encoded documents into one buffer.

use std::ops::Range;

use crate::model::write::{WriteAction, WriteOp};
use crate::postgres::types::write_json_string;

/// The bulk action of an item, for reading its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// `index` with an external version.
    Index,
    /// `update` of a partial document (unchanged TOAST columns left out).
    Update,
    /// `delete` with an external version.
    Delete,
}

impl BulkAction {
    pub fn name(self) -> &'static str {
        match self {
            BulkAction::Index => "index",
            BulkAction::Update => "update",
            BulkAction::Delete => "delete",
        }
    }
}

/// Appends the bulk lines of `op` to `body`; returns the action, or `None`
/// for operations that are not bulk items (truncates).
///
/// Writes carry the commit LSN as an `external_gte` version: Elasticsearch
/// keeps the newest, a stale write answers 409, and several changes of one
/// transaction (same LSN) apply in order. Partial documents become `update`s
/// (`doc_as_upsert`), which Elasticsearch cannot version externally; their
/// order comes from the writer sending them in order.
pub fn encode(op: &WriteOp, body: &mut Vec<u8>) -> Option<BulkAction> {
    let (action, doc) = match &op.action {
        WriteAction::Upsert {
            doc,
            partial: false,
            ..
        } => (BulkAction::Index, Some(doc)),
        WriteAction::Upsert {
            doc, partial: true, ..
        } => (BulkAction::Update, Some(doc)),
        WriteAction::Delete => (BulkAction::Delete, None),
        WriteAction::Truncate { .. } => return None,
    };
    body.extend_from_slice(b"{\"");
    body.extend_from_slice(action.name().as_bytes());
    body.extend_from_slice(b"\":{\"_index\":");
    write_json_string(op.index.as_bytes(), body);
    body.extend_from_slice(b",\"_id\":");
    write_json_string(op.id.as_bytes(), body);
    if let Some(routing) = &op.routing {
        body.extend_from_slice(b",\"routing\":");
        write_json_string(routing.as_bytes(), body);
    }
    if action == BulkAction::Update {
        body.extend_from_slice(b",\"retry_on_conflict\":3}}\n{\"doc\":");
        body.extend_from_slice(doc.expect("updates carry a document"));
        body.extend_from_slice(b",\"doc_as_upsert\":true}\n");
    } else {
        body.extend_from_slice(b",\"version\":");
        body.extend_from_slice(itoa::Buffer::new().format(op.lsn.0).as_bytes());
        body.extend_from_slice(b",\"version_type\":\"external_gte\"}}\n");
        if let Some(doc) = doc {
            body.extend_from_slice(doc);
            body.push(b'\n');
        }
    }
    Some(action)
}

/// Appends the lines of `ranges` of `from` into a new body (the items to retry).
pub fn rebuild(
    from: &[u8],
    ranges: impl Iterator<Item = Range<usize>>,
) -> (Vec<u8>, Vec<Range<usize>>) {
    let mut body = Vec::new();
    let mut new_ranges = Vec::new();
    for range in ranges {
        let start = body.len();
        body.extend_from_slice(&from[range]);
        new_ranges.push(start..body.len());
    }
    (body, new_ranges)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lsn::Lsn;

    fn op(id: &str, action: WriteAction) -> WriteOp {
        WriteOp {
            index: Arc::from("items"),
            table: Arc::from("public.items"),
            id: id.into(),
            lsn: Lsn(0x1_0000_0010),
            action,
            routing: None,
        }
    }

    #[test]
    fn bulk_lines_are_exact() {
        let mut body = Vec::new();
        let doc = br#"{"id":1,"name":"a \"b\""}"#.to_vec();
        encode(
            &op(
                "1",
                WriteAction::Upsert {
                    doc: doc.clone(),
                    partial: false,
                    fresh: true,
                },
            ),
            &mut body,
        );
        encode(&op("2\"x", WriteAction::Delete), &mut body);
        encode(
            &op(
                "3",
                WriteAction::Upsert {
                    doc,
                    partial: true,
                    fresh: false,
                },
            ),
            &mut body,
        );
        assert_eq!(
            encode(
                &op(
                    "",
                    WriteAction::Truncate {
                        barrier: 0,
                        scoped: false
                    }
                ),
                &mut body
            ),
            None
        );
        let text = String::from_utf8(body).unwrap();
        let expected = concat!(
            r#"{"index":{"_index":"items","_id":"1","version":4294967312,"version_type":"external_gte"}}"#,
            "\n",
            r#"{"id":1,"name":"a \"b\""}"#,
            "\n",
            r#"{"delete":{"_index":"items","_id":"2\"x","version":4294967312,"version_type":"external_gte"}}"#,
            "\n",
            r#"{"update":{"_index":"items","_id":"3","retry_on_conflict":3}}"#,
            "\n",
            r#"{"doc":{"id":1,"name":"a \"b\""},"doc_as_upsert":true}"#,
            "\n",
        );
        assert_eq!(text, expected);
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }

    #[test]
    fn every_action_carries_the_routing() {
        let mut body = Vec::new();
        let routed = |action| WriteOp {
            routing: Some("tenant \"7\"".into()),
            ..op("7|1", action)
        };
        encode(
            &routed(WriteAction::Upsert {
                doc: b"{}".to_vec(),
                partial: false,
                fresh: true,
            }),
            &mut body,
        );
        encode(&routed(WriteAction::Delete), &mut body);
        encode(
            &routed(WriteAction::Upsert {
                doc: b"{}".to_vec(),
                partial: true,
                fresh: false,
            }),
            &mut body,
        );
        let text = String::from_utf8(body).unwrap();
        let actions: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .filter(|line: &serde_json::Value| {
                line.get("doc").is_none() && line != &serde_json::json!({})
            })
            .collect();
        assert_eq!(actions.len(), 3);
        for (action, name) in actions.iter().zip(["index", "delete", "update"]) {
            assert_eq!(action[name]["routing"], "tenant \"7\"", "{action}");
        }
    }
}
