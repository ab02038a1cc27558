//! Settings of a Typesense sink.

use serde::Deserialize;

use crate::model::problem::ConfigProblem;
use crate::sink::http::{self, HttpSettings, Problems};
use crate::sink::http::{
    DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_DOCS, DEFAULT_CONCURRENCY,
    DEFAULT_FLUSH_INTERVAL_MS, DEFAULT_MAX_PARKED, DEFAULT_MAX_RETRIES, DEFAULT_REQUEST_TIMEOUT_MS,
    DEFAULT_RETRY_INITIAL_BACKOFF_MS, DEFAULT_RETRY_MAX_BACKOFF_MS,
};

/// Default bytes of the `filter_by` of one delete request (it travels in the URL).
pub const DEFAULT_DELETE_MAX_FILTER_BYTES: usize = 16 * 1024;

/// `[[sinks]]` with `type = "typesense"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypesenseConfig {
    /// Name used in logs, metrics and state.
    pub name: String,
    /// Base URL of the node or load balancer, e.g. `http://localhost:8108`.
    pub url: String,
    /// Environment variable holding the API key (`X-TYPESENSE-API-KEY`).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// An import request closes at this many documents (a delete request at
    /// this many ids) ...
    #[serde(default = "http::default_batch_max_docs")]
    pub batch_max_docs: usize,
    /// ... or this many bytes of JSONL ...
    #[serde(default = "http::default_batch_max_bytes")]
    pub batch_max_bytes: u64,
    /// ... and a delete request at this many bytes of `filter_by`.
    #[serde(default = "default_delete_max_filter_bytes")]
    pub delete_max_filter_bytes: usize,
    /// Writes wait at most this many milliseconds in the buffer (the interval
    /// between commits).
    #[serde(default = "http::default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Timeout of one request, in milliseconds.
    #[serde(default = "http::default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Requests in flight at once (of disjoint documents, so that the writes
    /// to one document still apply in order).
    #[serde(default = "http::default_concurrency")]
    pub concurrency: usize,
    /// Retries of a write failing with a 500, a timeout or a dropped answer
    /// before it is parked (an unavailable engine is waited out uncounted).
    #[serde(default = "http::default_max_retries")]
    pub max_retries: u32,
    /// First retry delay in milliseconds; doubles per attempt, with jitter.
    #[serde(default = "http::default_retry_initial_backoff_ms")]
    pub retry_initial_backoff_ms: u64,
    /// Cap of the retry delay in milliseconds.
    #[serde(default = "http::default_retry_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
    /// When this many writes are parked in the failed-message store, the sink
    /// pauses (and with it the slot) until some are retried or discarded.
    #[serde(default = "http::default_max_parked")]
    pub max_parked: usize,
    /// A document larger than this (its JSON, in bytes) is parked before it
    /// is sent, with the reason.
    #[serde(default = "http::default_max_document_bytes")]
    pub max_document_bytes: u64,
    /// Create missing collections with this schema (a TOML table written as
    /// Typesense's JSON schema, without `name`: the collection name comes from
    /// the router), e.g. `schema = { fields = [{ name = ".*", type = "auto" }] }`.
    #[serde(default)]
    pub schema: Option<toml::Table>,
}

fn default_delete_max_filter_bytes() -> usize {
    DEFAULT_DELETE_MAX_FILTER_BYTES
}

impl TypesenseConfig {
    /// A config with every default, for `url` (tests and tools).
    pub fn new(name: &str, url: &str) -> TypesenseConfig {
        TypesenseConfig {
            name: name.to_owned(),
            url: url.to_owned(),
            api_key_env: None,
            batch_max_docs: DEFAULT_BATCH_MAX_DOCS,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            delete_max_filter_bytes: DEFAULT_DELETE_MAX_FILTER_BYTES,
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            concurrency: DEFAULT_CONCURRENCY,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_initial_backoff_ms: DEFAULT_RETRY_INITIAL_BACKOFF_MS,
            retry_max_backoff_ms: DEFAULT_RETRY_MAX_BACKOFF_MS,
            max_parked: DEFAULT_MAX_PARKED,
            max_document_bytes: http::DEFAULT_MAX_DOCUMENT_BYTES,
            schema: None,
        }
    }

    /// Checks the settings; `path` is the field path of this sink.
    pub fn validate(&self, path: &str, problems: &mut Vec<ConfigProblem>) {
        let mut problems = Problems::new(path, problems);
        problems.http_url(&self.url, "http://localhost:8108");
        if let Some(var) = &self.api_key_env {
            problems.env_var("api_key_env", var);
        }
        problems.at_least("batch_max_docs", self.batch_max_docs as u64, 1);
        problems.at_least(
            "delete_max_filter_bytes",
            self.delete_max_filter_bytes as u64,
            256,
        );
        if let Some(schema) = &self.schema {
            if !matches!(schema.get("fields"), Some(toml::Value::Array(_))) {
                problems.add(
                    "schema",
                    "needs `fields`, an array such as [{ name = \".*\", type = \"auto\" }]",
                );
            }
        }
        self.http().check(&mut problems);
    }

    /// The settings every HTTP sink shares.
    pub fn http(&self) -> HttpSettings<'_> {
        HttpSettings {
            name: &self.name,
            url: &self.url,
            batch_max_bytes: self.batch_max_bytes,
            max_batch_bytes: None,
            flush_interval_ms: self.flush_interval_ms,
            request_timeout_ms: self.request_timeout_ms,
            retry_initial_backoff_ms: self.retry_initial_backoff_ms,
            retry_max_backoff_ms: self.retry_max_backoff_ms,
            max_retries: self.max_retries,
            max_parked: self.max_parked,
            max_document_bytes: self.max_document_bytes,
            concurrency: Some(self.concurrency),
        }
    }

    /// The API key, read from the environment.
    pub fn api_key(&self) -> Option<String> {
        self.api_key_env
            .as_ref()
            .and_then(|var| std::env::var(var).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_problems_name_their_field() {
        let config: TypesenseConfig =
            toml::from_str("name = \"ts\"\nurl = \"localhost\"\nbatch_max_docs = 0\nschema = {}")
                .unwrap();
        assert_eq!(config.max_retries, DEFAULT_MAX_RETRIES);
        let mut problems = Vec::new();
        config.validate("sinks[0]", &mut problems);
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["sinks[0].url", "sinks[0].batch_max_docs", "sinks[0].schema"]
        );
        assert!(toml::from_str::<TypesenseConfig>("name = \"a\"\nurl = \"b\"\nnope = 1").is_err());
    }
}
