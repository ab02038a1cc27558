//! The embedded sink: a tantivy index per index name under
//! `<data_dir>/indexes/<name>`. Upserts and deletes by document id; each commit
//! stores the position it covers, so a restart knows where every index stands
//! and skips changes it already holds. Other processes can read the indexes
//! while sluice writes (`sluice search`).

mod delete;
mod directory;
mod document;
mod known;
mod queue;
pub mod read;
mod schema;
pub mod search;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tantivy::collector::TopDocs;
use tantivy::indexer::LogMergePolicy;
use tantivy::query::TermQuery;
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};

use known::KnownIds;
use queue::{Queue, Queued};

pub use schema::Fields;

use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::model::write::{WriteAction, WriteOp};
use crate::sink::failed::{FailedMessage, FailedStore};
use crate::sink::http::DEFAULT_MAX_PARKED;

/// Deletes tantivy holds (under 100 bytes each, see `delete`) before an
/// early commit bounds them.
const MAX_PENDING_DELETES: usize = 50_000;

/// Memory the indexing thread of one index may use before it flushes a segment.
const WRITER_MEMORY_BYTES: usize = 32 * 1024 * 1024;

/// Segments of about one size that tantivy merges into one. Every commit
/// makes a segment, so a backfill committed every 50 ms makes thousands of
/// small ones; with tantivy's default of 8, merging them again and again
/// took more CPU than indexing the rows. With 16 a document goes through
/// fewer merges, and a search reads at most twice as many segments.
const SEGMENTS_PER_MERGE: usize = 16;

/// The directory holding the index `name`.
pub fn index_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("indexes").join(name)
}

fn index_error(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Io, format!("{context}: {e}"))
}

struct OpenIndex {
    writer: IndexWriter<Queued>,
    /// How many documents wait in tantivy's indexing queue.
    queue: Queue,
    reader: IndexReader,
    /// The reader's view as of the last commit.
    searcher: Searcher,
    fields: Fields,
    /// The position the last commit covers; older changes are already in.
    committed: Lsn,
    /// The highest commit position of any change the index may hold (early
    /// commits can hold changes beyond `committed`).
    written: Lsn,
    /// Hashes of ids written since the last commit (not yet visible to the reader).
    uncommitted: HashSet<u64>,
    /// The ids the index may hold, committed or not.
    known: KnownIds,
    /// Deletes queued since the last commit; tantivy keeps each until then.
    pending_deletes: usize,
    dirty: bool,
}

pub struct EmbeddedSink {
    name: String,
    data_dir: PathBuf,
    indexes: HashMap<Arc<str>, OpenIndex>,
    parser: document::Parser,
    /// Documents the index refuses, and those larger than `max_document_bytes`.
    failed: FailedStore,
    max_document_bytes: u64,
}

impl EmbeddedSink {
    pub fn open(name: &str, data_dir: &Path, max_document_bytes: u64) -> Result<EmbeddedSink> {
        let dir = data_dir.join("indexes");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        Ok(EmbeddedSink {
            name: name.to_owned(),
            data_dir: data_dir.to_owned(),
            indexes: HashMap::new(),
            parser: document::Parser::default(),
            failed: FailedStore::new(data_dir, name),
            max_document_bytes,
        })
    }

    fn apply(&mut self, op: &WriteOp) -> Result<()> {
        if !self.indexes.contains_key(&op.index) {
            let opened = open_index(&self.data_dir, &op.index)?;
            tracing::info!(index = %op.index, committed = %opened.committed, "opened embedded index");
            self.indexes.insert(op.index.clone(), opened);
        }
        if op.lsn < self.indexes[&op.index].committed {
            // Read again after a restart: the index already holds it.
            return Ok(());
        }
        if !matches!(op.action, WriteAction::Truncate { .. })
            && self
                .failed
                .screen(&self.name, op, self.max_document_bytes)?
        {
            return Ok(());
        }
        let index = self.indexes.get_mut(&op.index).expect("inserted above");
        let f = index.fields;
        let id_term = Term::from_field_text(f.id, &op.id);
        match &op.action {
            WriteAction::Upsert { doc, partial, .. } => {
                let doc = match parse_upsert(&mut self.parser, index, &f, op, doc, *partial)? {
                    Ok(doc) => doc,
                    Err(problem) => {
                        // The index keeps its last version; the write waits
                        // in the failed-message store, with later ones behind it.
                        let message = FailedMessage::for_op(&self.name, op, problem, 1);
                        return self.failed.park(&message);
                    }
                };
                // Every row replaces the document with its id when the index
                // may hold one, inserts too: a row's document can be in the
                // index before its insert is applied (a backfill read the row,
                // or a restart replays the insert after a later write of it),
                // and an insert added beside it left the id twice. A delete
                // costs a lookup in every segment at each commit, so ids the
                // index never held (the filter of known ids says so from
                // memory) are added without one.
                let id_hash = xxhash_rust::xxh3::xxh3_64(op.id.as_bytes());
                if index.may_hold(&id_term, id_hash)? {
                    delete::delete_term(&index.writer, id_term);
                    index.pending_deletes += 1;
                }
                index.queue.wait_for_room();
                index
                    .writer
                    .add_document(index.queue.enter(doc))
                    .map_err(|e| index_error(format!("writing to index {}", op.index), e))?;
                index.uncommitted.insert(id_hash);
                index.known.insert(id_hash);
            }
            WriteAction::Delete => {
                delete::delete_term(&index.writer, id_term);
                index.pending_deletes += 1;
            }
            WriteAction::Truncate { .. } => {
                delete::delete_term(&index.writer, Term::from_field_text(f.table, &op.table));
                tracing::info!(index = %op.index, table = %op.table, "table truncated: its documents are removed");
            }
        }
        index.dirty = true;
        index.written = index.written.max(op.lsn);
        if index.pending_deletes >= MAX_PENDING_DELETES {
            // Durable but not acknowledged: the covered position stays as it was.
            index.commit_now(None)?;
        }
        Ok(())
    }
}

impl OpenIndex {
    /// Whether the index may hold a document with `id_term` (whose id hashes
    /// to `id_hash`): written since the last commit, or in a committed segment
    /// (deleted documents count until merged away, which only costs a delete).
    fn may_hold(&self, id_term: &Term, id_hash: u64) -> Result<bool> {
        if !self.known.may_hold(id_hash) {
            return Ok(false);
        }
        if self.uncommitted.contains(&id_hash) {
            return Ok(true);
        }
        let found = self
            .searcher
            .doc_freq(id_term)
            .map_err(|e| index_error("looking up a document id", e))?;
        Ok(found > 0)
    }

    /// The stored document `id`, as the index holds it (committing first if it
    /// was written since the last commit).
    fn stored(&mut self, id: &str) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
        if self
            .uncommitted
            .contains(&xxhash_rust::xxh3::xxh3_64(id.as_bytes()))
        {
            self.commit_now(None)?;
        }
        let searcher = &self.searcher;
        let query = TermQuery::new(
            Term::from_field_text(self.fields.id, id),
            IndexRecordOption::Basic,
        );
        let top = searcher
            .search(&query, &TopDocs::with_limit(1))
            .map_err(|e| index_error("looking up a document", e))?;
        let Some((_, address)) = top.first() else {
            return Ok(None);
        };
        let doc: TantivyDocument = searcher
            .doc(*address)
            .map_err(|e| index_error("reading a document", e))?;
        let source = doc
            .get_first(self.fields.source)
            .and_then(|v| v.as_str())
            .unwrap_or("{}");
        Ok(serde_json::from_str(source).ok())
    }

    fn commit_now(&mut self, upto: Option<Lsn>) -> Result<()> {
        let started = std::time::Instant::now();
        let mut prepared = self
            .writer
            .prepare_commit()
            .map_err(|e| index_error("committing", e))?;
        let covered = upto.unwrap_or(self.committed).max(self.committed);
        prepared.set_payload(
            &CommitPayload {
                covered,
                written: self.written.max(covered),
            }
            .to_string(),
        );
        let prepare = started.elapsed();
        prepared
            .commit()
            .map_err(|e| index_error("committing", e))?;
        let durable = started.elapsed();
        self.reader
            .reload()
            .map_err(|e| index_error("reloading the index reader", e))?;
        self.searcher = self.reader.searcher();
        tracing::debug!(
            written = self.uncommitted.len(),
            prepare_ms = prepare.as_secs_f64() * 1e3,
            durable_ms = durable.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            segments = self.searcher.segment_readers().len(),
            "index committed"
        );
        self.committed = covered;
        self.uncommitted.clear();
        self.pending_deletes = 0;
        self.dirty = false;
        Ok(())
    }
}

/// What an index commit records: every change below `covered` is in the
/// index, and no change above `written` is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CommitPayload {
    covered: Lsn,
    written: Lsn,
}

impl std::fmt::Display for CommitPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.covered, self.written)
    }
}

impl CommitPayload {
    fn parse(text: &str) -> Option<CommitPayload> {
        let mut parts = text.split_whitespace();
        let covered: Lsn = parts.next()?.parse().ok()?;
        let written = match parts.next() {
            Some(w) => w.parse().ok()?,
            None => covered,
        };
        Some(CommitPayload { covered, written })
    }
}

/// The document of an upsert, merged into the stored one when `partial`;
/// `Ok(Err(why))` when the index cannot take it.
fn parse_upsert(
    parser: &mut document::Parser,
    index: &mut OpenIndex,
    f: &Fields,
    op: &WriteOp,
    doc: &[u8],
    partial: bool,
) -> Result<std::result::Result<TantivyDocument, String>> {
    let not_object = |e: &dyn std::fmt::Display| format!("not a JSON object: {e}");
    let text = match std::str::from_utf8(doc) {
        Ok(text) => text,
        Err(e) => return Ok(Err(not_object(&e))),
    };
    // The document as encoded keeps the table's column order; a merged one
    // is serialized again.
    let mut source = Cow::Borrowed(text);
    if partial {
        if let Some(mut merged) = index.stored(&op.id)? {
            match serde_json::from_str::<serde_json::Map<_, _>>(text) {
                Ok(object) => {
                    merged.extend(object);
                    source = Cow::Owned(serde_json::to_string(&merged).unwrap_or_default());
                }
                Err(e) => return Ok(Err(not_object(&e))),
            }
        }
    }
    Ok(parser.document(f, op, &source).map_err(|e| not_object(&e)))
}

fn open_index(data_dir: &Path, name: &str) -> Result<OpenIndex> {
    let dir = index_dir(data_dir, name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let directory = directory::GroupSyncDirectory::open(&dir)
        .map_err(|e| index_error(format!("opening {}", dir.display()), e))?;
    // An existing index keeps the schema it was created with.
    let opened = match Index::exists(&directory) {
        Ok(true) => Index::open(directory),
        Ok(false) => Index::create(directory, schema::build(), Default::default()),
        Err(e) => Err(e.into()),
    };
    let index = opened.map_err(|e| index_error(format!("opening index {}", dir.display()), e))?;
    let fields = schema::fields(&index).map_err(|e| {
        index_error(
            format!("index {} is not an embedded sluice index", dir.display()),
            e,
        )
    })?;
    schema::register_tokenizers(&index);
    let payload = index
        .load_metas()
        .ok()
        .and_then(|m| m.payload)
        .and_then(|p| CommitPayload::parse(&p))
        .unwrap_or_default();
    let writer = index
        .writer_with_num_threads(1, WRITER_MEMORY_BYTES)
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot write index {}: {e}", dir.display()),
            )
            .hint("another `sluice run` may be writing to this data directory")
        })?;
    let mut merges = LogMergePolicy::default();
    merges.set_min_num_segments(SEGMENTS_PER_MERGE);
    writer.set_merge_policy(Box::new(merges));
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .map_err(|e| index_error("opening an index reader", e))?;
    let searcher = reader.searcher();
    let known = KnownIds::build(&searcher, fields.id, std::iter::empty())
        .map_err(|e| index_error(format!("listing the ids of index {}", dir.display()), e))?;
    Ok(OpenIndex {
        writer,
        queue: Queue::default(),
        searcher,
        reader,
        fields,
        committed: payload.covered,
        written: payload.written,
        uncommitted: HashSet::new(),
        known,
        pending_deletes: 0,
        dirty: false,
    })
}

#[async_trait::async_trait]
impl super::Sink for EmbeddedSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn failed(&mut self) -> Option<&mut FailedStore> {
        Some(&mut self.failed)
    }

    async fn write(&mut self, ops: &[WriteOp]) -> Result<()> {
        tokio::task::block_in_place(|| ops.iter().try_for_each(|op| self.apply(op)))?;
        metrics::counter!("sluice_sink_writes_total", "sink" => self.name.clone())
            .increment(ops.len() as u64);
        Ok(())
    }

    async fn commit(&mut self, upto: Lsn) -> Result<()> {
        tokio::task::block_in_place(|| {
            for index in self.indexes.values_mut() {
                if index.dirty || upto > index.committed {
                    index.commit_now(Some(upto))?;
                }
            }
            Ok::<_, Error>(())
        })?;
        self.failed.wait_below(&self.name, DEFAULT_MAX_PARKED).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::http::DEFAULT_MAX_DOCUMENT_BYTES;

    #[test]
    fn commit_payload_round_trips() {
        let payload = CommitPayload {
            covered: Lsn(0x10),
            written: Lsn(0x2_0000_0020),
        };
        assert_eq!(CommitPayload::parse(&payload.to_string()), Some(payload));
        assert_eq!(
            CommitPayload::parse("0/10"),
            Some(CommitPayload {
                covered: Lsn(0x10),
                written: Lsn(0x10)
            })
        );
        assert_eq!(CommitPayload::parse("garbage"), None);
    }

    fn upsert(id: &str, lsn: u64, doc: &str, partial: bool, fresh: bool) -> WriteOp {
        WriteOp {
            index: Arc::from("items"),
            table: Arc::from("public.items"),
            id: id.into(),
            lsn: Lsn(lsn),
            action: WriteAction::Upsert {
                doc: doc.as_bytes().to_vec(),
                partial,
                fresh,
            },
            routing: None,
        }
    }

    fn all(dir: &Path) -> Vec<String> {
        let mut docs = search::search(dir, "items", "*", 100).unwrap().documents;
        docs.sort();
        docs
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn replays_after_a_restart_neither_duplicate_nor_regress() {
        use crate::sink::Sink;
        let dir = tempfile::tempdir().unwrap();
        let first_run = [
            upsert("9", 50, r#"{"id":9}"#, false, true),
            upsert("1", 200, r#"{"id":1,"a":"x","b":"y"}"#, false, true),
            // Merging needs the stored document: an early commit beyond `covered`.
            upsert("1", 200, r#"{"id":1,"a":"z"}"#, true, false),
        ];
        {
            let mut sink = EmbeddedSink::open("e", dir.path(), DEFAULT_MAX_DOCUMENT_BYTES).unwrap();
            sink.write(&first_run[..1]).await.unwrap();
            sink.commit(Lsn(100)).await.unwrap();
            sink.write(&first_run[1..]).await.unwrap();
            // Crash: no commit covering 200.
        }
        // The early commit kept the insert, not the merge.
        assert_eq!(
            all(dir.path()),
            [r#"{"id":1,"a":"x","b":"y"}"#, r#"{"id":9}"#]
        );
        let expected = [r#"{"a":"z","b":"y","id":1}"#, r#"{"id":9}"#];
        // Postgres resends everything after the confirmed position.
        let mut sink = EmbeddedSink::open("e", dir.path(), DEFAULT_MAX_DOCUMENT_BYTES).unwrap();
        sink.write(&first_run).await.unwrap();
        sink.commit(Lsn(300)).await.unwrap();
        assert_eq!(all(dir.path()), expected);
    }

    /// Found by the chaos suite (seed 1796703688669726167): an insert
    /// applied while the index already held its row's document (written by
    /// a later change first) was added beside it, and the id was held twice.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_insert_replaces_a_document_the_index_already_holds() {
        use crate::sink::Sink;
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sink = EmbeddedSink::open("e", dir.path(), DEFAULT_MAX_DOCUMENT_BYTES).unwrap();
            sink.write(&[upsert("1", 500, r#"{"v":"later"}"#, false, false)])
                .await
                .unwrap();
            sink.commit(Lsn(100)).await.unwrap();
        }
        let mut sink = EmbeddedSink::open("e", dir.path(), DEFAULT_MAX_DOCUMENT_BYTES).unwrap();
        // Beyond anything the index recorded as written, and an insert.
        sink.write(&[upsert("1", 900, r#"{"v":"insert"}"#, false, true)])
            .await
            .unwrap();
        sink.commit(Lsn(1000)).await.unwrap();
        assert_eq!(all(dir.path()), [r#"{"v":"insert"}"#]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn rows_that_are_not_inserts_replace_a_document_wherever_it_is() {
        use crate::sink::Sink;
        let dir = tempfile::tempdir().unwrap();
        let mut sink = EmbeddedSink::open("e", dir.path(), DEFAULT_MAX_DOCUMENT_BYTES).unwrap();
        // Not in the index: added without a delete.
        sink.write(&[upsert("1", 10, r#"{"v":1}"#, false, false)])
            .await
            .unwrap();
        assert_eq!(sink.indexes["items"].pending_deletes, 0);
        // Written since the last commit: replaced.
        sink.write(&[upsert("1", 20, r#"{"v":2}"#, false, false)])
            .await
            .unwrap();
        sink.commit(Lsn(30)).await.unwrap();
        assert_eq!(all(dir.path()), [r#"{"v":2}"#]);
        // In a committed segment: replaced.
        sink.write(&[
            upsert("1", 40, r#"{"v":3}"#, false, false),
            upsert("2", 40, r#"{"v":4}"#, false, false),
        ])
        .await
        .unwrap();
        assert_eq!(sink.indexes["items"].pending_deletes, 1);
        sink.commit(Lsn(50)).await.unwrap();
        assert_eq!(all(dir.path()), [r#"{"v":3}"#, r#"{"v":4}"#]);
    }
}
