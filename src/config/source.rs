//! `[source]`: the Postgres database sluice reads changes from.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::is_pg_name;
use crate::model::problem::ConfigProblem;
use crate::pipeline::slot::OnSlotLost;

/// Default replication slot name.
pub const DEFAULT_SLOT: &str = "sluice";
/// Default publication name.
pub const DEFAULT_PUBLICATION: &str = "sluice";
/// Default interval between standby status updates sent to Postgres.
pub const DEFAULT_STATUS_INTERVAL_MS: u64 = 10_000;
/// `source.retained_wal_warn_bytes`: 4 GiB.
pub const DEFAULT_RETAINED_WAL_WARN_BYTES: u64 = 4 << 30;

/// Connection to the source database.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// Connection string, as a URL (`postgres://user@host:5432/db?sslmode=require`)
    /// or libpq key/value pairs. Mutually exclusive with `database_url_env`.
    pub database_url: Option<String>,
    /// Name of an environment variable holding the connection string.
    pub database_url_env: Option<String>,
    /// Name of an environment variable holding the password (overrides the URL's).
    pub password_env: Option<String>,
    /// File with the CA certificate(s) to trust for `sslmode=verify-ca|verify-full`
    /// (the URL's `sslrootcert` also works). Default: the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Replication slot name. Created when missing.
    pub slot: String,
    /// Publication name. Created (or extended with missing tables) when missing.
    pub publication: String,
    /// Interval between standby status updates, in milliseconds.
    pub status_interval_ms: u64,
    /// What to do when the slot is gone, invalidated, or not the one this
    /// data directory streamed from: `fail` (refuse to stream) or `resync`
    /// (a new slot, and every table backfilled again into every sink).
    pub on_slot_lost: OnSlotLost,
    /// A warning is logged while the slot holds more WAL than this on the
    /// primary (bytes; 0: never).
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

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            database_url: None,
            database_url_env: None,
            password_env: None,
            tls_ca_file: None,
            slot: DEFAULT_SLOT.into(),
            publication: DEFAULT_PUBLICATION.into(),
            status_interval_ms: DEFAULT_STATUS_INTERVAL_MS,
            on_slot_lost: OnSlotLost::default(),
            retained_wal_warn_bytes: DEFAULT_RETAINED_WAL_WARN_BYTES,
        }
    }
}

impl SourceConfig {
    pub(super) fn validate(&self, problems: &mut Vec<ConfigProblem>) {
        let mut problem =
            |field: String, message: String| problems.push(ConfigProblem { field, message });
        let source = self;
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
    }
}
