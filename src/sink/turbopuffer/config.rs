//! Settings of a Turbopuffer sink.

use serde::Deserialize;

use crate::model::problem::ConfigProblem;
use crate::sink::http::{self, HttpSettings, Problems};
use crate::sink::http::{
    DEFAULT_CONCURRENCY, DEFAULT_FLUSH_INTERVAL_MS, DEFAULT_MAX_PARKED, DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_MAX_BACKOFF_MS,
};

/// Default API endpoint (a region's own endpoint, such as
/// `https://gcp-us-central1.turbopuffer.com`, can be set instead).
pub const DEFAULT_URL: &str = "https://api.turbopuffer.com";
/// Default environment variable holding the API key.
pub const DEFAULT_API_KEY_ENV: &str = "TURBOPUFFER_API_KEY";
/// Default attribute a document field literally named `id` is renamed to.
pub const DEFAULT_ID_ATTRIBUTE: &str = "row_id";
/// Default rows (upserts, patches and deletes) per write request.
pub const DEFAULT_BATCH_MAX_ROWS: usize = 5000;
/// Default bytes of rows per write request (the API takes up to 256 MB).
pub const DEFAULT_BATCH_MAX_BYTES: u64 = 32 * 1024 * 1024;
/// Largest `batch_max_bytes` accepted: the API's documented payload limit.
pub const MAX_BATCH_BYTES: u64 = 256 * 1024 * 1024;
/// Default timeout of one request.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 60_000;
/// Default first retry delay; it doubles per attempt, with jitter.
pub const DEFAULT_RETRY_INITIAL_BACKOFF_MS: u64 = 200;
/// The distance metrics the API knows.
pub const DISTANCE_METRICS: [&str; 2] = ["cosine_distance", "euclidean_squared"];

/// How document ids are sent. The API takes unsigned 64-bit integers, UUIDs
/// or strings of up to 64 bytes, and one namespace holds one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdType {
    /// The document id as a JSON string, as it is.
    #[default]
    String,
    /// The document id parsed as an unsigned 64-bit integer.
    U64,
    /// The document id parsed as a UUID (sent as a string, with the
    /// namespace schema declaring `id` a `uuid`).
    Uuid,
}

/// `[[sinks]]` with `type = "turbopuffer"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurbopufferConfig {
    /// Name used in logs, metrics and state.
    pub name: String,
    /// Base URL of the API, e.g. `https://gcp-us-central1.turbopuffer.com`.
    #[serde(default = "default_url")]
    pub url: String,
    /// Environment variable holding the API key (`Authorization: Bearer …`).
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// How document ids are typed: `string` (default), `u64` or `uuid`. An id
    /// that does not parse as the type is parked with the reason.
    #[serde(default)]
    pub id_type: IdType,
    /// A document field literally named `id` would clash with the row id: it
    /// is stored under this attribute name instead. Empty drops the field.
    #[serde(default = "default_id_attribute")]
    pub id_attribute: String,
    /// `distance_metric` sent with writes, for documents that carry a
    /// `vector` attribute: `cosine_distance` or `euclidean_squared`.
    #[serde(default)]
    pub distance_metric: Option<String>,
    /// A write request closes at this many rows ...
    #[serde(default = "default_batch_max_rows")]
    pub batch_max_rows: usize,
    /// ... or this many bytes of rows ...
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: u64,
    /// ... or when its oldest write waited this many milliseconds.
    #[serde(default = "http::default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Timeout of one request, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Write requests in flight at once (of disjoint documents, so that the
    /// writes to one document still apply in order).
    #[serde(default = "http::default_concurrency")]
    pub concurrency: usize,
    /// Retries of a request failing with a 500, a timeout or a dropped
    /// connection before its writes are parked (an unavailable or
    /// rate-limiting engine is waited out uncounted).
    #[serde(default = "http::default_max_retries")]
    pub max_retries: u32,
    /// First retry delay in milliseconds; doubles per attempt, with jitter.
    #[serde(default = "default_retry_initial_backoff_ms")]
    pub retry_initial_backoff_ms: u64,
    /// Cap of the retry delay in milliseconds; a server's `Retry-After` is
    /// honoured even when longer.
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
}

fn default_url() -> String {
    DEFAULT_URL.into()
}
fn default_api_key_env() -> String {
    DEFAULT_API_KEY_ENV.into()
}
fn default_id_attribute() -> String {
    DEFAULT_ID_ATTRIBUTE.into()
}
fn default_batch_max_rows() -> usize {
    DEFAULT_BATCH_MAX_ROWS
}
fn default_batch_max_bytes() -> u64 {
    DEFAULT_BATCH_MAX_BYTES
}
fn default_request_timeout_ms() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}
fn default_retry_initial_backoff_ms() -> u64 {
    DEFAULT_RETRY_INITIAL_BACKOFF_MS
}

impl TurbopufferConfig {
    /// A config with every default, for tests and examples.
    pub fn new(name: &str, url: &str) -> TurbopufferConfig {
        TurbopufferConfig {
            name: name.into(),
            url: url.into(),
            api_key_env: default_api_key_env(),
            id_type: IdType::default(),
            id_attribute: default_id_attribute(),
            distance_metric: None,
            batch_max_rows: DEFAULT_BATCH_MAX_ROWS,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            concurrency: DEFAULT_CONCURRENCY,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_initial_backoff_ms: DEFAULT_RETRY_INITIAL_BACKOFF_MS,
            retry_max_backoff_ms: DEFAULT_RETRY_MAX_BACKOFF_MS,
            max_parked: DEFAULT_MAX_PARKED,
            max_document_bytes: http::DEFAULT_MAX_DOCUMENT_BYTES,
        }
    }

    /// Checks the settings, reporting every problem; `path` is the field
    /// path of this sink, e.g. `sinks[0]`.
    pub fn validate(&self, path: &str, problems: &mut Vec<ConfigProblem>) {
        let mut problems = Problems::new(path, problems);
        problems.http_url(&self.url, DEFAULT_URL);
        if self.api_key_env.is_empty() {
            problems.add("api_key_env", "must name an environment variable");
        } else {
            problems.env_var("api_key_env", &self.api_key_env);
        }
        if self.id_attribute == "id" || self.id_attribute == "vector" {
            problems.add(
                "id_attribute",
                format!(
                    "`{}` is reserved by the API; choose another name, or \"\" to drop the field",
                    self.id_attribute
                ),
            );
        } else if self.id_attribute.starts_with('$') || self.id_attribute.len() > 128 {
            problems.add(
                "id_attribute",
                "must not start with `$` and must be at most 128 bytes",
            );
        }
        if let Some(metric) = &self.distance_metric {
            if !DISTANCE_METRICS.contains(&metric.as_str()) {
                problems.add(
                    "distance_metric",
                    format!("`{metric}` is not one of {}", DISTANCE_METRICS.join(", ")),
                );
            }
        }
        problems.at_least("batch_max_rows", self.batch_max_rows as u64, 1);
        self.http().check(&mut problems);
    }

    /// The settings every HTTP sink shares.
    pub fn http(&self) -> HttpSettings<'_> {
        HttpSettings {
            name: &self.name,
            url: &self.url,
            batch_max_bytes: self.batch_max_bytes,
            max_batch_bytes: Some(MAX_BATCH_BYTES),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_every_problem_at_once() {
        let config: TurbopufferConfig =
            toml::from_str("name = \"tp\"\napi_key_env = \"SLUICE_TP_TEST_UNSET_VAR\"").unwrap();
        assert_eq!(config.url, DEFAULT_URL);
        assert_eq!(config.id_type, IdType::String);
        assert_eq!(config.id_attribute, DEFAULT_ID_ATTRIBUTE);
        let mut problems = Vec::new();
        config.validate("sinks[0]", &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "sinks[0].api_key_env");

        let bad: TurbopufferConfig = toml::from_str(
            "name = \"tp\"\nurl = \"ftp://x\"\nid_type = \"u64\"\nid_attribute = \"id\"\n\
             distance_metric = \"dot\"\nbatch_max_rows = 0\nretry_max_backoff_ms = 1\n\
             concurrency = 0",
        )
        .unwrap();
        assert_eq!(bad.id_type, IdType::U64);
        let mut problems = Vec::new();
        bad.validate("sinks[2]", &mut problems);
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        for field in [
            "sinks[2].url",
            "sinks[2].id_attribute",
            "sinks[2].distance_metric",
            "sinks[2].batch_max_rows",
            "sinks[2].retry_max_backoff_ms",
            "sinks[2].concurrency",
        ] {
            assert!(fields.contains(&field), "{field} in {fields:?}");
        }
        assert!(toml::from_str::<TurbopufferConfig>("name = \"tp\"\nbogus = 1").is_err());
    }
}
