//! Errors classified by kind, each kind with a retry policy, and an
//! operator-facing hint of what to do.

use std::fmt;

/// What went wrong, from the operator's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The configuration or the command line is wrong. Not retried.
    Config,
    /// The database is not set up for sluice (wal_level, privileges, keys). Not retried.
    Setup,
    /// The network or the server went away. Retried with backoff.
    Connection,
    /// The server refused a request or sent something unexpected. Retried with backoff.
    Protocol,
    /// Writing to a sink failed. Retried with backoff.
    Sink,
    /// Local files (data directory, index) could not be used. Retried with backoff.
    Io,
    /// A streamed table was dropped and created again: `service::run` sets
    /// the pipeline up again (empties the table's documents, backfills it).
    /// Never an exit.
    TableRecreated,
}

impl ErrorKind {
    /// Whether a pipeline restart may fix it.
    pub fn is_retryable(self) -> bool {
        !matches!(
            self,
            ErrorKind::Config | ErrorKind::Setup | ErrorKind::TableRecreated
        )
    }
}

/// An error with its kind and, where we know one, a hint for the operator.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds what the operator can do about it.
    pub fn hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn hint_text(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The same error as another kind (where a caller knows better what it
    /// means: a refused connection at start is a database that is not ready).
    pub fn as_kind(mut self, kind: ErrorKind) -> Error {
        self.kind = kind;
        self
    }

    pub fn io(context: impl fmt::Display, e: std::io::Error) -> Error {
        Error::new(ErrorKind::Io, format!("{context}: {e}"))
    }

    pub fn protocol(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Protocol, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_includes_the_hint() {
        let e =
            Error::new(ErrorKind::Setup, "wal_level is replica").hint("set wal_level = logical");
        assert_eq!(
            e.to_string(),
            "wal_level is replica\n  hint: set wal_level = logical"
        );
        assert!(!e.kind().is_retryable());
        assert!(ErrorKind::Connection.is_retryable());
    }
}
