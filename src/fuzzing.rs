//! The entry points of the fuzz targets (`fuzz/`), and of the test that
//! replays their corpora on every `cargo test` (`tests/fuzz_corpus.rs`).
//! Each takes arbitrary bytes, as an attacker or a broken peer could send
//! them, and panics only when the code under test breaks a promise: a
//! parser that panics, JSON that does not parse, a frame that does not read
//! back as it was written.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use crate::config::Config;
use crate::model::row::TypeKind;

/// A fuzz target: arbitrary bytes in, a panic when a promise breaks.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (each a directory of `fuzz/corpus/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("pgoutput", pgoutput),
    ("replication_stream", replication_stream),
    ("copy_text", copy_text),
    ("type_json", type_json),
    ("config", config),
    ("elasticsearch_bulk", elasticsearch_bulk),
    ("typesense_import", typesense_import),
    ("spool_frame", spool_frame),
    ("meilisearch_response", meilisearch_response),
    ("turbopuffer_response", turbopuffer_response),
    ("verify_read", verify_read),
];

/// One pgoutput message, as the replication stream's XLogData carries it.
pub fn pgoutput(data: &[u8]) {
    let _ = crate::postgres::pgoutput::decode(&Bytes::copy_from_slice(data));
}

/// The bytes of a replication connection's stream, read as the reader
/// does: messages until one is incomplete or wrong.
pub fn replication_stream(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = crate::postgres::replication::parse_event(&mut buf) {}
}

/// `COPY … TO STDOUT` text of a backfill chunk; the first byte gives the
/// number of columns. Every row read has that many columns, each inside
/// its tuple's data.
pub fn copy_text(data: &[u8]) {
    let Some((&first, text)) = data.split_first() else {
        return;
    };
    let columns = usize::from(first % 16) + 1;
    let Ok(rows) = crate::backfill::chunk::parse_copy(&Bytes::copy_from_slice(text), columns)
    else {
        return;
    };
    for row in rows {
        assert_eq!(row.len(), columns, "a row of the wrong width");
        for i in 0..columns {
            if let Some(value) = row.value(i) {
                assert!(value.len() <= text.len(), "a value longer than the text");
            }
        }
    }
}

/// A column value in a type's text output; the first byte picks the type.
/// The JSON written is always exactly one valid JSON value, and never
/// holds a raw newline (it goes into NDJSON bodies).
pub fn type_json(data: &[u8]) {
    let Some((&first, text)) = data.split_first() else {
        return;
    };
    let scalars = [
        TypeKind::Bool,
        TypeKind::Integer,
        TypeKind::Float,
        TypeKind::Numeric,
        TypeKind::Text,
        TypeKind::Json,
        TypeKind::Date,
        TypeKind::Time,
        TypeKind::TimeTz,
        TypeKind::Timestamp,
        TypeKind::TimestampTz,
        TypeKind::Interval,
        TypeKind::Bytea,
    ];
    let scalar = scalars[usize::from(first & 0x0f) % scalars.len()].clone();
    let kind = match first >> 4 {
        0..=9 => scalar,
        10..=13 => TypeKind::array_of(scalar, b','),
        14 => TypeKind::array_of(scalar, b';'),
        _ => TypeKind::array_of(TypeKind::array_of(scalar, b','), b','),
    };
    let mut out = Vec::new();
    crate::postgres::types::write_json(&kind, text, &mut out);
    assert!(
        !out.contains(&b'\n'),
        "a raw newline in the JSON of {kind:?}: {}",
        String::from_utf8_lossy(&out)
    );
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&out) {
        panic!(
            "invalid JSON for {kind:?} {:?}: {e}: {}",
            String::from_utf8_lossy(text),
            String::from_utf8_lossy(&out)
        );
    }
}

/// A configuration file's text, parsed and then validated.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_toml(text) {
        // The validation compiles functions (in the sandbox; nothing runs),
        // reading a `file` they name relative to the working directory.
        let _ = config.validate();
    }
}

/// An Elasticsearch bulk response; the first byte gives the number of
/// actions requested.
pub fn elasticsearch_bulk(data: &[u8]) {
    use crate::sink::elasticsearch::request::BulkAction;
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let actions: Vec<BulkAction> = (0..usize::from(first % 8))
        .map(|i| match i % 2 {
            0 => BulkAction::Index,
            _ => BulkAction::Delete,
        })
        .collect();
    if let Ok(outcomes) = crate::sink::elasticsearch::response::parse(body, &actions) {
        assert_eq!(outcomes.len(), actions.len(), "an outcome per action");
    }
}

/// A Typesense import response; the first byte gives the number of lines
/// sent.
pub fn typesense_import(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let lines = usize::from(first % 8);
    if let Ok(outcomes) = crate::sink::typesense::response::parse_import(body, lines) {
        assert_eq!(outcomes.len(), lines, "an outcome per line");
    }
    let _ = crate::sink::typesense::response::error_text(body);
}

/// A spool frame (without its length), as read back from disk. A frame
/// that reads is written again and reads back as the same batch.
pub fn spool_frame(data: &[u8]) {
    let mut names = HashMap::new();
    let Some(batch) = crate::pipeline::spool::decode(data, &mut names) else {
        return;
    };
    let mut again = Vec::new();
    crate::pipeline::spool::encode(&batch, &mut again);
    let mut names = HashMap::new();
    let read_again = crate::pipeline::spool::decode(&again[4..], &mut names)
        .expect("a frame written from a read one reads back");
    assert_eq!(read_again.items.ops.len(), batch.items.ops.len());
    assert_eq!(read_again.upto, batch.upto);
}

/// A Meilisearch answer; the first byte says to what: a write (its task
/// summary), a task lookup (classified once finished, for every kind of
/// request), an error answer (classified for every kind), a documents fetch.
pub fn meilisearch_response(data: &[u8]) {
    use crate::sink::meilisearch::request::Kind;
    use crate::sink::meilisearch::tasks::{self, ApiError, Summary, Task};
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let kinds = [
        Kind::Replace,
        Kind::Update,
        Kind::Delete,
        Kind::Clear,
        Kind::ClearTable,
    ];
    match first % 4 {
        0 => {
            let _ = serde_json::from_slice::<Summary>(body);
        }
        1 => {
            if let Ok(task) = serde_json::from_slice::<Task>(body) {
                if task.status.is_finished() {
                    for kind in kinds {
                        let _ = tasks::classify(kind, task.status, task.error.as_ref());
                    }
                }
            }
        }
        2 => {
            if let Ok(error) = serde_json::from_slice::<ApiError>(body) {
                for kind in kinds {
                    let _ = tasks::classify_error(kind, &error);
                }
            }
        }
        _ => {
            if let Ok(docs) = crate::sink::meilisearch::read::parse_page(body, "id") {
                for doc in docs {
                    let _ = crate::verify::hash::content_hash(&doc.source);
                }
            }
        }
    }
}

/// A Turbopuffer answer: an error body, and the rows of a query.
pub fn turbopuffer_response(data: &[u8]) {
    let _ = crate::sink::turbopuffer::client::error_text(data);
    if let Ok(rows) = crate::sink::turbopuffer::read::parse_rows(data) {
        for row in rows {
            if let Some(doc) = crate::sink::turbopuffer::read::stored(row) {
                let _ = crate::verify::hash::content_hash(&doc.source);
            }
        }
    }
}

/// What `verify` reads from outside: the first byte says which; an
/// Elasticsearch search in a point in time or `_mget`, a Typesense export
/// line, or a document whose content hash is taken. A number written the
/// one way `verify` writes numbers stays so written again.
pub fn verify_read(data: &[u8]) {
    use crate::verify::hash;
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    match first % 4 {
        0 => {
            if let Ok(page) = crate::sink::elasticsearch::read::parse_search(body) {
                assert!(
                    page.docs.is_empty() || page.last_sort.is_some(),
                    "documents come with where they end"
                );
            }
        }
        1 => {
            let _ = crate::sink::elasticsearch::read::parse_mget(body);
        }
        2 => {
            let _ = crate::sink::read::line_document(body);
        }
        _ => {
            let _ = hash::content_hash(body);
            if let Ok(text) = std::str::from_utf8(body) {
                let _ = hash::timestamp_nanos(text);
                let once = hash::normal_number(text);
                assert_eq!(
                    hash::normal_number(&once),
                    once,
                    "written one way, it stays so"
                );
            }
        }
    }
}
