//! The tantivy document of a row.
//!
//! tantivy copies a document's values into its compact form from any
//! [`Value`], so the row's parsed JSON is read in place: the document's
//! fields under `doc`, its numbers, booleans and timestamps again under
//! `_num`. Building tantivy's owned values first (a map of them, and a copy
//! of the numbers) took more time than copying them into the document.

use serde_json::{Map, Value as Json};
use tantivy::schema::document::{ReferenceValue, ReferenceValueLeaf};
use tantivy::schema::Value;
use tantivy::TantivyDocument;

use super::schema::Fields;
use crate::pipeline::change::WriteOp;

/// The document of `op`: `source` is its JSON text, `object` that text parsed.
pub(super) fn build(
    f: &Fields,
    op: &WriteOp,
    source: &str,
    object: &Map<String, Json>,
) -> TantivyDocument {
    // The stored source, the indexed values and their nodes: about twice the text.
    let mut doc = TantivyDocument::with_capacity(2 * source.len() + 256);
    doc.add_text(f.id, &op.id);
    doc.add_text(f.table, &op.table);
    doc.add_u64(f.lsn, op.lsn.0);
    doc.add_text(f.source, source);
    if let Some(all) = f.all {
        let mut text = String::new();
        object.values().for_each(|v| collect_text(v, &mut text));
        doc.add_text(all, &text);
    }
    if let Some(numbers) = f.numbers {
        doc.add_field_value(numbers, Row::Object(Entries::Numbers(object.iter())));
    }
    doc.add_field_value(f.doc, Row::Object(Entries::Json(object.iter())));
    doc
}

/// Every scalar of a JSON value as text, for the catch-all search field.
fn collect_text(value: &Json, out: &mut String) {
    match value {
        Json::String(s) => {
            out.push_str(s);
            out.push(' ');
        }
        Json::Number(n) => {
            out.push_str(n.as_str());
            out.push(' ');
        }
        Json::Bool(b) => {
            out.push_str(if *b { "true " } else { "false " });
        }
        Json::Array(items) => items.iter().for_each(|v| collect_text(v, out)),
        Json::Object(map) => map.values().for_each(|v| collect_text(v, out)),
        Json::Null => {}
    }
}

/// A JSON value as tantivy reads it into a document. Objects and arrays
/// read under `_num` (`Entries::Numbers`, `Items::Numbers`) keep only their
/// numbers, booleans and timestamps: that field's fast columns hold no text.
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

/// `value` under `doc`.
fn json(value: &Json) -> Row<'_> {
    match value {
        Json::Array(items) => Row::Array(Items::Json(items.iter())),
        Json::Object(map) => Row::Object(Entries::Json(map.iter())),
        scalar => Row::Leaf(leaf(scalar)),
    }
}

/// `value` under `_num`, or `None` if it is text or null.
fn number(value: &Json) -> Option<Row<'_>> {
    match value {
        Json::Array(items) => Some(Row::Array(Items::Numbers(items.iter()))),
        Json::Object(map) => Some(Row::Object(Entries::Numbers(map.iter()))),
        Json::Null => None,
        scalar => match leaf(scalar) {
            ReferenceValueLeaf::Str(_) => None,
            kept => Some(Row::Leaf(kept)),
        },
    }
}

/// A JSON scalar as tantivy reads one: whole numbers as integers, text that
/// reads as an RFC 3339 timestamp as a timestamp. A number beyond every
/// numeric type (a `numeric` of hundreds of digits) is an infinity of its
/// sign, where tantivy's own conversion panics.
fn leaf(value: &Json) -> ReferenceValueLeaf<'_> {
    match value {
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                ReferenceValueLeaf::I64(i)
            } else if let Some(u) = n.as_u64() {
                ReferenceValueLeaf::U64(u)
            } else if let Some(f) = n.as_f64() {
                ReferenceValueLeaf::F64(f)
            } else if n.as_str().starts_with('-') {
                ReferenceValueLeaf::F64(f64::NEG_INFINITY)
            } else {
                ReferenceValueLeaf::F64(f64::INFINITY)
            }
        }
        other => Value::as_leaf(&other).unwrap_or(ReferenceValueLeaf::Null),
    }
}

/// The elements of an array.
#[derive(Debug, Clone)]
enum Items<'a> {
    Json(std::slice::Iter<'a, Json>),
    Numbers(std::slice::Iter<'a, Json>),
}

impl<'a> Iterator for Items<'a> {
    type Item = Row<'a>;

    fn next(&mut self) -> Option<Row<'a>> {
        match self {
            Items::Json(items) => items.next().map(json),
            Items::Numbers(items) => items.find_map(number),
        }
    }
}

/// The entries of an object.
#[derive(Debug, Clone)]
enum Entries<'a> {
    Json(serde_json::map::Iter<'a>),
    Numbers(serde_json::map::Iter<'a>),
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, Row<'a>);

    fn next(&mut self) -> Option<(&'a str, Row<'a>)> {
        match self {
            Entries::Json(entries) => entries.next().map(|(k, v)| (k.as_str(), json(v))),
            Entries::Numbers(entries) => entries.find_map(|(k, v)| Some((k.as_str(), number(v)?))),
        }
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
    use crate::pipeline::change::WriteAction;
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
        let parsed: Map<String, Json> = serde_json::from_str(&source).unwrap();
        let op = WriteOp {
            index: Arc::from("i"),
            table: Arc::from("public.t"),
            id: "7".to_owned(),
            lsn: Lsn(42),
            action: WriteAction::Delete,
            routing: None,
        };
        let doc = build(&f, &op, &source, &parsed);

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
                ("huge", OwnedValue::F64(f64::INFINITY)),
                ("tiny", OwnedValue::F64(f64::NEG_INFINITY)),
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
        assert_eq!(field("updated_at"), Some(date));
        assert_eq!(
            field("tags"),
            Some(OwnedValue::Array(vec![
                OwnedValue::Str("a".into()),
                OwnedValue::I64(1),
                object(vec![
                    ("b", OwnedValue::Str("x".into())),
                    ("c", OwnedValue::I64(2))
                ]),
                OwnedValue::Array(vec![]),
            ]))
        );
        assert_eq!(fields.len(), 11);
        assert_eq!(
            doc.get_first(f.source).and_then(|v| v.as_str()),
            Some(source.as_str())
        );
        assert_eq!(doc.get_first(f.id).and_then(|v| v.as_str()), Some("7"));
        assert_eq!(doc.get_first(f.lsn).and_then(|v| v.as_u64()), Some(42));
    }
}
