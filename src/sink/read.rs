//! Reading an index back, for `verify`: every document in pages, and some
//! by id. Each engine returns documents in its own form; a reader also
//! gives the form a document sluice writes takes in its engine, so both
//! sides of a comparison are alike.

use std::borrow::Cow;

use crate::error::Result;

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
}
