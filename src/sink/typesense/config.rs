//! Settings of a Typesense sink.

use serde::Deserialize;

use crate::config::ConfigProblem;

/// Default documents per import request (and ids per delete request).
pub const DEFAULT_BATCH_MAX_DOCS: usize = 1000;
/// Default bytes per import body (JSONL).
pub const DEFAULT_BATCH_MAX_BYTES: u64 = 5 * 1024 * 1024;
/// Default bytes of the `filter_by` of one delete request (it travels in the URL).
pub const DEFAULT_DELETE_MAX_FILTER_BYTES: usize = 16 * 1024;
/// Default time a write may wait in the buffer.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 1000;
/// Default timeout of one request.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default attempts of a write that keeps failing with a retryable error.
pub const DEFAULT_MAX_RETRIES: u32 = 10;
/// Default number of parked messages at which the sink pauses.
pub const DEFAULT_MAX_PARKED: usize = 10_000;
/// Default first retry delay; it doubles per attempt, with jitter.
pub const DEFAULT_RETRY_INITIAL_BACKOFF_MS: u64 = 100;
/// Default cap of the retry delay.
pub const DEFAULT_RETRY_MAX_BACKOFF_MS: u64 = 30_000;

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
    #[serde(default = "default_batch_max_docs")]
    pub batch_max_docs: usize,
    /// ... or this many bytes of JSONL ...
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: u64,
    /// ... and a delete request at this many bytes of `filter_by`.
    #[serde(default = "default_delete_max_filter_bytes")]
    pub delete_max_filter_bytes: usize,
    /// Writes wait at most this many milliseconds in the buffer (the interval
    /// between commits).
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Timeout of one request, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Attempts of a write failing with 429, 5xx or a timeout before it is parked.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// First retry delay in milliseconds; doubles per attempt, with jitter.
    #[serde(default = "default_retry_initial_backoff_ms")]
    pub retry_initial_backoff_ms: u64,
    /// Cap of the retry delay in milliseconds.
    #[serde(default = "default_retry_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
    /// When this many writes are parked in the failed-message store, the sink
    /// pauses (and with it the slot) until some are retried or discarded.
    #[serde(default = "default_max_parked")]
    pub max_parked: usize,
    /// Create missing collections with this schema (a TOML table written as
    /// Typesense's JSON schema, without `name`: the collection name comes from
    /// the router), e.g. `schema = { fields = [{ name = ".*", type = "auto" }] }`.
    #[serde(default)]
    pub schema: Option<toml::Table>,
}

fn default_batch_max_docs() -> usize {
    DEFAULT_BATCH_MAX_DOCS
}
fn default_batch_max_bytes() -> u64 {
    DEFAULT_BATCH_MAX_BYTES
}
fn default_delete_max_filter_bytes() -> usize {
    DEFAULT_DELETE_MAX_FILTER_BYTES
}
fn default_flush_interval_ms() -> u64 {
    DEFAULT_FLUSH_INTERVAL_MS
}
fn default_request_timeout_ms() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}
fn default_max_retries() -> u32 {
    DEFAULT_MAX_RETRIES
}
fn default_max_parked() -> usize {
    DEFAULT_MAX_PARKED
}
fn default_retry_initial_backoff_ms() -> u64 {
    DEFAULT_RETRY_INITIAL_BACKOFF_MS
}
fn default_retry_max_backoff_ms() -> u64 {
    DEFAULT_RETRY_MAX_BACKOFF_MS
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
            max_retries: DEFAULT_MAX_RETRIES,
            retry_initial_backoff_ms: DEFAULT_RETRY_INITIAL_BACKOFF_MS,
            retry_max_backoff_ms: DEFAULT_RETRY_MAX_BACKOFF_MS,
            max_parked: DEFAULT_MAX_PARKED,
            schema: None,
        }
    }

    /// Checks the settings; `path` is the field path of this sink.
    pub fn validate(&self, path: &str, problems: &mut Vec<ConfigProblem>) {
        let mut problem = |field: &str, message: String| {
            problems.push(ConfigProblem {
                field: format!("{path}.{field}"),
                message,
            })
        };
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => problem(
                "url",
                format!(
                    "`{}` is not an http(s) URL such as http://localhost:8108",
                    self.url
                ),
            ),
        }
        match &self.api_key_env {
            Some(var) if std::env::var_os(var).is_none() => problem(
                "api_key_env",
                format!("environment variable {var} is not set"),
            ),
            _ => {}
        }
        if self.batch_max_docs == 0 {
            problem("batch_max_docs", "must be at least 1".into());
        }
        if self.max_parked == 0 {
            problem("max_parked", "must be at least 1".into());
        }
        if self.batch_max_bytes < 1024 {
            problem("batch_max_bytes", "must be at least 1024".into());
        }
        if self.delete_max_filter_bytes < 256 {
            problem("delete_max_filter_bytes", "must be at least 256".into());
        }
        for (field, value) in [
            ("flush_interval_ms", self.flush_interval_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("retry_initial_backoff_ms", self.retry_initial_backoff_ms),
        ] {
            if value == 0 {
                problem(field, "must be at least 1".into());
            }
        }
        if self.retry_max_backoff_ms < self.retry_initial_backoff_ms {
            problem(
                "retry_max_backoff_ms",
                "must be at least retry_initial_backoff_ms".into(),
            );
        }
        if let Some(schema) = &self.schema {
            if !matches!(schema.get("fields"), Some(toml::Value::Array(_))) {
                problem(
                    "schema",
                    "needs `fields`, an array such as [{ name = \".*\", type = \"auto\" }]".into(),
                );
            }
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
