//! `[pipeline]`: how the pipeline batches, shards and bounds its work.

use std::path::PathBuf;

use serde::Deserialize;

use crate::model::ident::check_index_name;
use crate::model::problem::ConfigProblem;

/// Default data directory (indexes, state).
pub const DEFAULT_DATA_DIR: &str = "sluice-data";
/// Default number of key shards.
pub const DEFAULT_SHARDS: usize = 4;
/// Default bound on the WAL bytes held anywhere in the pipeline.
pub const DEFAULT_MAX_BYTES_IN_FLIGHT: u64 = 16 * 1024 * 1024;
/// Default maximum number of changes in one batch read from the WAL.
pub const DEFAULT_BATCH_MAX_CHANGES: usize = 4096;
/// Default maximum bytes in one batch read from the WAL.
pub const DEFAULT_BATCH_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Default time a partly filled batch waits for more changes (0: it takes
/// what the connection holds already and goes).
pub const DEFAULT_BATCH_MAX_AGE_MS: u64 = 0;
/// Default index name template.
pub const DEFAULT_INDEX_TEMPLATE: &str = "{table}";
/// Default separator between the values of a composite key in a document id.
pub const DEFAULT_KEY_SEPARATOR: &str = "|";
/// Default cap of the restart backoff.
pub const DEFAULT_MAX_RESTART_BACKOFF_MS: u64 = 30_000;
/// `pipeline.drain_timeout_ms`.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 20_000;
/// Default bound of the writes spooled to disk for one sink that fell behind.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// Pipeline-wide tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Directory for embedded indexes and sluice's own state.
    pub data_dir: PathBuf,
    /// Number of key shards. Changes to one key always go to the same shard.
    pub shards: usize,
    /// Upper bound of WAL bytes held in the pipeline; when reached, sluice stops
    /// reading from Postgres (which keeps the WAL) until writes complete.
    pub max_bytes_in_flight: u64,
    /// A batch read from the WAL is closed at this many changes...
    pub batch_max_changes: usize,
    /// ... or at this many bytes ...
    pub batch_max_bytes: u64,
    /// ... or once nothing more has arrived, after waiting this many
    /// milliseconds for more (0: no wait).
    pub batch_max_age_ms: u64,
    /// Index name for tables without an explicit `index`. `{schema}` and `{table}`
    /// are replaced by the table's schema and name.
    pub index_template: String,
    /// Separator between the values of a composite key in document ids.
    pub key_separator: String,
    /// Cap of the exponential backoff between pipeline restarts, in milliseconds.
    pub max_restart_backoff_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight writes may take to be written
    /// and confirmed before sluice exits anyway (what is unconfirmed is read
    /// again at the next start), in milliseconds. Below Kubernetes' default
    /// grace period of 30 s.
    pub drain_timeout_ms: u64,
    /// With several sinks, a sink that falls behind has its writes spooled to
    /// `data_dir/spool/<sink>/` so the others go on; at most this many bytes
    /// per sink, beyond which the pipeline waits for it.
    pub spool_max_bytes: u64,
    /// Address for the Prometheus metrics endpoint (e.g. `127.0.0.1:9187`); off when unset.
    pub metrics_listen: Option<String>,
    /// The most memory one Lua runtime (see `functions`) may hold, in MiB.
    pub function_memory_mb: usize,
    /// With this many failed function calls parked (`@functions`), the
    /// pipeline pauses until some are retried or discarded.
    pub function_max_parked: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            data_dir: DEFAULT_DATA_DIR.into(),
            shards: DEFAULT_SHARDS,
            max_bytes_in_flight: DEFAULT_MAX_BYTES_IN_FLIGHT,
            batch_max_changes: DEFAULT_BATCH_MAX_CHANGES,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            batch_max_age_ms: DEFAULT_BATCH_MAX_AGE_MS,
            index_template: DEFAULT_INDEX_TEMPLATE.into(),
            key_separator: DEFAULT_KEY_SEPARATOR.into(),
            max_restart_backoff_ms: DEFAULT_MAX_RESTART_BACKOFF_MS,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            metrics_listen: None,
            function_memory_mb: crate::functions::DEFAULT_MEMORY_MB,
            function_max_parked: crate::sink::http::DEFAULT_MAX_PARKED,
        }
    }
}

impl PipelineConfig {
    pub(super) fn validate(&self, problems: &mut Vec<ConfigProblem>) {
        let mut problem =
            |field: String, message: String| problems.push(ConfigProblem { field, message });
        let pipeline = self;
        if pipeline.shards == 0 || pipeline.shards > 1024 {
            problem(
                "pipeline.shards".into(),
                "must be between 1 and 1024".into(),
            );
        }
        if pipeline.max_bytes_in_flight < 1024 * 1024 {
            problem(
                "pipeline.max_bytes_in_flight".into(),
                "must be at least 1048576 (1 MiB)".into(),
            );
        }
        if pipeline.spool_max_bytes < 1024 * 1024 {
            problem(
                "pipeline.spool_max_bytes".into(),
                "must be at least 1048576 (1 MiB)".into(),
            );
        }
        if pipeline.batch_max_changes == 0 {
            problem(
                "pipeline.batch_max_changes".into(),
                "must be at least 1".into(),
            );
        }
        if pipeline.batch_max_bytes == 0 || pipeline.batch_max_bytes > pipeline.max_bytes_in_flight
        {
            problem(
                "pipeline.batch_max_bytes".into(),
                "must be at least 1 and at most pipeline.max_bytes_in_flight".into(),
            );
        }
        if let Err(message) = check_index_template(&pipeline.index_template) {
            problem("pipeline.index_template".into(), message);
        }
        if pipeline.key_separator.is_empty() {
            problem("pipeline.key_separator".into(), "must not be empty".into());
        }
        if let Some(addr) = &pipeline.metrics_listen {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                problem(
                    "pipeline.metrics_listen".into(),
                    format!("`{addr}` is not an address such as 127.0.0.1:9187"),
                );
            }
        }
    }
}

fn check_index_template(template: &str) -> Result<(), String> {
    let sample = template
        .replace("{schema}", "public")
        .replace("{table}", "products");
    if sample.contains(['{', '}']) {
        return Err(format!(
            "`{template}` has an unknown placeholder; only {{schema}} and {{table}} are replaced"
        ));
    }
    check_index_name(&sample)
}
