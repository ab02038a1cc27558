//! Pacing of tantivy's indexing queue.
//!
//! `add_document` hands a document to tantivy's indexing thread through a
//! queue of up to 10,000 documents, and a commit waits until the thread has
//! indexed every one of them. A sink that fills that queue (a backfill does)
//! makes every commit wait for thousands of documents, and a live change
//! written behind them waits as long to become durable and searchable. The
//! sink therefore keeps at most `MAX_QUEUED` documents waiting: documents
//! are counted when tantivy drops them, right after indexing them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tantivy::schema::Document;
use tantivy::TantivyDocument;

/// Documents that may wait in tantivy's queue: a few milliseconds of indexing.
const MAX_QUEUED: u64 = 1024;

/// How often a full queue is checked again.
const POLL: Duration = Duration::from_micros(200);

/// How long the queue may stay full without progress before the sink stops
/// pacing and lets tantivy's own bound (and its errors) take over: a dead
/// indexing thread must surface as an error, not a hang.
const STALL: Duration = Duration::from_secs(2);

/// The documents handed to tantivy and those it indexed.
#[derive(Default)]
pub(super) struct Queue {
    entered: u64,
    indexed: Arc<AtomicU64>,
}

impl Queue {
    /// Wraps a document so that it is counted once indexed.
    pub(super) fn enter(&mut self, doc: TantivyDocument) -> Queued {
        self.entered += 1;
        Queued {
            doc,
            indexed: self.indexed.clone(),
        }
    }

    /// Documents handed over and not indexed yet.
    pub(super) fn waiting(&self) -> u64 {
        self.entered
            .saturating_sub(self.indexed.load(Ordering::Acquire))
    }

    /// Blocks (on a blocking-allowed thread) until the queue has room.
    pub(super) fn wait_for_room(&self) {
        let mut last = self.waiting();
        let mut progress = Instant::now();
        while last >= MAX_QUEUED {
            std::thread::sleep(POLL);
            let now = self.waiting();
            if now < last {
                progress = Instant::now();
            } else if progress.elapsed() > STALL {
                return;
            }
            last = now;
        }
    }
}

/// A document on its way through tantivy's indexing queue.
pub(super) struct Queued {
    doc: TantivyDocument,
    indexed: Arc<AtomicU64>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.indexed.fetch_add(1, Ordering::Release);
    }
}

impl Document for Queued {
    type Value<'a> = <TantivyDocument as Document>::Value<'a>;
    type FieldsValuesIter<'a> = <TantivyDocument as Document>::FieldsValuesIter<'a>;

    fn iter_fields_and_values(&self) -> Self::FieldsValuesIter<'_> {
        self.doc.iter_fields_and_values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_count_as_indexed_when_dropped() {
        let mut queue = Queue::default();
        let a = queue.enter(TantivyDocument::new());
        let b = queue.enter(TantivyDocument::new());
        assert_eq!(queue.waiting(), 2);
        drop(a);
        assert_eq!(queue.waiting(), 1);
        drop(b);
        assert_eq!(queue.waiting(), 0);
        queue.wait_for_room();
    }
}
