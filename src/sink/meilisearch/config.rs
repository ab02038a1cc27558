//! Settings of a Meilisearch sink.

use serde::Deserialize;

use crate::model::problem::ConfigProblem;
use crate::sink::http::{self, HttpSettings, Problems};
use crate::sink::http::{
    DEFAULT_FLUSH_INTERVAL_MS, DEFAULT_MAX_PARKED, DEFAULT_MAX_RETRIES, DEFAULT_REQUEST_TIMEOUT_MS,
    DEFAULT_RETRY_INITIAL_BACKOFF_MS, DEFAULT_RETRY_MAX_BACKOFF_MS,
};

/// Default documents in one request (one task). Meilisearch's cost is per
/// batch of tasks, not per document: large tasks, several enqueued while it
/// works, let its auto-batcher merge tens of thousands of documents at once.
/// Live changes are not held back by it: a request closes as soon as
/// nothing more is ready.
pub const DEFAULT_BATCH_MAX_DOCS: usize = 20_000;
/// Default bytes of JSON in one request: well within Meilisearch's payload
/// limit (100 MB by default).
pub const DEFAULT_BATCH_MAX_BYTES: u64 = 20 * 1024 * 1024;
/// Default primary key field of the indexes.
pub const DEFAULT_PRIMARY_KEY: &str = "id";
/// Default tasks enqueued and not yet finished at once.
pub const DEFAULT_MAX_TASKS_IN_FLIGHT: usize = 16;
/// Default longest wait for one task to finish.
pub const DEFAULT_TASK_TIMEOUT_MS: u64 = 300_000;
/// Default first delay between two looks at an unfinished task.
pub const DEFAULT_TASK_POLL_INITIAL_MS: u64 = 10;
/// Default cap of the delay between two looks at an unfinished task.
pub const DEFAULT_TASK_POLL_MAX_MS: u64 = 1000;

/// `[[sinks]]` with `type = "meilisearch"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeilisearchConfig {
    /// Name used in logs, metrics and state.
    pub name: String,
    /// Base URL of the instance, e.g. `http://search.internal:7700`.
    pub url: String,
    /// Environment variable holding the API key (`Authorization: Bearer …`).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The primary key field of every index. sluice sets it to the document
    /// id (a string) and passes it as `primaryKey` when writing.
    #[serde(default = "default_primary_key")]
    pub primary_key: String,
    /// A request closes at this many documents ...
    #[serde(default = "default_batch_max_docs")]
    pub batch_max_docs: usize,
    /// ... or this many bytes of JSON ...
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: u64,
    /// ... or when its oldest write waited this many milliseconds (the
    /// writer then commits: enqueues everything; the tasks are followed
    /// while the next writes go).
    #[serde(default = "http::default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Timeout of one HTTP request, in milliseconds.
    #[serde(default = "http::default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Retries of a request failing with a 500, a timeout or a dropped
    /// connection, and of a task failing with an internal error (an
    /// unavailable engine is waited out uncounted).
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
    /// Tasks enqueued and not finished at once; more writes wait for the oldest.
    #[serde(default = "default_max_tasks_in_flight")]
    pub max_tasks_in_flight: usize,
    /// Longest wait for one task to finish, in milliseconds. A task still
    /// enqueued or processing then is not resent: the sink reports an error
    /// and the pipeline resumes from its last acknowledged position.
    #[serde(default = "default_task_timeout_ms")]
    pub task_timeout_ms: u64,
    /// First delay between two looks at an unfinished task, in milliseconds.
    #[serde(default = "default_task_poll_initial_ms")]
    pub task_poll_initial_ms: u64,
    /// Cap of the delay between two looks at an unfinished task.
    #[serde(default = "default_task_poll_max_ms")]
    pub task_poll_max_ms: u64,
}

fn default_batch_max_docs() -> usize {
    DEFAULT_BATCH_MAX_DOCS
}
fn default_batch_max_bytes() -> u64 {
    DEFAULT_BATCH_MAX_BYTES
}
fn default_primary_key() -> String {
    DEFAULT_PRIMARY_KEY.into()
}
fn default_max_tasks_in_flight() -> usize {
    DEFAULT_MAX_TASKS_IN_FLIGHT
}
fn default_task_timeout_ms() -> u64 {
    DEFAULT_TASK_TIMEOUT_MS
}
fn default_task_poll_initial_ms() -> u64 {
    DEFAULT_TASK_POLL_INITIAL_MS
}
fn default_task_poll_max_ms() -> u64 {
    DEFAULT_TASK_POLL_MAX_MS
}

impl MeilisearchConfig {
    /// A config with every default, for `name` at `url`.
    pub fn new(name: &str, url: &str) -> MeilisearchConfig {
        MeilisearchConfig {
            name: name.into(),
            url: url.into(),
            api_key_env: None,
            primary_key: default_primary_key(),
            batch_max_docs: DEFAULT_BATCH_MAX_DOCS,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_initial_backoff_ms: DEFAULT_RETRY_INITIAL_BACKOFF_MS,
            retry_max_backoff_ms: DEFAULT_RETRY_MAX_BACKOFF_MS,
            max_parked: DEFAULT_MAX_PARKED,
            max_document_bytes: http::DEFAULT_MAX_DOCUMENT_BYTES,
            max_tasks_in_flight: DEFAULT_MAX_TASKS_IN_FLIGHT,
            task_timeout_ms: DEFAULT_TASK_TIMEOUT_MS,
            task_poll_initial_ms: DEFAULT_TASK_POLL_INITIAL_MS,
            task_poll_max_ms: DEFAULT_TASK_POLL_MAX_MS,
        }
    }

    /// Checks the settings; `path` is the field path of this sink.
    pub fn validate(&self, path: &str, problems: &mut Vec<ConfigProblem>) {
        let mut problems = Problems::new(path, problems);
        problems.http_url(&self.url, "http://localhost:7700");
        if let Some(var) = &self.api_key_env {
            problems.env_var("api_key_env", var);
        }
        if self.primary_key.is_empty()
            || !self
                .primary_key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            problems.add(
                "primary_key",
                format!(
                    "`{}` is not a field name Meilisearch takes as a primary key (a-z A-Z 0-9 _ -)",
                    self.primary_key
                ),
            );
        }
        problems.at_least("batch_max_docs", self.batch_max_docs as u64, 1);
        if self.max_tasks_in_flight == 0 || self.max_tasks_in_flight > 1024 {
            problems.add("max_tasks_in_flight", "must be between 1 and 1024");
        }
        problems.at_least("task_timeout_ms", self.task_timeout_ms, 1);
        problems.at_least("task_poll_initial_ms", self.task_poll_initial_ms, 1);
        if self.task_poll_max_ms < self.task_poll_initial_ms {
            problems.add("task_poll_max_ms", "must be at least task_poll_initial_ms");
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
            concurrency: None,
        }
    }

    /// The `Authorization` header value, read from the environment.
    pub fn authorization(&self) -> Option<String> {
        let key = std::env::var(self.api_key_env.as_ref()?).ok()?;
        Some(format!("Bearer {key}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_their_fields() {
        let mut config = MeilisearchConfig::new("meili", "ftp://x");
        config.primary_key = "a|b".into();
        config.batch_max_docs = 0;
        config.task_timeout_ms = 0;
        config.api_key_env = Some("SLUICE_TEST_SURELY_UNSET_MEILI_KEY".into());
        let mut problems = Vec::new();
        config.validate("sinks[0]", &mut problems);
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "sinks[0].url",
                "sinks[0].api_key_env",
                "sinks[0].primary_key",
                "sinks[0].batch_max_docs",
                "sinks[0].task_timeout_ms"
            ]
        );
        let mut problems = Vec::new();
        MeilisearchConfig::new("meili", "http://localhost:7700").validate("s", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let config: MeilisearchConfig =
            toml::from_str("name = \"m\"\nurl = \"http://x:7700\"").unwrap();
        assert_eq!(config.primary_key, DEFAULT_PRIMARY_KEY);
        assert!(
            toml::from_str::<MeilisearchConfig>("name = \"m\"\nurl = \"u\"\nbogus = 1").is_err()
        );
    }
}
