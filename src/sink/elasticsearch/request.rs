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
    /// `delete` with an external version.
    Delete,
}

impl BulkAction {
    pub fn name(self) -> &'static str {
        match self {
            BulkAction::Index => "index",
            BulkAction::Delete => "delete",
        }
    }
}

/// Appends the bulk lines of `op` to `body`; returns the action, or `None`
/// for operations that are not bulk items (truncates).
///
/// Every write carries the commit LSN as an `external_gte` version:
/// Elasticsearch keeps the newest, a stale write answers 409, several
/// changes of one transaction (same LSN) apply in order, and a request the
/// cluster applies late (after a timeout, or from a process that was
/// killed) cannot undo a newer one. A partial document (unchanged TOAST
/// columns left out) is written whole too: the sink merges it into the
/// stored document first (see [`merge`]).
pub fn encode(op: &WriteOp, body: &mut Vec<u8>) -> Option<BulkAction> {
    let (action, doc) = match &op.action {
        WriteAction::Upsert { doc, .. } => (BulkAction::Index, Some(doc)),
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
    body.extend_from_slice(b",\"version\":");
    body.extend_from_slice(itoa::Buffer::new().format(op.lsn.0).as_bytes());
    body.extend_from_slice(b",\"version_type\":\"external_gte\"}}\n");
    if let Some(doc) = doc {
        body.extend_from_slice(doc);
        body.push(b'\n');
    }
    Some(action)
}

/// A partial document merged into the stored one: its members replace the
/// stored members of the same name (a column's value as a whole, objects
/// included), the stored others stay. Without a stored document, or when
/// either is not a JSON object, the partial document as it is (the cluster
/// refuses what is not an object, and the write is parked).
pub fn merge(stored: Option<&[u8]>, partial: &[u8]) -> Vec<u8> {
    type Object = serde_json::Map<String, serde_json::Value>;
    let merged = stored.and_then(|stored| {
        let mut stored: Object = serde_json::from_slice(stored).ok()?;
        let partial: Object = serde_json::from_slice(partial).ok()?;
        stored.extend(partial);
        serde_json::to_vec(&stored).ok()
    });
    merged.unwrap_or_else(|| partial.to_vec())
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
            r#"{"index":{"_index":"items","_id":"3","version":4294967312,"version_type":"external_gte"}}"#,
            "\n",
            r#"{"id":1,"name":"a \"b\""}"#,
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
            .filter(|line: &serde_json::Value| line != &serde_json::json!({}))
            .collect();
        assert_eq!(actions.len(), 3);
        for (action, name) in actions.iter().zip(["index", "delete", "index"]) {
            assert_eq!(action[name]["routing"], "tenant \"7\"", "{action}");
        }
    }

    #[test]
    fn a_partial_document_replaces_whole_members_of_the_stored_one() {
        let stored = br#"{"id":1,"body":"long","attrs":{"a":1,"b":2}}"#;
        let merged = merge(Some(stored), br#"{"id":1,"attrs":{"a":3}}"#);
        let merged: serde_json::Value = serde_json::from_slice(&merged).unwrap();
        assert_eq!(
            merged,
            serde_json::json!({"id": 1, "body": "long", "attrs": {"a": 3}})
        );
        assert_eq!(merge(None, br#"{"id":1}"#), br#"{"id":1}"#);
        assert_eq!(merge(Some(b"[1]"), br#"{"id":1}"#), br#"{"id":1}"#);
        assert_eq!(merge(Some(stored), b"7"), b"7");
    }
}
