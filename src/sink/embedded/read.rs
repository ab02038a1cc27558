//! Reading an embedded index back (`verify`): every live document of a
//! searcher's segments, block by block from the doc store, on a thread of
//! its own; and documents by id.

use std::path::Path;

use tantivy::collector::DocSetCollector;
use tantivy::query::TermSetQuery;
use tantivy::schema::Value;
use tantivy::{Index, IndexReader, ReloadPolicy, TantivyDocument, Term};
use tokio::sync::mpsc;

use super::{index_dir, schema};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::read::StoredDoc;

/// Documents per page.
const PAGE: usize = 2048;

pub struct Reader {
    /// `None`: the index does not exist (yet), so it holds nothing.
    open: Option<(IndexReader, schema::Fields)>,
    pages: Option<mpsc::Receiver<Result<Vec<StoredDoc>>>>,
}

fn error(index: &str, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("cannot read embedded index {index}: {e}"),
    )
}

impl Reader {
    pub fn open(data_dir: &Path, name: &str) -> Result<Reader> {
        let dir = index_dir(data_dir, name);
        if !dir.join("meta.json").exists() {
            return Ok(Reader {
                open: None,
                pages: None,
            });
        }
        let index = Index::open_in_dir(&dir).map_err(|e| error(name, e))?;
        let fields = schema::fields(&index).map_err(|e| error(name, e))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| error(name, e))?;
        let (tx, rx) = mpsc::channel(4);
        let searcher = reader.searcher();
        let name = name.to_owned();
        std::thread::Builder::new()
            .name("verify-read".into())
            .spawn(move || {
                if let Err(e) = send_all(&searcher, fields, &tx) {
                    let _ = tx.blocking_send(Err(error(&name, e)));
                }
            })
            .map_err(|e| Error::io("cannot start a thread", e))?;
        Ok(Reader {
            open: Some((reader, fields)),
            pages: Some(rx),
        })
    }
}

/// Every live document of `searcher`, in pages; stops early when the
/// receiver is gone.
fn send_all(
    searcher: &tantivy::Searcher,
    fields: schema::Fields,
    tx: &mpsc::Sender<Result<Vec<StoredDoc>>>,
) -> tantivy::Result<()> {
    let mut page = Vec::with_capacity(PAGE);
    for segment in searcher.segment_readers() {
        let store = segment.get_store_reader(1)?;
        for doc in store.iter::<TantivyDocument>(segment.alive_bitset()) {
            page.extend(stored(&doc?, fields));
            if page.len() == PAGE {
                let full = std::mem::replace(&mut page, Vec::with_capacity(PAGE));
                if tx.blocking_send(Ok(full)).is_err() {
                    return Ok(());
                }
            }
        }
    }
    if !page.is_empty() {
        let _ = tx.blocking_send(Ok(page));
    }
    Ok(())
}

fn stored(doc: &TantivyDocument, fields: schema::Fields) -> Option<StoredDoc> {
    let id = doc.get_first(fields.id)?.as_str()?;
    let source = doc.get_first(fields.source)?.as_str()?;
    Some(StoredDoc {
        id: id.to_owned(),
        source: source.as_bytes().to_vec(),
    })
}

#[async_trait::async_trait]
impl crate::sink::read::IndexReader for Reader {
    async fn page(&mut self) -> Result<Option<Vec<StoredDoc>>> {
        let Some(pages) = self.pages.as_mut() else {
            return Ok(None);
        };
        match pages.recv().await {
            Some(page) => page.map(Some),
            None => {
                self.pages = None;
                Ok(None)
            }
        }
    }

    async fn fetch(&mut self, ids: &[String]) -> Result<Vec<StoredDoc>> {
        let Some((reader, fields)) = self.open.clone() else {
            return Ok(Vec::new());
        };
        let ids = ids.to_vec();
        let read = move || -> tantivy::Result<Vec<StoredDoc>> {
            reader.reload()?;
            let searcher = reader.searcher();
            let terms = ids.iter().map(|id| Term::from_field_text(fields.id, id));
            let found = searcher.search(&TermSetQuery::new(terms), &DocSetCollector)?;
            let mut docs = Vec::with_capacity(found.len());
            for address in found {
                let doc: TantivyDocument = searcher.doc(address)?;
                docs.extend(stored(&doc, fields));
            }
            Ok(docs)
        };
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("index read stopped: {e}")))?
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot read embedded index: {e}")))
    }
}
