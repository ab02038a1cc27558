//! The schema of embedded indexes.

use tantivy::schema::{
    Field, IndexRecordOption, JsonObjectOptions, Schema, TextFieldIndexing, STORED, STRING,
};
use tantivy::Index;

/// The name of the field holding a document's fields.
pub const DOC: &str = "doc";

/// The name of the field holding a document's numbers, booleans and
/// timestamps as fast columns, for ranges.
pub const NUMBERS: &str = "_num";

/// The fields of an embedded index.
///
/// - `_id` the document id (exact), `_table` the source table (exact),
/// - `_source` the document exactly as sluice encoded it (stored),
/// - `_lsn` the commit position of the change that wrote it (stored),
/// - `doc` the document's text and booleans, searchable by path (`name:shoe`,
///   `tags:red`); a query without a field searches every path (see `search`),
/// - `_num` the document's numbers, booleans and timestamps, as fast columns:
///   ranges (`price:[10 TO 20]`) and exact numbers (`price:12`) read them.
///   Text stays out of it, as a column of every distinct text would cost more
///   to build and merge than the rest of the document; numbers stay out of
///   `doc`, as a term per row (an id, a time) would.
///
/// Indexes written before `_num` existed have `doc` as fast columns instead,
/// text included, and numbers among `doc`'s terms; their ranges read `doc`.
///
/// Indexes written by sluice 0.1 also have `_all`, every value again as one
/// text: it doubled the cost of indexing a document. Such indexes keep it
/// filled, so their documents stay alike.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    pub id: Field,
    pub table: Field,
    pub source: Field,
    pub lsn: Field,
    pub doc: Field,
    pub numbers: Option<Field>,
    pub all: Option<Field>,
}

/// The schema of a new index.
pub fn build() -> Schema {
    let mut builder = Schema::builder();
    builder.add_text_field("_id", STRING | STORED);
    builder.add_text_field("_table", STRING);
    builder.add_text_field("_source", STORED);
    builder.add_u64_field("_lsn", STORED);
    // Frequencies rank better matches first; positions answer phrases.
    let indexing = TextFieldIndexing::default()
        .set_tokenizer("default")
        .set_index_option(IndexRecordOption::WithFreqsAndPositions);
    let json = JsonObjectOptions::default()
        .set_indexing_options(indexing)
        .set_expand_dots_enabled();
    builder.add_json_field(DOC, json);
    let numbers = JsonObjectOptions::default()
        .set_expand_dots_enabled()
        .set_fast(None);
    builder.add_json_field(NUMBERS, numbers);
    builder.build()
}

/// Field handles of an opened index.
pub fn fields(index: &Index) -> tantivy::Result<Fields> {
    let schema = index.schema();
    Ok(Fields {
        id: schema.get_field("_id")?,
        table: schema.get_field("_table")?,
        source: schema.get_field("_source")?,
        lsn: schema.get_field("_lsn")?,
        doc: schema.get_field(DOC)?,
        numbers: schema.get_field(NUMBERS).ok(),
        all: schema.get_field("_all").ok(),
    })
}

/// Tokenizers beyond tantivy's defaults (none yet; kept for one place to add them).
pub fn register_tokenizers(_index: &Index) {}
