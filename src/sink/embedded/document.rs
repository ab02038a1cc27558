//! The tantivy document of a row.
//!
//! tantivy copies a document's values into its compact form from any
//! [`Value`], so the row's JSON is parsed onto simd-json's tape (no
//! allocation per value; the tape and buffers are kept for the next row)
//! and read in place: the document's text and booleans under `doc`, its
//! numbers, booleans and timestamps under `_num`.

use simd_json::{Buffers, Node, StaticNode, Tape};
use tantivy::schema::document::{ReferenceValue, ReferenceValueLeaf};
use tantivy::schema::Value;
use tantivy::time::format_description::well_known::Rfc3339;
use tantivy::time::{OffsetDateTime, UtcOffset};
use tantivy::TantivyDocument;

use super::schema::Fields;
use crate::model::write::WriteOp;

/// Parses rows' JSON, keeping its buffers from one row to the next.
#[derive(Default)]
pub(super) struct Parser {
    buffers: Buffers,
    /// The text being parsed (simd-json unescapes strings in place).
    text: Vec<u8>,
    /// The last row's tape, emptied, for its allocation.
    tape: Option<Tape<'static>>,
}

impl Parser {
    /// The document of `op`, whose JSON text is `source`; the error says
    /// why `source` is not a JSON object.
    pub(super) fn document(
        &mut self,
        f: &Fields,
        op: &WriteOp,
        source: &str,
    ) -> Result<TantivyDocument, String> {
        match self.parse(f, op, source, source.as_bytes()) {
            Ok(doc) => Ok(doc),
            // A number beyond every double (a `numeric` of hundreds of
            // digits) is all simd-json refuses of valid JSON: such numbers
            // are read as the largest double of their sign.
            Err(_) => {
                let value: serde_json::Value =
                    serde_json::from_str(source).map_err(|e| e.to_string())?;
                let text = serde_json::to_vec(&within_doubles(value)).map_err(|e| e.to_string())?;
                self.parse(f, op, source, &text)
            }
        }
    }

    fn parse(
        &mut self,
        f: &Fields,
        op: &WriteOp,
        source: &str,
        json: &[u8],
    ) -> Result<TantivyDocument, String> {
        self.text.clear();
        self.text.extend_from_slice(json);
        let mut tape = self.tape.take().unwrap_or_else(Tape::null).reset();
        let doc = match simd_json::fill_tape(&mut self.text, &mut self.buffers, &mut tape) {
            Ok(()) => match tape.0.first() {
                Some(Node::Object { len, .. }) => Ok(build(
                    f,
                    op,
                    source,
                    Entries {
                        nodes: &tape.0[1..],
                        left: *len,
                        keep: Keep::All,
                    },
                )),
                _ => Err("not a JSON object".to_owned()),
            },
            Err(e) => Err(e.to_string()),
        };
        let tape = tape.reset();
        if self.text.capacity() > KEEP_BYTES {
            // A large document's buffers go with it, not kept for every row.
            *self = Parser::default();
        } else {
            self.tape = Some(tape);
        }
        doc
    }
}

/// The size of document up to which the parser keeps its buffers for the next.
const KEEP_BYTES: usize = 1 << 20;

/// `value` with every number a double cannot hold replaced by the largest
/// double of its sign.
fn within_doubles(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        Json::Number(n) if n.as_f64().is_none_or(|v| !v.is_finite()) => {
            let max = if n.as_str().starts_with('-') {
                f64::MIN
            } else {
                f64::MAX
            };
            Json::from(max)
        }
        Json::Array(items) => Json::Array(items.into_iter().map(within_doubles).collect()),
        Json::Object(map) => Json::Object(
            map.into_iter()
                .map(|(k, v)| (k, within_doubles(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The document of `op`: `source` is its JSON text, `object` the entries
/// of that text parsed.
fn build(f: &Fields, op: &WriteOp, source: &str, object: Entries<'_>) -> TantivyDocument {
    // The stored source, the indexed values and their nodes: about twice the text.
    let mut doc = TantivyDocument::with_capacity(2 * source.len() + 256);
    doc.add_text(f.id, &op.id);
    doc.add_text(f.table, &op.table);
    doc.add_u64(f.lsn, op.lsn.0);
    doc.add_text(f.source, source);
    if let Some(all) = f.all {
        let mut text = String::new();
        collect_text(object.nodes, object.left, true, &mut text);
        doc.add_text(all, &text);
    }
    let keep = match f.numbers {
        Some(numbers) => {
            doc.add_field_value(
                numbers,
                Row::Object(Entries {
                    keep: Keep::Numbers,
                    ..object.clone()
                }),
            );
            Keep::Text
        }
        // An index from before `_num` finds numbers by their terms.
        None => Keep::All,
    };
    doc.add_field_value(f.doc, Row::Object(Entries { keep, ..object }));
    doc
}

/// Every scalar among `entries` values (of an object's entries, when
/// `object`) as text, for the catch-all search field.
fn collect_text(mut nodes: &[Node<'_>], entries: usize, object: bool, out: &mut String) {
    for _ in 0..entries {
        if object {
            nodes = nodes.get(1..).unwrap_or_default();
        }
        let (value, rest) = split_value(nodes);
        nodes = rest;
        match value.first() {
            Some(Node::String(text)) => {
                out.push_str(text);
                out.push(' ');
            }
            Some(Node::Static(StaticNode::Null)) | None => {}
            Some(Node::Static(scalar)) => {
                out.push_str(&scalar.to_string());
                out.push(' ');
            }
            Some(Node::Object { len, .. }) => collect_text(&value[1..], *len, true, out),
            Some(Node::Array { len, .. }) => collect_text(&value[1..], *len, false, out),
        }
    }
}

/// Which values of a JSON object go into a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    All,
    /// Text and booleans, for `doc`'s terms. Numbers and timestamps are
    /// found through `_num`'s columns instead: most of them are unique to
    /// their row (ids, times), and a term per row cost more to index and
    /// to merge than the rest of the row.
    Text,
    /// Numbers, booleans and timestamps, for `_num`'s fast columns (a
    /// column of every distinct text would cost more than the rest).
    Numbers,
}

/// A JSON value as tantivy reads it into a document: objects and arrays
/// hold only the values their `Keep` lets in.
#[derive(Debug, Clone)]
enum Row<'a> {
    Leaf(ReferenceValueLeaf<'a>),
    Object(Entries<'a>),
    Array(Items<'a>),
}

impl<'a> Value<'a> for Row<'a> {
    type ArrayIter = Items<'a>;
    type ObjectIter = Entries<'a>;

    fn as_value(&self) -> ReferenceValue<'a, Self> {
        match self {
            Row::Leaf(leaf) => ReferenceValue::Leaf(leaf.clone()),
            Row::Object(entries) => ReferenceValue::Object(entries.clone()),
            Row::Array(items) => ReferenceValue::Array(items.clone()),
        }
    }
}

/// The value `nodes` starts with (its node and, for an object or array,
/// everything in it), and the nodes after it.
fn split_value<'t, 'a>(nodes: &'t [Node<'a>]) -> (&'t [Node<'a>], &'t [Node<'a>]) {
    let len = match nodes.first() {
        Some(Node::Object { count, .. } | Node::Array { count, .. }) => count + 1,
        _ => 1,
    };
    nodes.split_at(len.min(nodes.len()))
}

/// The value `nodes` starts with, or `None` if `keep` leaves it out.
fn row<'a>(nodes: &'a [Node<'a>], keep: Keep) -> Option<Row<'a>> {
    let rest = nodes.get(1..).unwrap_or_default();
    let row = match nodes.first()? {
        Node::Object { len, .. } => Row::Object(Entries {
            nodes: rest,
            left: *len,
            keep,
        }),
        Node::Array { len, .. } => Row::Array(Items {
            nodes: rest,
            left: *len,
            keep,
        }),
        Node::String(text) => match date(text) {
            Some(_) if keep == Keep::Text => return None,
            Some(date) => Row::Leaf(date),
            None if keep == Keep::Numbers => return None,
            None => Row::Leaf(ReferenceValueLeaf::Str(text)),
        },
        Node::Static(StaticNode::Null) if keep == Keep::Numbers => return None,
        Node::Static(StaticNode::I64(_) | StaticNode::U64(_) | StaticNode::F64(_))
            if keep == Keep::Text =>
        {
            return None
        }
        Node::Static(scalar) => Row::Leaf(match *scalar {
            StaticNode::I64(n) => ReferenceValueLeaf::I64(n),
            // Whole numbers are integers where they fit, as serde_json reads them.
            StaticNode::U64(n) => match i64::try_from(n) {
                Ok(n) => ReferenceValueLeaf::I64(n),
                Err(_) => ReferenceValueLeaf::U64(n),
            },
            StaticNode::F64(n) => ReferenceValueLeaf::F64(n),
            StaticNode::Bool(b) => ReferenceValueLeaf::Bool(b),
            StaticNode::Null => ReferenceValueLeaf::Null,
        }),
    };
    Some(row)
}

/// Text that reads as an RFC 3339 timestamp, as that timestamp in UTC.
fn date(text: &str) -> Option<ReferenceValueLeaf<'static>> {
    // `2024-05-01T10:20:30Z` at the shortest: most text fails here.
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !b[0].is_ascii_digit() {
        return None;
    }
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    Some(ReferenceValueLeaf::Date(tantivy::DateTime::from_utc(
        at.to_offset(UtcOffset::UTC),
    )))
}

/// The elements of an array.
#[derive(Debug, Clone)]
struct Items<'a> {
    nodes: &'a [Node<'a>],
    left: usize,
    keep: Keep,
}

impl<'a> Iterator for Items<'a> {
    type Item = Row<'a>;

    fn next(&mut self) -> Option<Row<'a>> {
        while self.left > 0 {
            self.left -= 1;
            let (value, rest) = split_value(self.nodes);
            self.nodes = rest;
            if let Some(row) = row(value, self.keep) {
                return Some(row);
            }
        }
        None
    }
}

/// The entries of an object.
#[derive(Debug, Clone)]
struct Entries<'a> {
    nodes: &'a [Node<'a>],
    left: usize,
    keep: Keep,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, Row<'a>);

    fn next(&mut self) -> Option<(&'a str, Row<'a>)> {
        while self.left > 0 {
            self.left -= 1;
            let (Node::String(key), rest) = self.nodes.split_first()? else {
                return None;
            };
            let (value, rest) = split_value(rest);
            self.nodes = rest;
            if let Some(row) = row(value, self.keep) {
                return Some((key, row));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tantivy::schema::OwnedValue;
    use tantivy::time::format_description::well_known::Rfc3339;
    use tantivy::time::OffsetDateTime;

    use super::*;
    use crate::lsn::Lsn;
    use crate::model::write::WriteAction;
    use crate::sink::embedded::schema;

    /// `value` with the entries of every object in key order.
    fn sorted(value: OwnedValue) -> OwnedValue {
        match value {
            OwnedValue::Object(entries) => {
                let mut entries: Vec<_> =
                    entries.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                OwnedValue::Object(entries)
            }
            OwnedValue::Array(items) => OwnedValue::Array(items.into_iter().map(sorted).collect()),
            other => other,
        }
    }

    fn object(entries: Vec<(&str, OwnedValue)>) -> OwnedValue {
        sorted(OwnedValue::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        ))
    }

    #[test]
    fn documents_hold_every_value_and_numbers_apart() {
        let index = tantivy::Index::create_in_ram(schema::build());
        let f = schema::fields(&index).unwrap();
        let digits = "9".repeat(400);
        let source = format!(
            r#"{{"id":7,"name":"Kettle","price":12.5,"active":true,"gone":null,"updated_at":"2024-05-01T10:20:30+02:00","code":"2024 model","tags":["a",1,{{"b":"x","c":2}},[]],"meta":{{"note":"n","n":3,"inner":{{"s":"t"}}}},"huge":{digits},"tiny":-{digits}.5}}"#
        );
        let op = WriteOp {
            index: Arc::from("i"),
            table: Arc::from("public.t"),
            id: "7".to_owned(),
            lsn: Lsn(42),
            action: WriteAction::Delete,
            routing: None,
        };
        let mut parser = Parser::default();
        let doc = parser.document(&f, &op, &source).unwrap();

        let date = OwnedValue::Date(tantivy::DateTime::from_utc(
            OffsetDateTime::parse("2024-05-01T08:20:30Z", &Rfc3339).unwrap(),
        ));
        let numbers = sorted(OwnedValue::from(doc.get_first(f.numbers.unwrap()).unwrap()));
        assert_eq!(
            numbers,
            object(vec![
                ("id", OwnedValue::I64(7)),
                ("price", OwnedValue::F64(12.5)),
                ("active", OwnedValue::Bool(true)),
                ("updated_at", date.clone()),
                (
                    "tags",
                    OwnedValue::Array(vec![
                        OwnedValue::I64(1),
                        object(vec![("c", OwnedValue::I64(2))]),
                        OwnedValue::Array(vec![]),
                    ]),
                ),
                (
                    "meta",
                    object(vec![("n", OwnedValue::I64(3)), ("inner", object(vec![]))]),
                ),
                ("huge", OwnedValue::F64(f64::MAX)),
                ("tiny", OwnedValue::F64(f64::MIN)),
            ])
        );

        let fields = sorted(OwnedValue::from(doc.get_first(f.doc).unwrap()));
        let OwnedValue::Object(fields) = fields else {
            panic!("doc is an object");
        };
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(field("name"), Some(OwnedValue::Str("Kettle".into())));
        assert_eq!(field("code"), Some(OwnedValue::Str("2024 model".into())));
        assert_eq!(field("gone"), Some(OwnedValue::Null));
        assert_eq!(field("active"), Some(OwnedValue::Bool(true)));
        // Numbers and timestamps are found through `_num` only.
        for number in ["id", "price", "updated_at", "huge", "tiny"] {
            assert_eq!(field(number), None, "{number}");
        }
        assert_eq!(
            field("tags"),
            Some(OwnedValue::Array(vec![
                OwnedValue::Str("a".into()),
                object(vec![("b", OwnedValue::Str("x".into()))]),
                OwnedValue::Array(vec![]),
            ]))
        );
        assert_eq!(
            field("meta"),
            Some(object(vec![
                ("note", OwnedValue::Str("n".into())),
                ("inner", object(vec![("s", OwnedValue::Str("t".into()))])),
            ]))
        );
        assert_eq!(fields.len(), 6);
        assert_eq!(
            doc.get_first(f.source).and_then(|v| v.as_str()),
            Some(source.as_str())
        );
        assert_eq!(doc.get_first(f.id).and_then(|v| v.as_str()), Some("7"));
        assert_eq!(doc.get_first(f.lsn).and_then(|v| v.as_u64()), Some(42));
    }

    #[test]
    fn one_parser_reads_row_after_row_and_refuses_what_is_not_an_object() {
        let index = tantivy::Index::create_in_ram(schema::build());
        let f = schema::fields(&index).unwrap();
        let op = WriteOp {
            index: Arc::from("i"),
            table: Arc::from("public.t"),
            id: "1".to_owned(),
            lsn: Lsn(1),
            action: WriteAction::Delete,
            routing: None,
        };
        let mut parser = Parser::default();
        for (source, name, big) in [
            (
                r#"{"name":"a \"quoted\" name","big":1234567890123456789012345}"#,
                "a \"quoted\" name",
                1.2345678901234568e24,
            ),
            (r#"{"big":-5,"name":"short"}"#, "short", -5.0),
        ] {
            let doc = parser.document(&f, &op, source).unwrap();
            let object = |field| match OwnedValue::from(doc.get_first(field).unwrap()) {
                OwnedValue::Object(entries) => entries,
                other => panic!("{other:?} is not an object"),
            };
            let get = |entries: &[(String, OwnedValue)], key: &str| {
                entries.iter().find(|(k, _)| k == key).unwrap().1.clone()
            };
            assert_eq!(get(&object(f.doc), "name"), OwnedValue::Str(name.into()));
            let value = match get(&object(f.numbers.unwrap()), "big") {
                OwnedValue::F64(v) => v,
                OwnedValue::I64(v) => v as f64,
                other => panic!("{other:?}"),
            };
            assert_eq!(value, big);
        }
        for bad in ["[1, 2]", "\"text\"", "{\"a\": ", "{\"a\": 1} trailing"] {
            assert!(parser.document(&f, &op, bad).is_err(), "{bad}");
        }
        assert!(parser.document(&f, &op, r#"{"ok":true}"#).is_ok());
        assert!(parser.text.capacity() > 0, "a small row's buffer is kept");
        // A large document's buffers are not kept for the rows after it.
        let large = format!(r#"{{"body":"{}"}}"#, "word ".repeat(400_000));
        assert!(parser.document(&f, &op, &large).is_ok());
        assert_eq!(parser.text.capacity(), 0);
        assert!(parser.document(&f, &op, r#"{"ok":true}"#).is_ok());
    }
}
