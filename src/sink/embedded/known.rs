//! The ids an index may hold, as a Bloom filter over their hashes.
//!
//! A row replaces the document with its id only when the index may hold
//! one: a delete costs a lookup in every segment at the next commit. Finding out
//! costs that same lookup, in every segment, for every row. A backfill into
//! a new or partly filled index asks mostly about ids the index never held;
//! the filter answers those from memory, and only the ids it may hold (about
//! 1 % more) are looked up in the segments.
//!
//! The filter is built from the index's ids when it is opened. It grows
//! without reading them again: once it holds as many ids as it was sized
//! for, a filter four times larger takes the new ones (a scalable Bloom
//! filter). Each new filter is sized for half the false positives of the one
//! before, so all of them together stay under twice the first one's rate.
//! Reading every id of the index again instead took the writer a pause that
//! grew with the index, in the middle of a backfill. Deleted ids stay in the
//! filter: they only cost a lookup.

use fastbloom::BloomFilter;
use tantivy::schema::Field;
use tantivy::Searcher;

/// Ids the first filter is sized for at least.
const MIN_CAPACITY: usize = 100_000;

/// The share of ids never held that the first filter takes for held ones.
const FALSE_POSITIVES: f64 = 0.01;

/// How much larger each filter is than the one before.
const GROWTH: usize = 4;

pub(super) struct KnownIds {
    /// From the first to the newest, which takes new ids.
    layers: Vec<Layer>,
}

struct Layer {
    filter: BloomFilter,
    items: usize,
    capacity: usize,
    false_positives: f64,
}

impl Layer {
    fn new(capacity: usize, false_positives: f64) -> Layer {
        Layer {
            filter: BloomFilter::with_false_pos(false_positives).expected_items(capacity),
            items: 0,
            capacity,
            false_positives,
        }
    }
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
            layers: vec![Layer::new(capacity, FALSE_POSITIVES)],
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
        // The newest filter is the largest: most held ids are in it.
        self.layers
            .iter()
            .rev()
            .any(|layer| layer.filter.contains_hash(hash))
    }

    pub(super) fn insert(&mut self, hash: u64) {
        let last = self.layers.last().expect("a filter from the start");
        if last.items >= last.capacity {
            let next = Layer::new(GROWTH * last.capacity, last.false_positives / 2.0);
            self.layers.push(next);
        }
        let layer = self.layers.last_mut().expect("a filter from the start");
        if !layer.filter.insert_hash(hash) {
            layer.items += 1;
        }
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
        assert_eq!(known.layers.len(), 1);
    }

    #[test]
    fn grows_without_forgetting_and_keeps_its_false_positives_low() {
        let index = Index::create_in_ram({
            let mut schema = Schema::builder();
            schema.add_text_field("_id", STRING);
            schema.build()
        });
        let id = index.schema().get_field("_id").unwrap();
        let searcher = index.reader().unwrap().searcher();
        let hash = |s: &str| xxhash_rust::xxh3::xxh3_64(s.as_bytes());
        let mut known = KnownIds::build(&searcher, id, std::iter::empty()).unwrap();
        // Past the first two filters' capacity (100k, then 400k).
        for n in 0..600_000 {
            known.insert(hash(&format!("row-{n}")));
        }
        assert_eq!(known.layers.len(), 3);
        assert!((0..600_000).all(|n| known.may_hold(hash(&format!("row-{n}")))));
        let strangers = (0..100_000)
            .filter(|n| known.may_hold(hash(&format!("other-{n}"))))
            .count();
        assert!(strangers < 2_000, "{strangers} false positives in 100000");
    }
}
