//! Reading an index back, for `verify`: every document in pages, and some
//! by id. Each engine returns documents in its own form; a reader also
//! gives the form a document sluice writes takes in its engine, so both
//! sides of a comparison are alike.

use std::borrow::Cow;

use crate::error::{Error, ErrorKind, Result};

/// One document as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDoc {
    pub id: String,
    /// The document's JSON, as the engine returns it.
    pub source: Vec<u8>,
}

/// Reads one index of a sink.
#[async_trait::async_trait]
pub trait IndexReader: Send + Sync {
    /// The next page of documents, in no particular order; `None` after
    /// the last. Each document comes once, as it was when the reading
    /// started or later.
    async fn page(&mut self) -> Result<Option<Vec<StoredDoc>>>;

    /// The documents with these ids that the index holds now.
    async fn fetch(&mut self, ids: &[String]) -> Result<Vec<StoredDoc>>;

    /// What `doc`, written with `id`, looks like when this engine returns
    /// it (an engine that adds the id as a field has it here too).
    fn as_stored<'a>(&self, doc: &'a [u8], _id: &str) -> Cow<'a, [u8]> {
        Cow::Borrowed(doc)
    }

    /// How the documents of this table were routed (Elasticsearch/OpenSearch
    /// place a document by its routing value, and find it by id only with
    /// it); engines that do not route ignore it.
    fn route_by(&mut self, _routing: RoutingOf) {}
}

/// The routing value of a document by its id (one of its key values).
pub type RoutingOf = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Splits a streamed body of JSON lines into pages of documents, the id of
/// each read from its `id` member (a string).
pub struct JsonLines {
    response: Option<reqwest::Response>,
    pending: bytes::BytesMut,
    /// Where the lines come from, for errors.
    what: String,
}

/// Documents per page of `JsonLines`.
const LINES_PER_PAGE: usize = 1024;

impl JsonLines {
    pub fn new(response: Option<reqwest::Response>, what: String) -> JsonLines {
        JsonLines {
            response,
            pending: bytes::BytesMut::new(),
            what,
        }
    }

    /// The next page; `None` after the last.
    pub async fn page(&mut self) -> Result<Option<Vec<StoredDoc>>> {
        let mut page = Vec::new();
        while page.len() < LINES_PER_PAGE {
            let Some(response) = self.response.as_mut() else {
                break;
            };
            let chunk = response.chunk().await.map_err(|e| {
                Error::new(
                    ErrorKind::Sink,
                    format!("reading {} stopped: {e}", self.what),
                )
            })?;
            match chunk {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => {
                    self.response = None;
                    self.pending.extend_from_slice(b"\n");
                }
            }
            while let Some(end) = memchr::memchr(b'\n', &self.pending) {
                let line = self.pending.split_to(end + 1);
                let line = line[..end].trim_ascii();
                if !line.is_empty() {
                    let doc = line_document(line).map_err(|e| {
                        Error::new(
                            ErrorKind::Sink,
                            format!(
                                "{} holds a line that is not a document with a string id: {e}",
                                self.what
                            ),
                        )
                    })?;
                    page.push(doc);
                }
            }
        }
        Ok((!page.is_empty()).then_some(page))
    }
}

/// One line of JSON lines as a document, its id from its `id` member.
pub(crate) fn line_document(line: &[u8]) -> std::result::Result<StoredDoc, String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    let Id { id } = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    Ok(StoredDoc {
        id,
        source: line.to_vec(),
    })
}
