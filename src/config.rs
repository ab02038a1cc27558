//! Configuration: the TOML file, its defaults and its validation, one module
//! per section (`source`, `pipeline`, `tables`, `sinks`; the sinks', the
//! backfill's, the API's and the functions' settings are their layers' own).
//! It composes every layer's settings, so no layer below imports it.
//!
//! Every knob has a doc comment and a named default. Unknown keys are errors.
//! Semantic validation reports every problem at once, each naming its field path.

pub mod check;
mod parse;
mod pipeline;
mod plan;
mod sinks;
mod source;
mod tables;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::model::ident::check_index_name;
use crate::model::ident::TableName;
pub use crate::model::problem::ConfigProblem;
pub use crate::pipeline::document::TransformConfig;
pub use crate::pipeline::filter::Operation;
pub use crate::pipeline::slot::OnSlotLost;
pub use crate::sink::settings::{SinkConfig, SinkKind, DEFAULT_COMMIT_INTERVAL_MS};
pub use pipeline::{
    PipelineConfig, DEFAULT_BATCH_MAX_AGE_MS, DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_CHANGES,
    DEFAULT_DATA_DIR, DEFAULT_DRAIN_TIMEOUT_MS, DEFAULT_INDEX_TEMPLATE, DEFAULT_KEY_SEPARATOR,
    DEFAULT_MAX_BYTES_IN_FLIGHT, DEFAULT_MAX_RESTART_BACKOFF_MS, DEFAULT_SHARDS,
    DEFAULT_SPOOL_MAX_BYTES,
};
use sinks::default_sinks;
pub use source::{
    SourceConfig, DEFAULT_PUBLICATION, DEFAULT_RETAINED_WAL_WARN_BYTES, DEFAULT_SLOT,
    DEFAULT_STATUS_INTERVAL_MS,
};
use tables::default_operations;
pub use tables::TableConfig;

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
        let mut config = Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        config.base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok(config)
    }

    /// Parses a configuration's text, without validating it.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        parse::parse(text).map_err(|e| match e {
            Ok(problems) => ConfigError::Invalid(problems),
            Err(message) => ConfigError::Parse {
                path: PathBuf::new(),
                message,
            },
        })
    }

    /// Checks every constraint and reports all problems at once, section by
    /// section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.source.validate(&mut problems);
        self.pipeline.validate(&mut problems);
        self.validate_tables(&mut problems);
        self.validate_sinks(&mut problems);
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
                ..SourceConfig::default()
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
}

/// A name Postgres takes unquoted: slots, publications, sinks.
pub(super) fn is_pg_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
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
