//! Configuration: the TOML file, its defaults and its validation.
//!
//! Every knob has a doc comment and a named default. Unknown keys are errors.
//! Semantic validation reports every problem at once, each naming its field path.

pub mod check;
mod parse;
mod plan;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::functions::FunctionKind;
pub use crate::model::ident::check_index_name;
use crate::model::ident::TableName;
pub use crate::model::problem::ConfigProblem;
pub use crate::pipeline::document::TransformConfig;
pub use crate::pipeline::filter::Operation;
pub use crate::pipeline::slot::OnSlotLost;
pub use crate::sink::settings::{SinkConfig, SinkKind, DEFAULT_COMMIT_INTERVAL_MS};

/// Default replication slot name.
pub const DEFAULT_SLOT: &str = "sluice";
/// Default publication name.
pub const DEFAULT_PUBLICATION: &str = "sluice";
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
/// Default interval between standby status updates sent to Postgres.
pub const DEFAULT_STATUS_INTERVAL_MS: u64 = 10_000;
/// `source.retained_wal_warn_bytes`: 4 GiB.
pub const DEFAULT_RETAINED_WAL_WARN_BYTES: u64 = 4 << 30;
/// Default cap of the restart backoff.
pub const DEFAULT_MAX_RESTART_BACKOFF_MS: u64 = 30_000;
/// `pipeline.drain_timeout_ms`.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 20_000;
/// Default bound of the writes spooled to disk for one sink that fell behind.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Postgres database to read changes from.
    pub source: SourceConfig,
    /// How the pipeline batches, shards and bounds its work.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// The tables to stream, with their filters, transforms and routing.
    pub tables: Vec<TableConfig>,
    /// Where documents are written. Defaults to one embedded index.
    #[serde(default = "default_sinks")]
    pub sinks: Vec<SinkConfig>,
    /// How backfills read tables, and whether new sinks get one.
    #[serde(default)]
    pub backfill: crate::backfill::BackfillConfig,
    /// The management API (status, backfills).
    #[serde(default)]
    pub api: crate::api::ApiConfig,
    /// Filters, transforms and routes written in Lua, by name; tables name
    /// the ones they use.
    #[serde(default)]
    pub functions: BTreeMap<String, crate::functions::FunctionConfig>,
    /// The directory of the configuration file: function files are relative to it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Connection to the source database.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Connection string, as a URL (`postgres://user@host:5432/db?sslmode=require`)
    /// or libpq key/value pairs. Mutually exclusive with `database_url_env`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Name of an environment variable holding the connection string.
    #[serde(default)]
    pub database_url_env: Option<String>,
    /// Name of an environment variable holding the password (overrides the URL's).
    #[serde(default)]
    pub password_env: Option<String>,
    /// File with the CA certificate(s) to trust for `sslmode=verify-ca|verify-full`
    /// (the URL's `sslrootcert` also works). Default: the system's roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Replication slot name. Created when missing.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication name. Created (or extended with missing tables) when missing.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Interval between standby status updates, in milliseconds.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// What to do when the slot is gone, invalidated, or not the one this
    /// data directory streamed from: `fail` (refuse to stream) or `resync`
    /// (a new slot, and every table backfilled again into every sink).
    #[serde(default)]
    pub on_slot_lost: OnSlotLost,
    /// A warning is logged while the slot holds more WAL than this on the
    /// primary (bytes; 0: never).
    #[serde(default = "default_retained_wal_warn_bytes")]
    pub retained_wal_warn_bytes: u64,
}

impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("database_url_env", &self.database_url_env)
            .field("password_env", &self.password_env)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .finish()
    }
}

/// Pipeline-wide tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Directory for embedded indexes and sluice's own state.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Number of key shards. Changes to one key always go to the same shard.
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// Upper bound of WAL bytes held in the pipeline; when reached, sluice stops
    /// reading from Postgres (which keeps the WAL) until writes complete.
    #[serde(default = "default_max_bytes_in_flight")]
    pub max_bytes_in_flight: u64,
    /// A batch read from the WAL is closed at this many changes...
    #[serde(default = "default_batch_max_changes")]
    pub batch_max_changes: usize,
    /// ... or at this many bytes ...
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: u64,
    /// ... or once nothing more has arrived, after waiting this many
    /// milliseconds for more (0: no wait).
    #[serde(default = "default_batch_max_age_ms")]
    pub batch_max_age_ms: u64,
    /// Index name for tables without an explicit `index`. `{schema}` and `{table}`
    /// are replaced by the table's schema and name.
    #[serde(default = "default_index_template")]
    pub index_template: String,
    /// Separator between the values of a composite key in document ids.
    #[serde(default = "default_key_separator")]
    pub key_separator: String,
    /// Cap of the exponential backoff between pipeline restarts, in milliseconds.
    #[serde(default = "default_max_restart_backoff_ms")]
    pub max_restart_backoff_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight writes may take to be written
    /// and confirmed before sluice exits anyway (what is unconfirmed is read
    /// again at the next start), in milliseconds. Below Kubernetes' default
    /// grace period of 30 s.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// With several sinks, a sink that falls behind has its writes spooled to
    /// `data_dir/spool/<sink>/` so the others go on; at most this many bytes
    /// per sink, beyond which the pipeline waits for it.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Address for the Prometheus metrics endpoint (e.g. `127.0.0.1:9187`); off when unset.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// The most memory one Lua runtime (see `functions`) may hold, in MiB.
    #[serde(default = "default_function_memory_mb")]
    pub function_memory_mb: usize,
    /// With this many failed function calls parked (`@functions`), the
    /// pipeline pauses until some are retried or discarded.
    #[serde(default = "default_function_max_parked")]
    pub function_max_parked: usize,
}

fn default_function_memory_mb() -> usize {
    crate::functions::DEFAULT_MEMORY_MB
}

fn default_function_max_parked() -> usize {
    crate::sink::http::DEFAULT_MAX_PARKED
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            data_dir: default_data_dir(),
            shards: DEFAULT_SHARDS,
            max_bytes_in_flight: DEFAULT_MAX_BYTES_IN_FLIGHT,
            batch_max_changes: DEFAULT_BATCH_MAX_CHANGES,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            batch_max_age_ms: DEFAULT_BATCH_MAX_AGE_MS,
            index_template: default_index_template(),
            key_separator: default_key_separator(),
            max_restart_backoff_ms: DEFAULT_MAX_RESTART_BACKOFF_MS,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            metrics_listen: None,
            function_memory_mb: crate::functions::DEFAULT_MEMORY_MB,
            function_max_parked: default_function_max_parked(),
        }
    }
}

/// One streamed table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `schema.table`; a bare name means schema `public`.
    pub name: String,
    /// Operations to stream. Default: all four.
    #[serde(default = "default_operations")]
    pub operations: Vec<Operation>,
    /// Index (collection, namespace) to write to. Default: `pipeline.index_template`.
    #[serde(default)]
    pub index: Option<String>,
    /// Columns whose values identify a document and group its changes in order.
    /// Default: the primary key (or replica identity index).
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Column whose value routes the document to a shard of the index
    /// (Elasticsearch/OpenSearch `routing`). Must be one of the key columns:
    /// a delete carries only the key.
    #[serde(default)]
    pub routing: Option<String>,
    /// Declarative transform of rows into documents, or a transform function.
    #[serde(default)]
    pub transform: TransformConfig,
    /// A filter function (see `functions`): changes it returns false for are
    /// left out.
    #[serde(default)]
    pub filter: Option<String>,
    /// A route function (see `functions`): names the index of each change,
    /// and can turn it into a delete.
    #[serde(default)]
    pub route: Option<String>,
    /// Column predicates that must all hold for a row to be in the index
    /// (`["active = true", "price > 10", "status in ('a', 'b')"]`): rows
    /// that do not match are left out, and an update that stops matching
    /// removes the document.
    #[serde(default, rename = "where")]
    pub predicates: Vec<String>,
    /// This table's index holds other tables' documents too (they name the
    /// same `index`, or the template gives them the same one). Off by
    /// default: sharing an index is refused without it. On, every document
    /// carries its table in the `sluice_table` field and a TRUNCATE removes
    /// only this table's documents. The tables' ids must not collide.
    #[serde(default)]
    pub shared_index: bool,
}

impl TableConfig {
    /// Every column the table's settings name, with the setting that names
    /// it (`where[0]`, `transform.drop[1]`, …): each must be a column of the
    /// table, or the setting would quietly do something else.
    pub fn named_columns(&self) -> Vec<(String, String)> {
        let mut named = Vec::new();
        for (j, text) in self.predicates.iter().enumerate() {
            if let Ok(predicate) = crate::pipeline::predicate::Predicate::parse(text) {
                named.push((format!("where[{j}]"), predicate.column));
            }
        }
        for (j, column) in self.key.iter().flatten().enumerate() {
            named.push((format!("key[{j}]"), column.clone()));
        }
        if let Some(routing) = &self.routing {
            named.push(("routing".into(), routing.clone()));
        }
        named.extend(self.transform.named_columns());
        named
    }
}

fn default_sinks() -> Vec<SinkConfig> {
    vec![SinkConfig {
        name: "embedded".into(),
        kind: SinkKind::Embedded {
            commit_interval_ms: DEFAULT_COMMIT_INTERVAL_MS,
            max_document_bytes: crate::sink::http::DEFAULT_MAX_DOCUMENT_BYTES,
        },
    }]
}
fn default_slot() -> String {
    DEFAULT_SLOT.into()
}
fn default_publication() -> String {
    DEFAULT_PUBLICATION.into()
}
fn default_data_dir() -> PathBuf {
    DEFAULT_DATA_DIR.into()
}
fn default_shards() -> usize {
    DEFAULT_SHARDS
}
fn default_spool_max_bytes() -> u64 {
    DEFAULT_SPOOL_MAX_BYTES
}
fn default_max_bytes_in_flight() -> u64 {
    DEFAULT_MAX_BYTES_IN_FLIGHT
}
fn default_batch_max_changes() -> usize {
    DEFAULT_BATCH_MAX_CHANGES
}
fn default_batch_max_bytes() -> u64 {
    DEFAULT_BATCH_MAX_BYTES
}
fn default_batch_max_age_ms() -> u64 {
    DEFAULT_BATCH_MAX_AGE_MS
}
fn default_index_template() -> String {
    DEFAULT_INDEX_TEMPLATE.into()
}
fn default_key_separator() -> String {
    DEFAULT_KEY_SEPARATOR.into()
}
fn default_drain_timeout_ms() -> u64 {
    DEFAULT_DRAIN_TIMEOUT_MS
}
fn default_max_restart_backoff_ms() -> u64 {
    DEFAULT_MAX_RESTART_BACKOFF_MS
}
fn default_status_interval_ms() -> u64 {
    DEFAULT_STATUS_INTERVAL_MS
}
fn default_retained_wal_warn_bytes() -> u64 {
    DEFAULT_RETAINED_WAL_WARN_BYTES
}
fn default_operations() -> Vec<Operation> {
    Operation::ALL.to_vec()
}

/// The configuration could not be used; every problem found is listed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{} configuration problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

impl From<ConfigError> for crate::error::Error {
    fn from(e: ConfigError) -> crate::error::Error {
        crate::error::Error::new(crate::error::ErrorKind::Config, e.to_string())
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a config file, without validating it.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = parse::parse(&text).map_err(|e| match e {
            Ok(problems) => ConfigError::Invalid(problems),
            Err(message) => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
        })?;
        config.base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok(config)
    }

    /// Checks every constraint and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem =
            |field: String, message: String| problems.push(ConfigProblem { field, message });
        let source = &self.source;
        match (&source.database_url, &source.database_url_env) {
            (None, None) => problem(
                "source.database_url".into(),
                "missing: set database_url or database_url_env".into(),
            ),
            (Some(_), Some(_)) => problem(
                "source.database_url_env".into(),
                "database_url and database_url_env are exclusive; set only one".into(),
            ),
            (None, Some(var)) if std::env::var_os(var).is_none() => problem(
                "source.database_url_env".into(),
                format!("environment variable {var} is not set"),
            ),
            _ => {}
        }
        if let Some(var) = &source.password_env {
            if std::env::var_os(var).is_none() {
                problem(
                    "source.password_env".into(),
                    format!("environment variable {var} is not set"),
                );
            }
        }
        for (field, name) in [
            ("source.slot", &source.slot),
            ("source.publication", &source.publication),
        ] {
            if !is_pg_name(name) {
                problem(
                    field.into(),
                    format!("`{name}` must be 1 to 63 lowercase letters, digits or underscores"),
                );
            }
        }
        if source.status_interval_ms == 0 {
            problem(
                "source.status_interval_ms".into(),
                "must be at least 1".into(),
            );
        }
        let pipeline = &self.pipeline;
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
        if self.tables.is_empty() {
            problem("tables".into(), "at least one table is required".into());
        }
        let mut seen = HashSet::new();
        for (i, table) in self.tables.iter().enumerate() {
            let path = |field: &str| format!("tables[{i}].{field}");
            match TableName::parse(&table.name) {
                Ok(name) => {
                    if !seen.insert(name.clone()) {
                        problem(path("name"), format!("table {name} is listed twice"));
                    }
                }
                Err(message) => problem(path("name"), message),
            }
            if table.operations.is_empty() {
                problem(
                    path("operations"),
                    "must list at least one operation".into(),
                );
            }
            if let Some(index) = &table.index {
                if let Err(message) = check_index_name(index) {
                    problem(path("index"), message);
                }
            }
            if let Some(key) = &table.key {
                if key.is_empty() {
                    problem(path("key"), "must list at least one column".into());
                }
            }
            if let (Some(routing), Some(key)) = (&table.routing, &table.key) {
                if !key.contains(routing) {
                    problem(
                        path("routing"),
                        format!("`{routing}` must be one of the key columns ({}): a delete carries only the key", key.join(", ")),
                    );
                }
            }
            for (j, text) in table.predicates.iter().enumerate() {
                if let Err(message) = crate::pipeline::predicate::Predicate::parse(text) {
                    problem(path(&format!("where[{j}]")), message);
                }
            }
            let transform = &table.transform;
            for (field, name, kind) in [
                ("filter", &table.filter, FunctionKind::Filter),
                ("route", &table.route, FunctionKind::Route),
                (
                    "transform.function",
                    &transform.function,
                    FunctionKind::Transform,
                ),
            ] {
                let Some(name) = name else { continue };
                match self.functions.get(name) {
                    None => problem(
                        path(field),
                        format!(
                            "no function `{name}` is defined (add [functions.{name}] with kind = \"{kind}\")"
                        ),
                    ),
                    Some(f) if f.kind != kind => problem(
                        path(field),
                        format!("function `{name}` is a {} function, not a {kind} function", f.kind),
                    ),
                    Some(_) => {}
                }
            }
            let shaped = transform.keep.is_some()
                || !transform.drop.is_empty()
                || !transform.rename.is_empty()
                || !transform.fields.is_empty();
            if transform.function.is_some() && (shaped || transform.path.is_some()) {
                problem(
                    path("transform.function"),
                    "a transform function makes the whole document: leave out keep, drop, rename, fields and path"
                        .into(),
                );
            }
            if let Some(at) = &transform.path {
                if let Err(message) = crate::pipeline::document::PathShape::parse(at) {
                    problem(path("transform.path"), message);
                }
                if shaped {
                    problem(
                        path("transform.path"),
                        "a path makes the whole document: leave out keep, drop, rename and fields"
                            .into(),
                    );
                }
            }
            for (name, value) in &transform.fields {
                let field = path(&format!("transform.fields.{name}"));
                if name.is_empty() {
                    problem(field.clone(), "the field name must not be empty".into());
                }
                if let toml::Value::String(text) = value {
                    if let Err(message) = crate::pipeline::template::parse(text) {
                        problem(field, message);
                    }
                }
            }
            if transform.keep.is_some() && !transform.drop.is_empty() {
                problem(
                    path("transform"),
                    "keep and drop are exclusive; use one of them".into(),
                );
            }
            let mut targets = HashSet::new();
            for (from, to) in &transform.rename {
                if to.is_empty() {
                    problem(
                        path(&format!("transform.rename.{from}")),
                        "must not be empty".into(),
                    );
                }
                if !targets.insert(to) {
                    problem(
                        path(&format!("transform.rename.{from}")),
                        format!("two columns are renamed to `{to}`"),
                    );
                }
            }
        }
        for (field, message) in self.shared_indexes() {
            problem(field, message);
        }
        if self.sinks.is_empty() {
            problem("sinks".into(), "at least one sink is required".into());
        }
        let mut names = HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            if !is_pg_name(&sink.name) && !sink.name.contains('-') {
                problem(
                    format!("sinks[{i}].name"),
                    format!(
                        "`{}` must be lowercase letters, digits, `_` or `-`",
                        sink.name
                    ),
                );
            }
            if !names.insert(&sink.name) {
                problem(
                    format!("sinks[{i}].name"),
                    format!("sink `{}` is defined twice", sink.name),
                );
            }
            let path = format!("sinks[{i}]");
            let mut found = Vec::new();
            match &sink.kind {
                SinkKind::Embedded {
                    commit_interval_ms,
                    max_document_bytes,
                } => {
                    if *commit_interval_ms == 0 {
                        problem(
                            format!("{path}.commit_interval_ms"),
                            "must be at least 1".into(),
                        );
                    }
                    if *max_document_bytes < 1024 {
                        problem(
                            format!("{path}.max_document_bytes"),
                            "must be at least 1024".into(),
                        );
                    }
                }
                SinkKind::Elasticsearch(es) => es.validate(&path, &mut found),
                SinkKind::Typesense(ts) => ts.validate(&path, &mut found),
                SinkKind::Meilisearch(ms) => ms.validate(&path, &mut found),
                SinkKind::Turbopuffer(tp) => tp.validate(&path, &mut found),
                _ => {}
            }
            for p in found {
                problem(p.field, p.message);
            }
        }
        self.backfill.validate(&mut problems);
        self.api.validate(&mut problems);
        self.validate_functions(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Checks every function's settings and compiles its code, so that a
    /// syntax error is reported with its file and line before anything runs.
    fn validate_functions(&self, problems: &mut Vec<ConfigProblem>) {
        let before = problems.len();
        for (name, function) in &self.functions {
            function.validate(name, problems);
        }
        for (field, value) in [
            ("function_memory_mb", self.pipeline.function_memory_mb),
            ("function_max_parked", self.pipeline.function_max_parked),
        ] {
            if value == 0 {
                problems.push(ConfigProblem {
                    field: format!("pipeline.{field}"),
                    message: "must be at least 1".into(),
                });
            }
        }
        if problems.len() > before || self.functions.is_empty() {
            return;
        }
        if let Err(errors) = crate::functions::compile(
            &self.functions,
            &self.base_dir,
            self.function_memory_bytes(),
        ) {
            for e in errors {
                problems.push(ConfigProblem {
                    field: format!("functions.{}", e.function),
                    message: e.message,
                });
            }
        }
    }

    /// The memory cap of one Lua runtime.
    pub fn function_memory_bytes(&self) -> usize {
        self.pipeline.function_memory_mb.saturating_mul(1024 * 1024)
    }

    /// The connection string, resolved from the environment where configured.
    pub fn database_url(&self) -> Result<String, ConfigError> {
        let invalid = |field: &str, message: String| {
            ConfigError::Invalid(vec![ConfigProblem {
                field: field.into(),
                message,
            }])
        };
        match (&self.source.database_url, &self.source.database_url_env) {
            (Some(url), _) => Ok(url.clone()),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                invalid(
                    "source.database_url_env",
                    format!("environment variable {var} is not set"),
                )
            }),
            (None, None) => Err(invalid("source.database_url", "missing".into())),
        }
    }

    /// The password from `password_env`, if configured.
    pub fn password(&self) -> Option<String> {
        self.source
            .password_env
            .as_ref()
            .and_then(|var| std::env::var(var).ok())
    }

    /// The parsed table names, in configuration order. Call after `validate`.
    pub fn table_names(&self) -> Vec<TableName> {
        self.tables
            .iter()
            .filter_map(|t| TableName::parse(&t.name).ok())
            .collect()
    }

    /// The sinks whose engines merge the writes waiting in their queue.
    pub fn queued_sinks(&self) -> Vec<String> {
        self.sinks
            .iter()
            .filter(|s| s.kind.queues_writes())
            .map(|s| s.name.clone())
            .collect()
    }

    /// The configuration of the one-line form of `sluice run`.
    pub fn from_flags(database_url: String, tables: &[String], data_dir: PathBuf) -> Config {
        Config {
            source: SourceConfig {
                database_url: Some(database_url),
                database_url_env: None,
                password_env: None,
                tls_ca_file: None,
                slot: default_slot(),
                publication: default_publication(),
                status_interval_ms: DEFAULT_STATUS_INTERVAL_MS,
                on_slot_lost: OnSlotLost::Fail,
                retained_wal_warn_bytes: DEFAULT_RETAINED_WAL_WARN_BYTES,
            },
            pipeline: PipelineConfig {
                data_dir,
                ..PipelineConfig::default()
            },
            tables: tables
                .iter()
                .map(|name| TableConfig {
                    name: name.clone(),
                    operations: default_operations(),
                    index: None,
                    key: None,
                    routing: None,
                    transform: TransformConfig::default(),
                    filter: None,
                    route: None,
                    predicates: Vec::new(),
                    shared_index: false,
                })
                .collect(),
            sinks: default_sinks(),
            backfill: Default::default(),
            api: Default::default(),
            functions: BTreeMap::new(),
            base_dir: PathBuf::new(),
        }
    }

    /// Tables that write to one index without saying so (`shared_index`):
    /// a truncate of one would empty the others' documents. A table with a
    /// route function names its indexes as it goes, so it is not compared.
    fn shared_indexes(&self) -> Vec<(String, String)> {
        let mut by_index: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, table) in self.tables.iter().enumerate() {
            let Ok(name) = TableName::parse(&table.name) else {
                continue; // reported with its field
            };
            if table.route.is_none() {
                by_index
                    .entry(self.index_for(table, &name))
                    .or_default()
                    .push(i);
            }
        }
        let mut problems = Vec::new();
        for (index, tables) in by_index {
            if tables.len() < 2 {
                continue;
            }
            let names: Vec<&str> = tables
                .iter()
                .map(|&i| self.tables[i].name.as_str())
                .collect();
            for &i in &tables {
                if !self.tables[i].shared_index {
                    problems.push((
                        format!("tables[{i}].index"),
                        format!(
                            "tables {} all write to index `{index}`: a TRUNCATE of one would remove the \
                             others' documents, and rows with the same key would overwrite each other; \
                             give each table its own `index`, or set `shared_index = true` on each of them",
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
        problems
    }

    /// The index a table's documents go to.
    pub fn index_for(&self, table: &TableConfig, name: &TableName) -> String {
        match &table.index {
            Some(index) => index.clone(),
            None => self
                .pipeline
                .index_template
                .replace("{schema}", &name.schema)
                .replace("{table}", &name.table),
        }
    }
}

fn is_pg_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn tables_share_an_index_only_when_each_says_so() {
        let head = "[source]\ndatabase_url = \"postgres://x/y\"\n";
        let error = parse(&format!(
            "{head}[[tables]]\nname = \"a.items\"\n[[tables]]\nname = \"b.items\"\nshared_index = true\n\
             [[tables]]\nname = \"c\"\nindex = \"items\"\n[[tables]]\nname = \"d\"\nroute = \"r\"\n\
             [functions.r]\nkind = \"route\"\ncode = 'function route() return \"items\" end'\n"
        ))
        .unwrap_err();
        assert!(
            error
                .contains("tables[0].index: tables a.items, b.items, c all write to index `items`"),
            "{error}"
        );
        assert!(error.contains("tables[2].index"), "{error}");
        assert!(!error.contains("tables[1].index"), "{error}");
        assert!(
            !error.contains("tables[3]"),
            "a routed table names its indexes itself: {error}"
        );
        let config = parse(&format!(
            "{head}[[tables]]\nname = \"a.items\"\nshared_index = true\n[[tables]]\nname = \"b.items\"\nshared_index = true\n"
        ))
        .unwrap();
        assert!(config.tables.iter().all(|t| t.shared_index));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(
            r#"
            source = { database_url = "postgres://localhost/db" }
            [[tables]]
            name = "public.products"
            "#,
        )
        .unwrap();
        assert_eq!(config.source.slot, DEFAULT_SLOT);
        assert_eq!(config.pipeline.shards, DEFAULT_SHARDS);
        assert_eq!(config.sinks.len(), 1);
        assert_eq!(config.tables[0].operations.len(), 4);
        let name = TableName::parse("public.products").unwrap();
        assert_eq!(config.index_for(&config.tables[0], &name), "products");
    }

    #[test]
    fn declarative_transforms_are_checked() {
        let err = parse(
            r#"
            source = { database_url = "postgres://localhost/db" }
            [functions.f]
            kind = "transform"
            code = "function transform(a, r, c, m) return r end"
            [[tables]]
            name = "public.a"
            transform = { function = "f", fields = { x = 1 } }
            [[tables]]
            name = "public.b"
            transform = { path = "record.payload", keep = ["id"] }
            [[tables]]
            name = "public.c"
            transform = { path = "payload" }
            [[tables]]
            name = "public.d"
            transform = { fields = { label = "{name", "" = 1 } }
            "#,
        )
        .unwrap_err();
        for expected in [
            "tables[0].transform.function: a transform function makes the whole document: leave out keep, drop, rename, fields and path",
            "tables[1].transform.path: a path makes the whole document: leave out keep, drop, rename and fields",
            "tables[2].transform.path: `payload` must start with `record.`, such as record.payload",
            "tables[3].transform.fields.label: `{` at byte 0 is not closed; write `{{` for a brace",
            "tables[3].transform.fields.: the field name must not be empty",
        ] {
            assert!(err.contains(expected), "{expected}\n in {err}");
        }
        let config = parse(
            r#"
            source = { database_url = "postgres://localhost/db" }
            [[tables]]
            name = "public.a"
            transform = { drop = ["secret"], fields = { kind = "product", label = "{name} ({sku})" } }
            [[tables]]
            name = "public.b"
            transform = { path = "record.payload.product" }
            "#,
        )
        .unwrap();
        assert_eq!(config.tables[0].transform.fields.len(), 2);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = parse(
            r#"
            source = { database_url = "postgres://localhost/db", slott = "x" }
            [[tables]]
            name = "t"
            "#,
        )
        .unwrap_err();
        assert!(err.contains("slott"), "{err}");
    }

    #[test]
    fn all_problems_are_reported_with_their_paths() {
        let err = parse(
            r#"
            source = { database_url = "postgres://localhost/db", slot = "Bad-Slot" }
            pipeline = { shards = 0, index_template = "{tabel}" }
            [[tables]]
            name = "a.b.c"
            [[tables]]
            name = "public.t"
            operations = []
            transform = { keep = ["a"], drop = ["b"] }
            [[sinks]]
            name = "x"
            type = "embedded"
            commit_interval_ms = 0
            "#,
        )
        .unwrap_err();
        for needle in [
            "source.slot",
            "pipeline.shards",
            "pipeline.index_template",
            "tables[0].name",
            "tables[1].operations",
            "tables[1].transform",
            "sinks[0].commit_interval_ms",
        ] {
            assert!(err.contains(needle), "missing {needle} in:\n{err}");
        }
    }

    #[test]
    fn the_readme_example_is_valid() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\n").expect("README has a TOML example") + 8;
        let end = start + readme[start..].find("```").unwrap();
        let config = parse(&readme[start..end]).unwrap();
        assert_eq!(config.tables.len(), 2);
        assert_eq!(config.tables[0].transform.rename["descr"], "description");
        assert!(matches!(
            config.sinks[0].kind,
            SinkKind::Embedded {
                commit_interval_ms: DEFAULT_COMMIT_INTERVAL_MS,
                max_document_bytes: crate::sink::http::DEFAULT_MAX_DOCUMENT_BYTES
            }
        ));
    }

    #[test]
    fn elasticsearch_sinks_are_parsed_and_checked() {
        let config = parse(
            r#"
            source = { database_url = "postgres://localhost/db" }
            [[tables]]
            name = "t"
            [[sinks]]
            name = "search"
            type = "opensearch"
            url = "http://localhost:9200"
            username = "elastic"
            gzip = true
            create_index = { settings = { number_of_shards = 1 }, mappings = { dynamic = true } }
            "#,
        )
        .unwrap();
        let SinkKind::Elasticsearch(es) = &config.sinks[0].kind else {
            panic!("not an elasticsearch sink")
        };
        assert!(es.gzip);
        assert_eq!(
            es.batch_max_docs,
            crate::sink::elasticsearch::DEFAULT_BATCH_MAX_DOCS
        );
        assert_eq!(es.authorization().unwrap(), "Basic ZWxhc3RpYzo=");

        let err = parse(
            r#"
            source = { database_url = "postgres://localhost/db" }
            [[tables]]
            name = "t"
            [[sinks]]
            name = "search"
            type = "elasticsearch"
            url = "localhost:9200"
            api_key_env = "SLUICE_SURELY_UNSET_VARIABLE"
            bearer_token_env = "ALSO_UNSET"
            batch_max_docs = 0
            "#,
        )
        .unwrap_err();
        for field in [
            "sinks[0].url",
            "sinks[0].api_key_env",
            "sinks[0].bearer_token_env",
            "sinks[0].batch_max_docs",
        ] {
            assert!(err.contains(field), "{field} missing in {err}");
        }
        let err = parse(
            r#"
            source = { database_url = "postgres://localhost/db" }
            [[tables]]
            name = "t"
            [[sinks]]
            name = "search"
            type = "elasticsearch"
            url = "http://localhost:9200"
            bulk_size = 5
            "#,
        )
        .unwrap_err();
        assert!(err.contains("bulk_size"), "{err}");
    }

    #[test]
    fn debug_output_redacts_the_url() {
        let config = parse(
            r#"
            source = { database_url = "postgres://u:hunter2@localhost/db" }
            [[tables]]
            name = "t"
            "#,
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
