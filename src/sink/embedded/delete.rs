//! Deletes by document id that hold only their term until a commit applies
//! them.
//!
//! tantivy keeps every delete queued since the last commit as a query weight.
//! `IndexWriter::delete_term` queues a term query's weight, which carries a
//! scoring table of 256 floats even with scoring off: over 1 kB a delete, so
//! the 50,000 deletes of one large update held 44 MB until the commit. An
//! [`IdDelete`] queues its term alone (under 100 bytes) and, when the commit
//! applies it, reads the term's postings in each segment: no weight is built
//! per delete or per segment.

use tantivy::query::{ConstScorer, EmptyScorer, EnableScoring, Explanation, Query, Scorer, Weight};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, IndexWriter, Opstamp, Score, SegmentReader, Term};

/// Queues the delete of every document whose field holds `term`.
pub fn delete_term<D: tantivy::Document>(writer: &IndexWriter<D>, term: Term) -> Opstamp {
    writer
        .delete_query(Box::new(IdDelete(term)))
        .expect("an id delete's weight is built without looking at the index")
}

/// Matches the documents holding one term, like a `TermQuery` without scores.
#[derive(Debug, Clone)]
struct IdDelete(Term);

impl Query for IdDelete {
    fn weight(&self, _: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(IdWeight(self.0.clone())))
    }
}

struct IdWeight(Term);

impl Weight for IdWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let postings = reader
            .inverted_index(self.0.field())?
            .read_postings(&self.0, IndexRecordOption::Basic)?;
        Ok(match postings {
            Some(postings) => Box::new(ConstScorer::new(postings, boost)),
            None => Box::new(EmptyScorer),
        })
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut scorer = self.scorer(reader, 1.0)?;
        if scorer.seek(doc) != doc {
            return Err(tantivy::TantivyError::InvalidArgument(format!(
                "document {doc} does not hold the term"
            )));
        }
        Ok(Explanation::new("id delete", scorer.score()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::collector::Count;
    use tantivy::query::{AllQuery, TermQuery};
    use tantivy::schema::{Schema, STRING};
    use tantivy::{doc, Index, TantivyDocument};

    #[test]
    fn deletes_the_documents_of_its_term_only_and_holds_little() {
        let mut schema = Schema::builder();
        let id = schema.add_text_field("id", STRING);
        let index = Index::create_in_ram(schema.build());
        let mut writer: IndexWriter<TantivyDocument> =
            index.writer_with_num_threads(1, 15_000_000).unwrap();
        for i in 0..10 {
            writer.add_document(doc!(id => i.to_string())).unwrap();
        }
        writer.commit().unwrap();
        delete_term(&writer, Term::from_field_text(id, "3"));
        delete_term(&writer, Term::from_field_text(id, "7"));
        // Written after the delete: stays.
        writer.add_document(doc!(id => "3")).unwrap();
        writer.commit().unwrap();
        let reader = index.reader().unwrap();
        let searcher = reader.searcher();
        assert_eq!(searcher.search(&AllQuery, &Count).unwrap(), 9);
        let count = |value: &str| {
            let query = TermQuery::new(Term::from_field_text(id, value), IndexRecordOption::Basic);
            searcher.search(&query, &Count).unwrap()
        };
        assert_eq!((count("3"), count("7"), count("5")), (1, 0, 1));
        let weight = IdDelete(Term::from_field_text(id, "3"))
            .weight(EnableScoring::disabled_from_schema(&index.schema()))
            .unwrap();
        assert!(std::mem::size_of_val(&*weight) < 100);
    }
}
