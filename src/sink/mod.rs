//! Sinks: where documents are written.

pub mod elasticsearch;
pub mod embedded;
pub mod failed;
pub mod http;
pub mod meilisearch;
pub mod null;
pub mod read;
pub mod retry;
pub mod settings;
pub mod truncates;
pub mod turbopuffer;
pub mod typesense;

use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::model::write::WriteOp;
use settings::{SinkConfig, SinkKind};

/// A destination for writes. Calls come from one writer actor, in order.
#[async_trait::async_trait]
pub trait Sink: Send + 'static {
    fn name(&self) -> &str;

    /// The sink's failed-message store, for retries (`None`: it parks nothing).
    fn failed(&mut self) -> Option<&mut failed::FailedStore> {
        None
    }

    /// Applies writes (upserts, deletes, truncates), in order. They need not be
    /// durable before `commit`.
    async fn write(&mut self, ops: &[WriteOp]) -> Result<()>;

    /// Makes every write so far durable; `upto` is the position they cover:
    /// every change below it, and every backfill row written at a position
    /// below it, was written. A backfill row comes with its high watermark's
    /// position, and live writes may go ahead of it, so writes after a
    /// commit can still have positions below the last `upto`; those are
    /// never ones written before.
    async fn commit(&mut self, upto: Lsn) -> Result<()>;

    /// Like `commit`, but returns once the writes are handed to the engine,
    /// before they are durable: `confirmed` tells later which commits became
    /// durable, so the writer goes on with the next writes meanwhile (an
    /// engine that applies writes on its own time, as Meilisearch's tasks,
    /// merges what arrives while it works). `false`: this sink does not, and
    /// the writer calls `commit` instead.
    async fn commit_later(&mut self, _upto: Lsn) -> Result<bool> {
        Ok(false)
    }

    /// For a sink whose `commit_later` returned true: how many of those
    /// commits, counted from the first, are durable, without waiting; and
    /// when to ask again while some are not.
    async fn confirmed(&mut self) -> Result<Confirmed> {
        Ok(Confirmed::default())
    }
}

/// What `Sink::confirmed` found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confirmed {
    /// Commits made with `commit_later` whose writes are all durable.
    pub commits: u64,
    /// When to look again, while some are not.
    pub look_again: Option<std::time::Duration>,
}

/// Whether the engine behind a sink answers and takes its credentials,
/// without writing anything; `index` is one the sink will write to. `Ok` for
/// sinks without an engine.
pub async fn probe(config: &SinkConfig, index: &str) -> std::result::Result<(), String> {
    let client = |e: crate::error::Error| e.to_string();
    match &config.kind {
        SinkKind::Embedded { .. } | SinkKind::Null => Ok(()),
        SinkKind::Elasticsearch(es) => elasticsearch::probe(es).await.map_err(client)?,
        SinkKind::Typesense(ts) => typesense::probe(ts, index).await.map_err(client)?,
        SinkKind::Meilisearch(ms) => meilisearch::probe(ms).await.map_err(client)?,
        SinkKind::Turbopuffer(tp) => turbopuffer::probe(tp).await.map_err(client)?,
    }
}

/// Builds the sink a config describes.
pub fn build(config: &SinkConfig, data_dir: &Path) -> Result<Box<dyn Sink>> {
    Ok(match &config.kind {
        SinkKind::Embedded {
            max_document_bytes, ..
        } => Box::new(embedded::EmbeddedSink::open(
            &config.name,
            data_dir,
            *max_document_bytes,
        )?),
        SinkKind::Null => Box::new(null::NullSink::new(&config.name)),
        SinkKind::Elasticsearch(es) => {
            Box::new(elasticsearch::ElasticsearchSink::new(es, data_dir)?)
        }
        SinkKind::Typesense(ts) => Box::new(typesense::TypesenseSink::new(ts, data_dir)?),
        SinkKind::Meilisearch(ms) => Box::new(meilisearch::MeilisearchSink::new(ms, data_dir)?),
        SinkKind::Turbopuffer(tp) => Box::new(turbopuffer::TurbopufferSink::new(tp, data_dir)?),
    })
}

/// A reader of `index` in the sink `config` describes, for `verify`.
pub async fn reader(
    config: &SinkConfig,
    data_dir: &Path,
    index: &str,
) -> Result<Box<dyn read::IndexReader>> {
    match &config.kind {
        SinkKind::Embedded { .. } => Ok(Box::new(embedded::read::Reader::open(data_dir, index)?)),
        SinkKind::Typesense(ts) => Ok(Box::new(typesense::read::Reader::new(ts, index)?)),
        SinkKind::Elasticsearch(es) => Ok(Box::new(elasticsearch::read::Reader::new(es, index)?)),
        SinkKind::Meilisearch(ms) => Ok(Box::new(meilisearch::read::Reader::new(ms, index)?)),
        SinkKind::Turbopuffer(tp) => Ok(Box::new(turbopuffer::read::Reader::new(tp, index)?)),
        SinkKind::Null => Err(Error::new(
            ErrorKind::Config,
            format!(
                "sink {} is a null sink: it keeps no documents to compare",
                config.name
            ),
        )),
    }
}
