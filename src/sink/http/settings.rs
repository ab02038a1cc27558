//! The settings every HTTP sink has: their defaults and their checks.

use crate::model::problem::ConfigProblem;

/// Default documents per request.
pub const DEFAULT_BATCH_MAX_DOCS: usize = 1000;
/// Default bytes per request body (before compression).
pub const DEFAULT_BATCH_MAX_BYTES: u64 = 5 * 1024 * 1024;
/// Default least time between two flushes (0: a write goes as soon as the
/// sink is free and nothing more is ready; batches grow while requests are
/// in flight).
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 0;
/// Default timeout of one request.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default retries of a write that keeps failing with a retryable error
/// (an unavailable engine is waited for without counting).
pub const DEFAULT_MAX_RETRIES: u32 = 10;
/// Default first retry delay; it doubles per attempt, with jitter.
pub const DEFAULT_RETRY_INITIAL_BACKOFF_MS: u64 = 100;
/// Default cap of the retry delay.
pub const DEFAULT_RETRY_MAX_BACKOFF_MS: u64 = 30_000;
/// Default number of parked writes at which the sink pauses.
pub const DEFAULT_MAX_PARKED: usize = 10_000;
/// Default largest document (its JSON) a sink sends; a larger one is parked.
pub const DEFAULT_MAX_DOCUMENT_BYTES: u64 = 20 * 1024 * 1024;
/// Default requests in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 2;
/// Most requests in flight at once a sink accepts.
pub const MAX_CONCURRENCY: usize = 64;

pub fn default_batch_max_docs() -> usize {
    DEFAULT_BATCH_MAX_DOCS
}
pub fn default_batch_max_bytes() -> u64 {
    DEFAULT_BATCH_MAX_BYTES
}
pub fn default_flush_interval_ms() -> u64 {
    DEFAULT_FLUSH_INTERVAL_MS
}
pub fn default_request_timeout_ms() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}
pub fn default_max_retries() -> u32 {
    DEFAULT_MAX_RETRIES
}
pub fn default_retry_initial_backoff_ms() -> u64 {
    DEFAULT_RETRY_INITIAL_BACKOFF_MS
}
pub fn default_retry_max_backoff_ms() -> u64 {
    DEFAULT_RETRY_MAX_BACKOFF_MS
}
pub fn default_max_parked() -> usize {
    DEFAULT_MAX_PARKED
}
pub fn default_max_document_bytes() -> u64 {
    DEFAULT_MAX_DOCUMENT_BYTES
}
pub fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}

/// The shared settings of one sink, borrowed from its config.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub batch_max_bytes: u64,
    /// The largest `batch_max_bytes` the engine takes, where it documents one.
    pub max_batch_bytes: Option<u64>,
    pub flush_interval_ms: u64,
    pub request_timeout_ms: u64,
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    pub max_retries: u32,
    pub max_parked: usize,
    pub max_document_bytes: u64,
    /// Requests in flight at once, for sinks that send several.
    pub concurrency: Option<usize>,
}

impl HttpSettings<'_> {
    /// Checks every shared setting but the URL (see [`Problems::http_url`]).
    pub fn check(&self, problems: &mut Problems) {
        problems.at_least("max_parked", self.max_parked as u64, 1);
        problems.at_least("max_document_bytes", self.max_document_bytes, 1024);
        if let Some(concurrency) = self.concurrency {
            if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
                problems.add(
                    "concurrency",
                    format!("must be between 1 and {MAX_CONCURRENCY}"),
                );
            }
        }
        match self.max_batch_bytes {
            None => problems.at_least("batch_max_bytes", self.batch_max_bytes, 1024),
            Some(max) if !(1024..=max).contains(&self.batch_max_bytes) => problems.add(
                "batch_max_bytes",
                format!("must be between 1024 and {max} (the API's payload limit)"),
            ),
            Some(_) => {}
        }
        for (field, value) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("retry_initial_backoff_ms", self.retry_initial_backoff_ms),
        ] {
            problems.at_least(field, value, 1);
        }
        if self.retry_max_backoff_ms < self.retry_initial_backoff_ms {
            problems.add(
                "retry_max_backoff_ms",
                "must be at least retry_initial_backoff_ms",
            );
        }
    }
}

/// The problems found in one sink's settings, each named by its field path.
pub struct Problems<'a> {
    path: &'a str,
    found: &'a mut Vec<ConfigProblem>,
}

impl<'a> Problems<'a> {
    /// Adds to `found` the problems of the sink at `path`, e.g. `sinks[0]`.
    pub fn new(path: &'a str, found: &'a mut Vec<ConfigProblem>) -> Problems<'a> {
        Problems { path, found }
    }

    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.found.push(ConfigProblem {
            field: format!("{}.{field}", self.path),
            message: message.into(),
        });
    }

    pub fn at_least(&mut self, field: &str, value: u64, min: u64) {
        if value < min {
            self.add(field, format!("must be at least {min}"));
        }
    }

    /// `url` must be an http(s) URL; `example` shows one in the message.
    pub fn http_url(&mut self, url: &str, example: &str) {
        match reqwest::Url::parse(url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => self.add(
                "url",
                format!("`{url}` is not an http(s) URL such as {example}"),
            ),
        }
    }

    /// The environment variable `var` named by `field` must be set.
    pub fn env_var(&mut self, field: &str, var: &str) {
        if std::env::var_os(var).is_none() {
            self.add(field, format!("environment variable {var} is not set"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shared_problem_is_reported_at_once() {
        let settings = HttpSettings {
            name: "s",
            url: "http://localhost",
            batch_max_bytes: 10,
            max_batch_bytes: None,
            flush_interval_ms: 0,
            request_timeout_ms: 0,
            retry_initial_backoff_ms: 5,
            retry_max_backoff_ms: 1,
            max_retries: 3,
            max_parked: 0,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            concurrency: Some(65),
        };
        let mut found = Vec::new();
        let mut problems = Problems::new("sinks[1]", &mut found);
        problems.http_url("localhost:9200", "http://localhost:9200");
        settings.check(&mut problems);
        let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "sinks[1].url",
                "sinks[1].max_parked",
                "sinks[1].concurrency",
                "sinks[1].batch_max_bytes",
                "sinks[1].request_timeout_ms",
                "sinks[1].retry_max_backoff_ms",
            ]
        );

        let capped = HttpSettings {
            batch_max_bytes: 2048,
            max_batch_bytes: Some(1500),
            ..settings
        };
        let mut found = Vec::new();
        capped.check(&mut Problems::new("s", &mut found));
        assert!(found
            .iter()
            .any(|p| p.message == "must be between 1024 and 1500 (the API's payload limit)"));
    }
}
