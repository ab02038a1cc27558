//! Searching embedded indexes (`sluice search`), from any process.

use std::path::Path;

use tantivy::collector::{Count, TopDocs};
use tantivy::query::{AllQuery, Query, QueryParser};
use tantivy::schema::Value;
use tantivy::{Index, TantivyDocument};

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
        let parser = QueryParser::for_index(&index, vec![fields.all, fields.doc]);
        parser.parse_query(query).map_err(|e| {
            Error::new(ErrorKind::Config, format!("invalid query `{query}`: {e}"))
                .hint("examples: `shoe`, `name:shoe`, `price:[10 TO 20]`, `*`")
        })?
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
