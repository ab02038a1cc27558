//! The far end for the embedded index: the moment a document became
//! searchable, seen by reading the index as `sluice search` does, from
//! another process's point of view.
//!
//! Every few milliseconds the index is opened at its newest commit; the
//! documents of segments not read before are the ones that became
//! searchable since. (A merge writes documents already seen into a new
//! segment; reading them again settles nothing.)

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tantivy::index::SegmentId;
use tantivy::schema::Value;
use tantivy::{DocAddress, Index, ReloadPolicy, TantivyDocument};

use crate::tracker::{Arrival, Tracker};

/// How often the index is looked at.
const POLL: Duration = Duration::from_millis(2);

/// The fields of a row's document that say which write made it.
#[derive(serde::Deserialize)]
struct Written {
    id: i64,
    seq: i64,
}

/// Notes every document of the index in `dir` as it becomes searchable,
/// until `stop`.
pub fn watch(dir: PathBuf, tracker: Arc<Tracker>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    while !dir.join("meta.json").exists() {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    let index = Index::open_in_dir(&dir)?;
    let source = index.schema().get_field("_source")?;
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    let mut seen: HashSet<SegmentId> = HashSet::new();
    let mut arrivals = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // A commit can replace files between listing and opening them:
        // try again at the next look.
        if reader.reload().is_ok() {
            let at = Instant::now();
            let searcher = reader.searcher();
            for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
                if !seen.insert(segment.segment_id()) {
                    continue;
                }
                for doc in segment.doc_ids_alive() {
                    let address = DocAddress::new(ordinal as u32, doc);
                    let Ok(document) = searcher.doc::<TantivyDocument>(address) else {
                        continue;
                    };
                    let written = document
                        .get_first(source)
                        .and_then(|v| v.as_str())
                        .and_then(|text| serde_json::from_str::<Written>(text).ok());
                    if let Some(Written { id, seq }) = written {
                        arrivals.push(Arrival::Write { id, seq });
                    }
                }
            }
            tracker.arrived(&arrivals, at);
            arrivals.clear();
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}
