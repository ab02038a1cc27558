//! Why a local cluster could not be started or used.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use super::install::MIN_MAJOR_VERSION;
use super::BIN_DIR_ENV;

/// Why a local cluster could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum LocalPostgresError {
    #[error("Postgres server binaries not found (looked in {searched}): install them with `apt-get install -y postgresql`, or set {BIN_DIR_ENV} to the directory holding `initdb` and `postgres`")]
    BinariesNotFound { searched: String },
    #[error("{version} in {} is too old: sluice needs Postgres {MIN_MAJOR_VERSION} or newer (set {BIN_DIR_ENV} to pick another installation)", .bin_dir.display())]
    UnsupportedVersion { version: String, bin_dir: PathBuf },
    #[error("running as root, and Postgres refuses root, but there is no `postgres` system user to run it as: install the server with `apt-get install -y postgresql`, or create the user with `useradd --system postgres`")]
    NoPostgresUser,
    #[error("`openssl` not found, needed for a TLS cluster: install it with `apt-get install -y openssl`")]
    OpensslNotFound,
    #[error("invalid extra settings: {}", .problems.join("; "))]
    InvalidSettings { problems: Vec<String> },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        command: String,
        status: ExitStatus,
        output: String,
    },
    #[error("Postgres did not start: {reason}\n--- server log (last lines) ---\n{log_tail}")]
    StartFailed { reason: String, log_tail: String },
    #[error("{context}: {}", describe_sql_error(.source))]
    Sql {
        context: String,
        source: tokio_postgres::Error,
    },
}

impl LocalPostgresError {
    pub(super) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    pub(super) fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| Self::Sql { context, source }
    }
}

/// tokio-postgres prints only "db error" for a server error: add the server's words.
pub(super) fn describe_sql_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}
