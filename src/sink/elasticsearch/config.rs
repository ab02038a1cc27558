//! Settings of an Elasticsearch / OpenSearch sink.

use serde::Deserialize;

use crate::model::problem::ConfigProblem;
use crate::sink::http::{self, HttpSettings, Problems};

/// `[[sinks]]` with `type = "elasticsearch"` (or `"opensearch"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// Name used in logs, metrics and state.
    pub name: String,
    /// Base URL of the cluster, e.g. `https://search.internal:9200`.
    pub url: String,
    /// Environment variable holding an API key (`Authorization: ApiKey …`).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// User for basic authentication (with `password_env`).
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the basic-auth password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Environment variable holding a bearer token (`Authorization: Bearer …`).
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// A bulk request closes at this many documents ...
    #[serde(default = "http::default_batch_max_docs")]
    pub batch_max_docs: usize,
    /// ... or this many bytes of NDJSON ...
    #[serde(default = "http::default_batch_max_bytes")]
    pub batch_max_bytes: u64,
    /// ... or when its oldest write waited this many milliseconds.
    #[serde(default = "http::default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Bulk requests in flight at once (versions keep the newest write winning
    /// whatever order they complete in).
    #[serde(default = "http::default_concurrency")]
    pub concurrency: usize,
    /// Timeout of one request, in milliseconds.
    #[serde(default = "http::default_request_timeout_ms")]
    pub request_timeout_ms: u64,
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
    /// Compress request bodies with gzip.
    #[serde(default)]
    pub gzip: bool,
    /// Create missing indexes with these settings and mappings (JSON-like TOML
    /// tables), e.g. `create_index = { settings = { number_of_shards = 1 } }`.
    #[serde(default)]
    pub create_index: Option<IndexDefinition>,
}

/// The body of a create-index request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexDefinition {
    #[serde(default)]
    pub settings: Option<toml::Table>,
    #[serde(default)]
    pub mappings: Option<toml::Table>,
}

impl ElasticsearchConfig {
    /// Checks the settings; `path` is the field path of this sink.
    pub fn validate(&self, path: &str, problems: &mut Vec<ConfigProblem>) {
        let mut problems = Problems::new(path, problems);
        problems.http_url(&self.url, "http://localhost:9200");
        let auth = [
            self.api_key_env.is_some(),
            self.username.is_some(),
            self.bearer_token_env.is_some(),
        ];
        if auth.iter().filter(|a| **a).count() > 1 {
            problems.add(
                "api_key_env",
                "api_key_env, username and bearer_token_env are exclusive; set one",
            );
        }
        if self.password_env.is_some() && self.username.is_none() {
            problems.add("password_env", "needs username");
        }
        for (field, var) in [
            ("api_key_env", &self.api_key_env),
            ("password_env", &self.password_env),
            ("bearer_token_env", &self.bearer_token_env),
        ] {
            if let Some(var) = var {
                problems.env_var(field, var);
            }
        }
        problems.at_least("batch_max_docs", self.batch_max_docs as u64, 1);
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

    /// The `Authorization` header value, read from the environment.
    pub fn authorization(&self) -> Option<String> {
        use base64::Engine;
        let env = |var: &Option<String>| var.as_ref().and_then(|v| std::env::var(v).ok());
        if let Some(key) = env(&self.api_key_env) {
            return Some(format!("ApiKey {key}"));
        }
        if let Some(token) = env(&self.bearer_token_env) {
            return Some(format!("Bearer {token}"));
        }
        self.username.as_ref().map(|user| {
            let password = env(&self.password_env).unwrap_or_default();
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {encoded}")
        })
    }
}
