//! Request encoding: JSONL import lines with the document id as a string,
//! and `filter_by` expressions that delete many ids at once.

use serde_json::{Map, Value};

use crate::model::write::{WriteAction, WriteOp};

/// The kind of request a write travels in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `documents/import?action=upsert`: the whole row replaces the document.
    Upsert,
    /// `documents/import?action=emplace`: a partial row (unchanged TOAST
    /// columns left out) merges into the stored document, or creates it.
    Emplace,
    /// `DELETE documents?filter_by=id:[…]`.
    Delete,
}

impl Kind {
    /// The name recorded in the failed-message store.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Upsert => "upsert",
            Kind::Emplace => "update",
            Kind::Delete => "delete",
        }
    }

    /// The import `action` parameter (`None` for deletes).
    pub fn import_action(self) -> Option<&'static str> {
        match self {
            Kind::Upsert => Some("upsert"),
            Kind::Emplace => Some("emplace"),
            Kind::Delete => None,
        }
    }
}

/// The request kind and import line (empty for deletes) of `op`; `None` for
/// truncates.
pub fn encode(op: &WriteOp) -> Option<(Kind, Vec<u8>)> {
    let (kind, doc) = match &op.action {
        WriteAction::Upsert {
            doc,
            partial: false,
            ..
        } => (Kind::Upsert, doc),
        WriteAction::Upsert {
            doc, partial: true, ..
        } => (Kind::Emplace, doc),
        WriteAction::Delete => return Some((Kind::Delete, Vec::new())),
        WriteAction::Truncate { .. } => return None,
    };
    Some((kind, import_line(doc, &op.id)))
}

/// The document with `id` set to the string `id` (Typesense ids are strings;
/// a numeric `id` column would be refused), as one JSON line without newline.
pub fn import_line(doc: &[u8], id: &str) -> Vec<u8> {
    let mut object: Map<String, Value> = match serde_json::from_slice(doc) {
        Ok(Value::Object(object)) => object,
        // Not an object: sent as is, so the engine's refusal is parked with it.
        _ => return doc.iter().copied().filter(|b| *b != b'\n').collect(),
    };
    object.insert("id".into(), Value::String(id.to_owned()));
    serde_json::to_vec(&object).expect("JSON values serialize")
}

/// One id as a `filter_by` value, wrapped in backticks so commas, spaces and
/// brackets are taken literally; `None` if the id holds a backtick, which no
/// filter can express (such ids are deleted one by one).
pub fn filter_value(id: &str) -> Option<String> {
    (!id.contains('`')).then(|| format!("`{id}`"))
}

/// `id:[`a`,`b`]` for the given filter values.
pub fn id_filter<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut filter = String::from("id:[");
    for (n, value) in values.enumerate() {
        if n > 0 {
            filter.push(',');
        }
        filter.push_str(value);
    }
    filter.push(']');
    filter
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
            lsn: Lsn(16),
            action,
            routing: None,
        }
    }

    #[test]
    fn ids_become_strings_and_partial_rows_are_emplaced() {
        let doc = br#"{"id":7,"name":"a\nb","n":1.50}"#.to_vec();
        let upsert = WriteAction::Upsert {
            doc: doc.clone(),
            partial: false,
            fresh: true,
        };
        let (kind, line) = encode(&op("7", upsert)).unwrap();
        assert_eq!(kind, Kind::Upsert);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            r#"{"id":"7","n":1.50,"name":"a\nb"}"#
        );
        let partial = WriteAction::Upsert {
            doc,
            partial: true,
            fresh: false,
        };
        assert_eq!(encode(&op("7", partial)).unwrap().0, Kind::Emplace);
        assert_eq!(
            encode(&op("7", WriteAction::Delete)).unwrap(),
            (Kind::Delete, Vec::new())
        );
        assert!(encode(&op(
            "",
            WriteAction::Truncate {
                barrier: 1,
                scoped: false
            }
        ))
        .is_none());
    }

    #[test]
    fn delete_filters_quote_every_id() {
        let values: Vec<String> = ["1", "a,b", "x y]"]
            .iter()
            .map(|id| filter_value(id).unwrap())
            .collect();
        assert_eq!(
            id_filter(values.iter().map(String::as_str)),
            "id:[`1`,`a,b`,`x y]`]"
        );
        assert_eq!(filter_value("a`b"), None);
        assert_eq!(crate::sink::http::path_segment("a b/c"), "a%20b%2Fc");
    }
}
