//! Searching embedded indexes (`sluice search`), from any process.

use std::path::Path;

use std::collections::BTreeSet;

use tantivy::collector::{Count, TopDocs};
use tantivy::columnar::{ColumnType, ColumnarReader};
use tantivy::index::SegmentComponent;
use tantivy::query::{AllQuery, Query, QueryParser};
use tantivy::query_grammar::{
    Occur, UserInputAst, UserInputBound, UserInputLeaf, UserInputLiteral,
};
use tantivy::schema::{Field, Schema, Value};
use tantivy::{Index, Searcher, TantivyDocument};

use super::{index_dir, schema};
use crate::error::{Error, ErrorKind, Result};

/// What a search found.
#[derive(Debug)]
pub struct SearchResult {
    /// How many documents match in all.
    pub total: usize,
    /// Up to `limit` of them, as JSON.
    pub documents: Vec<String>,
}

/// Runs `query` (tantivy query syntax; `*` matches all) on index `name`.
pub fn search(data_dir: &Path, name: &str, query: &str, limit: usize) -> Result<SearchResult> {
    let dir = index_dir(data_dir, name);
    if !dir.join("meta.json").exists() {
        let known = list_indexes(data_dir).join(", ");
        return Err(Error::new(
            ErrorKind::Config,
            format!("no index `{name}` in {}", data_dir.display()),
        )
        .hint(if known.is_empty() {
            "no index exists yet: has `sluice run` written anything to this data directory?"
                .to_owned()
        } else {
            format!("existing indexes: {known}")
        }));
    }
    let err = |e: tantivy::TantivyError| {
        Error::new(ErrorKind::Io, format!("cannot search index {name}: {e}"))
    };
    let index = Index::open_in_dir(&dir).map_err(err)?;
    let fields = schema::fields(&index).map_err(err)?;
    let reader = index.reader().map_err(err)?;
    let searcher = reader.searcher();
    let parsed: Box<dyn Query> = if query.trim() == "*" || query.trim().is_empty() {
        Box::new(AllQuery)
    } else {
        let invalid = |e: &dyn std::fmt::Display| {
            Error::new(ErrorKind::Config, format!("invalid query `{query}`: {e}"))
                .hint("examples: `shoe`, `name:shoe`, `price:[10 TO 20]`, `*`")
        };
        let ast =
            tantivy::query_grammar::parse_query(query).map_err(|_| invalid(&"syntax error"))?;
        let paths: Vec<String> = doc_paths(&searcher, fields.doc)
            .map_err(err)?
            .into_iter()
            .collect();
        let numbers = match fields.numbers {
            Some(_) => number_paths(&index).map_err(err)?,
            None => NumberPaths::default(),
        };
        let parser = QueryParser::for_index(&index, vec![fields.doc]);
        parser
            .build_query_from_user_input_ast(
                Rewrite {
                    paths: &paths,
                    numbers: &numbers,
                    schema: &index.schema(),
                }
                .ast(ast)
                .map_err(|e| invalid(&e))?,
            )
            .map_err(|e| invalid(&e))?
    };
    let (total, top) = searcher
        .search(&parsed, &(Count, TopDocs::with_limit(limit.max(1))))
        .map_err(err)?;
    let mut documents = Vec::with_capacity(top.len().min(limit));
    for (_, address) in top.into_iter().take(limit) {
        let doc: TantivyDocument = searcher.doc(address).map_err(err)?;
        if let Some(source) = doc.get_first(fields.source).and_then(|v| v.as_str()) {
            documents.push(source.to_owned());
        }
    }
    Ok(SearchResult { total, documents })
}

/// Every path of the `doc` field that the index holds, as the query parser
/// names it (`doc.name`, `doc.attributes.origin`). Terms are sorted by path,
/// so one seek per path and type finds them all.
fn doc_paths(searcher: &Searcher, doc: Field) -> tantivy::Result<BTreeSet<String>> {
    const END_OF_PATH: u8 = 0;
    const SEGMENT_SEPARATOR: u8 = 1;
    let mut paths = BTreeSet::new();
    for segment in searcher.segment_readers() {
        let inverted = segment.inverted_index(doc)?;
        let mut from: Vec<u8> = Vec::new();
        loop {
            let mut stream = inverted.terms().range().ge(&from).into_stream()?;
            if !stream.advance() {
                break;
            }
            // A term is the path, END_OF_PATH, a type code, then the value.
            let key = stream.key();
            let Some(end) = key.iter().position(|&b| b == END_OF_PATH) else {
                break;
            };
            let Some(&kind) = key.get(end + 1) else {
                break;
            };
            let path: String = String::from_utf8_lossy(&key[..end])
                .chars()
                .map(|c| {
                    if c as u32 == SEGMENT_SEPARATOR as u32 {
                        '.'
                    } else {
                        c
                    }
                })
                .collect();
            if !path.is_empty() {
                paths.insert(format!("{}.{path}", schema::DOC));
            }
            // Past every value of this path and type.
            from.clear();
            from.extend_from_slice(&key[..=end]);
            match kind.checked_add(1) {
                Some(next) => from.push(next),
                None => break,
            }
        }
    }
    Ok(paths)
}

/// The paths of the `_num` field's columns (`price`, `dims.weight`).
#[derive(Default)]
struct NumberPaths {
    /// Paths holding numbers.
    numbers: BTreeSet<String>,
    /// Paths holding timestamps.
    dates: BTreeSet<String>,
}

/// Lists `_num`'s columns from each segment's columnar dictionary. Column
/// names are the field's name and the path, separated as the JSON path's
/// segments are.
fn number_paths(index: &Index) -> tantivy::Result<NumberPaths> {
    const SEGMENT_SEPARATOR: char = '\u{1}';
    let prefix = format!("{}{SEGMENT_SEPARATOR}", schema::NUMBERS);
    let mut paths = NumberPaths::default();
    for segment in index.searchable_segments()? {
        // A segment merged away since the list was read has no files left;
        // the segment it went into is listed next time.
        let Ok(file) = segment.open_read(SegmentComponent::FastFields) else {
            continue;
        };
        let columnar = ColumnarReader::open(file)?;
        for (name, handle) in columnar.iter_columns()? {
            let Some(path) = name.strip_prefix(&prefix) else {
                continue;
            };
            let kind = match handle.column_type() {
                ColumnType::I64 | ColumnType::U64 | ColumnType::F64 => &mut paths.numbers,
                ColumnType::DateTime => &mut paths.dates,
                _ => continue,
            };
            kind.insert(path.replace(SEGMENT_SEPARATOR, "."));
        }
    }
    Ok(paths)
}

/// A parsed query as the index can answer it.
struct Rewrite<'a> {
    /// Every path of `doc`, for terms that name no field.
    paths: &'a [String],
    /// The paths of `_num`'s columns: numbers and timestamps are found
    /// there, not among `doc`'s terms.
    numbers: &'a NumberPaths,
    schema: &'a Schema,
}

impl Rewrite<'_> {
    /// `ast` with every term that names no field searching each path of
    /// `doc`, and fields that are not sluice's own read as paths of `doc`
    /// (`price:[10 TO 20]` as `doc.price:[10 TO 20]`).
    fn ast(&self, ast: UserInputAst) -> std::result::Result<UserInputAst, String> {
        Ok(match ast {
            UserInputAst::Clause(clauses) => UserInputAst::Clause(
                clauses
                    .into_iter()
                    .map(|(occur, ast)| {
                        let (occur, ast) = unwrap_single(occur, ast);
                        Ok((occur, self.ast(ast)?))
                    })
                    .collect::<std::result::Result<_, String>>()?,
            ),
            UserInputAst::Boost(ast, boost) => {
                UserInputAst::Boost(Box::new(self.ast(*ast)?), boost)
            }
            UserInputAst::Leaf(leaf) => self.leaf(*leaf)?,
        })
    }

    fn leaf(&self, leaf: UserInputLeaf) -> std::result::Result<UserInputAst, String> {
        let leaf = match leaf {
            UserInputLeaf::Literal(literal) => {
                // A prefix matches no number exactly.
                let values = if literal.prefix {
                    &[][..]
                } else {
                    std::slice::from_ref(&literal.phrase)
                };
                return Ok(
                    self.matching(literal.field_name.as_deref(), values, |field_name| {
                        UserInputLeaf::Literal(UserInputLiteral {
                            field_name,
                            ..literal.clone()
                        })
                    }),
                );
            }
            UserInputLeaf::Set { field, elements } => {
                return Ok(self.matching(field.as_deref(), &elements, |field| {
                    UserInputLeaf::Set {
                        field,
                        elements: elements.clone(),
                    }
                }));
            }
            UserInputLeaf::Range {
                field,
                lower,
                upper,
            } => {
                let (lower, upper) = range_bounds(lower, upper)?;
                UserInputLeaf::Range {
                    field: field.map(|f| self.range_field(f)),
                    lower,
                    upper,
                }
            }
            UserInputLeaf::Exists { field } => UserInputLeaf::Exists {
                field: self.field(field),
            },
            other => other,
        };
        Ok(UserInputAst::Leaf(Box::new(leaf)))
    }

    /// `on(field)` for the field a query names (`None`: every path of
    /// `doc`), or else a match of exactly one of `values` that is a number
    /// or a timestamp in `_num`'s columns (of that field, or of every path
    /// holding its kind).
    fn matching(
        &self,
        field: Option<&str>,
        values: &[String],
        on: impl Fn(Option<String>) -> UserInputLeaf,
    ) -> UserInputAst {
        let mut leaves: Vec<UserInputLeaf> = match field {
            Some(name) => vec![on(Some(self.field(name.to_owned())))],
            None => self
                .paths
                .iter()
                .map(|path| on(Some(path.clone())))
                .collect(),
        };
        for value in values {
            let Some(kind) = bound_kind(value) else {
                continue;
            };
            match field {
                Some(name) if self.schema.get_field(schema::NUMBERS).is_ok() => {
                    let column = self.path_in(schema::NUMBERS, name.to_owned());
                    // sluice's own fields keep their name.
                    if column != name {
                        leaves.push(exactly(column, value));
                    }
                }
                Some(_) => {}
                None => {
                    let paths = if kind == BoundKind::Date {
                        &self.numbers.dates
                    } else {
                        &self.numbers.numbers
                    };
                    leaves.extend(
                        paths
                            .iter()
                            .map(|path| exactly(format!("{}.{path}", schema::NUMBERS), value)),
                    );
                }
            }
        }
        match leaves.len() {
            // An index without paths yet: as parsed.
            0 => UserInputAst::Leaf(Box::new(on(None))),
            1 => UserInputAst::Leaf(Box::new(leaves.pop().expect("one leaf"))),
            _ => UserInputAst::Clause(
                leaves
                    .into_iter()
                    .map(|leaf| (Some(Occur::Should), UserInputAst::Leaf(Box::new(leaf))))
                    .collect(),
            ),
        }
    }

    /// A field a query names: sluice's own (`_id`), or a path of `doc`.
    fn field(&self, name: String) -> String {
        self.path_in(schema::DOC, name)
    }

    /// A field a range names: sluice's own, or a path of the fast columns
    /// (`_num`, or `doc` in indexes older than `_num`).
    fn range_field(&self, name: String) -> String {
        if self.schema.get_field(schema::NUMBERS).is_ok() {
            self.path_in(schema::NUMBERS, name)
        } else {
            self.field(name)
        }
    }

    fn path_in(&self, object: &str, name: String) -> String {
        let first = name.split('.').next().unwrap_or_default();
        if self.schema.get_field(first).is_ok() {
            name
        } else {
            format!("{object}.{name}")
        }
    }
}

/// A range holding only `value`, in the fast column `field`.
fn exactly(field: String, value: &str) -> UserInputLeaf {
    UserInputLeaf::Range {
        field: Some(field),
        lower: UserInputBound::Inclusive(value.to_owned()),
        upper: UserInputBound::Inclusive(value.to_owned()),
    }
}

/// The kind of a range bound, as the query parser reads it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BoundKind {
    I64,
    U64,
    F64,
    Date,
}

fn bound_kind(value: &str) -> Option<BoundKind> {
    use tantivy::time::{format_description::well_known::Rfc3339, OffsetDateTime};
    if value.parse::<i64>().is_ok() {
        Some(BoundKind::I64)
    } else if value.parse::<u64>().is_ok() {
        Some(BoundKind::U64)
    } else if value.parse::<f64>().is_ok() {
        Some(BoundKind::F64)
    } else if OffsetDateTime::parse(value, &Rfc3339).is_ok() {
        Some(BoundKind::Date)
    } else {
        None
    }
}

/// The bounds of a range as the fast columns can compare them: numbers or
/// timestamps (the columns hold no text), both of one kind. The parser reads
/// `[1.5 TO 3]` as a float and an integer, which tantivy cannot compare; such
/// bounds are both written as floats.
fn range_bounds(
    lower: UserInputBound,
    upper: UserInputBound,
) -> std::result::Result<(UserInputBound, UserInputBound), String> {
    let value = |bound: &UserInputBound| match bound {
        UserInputBound::Inclusive(v) | UserInputBound::Exclusive(v) => Some(v.clone()),
        UserInputBound::Unbounded => None,
    };
    let mut kinds = Vec::with_capacity(2);
    for value in [value(&lower), value(&upper)].into_iter().flatten() {
        match bound_kind(&value) {
            Some(kind) => kinds.push(kind),
            None => {
                return Err(format!(
                    "a range compares numbers or timestamps (RFC 3339), and `{value}` is neither"
                ))
            }
        }
    }
    match kinds.as_slice() {
        [a, b] if a != b => {
            if kinds.contains(&BoundKind::Date) {
                return Err("a range compares a timestamp with a timestamp, not a number".into());
            }
            let float = |bound: UserInputBound| match bound {
                UserInputBound::Inclusive(v) => UserInputBound::Inclusive(as_float(&v)),
                UserInputBound::Exclusive(v) => UserInputBound::Exclusive(as_float(&v)),
                UserInputBound::Unbounded => UserInputBound::Unbounded,
            };
            Ok((float(lower), float(upper)))
        }
        _ => Ok((lower, upper)),
    }
}

/// A number as the parser reads a float (`3` as `3.0`).
fn as_float(value: &str) -> String {
    let number: f64 = value.parse().expect("checked to be a number");
    format!("{number:?}")
}

/// A clause of one term as that term: the parser reads `a AND NOT b` as
/// `+a +(-b)`, and a clause holding only a negation matches nothing.
fn unwrap_single(occur: Option<Occur>, ast: UserInputAst) -> (Option<Occur>, UserInputAst) {
    match ast {
        UserInputAst::Clause(mut inner) if inner.len() == 1 => {
            let (inner_occur, inner_ast) = inner.pop().expect("one clause");
            let occur = match (occur, inner_occur) {
                (Some(outer), Some(inner)) => Some(Occur::compose(outer, inner)),
                (outer, None) => outer,
                (None, inner) => inner,
            };
            unwrap_single(occur, inner_ast)
        }
        ast => (occur, ast),
    }
}

/// The names of the indexes in a data directory.
pub fn list_indexes(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("indexes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("meta.json").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lsn::Lsn;
    use crate::model::write::{WriteAction, WriteOp};
    use crate::sink::embedded::EmbeddedSink;
    use crate::sink::http::DEFAULT_MAX_DOCUMENT_BYTES;
    use crate::sink::Sink;

    fn upsert(id: &str, doc: &str) -> WriteOp {
        WriteOp {
            index: Arc::from("items"),
            table: Arc::from("public.items"),
            id: id.into(),
            lsn: Lsn(10),
            action: WriteAction::Upsert {
                doc: doc.as_bytes().to_vec(),
                partial: false,
                fresh: true,
            },
            routing: None,
        }
    }

    fn ids(dir: &Path, query: &str) -> Vec<String> {
        let found = search(dir, "items", query, 10).unwrap();
        let mut ids: Vec<String> = found
            .documents
            .iter()
            .map(|d| {
                let doc: serde_json::Value = serde_json::from_str(d).unwrap();
                doc["id"].to_string()
            })
            .collect();
        ids.sort();
        assert_eq!(ids.len(), found.total);
        ids
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn words_without_a_field_search_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = EmbeddedSink::open("e", dir.path(), DEFAULT_MAX_DOCUMENT_BYTES).unwrap();
        sink.write(&[
            upsert("1", r#"{"id":1,"name":"red lamp","price":12}"#),
            upsert(
                "2",
                r#"{"id":2,"name":"blue chair","tags":["red","wood"],"dims":{"weight":2.5}}"#,
            ),
            upsert(
                "3",
                r#"{"id":3,"name":"desk","attributes":{"colour":"dark red lamp"},"made":"2024-05-01T10:00:00Z"}"#,
            ),
            upsert("4", r#"{"id":4,"name":"shelf","price":40,"note":null}"#),
        ])
        .await
        .unwrap();
        sink.commit(Lsn(20)).await.unwrap();
        let dir = dir.path();
        assert_eq!(ids(dir, "red"), ["1", "2", "3"]);
        assert_eq!(ids(dir, "RED"), ["1", "2", "3"]);
        assert_eq!(ids(dir, r#""red lamp""#), ["1", "3"]);
        assert_eq!(ids(dir, "+red +wood"), ["2"]);
        assert_eq!(ids(dir, "red AND NOT lamp"), ["2"]);
        assert_eq!(ids(dir, "40"), ["4"]);
        // Numbers and timestamps match exactly through `_num`'s columns.
        assert_eq!(ids(dir, "12"), ["1"]);
        assert_eq!(ids(dir, "2.5"), ["2"]);
        assert_eq!(ids(dir, "price:12"), ["1"]);
        assert_eq!(ids(dir, "price:12.0"), ["1"]);
        assert_eq!(ids(dir, "id:3"), ["3"]);
        assert_eq!(ids(dir, "dims.weight:2.5"), ["2"]);
        assert_eq!(ids(dir, r#"made:"2024-05-01T10:00:00Z""#), ["3"]);
        assert_eq!(ids(dir, r#""2024-05-01T12:00:00+02:00""#), ["3"]);
        assert_eq!(ids(dir, "id: IN [1 4 9]"), ["1", "4"]);
        assert_eq!(ids(dir, "IN [2 shelf]"), ["2", "4"]);
        assert_eq!(ids(dir, "price:12 OR name:desk"), ["1", "3"]);
        assert_eq!(ids(dir, "+price:40 -name:shelf"), Vec::<String>::new());
        assert_eq!(ids(dir, "price:13"), Vec::<String>::new());
        // sluice's own fields are not looked for among the numbers.
        assert_eq!(ids(dir, "_id:4"), ["4"]);
        assert_eq!(ids(dir, "IN [shelf desk]"), ["3", "4"]);
        assert_eq!(ids(dir, "name:red"), ["1"]);
        assert_eq!(ids(dir, "attributes.colour:dark"), ["3"]);
        assert_eq!(ids(dir, "price:[10 TO 20]"), ["1"]);
        assert_eq!(ids(dir, "price:>=12"), ["1", "4"]);
        assert_eq!(ids(dir, "dims.weight:[1.5 TO 3]"), ["2"]);
        assert_eq!(ids(dir, "made:[2024-01-01T00:00:00Z TO *]"), ["3"]);
        assert_eq!(ids(dir, "name:[1 TO 5]"), Vec::<String>::new());
        assert_eq!(ids(dir, "price:[11.5 TO 40}"), ["1"]);
        assert_eq!(ids(dir, "price:[-1 TO 18446744073709551615]"), ["1", "4"]);
        assert_eq!(ids(dir, "made:>=2024-01-01T00:00:00Z"), ["3"]);
        assert_eq!(ids(dir, "made:[1 TO 5]"), Vec::<String>::new());
        assert_eq!(
            ids(dir, "price:[2024-01-01T00:00:00Z TO *]"),
            Vec::<String>::new()
        );
        let error = search(dir, "items", "made:[2024-01-01T00:00:00Z TO 5]", 10).unwrap_err();
        assert!(error.to_string().contains("not a number"), "{error}");
        let error = search(dir, "items", "name:[a TO c]", 10).unwrap_err();
        assert!(error.to_string().contains("`a` is neither"), "{error}");
        assert_eq!(ids(dir, "nowhere"), Vec::<String>::new());
        let error = search(dir, "items", "name:(", 10).unwrap_err();
        assert!(error.to_string().contains("invalid query"), "{error}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_empty_index_finds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = EmbeddedSink::open("e", dir.path(), DEFAULT_MAX_DOCUMENT_BYTES).unwrap();
        sink.write(&[upsert("1", r#"{"id":1}"#)]).await.unwrap();
        sink.commit(Lsn(20)).await.unwrap();
        assert_eq!(ids(dir.path(), "anything"), Vec::<String>::new());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn indexes_with_a_catch_all_field_keep_it() {
        use tantivy::schema::{Schema, STORED, STRING, TEXT};
        let dir = tempfile::tempdir().unwrap();
        // An index as sluice 0.1 created it.
        let mut builder = Schema::builder();
        builder.add_text_field("_id", STRING | STORED);
        builder.add_text_field("_table", STRING);
        builder.add_text_field("_source", STORED);
        builder.add_u64_field("_lsn", STORED);
        builder.add_json_field(schema::DOC, TEXT);
        let all = builder.add_text_field("_all", TEXT);
        let index_path = index_dir(dir.path(), "items");
        std::fs::create_dir_all(&index_path).unwrap();
        Index::create_in_dir(&index_path, builder.build()).unwrap();
        let mut sink = EmbeddedSink::open("e", dir.path(), DEFAULT_MAX_DOCUMENT_BYTES).unwrap();
        sink.write(&[upsert("1", r#"{"id":1,"name":"red lamp"}"#)])
            .await
            .unwrap();
        sink.commit(Lsn(20)).await.unwrap();
        assert_eq!(ids(dir.path(), "lamp"), ["1"]);
        let index = Index::open_in_dir(&index_path).unwrap();
        let searcher = index.reader().unwrap().searcher();
        let term = tantivy::Term::from_field_text(all, "lamp");
        assert_eq!(searcher.doc_freq(&term).unwrap(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn indexes_without_a_number_field_range_over_doc() {
        use tantivy::schema::{
            IndexRecordOption, JsonObjectOptions, Schema, TextFieldIndexing, STORED, STRING,
        };
        let dir = tempfile::tempdir().unwrap();
        // An index as sluice created it before `_num`: `doc` is fast.
        let mut builder = Schema::builder();
        builder.add_text_field("_id", STRING | STORED);
        builder.add_text_field("_table", STRING);
        builder.add_text_field("_source", STORED);
        builder.add_u64_field("_lsn", STORED);
        let indexing = TextFieldIndexing::default()
            .set_tokenizer("default")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions);
        let json = JsonObjectOptions::default()
            .set_indexing_options(indexing)
            .set_expand_dots_enabled()
            .set_fast(None);
        builder.add_json_field(schema::DOC, json);
        let index_path = index_dir(dir.path(), "items");
        std::fs::create_dir_all(&index_path).unwrap();
        Index::create_in_dir(&index_path, builder.build()).unwrap();
        let mut sink = EmbeddedSink::open("e", dir.path(), DEFAULT_MAX_DOCUMENT_BYTES).unwrap();
        sink.write(&[
            upsert("1", r#"{"id":1,"price":12}"#),
            upsert("2", r#"{"id":2,"price":40}"#),
        ])
        .await
        .unwrap();
        sink.commit(Lsn(20)).await.unwrap();
        assert_eq!(ids(dir.path(), "price:[10 TO 20]"), ["1"]);
        // Their numbers are terms of `doc`.
        assert_eq!(ids(dir.path(), "price:12"), ["1"]);
        assert_eq!(ids(dir.path(), "40"), ["2"]);
    }
}
