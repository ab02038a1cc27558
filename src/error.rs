//! Errors classified by kind, each kind with a retry policy, and an
//! operator-facing hint of what to do.

use std::fmt;

/// What went wrong, from the operator's point of view. Each kind's
/// [`Policy`] decides what the pipeline's supervisor does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The configuration or the command line is wrong. Stops, exit code 2.
    Config,
    /// The database is not set up for sluice (wal_level, privileges, keys).
    /// Stops, exit code 3.
    Setup,
    /// The network or the server went away. Restarted, at least once a
    /// second, so streaming resumes soon after the server is back.
    Connection,
    /// The server refused a request or sent something unexpected. Restarted
    /// with backoff.
    Protocol,
    /// Writing to a sink failed. Restarted with backoff.
    Sink,
    /// Local files (data directory, index) could not be used. Restarted
    /// with backoff.
    Io,
    /// A streamed table was dropped and created again: `service::run` sets
    /// the pipeline up again (empties the table's documents, backfills it).
    /// Never an exit.
    TableRecreated,
}

/// What the supervisor does when a stage fails with an error of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Restart the pipeline from the slot's confirmed position, after a
    /// pause that doubles with each failure in a row, up to
    /// `pipeline.max_restart_backoff_ms`.
    Restart,
    /// Restart as `Restart` does, but wait at most a second: the failure
    /// costs one refused connection.
    Reconnect,
    /// Stop the pipeline and set it up again from the start.
    SetUpAgain,
    /// Stop: no restart fixes it. sluice exits with this code.
    Stop { exit_code: u8 },
}

impl ErrorKind {
    /// The kind's policy (see [`Policy`]).
    pub fn policy(self) -> Policy {
        match self {
            ErrorKind::Config => Policy::Stop { exit_code: 2 },
            ErrorKind::Setup => Policy::Stop { exit_code: 3 },
            ErrorKind::Connection => Policy::Reconnect,
            ErrorKind::Protocol | ErrorKind::Sink | ErrorKind::Io => Policy::Restart,
            ErrorKind::TableRecreated => Policy::SetUpAgain,
        }
    }

    /// The kind's name, as the API and the metrics spell it.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Setup => "setup",
            ErrorKind::Connection => "connection",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Sink => "sink",
            ErrorKind::Io => "io",
            ErrorKind::TableRecreated => "table_recreated",
        }
    }

    /// Whether a pipeline restart may fix it.
    pub fn is_retryable(self) -> bool {
        matches!(self.policy(), Policy::Restart | Policy::Reconnect)
    }

    /// The exit code of sluice when it ends with this error: the policy's
    /// for kinds that stop it, 1 for the others (a command that failed).
    pub fn exit_code(self) -> u8 {
        match self.policy() {
            Policy::Stop { exit_code } => exit_code,
            _ => 1,
        }
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
        assert_eq!(ErrorKind::Config.exit_code(), 2);
        assert_eq!(ErrorKind::Setup.exit_code(), 3);
        assert_eq!(ErrorKind::Sink.exit_code(), 1);
        assert!(!ErrorKind::TableRecreated.is_retryable());
        for kind in [
            ErrorKind::Io,
            ErrorKind::TableRecreated,
            ErrorKind::Connection,
        ] {
            let serialized = serde_json::to_value(kind).unwrap();
            assert_eq!(serialized, kind.name(), "the name is the serialized one");
        }
    }
}
