//! A sink's settings as the configuration gives them: its name, and the
//! engine with that engine's own settings.

use serde::Deserialize;

/// Default least time between commits of the embedded index, from
/// `sluice-loadtest --sink embedded --sink-option commit_interval_ms=N` on a
/// 2-core machine. A commit costs a segment, its merges and a sync: back to
/// back (1 ms) they took 65-86 % of a core and p99 562 ms at 1,000
/// changes/s. 25 ms gave p99 41-78 ms but up to 70 % of a core; 50 ms p99
/// 59-63 ms at 10,000/s and 36-47 %; 100 ms p99 109-125 ms, backlog drain
/// 155k-184k/s (50 ms: 148k-174k) and a backfill under load 145k-171k
/// rows/s (50 ms: 101k-143k). Half the latency is worth the slower backfill.
pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 50;

/// A destination for documents.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RawSink")]
pub struct SinkConfig {
    /// Name used in logs, metrics and state.
    pub name: String,
    /// The engine and its settings.
    pub kind: SinkKind,
}

/// The engine behind a sink.
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// A tantivy index per index name under `<data_dir>/indexes/`.
    Embedded {
        /// Milliseconds between commits; a commit makes writes searchable and durable.
        commit_interval_ms: u64,
        /// A larger document (its JSON, in bytes) is parked, not indexed.
        max_document_bytes: u64,
    },
    /// Discards every document (for benchmarks).
    Null,
    /// An Elasticsearch or OpenSearch cluster, written with the bulk API.
    Elasticsearch(Box<crate::sink::elasticsearch::ElasticsearchConfig>),
    /// A Typesense cluster, written with JSONL imports.
    Typesense(Box<crate::sink::typesense::TypesenseConfig>),
    /// A Meilisearch instance; every write's task is followed to its end.
    Meilisearch(Box<crate::sink::meilisearch::MeilisearchConfig>),
    /// Turbopuffer namespaces, written with the v2 write API.
    Turbopuffer(Box<crate::sink::turbopuffer::TurbopufferConfig>),
}

impl SinkKind {
    /// The `type` of the sink in the configuration.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Embedded { .. } => "embedded",
            SinkKind::Null => "null",
            SinkKind::Elasticsearch(_) => "elasticsearch",
            SinkKind::Typesense(_) => "typesense",
            SinkKind::Meilisearch(_) => "meilisearch",
            SinkKind::Turbopuffer(_) => "turbopuffer",
        }
    }

    /// Whether the engine queues writes and merges what waits in its queue
    /// (Meilisearch's tasks), so a backfill reads further ahead of it.
    pub fn queues_writes(&self) -> bool {
        matches!(self, SinkKind::Meilisearch(_))
    }

    /// How often the writer of this sink commits (makes writes durable and
    /// reports their position).
    pub fn commit_interval(&self) -> std::time::Duration {
        let ms = match self {
            SinkKind::Embedded {
                commit_interval_ms, ..
            } => *commit_interval_ms,
            SinkKind::Null => NULL_COMMIT_INTERVAL_MS,
            SinkKind::Elasticsearch(es) => es.flush_interval_ms,
            SinkKind::Typesense(ts) => ts.flush_interval_ms,
            SinkKind::Meilisearch(ms) => ms.flush_interval_ms,
            SinkKind::Turbopuffer(tp) => tp.flush_interval_ms,
        };
        std::time::Duration::from_millis(ms)
    }
}

/// The null sink "commits" (reports positions) whenever nothing more is ready.
const NULL_COMMIT_INTERVAL_MS: u64 = 0;

/// A sink as written in the file: `type` selects the engine, the other keys
/// are the engine's settings.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum RawSink {
    Embedded(RawEmbedded),
    Null(RawNull),
    #[serde(alias = "opensearch")]
    Elasticsearch(Box<crate::sink::elasticsearch::ElasticsearchConfig>),
    Typesense(Box<crate::sink::typesense::TypesenseConfig>),
    Meilisearch(Box<crate::sink::meilisearch::MeilisearchConfig>),
    Turbopuffer(Box<crate::sink::turbopuffer::TurbopufferConfig>),
}

/// `type = "embedded"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEmbedded {
    name: String,
    #[serde(default = "default_commit_interval_ms")]
    commit_interval_ms: u64,
    #[serde(default = "crate::sink::http::default_max_document_bytes")]
    max_document_bytes: u64,
}

/// `type = "null"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNull {
    name: String,
}

impl From<RawSink> for SinkConfig {
    fn from(raw: RawSink) -> SinkConfig {
        match raw {
            RawSink::Embedded(RawEmbedded {
                name,
                commit_interval_ms,
                max_document_bytes,
            }) => SinkConfig {
                name,
                kind: SinkKind::Embedded {
                    commit_interval_ms,
                    max_document_bytes,
                },
            },
            RawSink::Null(RawNull { name }) => SinkConfig {
                name,
                kind: SinkKind::Null,
            },
            RawSink::Elasticsearch(config) => SinkConfig {
                name: config.name.clone(),
                kind: SinkKind::Elasticsearch(config),
            },
            RawSink::Typesense(config) => SinkConfig {
                name: config.name.clone(),
                kind: SinkKind::Typesense(config),
            },
            RawSink::Meilisearch(config) => SinkConfig {
                name: config.name.clone(),
                kind: SinkKind::Meilisearch(config),
            },
            RawSink::Turbopuffer(config) => SinkConfig {
                name: config.name.clone(),
                kind: SinkKind::Turbopuffer(config),
            },
        }
    }
}

fn default_commit_interval_ms() -> u64 {
    DEFAULT_COMMIT_INTERVAL_MS
}
