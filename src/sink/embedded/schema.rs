//! The schema of embedded indexes.

use tantivy::schema::{
    Field, JsonObjectOptions, Schema, TextFieldIndexing, TextOptions, STORED, STRING, TEXT,
};
use tantivy::Index;

/// The fields of an embedded index.
///
/// - `_id` the document id (exact), `_table` the source table (exact),
/// - `_source` the document exactly as sluice encoded it (stored),
/// - `_lsn` the commit position of the change that wrote it (stored),
/// - `doc` the document's fields, searchable by path (`name:shoe`, `tags:red`),
/// - `_all` every value as text, for queries without a field.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    pub id: Field,
    pub table: Field,
    pub source: Field,
    pub lsn: Field,
    pub doc: Field,
    pub all: Field,
}

pub fn build() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let id = builder.add_text_field("_id", STRING | STORED);
    let table = builder.add_text_field("_table", STRING);
    let source = builder.add_text_field("_source", STORED);
    let lsn = builder.add_u64_field("_lsn", STORED);
    let json = JsonObjectOptions::default()
        .set_indexing_options(TextFieldIndexing::default().set_tokenizer("default"))
        .set_expand_dots_enabled();
    let doc = builder.add_json_field("doc", json);
    let all = builder.add_text_field("_all", TEXT);
    let _: TextOptions = TEXT;
    (
        builder.build(),
        Fields {
            id,
            table,
            source,
            lsn,
            doc,
            all,
        },
    )
}

/// Field handles of an opened index.
pub fn fields(index: &Index) -> tantivy::Result<Fields> {
    let schema = index.schema();
    Ok(Fields {
        id: schema.get_field("_id")?,
        table: schema.get_field("_table")?,
        source: schema.get_field("_source")?,
        lsn: schema.get_field("_lsn")?,
        doc: schema.get_field("doc")?,
        all: schema.get_field("_all")?,
    })
}

/// Tokenizers beyond tantivy's defaults (none yet; kept for one place to add them).
pub fn register_tokenizers(_index: &Index) {}
