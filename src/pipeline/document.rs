//! A row as a document: the shape a table's settings give its documents
//! (`[tables.transform]`: keep, drop, rename, added fields, or a path),
//! chosen once per relation by the transformer, and the encoding of a row
//! into that shape straight from the WAL bytes, done by the shards.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::template;
use crate::model::change::RelationInfo;
use crate::model::problem::ConfigProblem;
use crate::postgres::pgoutput::{ColumnKind, Tuple};
use crate::postgres::types::{write_json, write_json_string, write_json_string_content, TypeKind};

/// Keep, drop and rename columns. `keep` and `drop` are exclusive.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// Only these columns become fields (default: all).
    #[serde(default)]
    pub keep: Option<Vec<String>>,
    /// These columns are left out.
    #[serde(default)]
    pub drop: Vec<String>,
    /// Column name -> field name.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// A transform function (see `functions`) that makes the document from
    /// the change. Exclusive with the other settings.
    #[serde(default)]
    pub function: Option<String>,
    /// Fields added to every document, by name. A string is a template:
    /// `"{name} ({sku})"` is the text with `{column}` replaced by the
    /// column's value (NULL as nothing), `{{` and `}}` for braces. Other
    /// values (numbers, booleans, arrays, tables) are written as they are.
    /// A field named like a column replaces it.
    #[serde(default)]
    pub fields: BTreeMap<String, toml::Value>,
    /// The document is the value at this path of the change instead of the
    /// row: `record.payload` takes a json or jsonb column as the document,
    /// `record.payload.product` a key inside it. A value that is not an
    /// object becomes a document of one field, named by the last part of the
    /// path (`record.id` gives `{"id": 7}`). Exclusive with the other settings.
    #[serde(default)]
    pub path: Option<String>,
}

impl TransformConfig {
    /// Checks the settings at `at` (`tables[0].transform`): what is
    /// exclusive, templates, paths and renames.
    pub fn validate(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        let mut problem =
            |field: String, message: String| problems.push(ConfigProblem { field, message });
        let shaped = self.keep.is_some()
            || !self.drop.is_empty()
            || !self.rename.is_empty()
            || !self.fields.is_empty();
        if self.function.is_some() && (shaped || self.path.is_some()) {
            problem(
                format!("{at}.function"),
                "a transform function makes the whole document: leave out keep, drop, rename, fields and path"
                    .into(),
            );
        }
        if let Some(path) = &self.path {
            if let Err(message) = PathShape::parse(path) {
                problem(format!("{at}.path"), message);
            }
            if shaped {
                problem(
                    format!("{at}.path"),
                    "a path makes the whole document: leave out keep, drop, rename and fields"
                        .into(),
                );
            }
        }
        for (name, value) in &self.fields {
            let field = format!("{at}.fields.{name}");
            if name.is_empty() {
                problem(field.clone(), "the field name must not be empty".into());
            }
            if let toml::Value::String(text) = value {
                if let Err(message) = template::parse(text) {
                    problem(field, message);
                }
            }
        }
        if self.keep.is_some() && !self.drop.is_empty() {
            problem(
                at.to_owned(),
                "keep and drop are exclusive; use one of them".into(),
            );
        }
        let mut targets = HashSet::new();
        for (from, to) in &self.rename {
            if to.is_empty() {
                problem(format!("{at}.rename.{from}"), "must not be empty".into());
            }
            if !targets.insert(to) {
                problem(
                    format!("{at}.rename.{from}"),
                    format!("two columns are renamed to `{to}`"),
                );
            }
        }
    }

    /// Every column the transform names, with the setting that names it.
    pub fn named_columns(&self) -> Vec<(String, String)> {
        let mut named = Vec::new();
        for (j, column) in self.keep.iter().flatten().enumerate() {
            named.push((format!("transform.keep[{j}]"), column.clone()));
        }
        for (j, column) in self.drop.iter().enumerate() {
            named.push((format!("transform.drop[{j}]"), column.clone()));
        }
        for column in self.rename.keys() {
            named.push((format!("transform.rename.{column}"), column.clone()));
        }
        for (field, value) in &self.fields {
            if let toml::Value::String(text) = value {
                for piece in template::parse(text).unwrap_or_default() {
                    if let template::Piece::Column(column) = piece {
                        named.push((format!("transform.fields.{field}"), column));
                    }
                }
            }
        }
        if let Some(Ok(path)) = self.path.as_deref().map(PathShape::parse) {
            named.push(("transform.path".into(), path.column));
        }
        named
    }
}

/// One output field.
#[derive(Debug, Clone)]
pub struct Field {
    /// Column position in the tuple.
    pub column: usize,
    /// `"name":`, escaped once.
    pub key: Box<[u8]>,
    pub kind: TypeKind,
}

/// A field of `transform.fields`, added to every document.
#[derive(Debug, Clone)]
struct Added {
    /// `"name":`, escaped once.
    key: Box<[u8]>,
    value: AddedValue,
}

#[derive(Debug, Clone)]
enum AddedValue {
    /// JSON, written as it is.
    Constant(Box<[u8]>),
    /// A JSON string made of these parts.
    Template(Vec<Part>),
}

#[derive(Debug, Clone)]
enum Part {
    /// Text, escaped once for a JSON string.
    Text(Box<[u8]>),
    /// The value of the column at this position; `None` when the table has
    /// no such column (rendered as nothing).
    Column(Option<usize>),
}

/// `transform.path`: the document is a column's value, or a value inside a
/// json or jsonb column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathShape {
    /// The column after `record.`.
    pub column: String,
    /// Keys inside the column's JSON value.
    pub keys: Vec<String>,
}

impl PathShape {
    /// Parses `record.column[.key...]`.
    pub fn parse(path: &str) -> Result<PathShape, String> {
        let mut parts = path.split('.');
        if parts.next() != Some("record") {
            return Err(format!(
                "`{path}` must start with `record.`, such as record.payload"
            ));
        }
        let Some(column) = parts.next() else {
            return Err(
                "a path of just `record` is the row, the default: name a column, such as record.payload"
                    .into(),
            );
        };
        let keys: Vec<String> = parts.map(str::to_owned).collect();
        if column.is_empty() || keys.iter().any(String::is_empty) {
            return Err(format!("`{path}` has an empty part"));
        }
        Ok(PathShape {
            column: column.to_owned(),
            keys,
        })
    }

    /// The name of a document made of one value that is not an object.
    fn wrap_name(&self) -> &str {
        self.keys.last().unwrap_or(&self.column)
    }
}

/// `transform.path` resolved against a relation.
#[derive(Debug)]
struct PathDoc {
    column: Option<usize>,
    kind: TypeKind,
    keys: Vec<String>,
    /// `{"name":`, escaped once, for values that are not objects.
    wrap: Box<[u8]>,
}

/// How a relation's rows become documents.
#[derive(Debug, Default)]
pub struct DocShape {
    pub fields: Vec<Field>,
    added: Vec<Added>,
    path: Option<PathDoc>,
    /// `"sluice_table":"schema.table"`, the first member of every document
    /// of a table whose index other tables share (a truncate removes only
    /// the documents that carry it).
    pub table_tag: Option<Box<[u8]>>,
}

pub use crate::model::write::TABLE_FIELD;

impl DocShape {
    /// Marks every document of this shape with its table `qualified`.
    pub fn tagged(mut self, qualified: &str) -> DocShape {
        let mut tag = json_key(TABLE_FIELD).into_vec();
        write_json_string(qualified.as_bytes(), &mut tag);
        self.table_tag = Some(tag.into_boxed_slice());
        self
    }

    /// Puts the table's tag into `doc` (a JSON object), when it has one.
    pub fn tag(&self, doc: &mut Vec<u8>) {
        let Some(tag) = &self.table_tag else { return };
        if doc.first() != Some(&b'{') {
            return;
        }
        let empty = doc.get(1) == Some(&b'}');
        let mut inserted = Vec::with_capacity(tag.len() + 1);
        inserted.extend_from_slice(tag);
        if !empty {
            inserted.push(b',');
        }
        doc.splice(1..1, inserted);
    }
}

fn json_key(name: &str) -> Box<[u8]> {
    let mut key = Vec::with_capacity(name.len() + 3);
    write_json_string(name.as_bytes(), &mut key);
    key.push(b':');
    key.into_boxed_slice()
}

impl DocShape {
    /// The shape `transform` gives the rows of `rel`. The transform was
    /// validated with the configuration; a column it names that the table
    /// lacks is left out (and warned about by the transformer).
    pub fn new(rel: &RelationInfo, transform: &TransformConfig) -> DocShape {
        if let Some(Ok(at)) = transform.path.as_deref().map(PathShape::parse) {
            let column = rel.column_index(&at.column);
            let mut wrap = vec![b'{'];
            wrap.extend_from_slice(&json_key(at.wrap_name()));
            return DocShape {
                fields: Vec::new(),
                added: Vec::new(),
                table_tag: None,
                path: Some(PathDoc {
                    column,
                    kind: column.map_or(TypeKind::Text, |i| rel.columns[i].kind.clone()),
                    keys: at.keys,
                    wrap: wrap.into_boxed_slice(),
                }),
            };
        }
        let fields = rel
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| match &transform.keep {
                Some(keep) => keep.iter().any(|k| k == &c.name),
                None => !transform.drop.iter().any(|d| d == &c.name),
            })
            .map(|(i, c)| (i, c, transform.rename.get(&c.name).unwrap_or(&c.name)))
            // A field of `fields` replaces a column of the same name.
            .filter(|(_, _, name)| !transform.fields.contains_key(*name))
            .map(|(i, c, name)| Field {
                column: i,
                key: json_key(name),
                kind: c.kind.clone(),
            })
            .collect();
        let added = transform
            .fields
            .iter()
            .map(|(name, value)| Added {
                key: json_key(name),
                value: added_value(rel, value),
            })
            .collect();
        DocShape {
            fields,
            added,
            path: None,
            table_tag: None,
        }
    }

    /// Encodes a row as a JSON object into `out`. Returns false when some
    /// field was an unchanged TOAST value and left out (a partial document).
    pub fn encode(&self, tuple: &Tuple, out: &mut Vec<u8>) -> bool {
        if let Some(path) = &self.path {
            return path.encode(tuple, out);
        }
        let mut complete = true;
        let mut first = true;
        out.push(b'{');
        for field in &self.fields {
            let kind = tuple.kind(field.column);
            if kind == ColumnKind::Unchanged {
                complete = false;
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&field.key);
            match tuple.value(field.column) {
                Some(text) if kind == ColumnKind::Text => write_json(&field.kind, text, out),
                Some(bytes) => write_json_string(bytes, out),
                None => out.extend_from_slice(b"null"),
            }
        }
        for added in &self.added {
            let start = out.len();
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(&added.key);
            match &added.value {
                AddedValue::Constant(json) => out.extend_from_slice(json),
                AddedValue::Template(parts) => {
                    if !render(parts, tuple, out) {
                        // A column it needs is an unchanged TOAST value.
                        out.truncate(start);
                        complete = false;
                        continue;
                    }
                }
            }
            first = false;
        }
        out.push(b'}');
        complete
    }
}

fn added_value(rel: &RelationInfo, value: &toml::Value) -> AddedValue {
    let toml::Value::String(text) = value else {
        let json = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
        return AddedValue::Constant(json.into_boxed_slice());
    };
    let pieces = template::parse(text).unwrap_or_default();
    if !pieces
        .iter()
        .any(|p| matches!(p, template::Piece::Column(_)))
    {
        let mut json = Vec::new();
        write_json_string(text.as_bytes(), &mut json);
        return AddedValue::Constant(json.into_boxed_slice());
    }
    let parts = pieces
        .into_iter()
        .map(|piece| match piece {
            template::Piece::Text(text) => {
                let mut escaped = Vec::new();
                write_json_string_content(text.as_bytes(), &mut escaped);
                Part::Text(escaped.into_boxed_slice())
            }
            template::Piece::Column(column) => Part::Column(rel.column_index(&column)),
        })
        .collect();
    AddedValue::Template(parts)
}

/// Writes a template's JSON string; false when a column it needs is an
/// unchanged TOAST value.
fn render(parts: &[Part], tuple: &Tuple, out: &mut Vec<u8>) -> bool {
    out.push(b'"');
    for part in parts {
        match part {
            Part::Text(text) => out.extend_from_slice(text),
            Part::Column(None) => {}
            Part::Column(Some(column)) => {
                if tuple.kind(*column) == ColumnKind::Unchanged {
                    return false;
                }
                if let Some(value) = tuple.value(*column) {
                    write_json_string_content(value, out);
                }
            }
        }
    }
    out.push(b'"');
    true
}

/// The text of the member `key` of the JSON object `json` (or of the
/// element numbered `key` of an array), found without building the value.
fn json_member<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde_json::value::RawValue;
    use std::borrow::Cow;

    struct Member<'k>(&'k str);

    impl<'de> Visitor<'de> for Member<'_> {
        type Value = Option<&'de RawValue>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object or array")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if found.is_none() && key == self.0 {
                    found = Some(map.next_value::<&'de RawValue>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let wanted = self.0.parse::<usize>().ok();
            let mut found = None;
            let mut i = 0;
            loop {
                if Some(i) == wanted {
                    match seq.next_element::<&'de RawValue>()? {
                        Some(value) => found = Some(value),
                        None => break,
                    }
                } else if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                i += 1;
            }
            Ok(found)
        }

        // Scalars have no members.
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    let mut de = serde_json::Deserializer::from_str(json);
    let found = (&mut de).deserialize_any(Member(key)).ok()??;
    Some(found.get())
}

impl PathDoc {
    fn encode(&self, tuple: &Tuple, out: &mut Vec<u8>) -> bool {
        let value = match self.column {
            Some(column) if tuple.kind(column) == ColumnKind::Unchanged => {
                // The value did not change: nothing to write.
                out.extend_from_slice(b"{}");
                return false;
            }
            Some(column) => tuple.value(column).map(|v| (v, tuple.kind(column))),
            None => None,
        };
        let Some((text, kind)) = value else {
            self.wrap_value(b"null", out);
            return true;
        };
        let json_column = kind == ColumnKind::Text && self.kind == TypeKind::Json;
        if !json_column {
            out.extend_from_slice(&self.wrap);
            match kind {
                ColumnKind::Text if self.keys.is_empty() => write_json(&self.kind, text, out),
                _ if self.keys.is_empty() => write_json_string(text, out),
                // Keys inside a column that holds no JSON: nothing there.
                _ => out.extend_from_slice(b"null"),
            }
            out.push(b'}');
            return true;
        }
        if self.keys.is_empty() {
            if text.trim_ascii_start().first() == Some(&b'{') {
                // Postgres checked it is JSON: the object is the document.
                out.extend_from_slice(text.trim_ascii());
            } else {
                out.extend_from_slice(&self.wrap);
                write_json(&self.kind, text, out);
                out.push(b'}');
            }
            return true;
        }
        let mut found = std::str::from_utf8(text).ok();
        for key in &self.keys {
            found = found.and_then(|json| json_member(json, key));
        }
        let found = found.map(str::as_bytes);
        match found {
            Some(json) if json.first() == Some(&b'{') => out.extend_from_slice(json),
            Some(json) => self.wrap_value(json, out),
            None => self.wrap_value(b"null", out),
        }
        true
    }

    fn wrap_value(&self, json: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.wrap);
        out.extend_from_slice(json);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::testing::{relation, tuple, UNCHANGED};

    fn transform(text: &str) -> TransformConfig {
        toml::from_str(text).unwrap()
    }

    fn encode(shape: &DocShape, tuple: &Tuple) -> (String, bool) {
        let mut out = Vec::new();
        let complete = shape.encode(tuple, &mut out);
        (String::from_utf8(out).unwrap(), complete)
    }

    #[test]
    fn constant_and_templated_fields_are_added() {
        let rel = relation(
            "items",
            &[("id", 20), ("name", 25), ("sku", 25), ("kind", 25)],
        );
        let config = transform(
            r#"
            drop = ["sku"]
            [fields]
            label = "{name} ({sku}) \"{{new}}\""
            kind = "product"
            rank = 3
            tags = ["a", "b"]
            "#,
        );
        let shape = DocShape::new(&rel, &config);
        let (doc, complete) = encode(
            &shape,
            &tuple(&[Some("7"), Some("Kettle"), Some("K-1"), Some("x")]),
        );
        assert!(complete);
        // `kind` the field replaces `kind` the column.
        assert_eq!(
            doc,
            r#"{"id":7,"name":"Kettle","kind":"product","label":"Kettle (K-1) \"{new}\"","rank":3,"tags":["a","b"]}"#
        );
        let value: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(value["label"], "Kettle (K-1) \"{new}\"");
        // NULL renders as nothing; an unchanged TOAST value leaves the field
        // out of a partial document.
        let (doc, _) = encode(
            &shape,
            &tuple(&[Some("7"), Some("Kettle"), None, Some("x")]),
        );
        assert!(doc.contains(r#""label":"Kettle () \"{new}\"""#), "{doc}");
        let (doc, complete) = encode(
            &shape,
            &tuple(&[Some("7"), Some(UNCHANGED), Some("K-1"), None]),
        );
        assert!(!complete);
        assert_eq!(
            doc,
            r#"{"id":7,"kind":"product","rank":3,"tags":["a","b"]}"#
        );
        serde_json::from_str::<serde_json::Value>(&doc).unwrap();
    }

    #[test]
    fn added_fields_alone_and_unknown_columns() {
        let rel = relation("items", &[("id", 20)]);
        let config = transform(
            r#"
            keep = []
            fields = { a = "{nope}!", b = "x" }
            "#,
        );
        let named = config.named_columns();
        assert_eq!(
            named[0],
            ("transform.fields.a".to_owned(), "nope".to_owned())
        );
        assert!(rel.require_column(&named[0].0, &named[0].1).is_err());
        let shape = DocShape::new(&rel, &config);
        let (doc, _) = encode(&shape, &tuple(&[Some("1")]));
        assert_eq!(doc, r#"{"a":"!","b":"x"}"#);
        let config = transform(r#"fields = { a = "{id}" }"#);
        let shape = DocShape::new(&rel, &config);
        let (doc, complete) = encode(&shape, &tuple(&[Some(UNCHANGED)]));
        assert_eq!((doc.as_str(), complete), ("{}", false));
    }

    #[test]
    fn a_path_makes_the_document_from_a_column() {
        let rel = relation("items", &[("id", 20), ("payload", 3802), ("note", 25)]);
        let doc_at = |path: &str, values: &[Option<&str>]| {
            let shape = DocShape::new(&rel, &transform(&format!("path = \"{path}\"")));
            encode(&shape, &tuple(values))
        };
        let payload = r#"{"product": {"name": "Kettle", "tags": ["a", "b"]}, "n": 2}"#;
        let values = [Some("7"), Some(payload), Some("plain \"text\"")];
        // An object is the document as it is.
        assert_eq!(
            doc_at("record.payload", &values),
            (payload.to_owned(), true)
        );
        assert_eq!(
            doc_at("record.payload.product", &values).0,
            r#"{"name": "Kettle", "tags": ["a", "b"]}"#
        );
        // Other values become a document of one field.
        assert_eq!(doc_at("record.payload.n", &values).0, r#"{"n":2}"#);
        assert_eq!(
            doc_at("record.payload.product.tags.1", &values).0,
            r#"{"1":"b"}"#
        );
        assert_eq!(
            doc_at("record.payload.missing", &values).0,
            r#"{"missing":null}"#
        );
        assert_eq!(doc_at("record.id", &values).0, r#"{"id":7}"#);
        assert_eq!(
            doc_at("record.note", &values).0,
            r#"{"note":"plain \"text\""}"#
        );
        assert_eq!(doc_at("record.note.x", &values).0, r#"{"x":null}"#);
        assert_eq!(doc_at("record.nope", &values).0, r#"{"nope":null}"#);
        // NULL, a JSON array, an unchanged TOAST value.
        assert_eq!(
            doc_at("record.payload", &[Some("7"), None, None]).0,
            r#"{"payload":null}"#
        );
        assert_eq!(
            doc_at("record.payload", &[Some("7"), Some("[1, 2]"), None]).0,
            r#"{"payload":[1,2]}"#
        );
        assert_eq!(
            doc_at("record.payload", &[Some("7"), Some(UNCHANGED), None]),
            ("{}".to_owned(), false)
        );
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(
            PathShape::parse("record.payload.a").unwrap(),
            PathShape {
                column: "payload".into(),
                keys: vec!["a".into()]
            }
        );
        for (path, error) in [
            ("payload", "`payload` must start with `record.`, such as record.payload"),
            ("record", "a path of just `record` is the row, the default: name a column, such as record.payload"),
            ("record..a", "`record..a` has an empty part"),
            ("record.a.", "`record.a.` has an empty part"),
        ] {
            assert_eq!(PathShape::parse(path).unwrap_err(), error);
        }
    }
}
