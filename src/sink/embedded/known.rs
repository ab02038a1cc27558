//! The ids an index may hold, as a Bloom filter over their hashes.
//!
//! A row that is not a fresh insert (an update, a row a backfill read)
//! replaces the document with its id only when the index may hold one: a
//! delete costs a lookup in every segment at the next commit. Finding out
//! costs that same lookup, in every segment, for every row. A backfill into
//! a new or partly filled index asks mostly about ids the index never held;
//! the filter answers those from memory, and only the ids it may hold (about
//! 1 % more) are looked up in the segments.
//!
//! The filter is built from the index's ids when it is opened and grows by
//! being built again once it holds as many ids as it was sized for. Deleted
//! ids stay in it: they only cost a lookup.

use fastbloom::BloomFilter;
use tantivy::schema::Field;
use tantivy::Searcher;

/// Ids the filter is sized for at least.
const MIN_CAPACITY: usize = 100_000;

/// The share of ids never held that the filter takes for held ones.
const FALSE_POSITIVES: f64 = 0.01;

pub(super) struct KnownIds {
    filter: BloomFilter,
    items: usize,
    capacity: usize,
}

impl KnownIds {
    /// The ids of every document in `searcher` (deleted ones too) and the
    /// hashes `more`, with room for as many again.
    pub(super) fn build(
        searcher: &Searcher,
        id: Field,
        more: impl ExactSizeIterator<Item = u64>,
    ) -> tantivy::Result<KnownIds> {
        let held: u64 = searcher
            .segment_readers()
            .iter()
            .map(|segment| u64::from(segment.max_doc()))
            .sum();
        let capacity = (2 * (held as usize + more.len())).max(MIN_CAPACITY);
        let mut known = KnownIds {
            filter: BloomFilter::with_false_pos(FALSE_POSITIVES).expected_items(capacity),
            items: 0,
            capacity,
        };
        for segment in searcher.segment_readers() {
            let ids = segment.inverted_index(id)?;
            let mut stream = ids.terms().stream()?;
            while stream.advance() {
                known.insert(xxhash_rust::xxh3::xxh3_64(stream.key()));
            }
        }
        more.for_each(|hash| known.insert(hash));
        Ok(known)
    }

    /// Whether an id hashing to `hash` may be held.
    pub(super) fn may_hold(&self, hash: u64) -> bool {
        self.filter.contains_hash(hash)
    }

    pub(super) fn insert(&mut self, hash: u64) {
        if !self.filter.insert_hash(hash) {
            self.items += 1;
        }
    }

    /// Whether the filter holds as many ids as it was sized for, and should
    /// be built again, larger.
    pub(super) fn full(&self) -> bool {
        self.items >= self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::schema::{Schema, STRING};
    use tantivy::{doc, Index};

    #[test]
    fn knows_the_ids_of_the_index_and_the_ones_added() {
        let mut schema = Schema::builder();
        let id = schema.add_text_field("_id", STRING);
        let index = Index::create_in_ram(schema.build());
        let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for n in 0..1000 {
            writer.add_document(doc!(id => format!("row-{n}"))).unwrap();
        }
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        let hash = |s: &str| xxhash_rust::xxh3::xxh3_64(s.as_bytes());
        let mut known = KnownIds::build(&searcher, id, [hash("pending")].into_iter()).unwrap();
        assert!((0..1000).all(|n| known.may_hold(hash(&format!("row-{n}")))));
        assert!(known.may_hold(hash("pending")));
        let strangers = (0..10_000)
            .filter(|n| known.may_hold(hash(&format!("other-{n}"))))
            .count();
        assert!(strangers < 300, "{strangers} false positives in 10000");
        assert!(!known.may_hold(hash("added")));
        known.insert(hash("added"));
        assert!(known.may_hold(hash("added")));
        assert!(!known.full());
    }
}
