//! Connection settings shared by the SQL and the replication connection.
//!
//! The connection string is parsed by tokio-postgres, except `sslmode` and
//! `sslrootcert`, which follow libpq's meaning (`verify-ca`, `verify-full`)
//! that tokio-postgres does not know.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode as PgSslMode};

pub use super::tls::SslMode;
use crate::error::{Error, ErrorKind};

/// Session settings that make the text output of values predictable for the
/// type mapping (see `postgres::types`); both connections set them.
pub const SESSION_OPTIONS: &str =
    "-c datestyle=ISO -c intervalstyle=iso_8601 -c timezone=UTC -c extra_float_digits=3 -c bytea_output=hex";

/// Where and how to connect. The password is never printed.
#[derive(Clone)]
pub struct ConnInfo {
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    pub ssl_root_cert: Option<PathBuf>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for ConnInfo {
    /// `user@host:port/dbname`, without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        };
        write!(
            f,
            "{}@{}:{}/{}",
            self.user(),
            host,
            self.port(),
            self.dbname()
        )
    }
}

impl ConnInfo {
    /// Parses a URL or key/value connection string. `password` (from the
    /// environment) overrides the one in the string.
    pub fn parse(
        text: &str,
        password: Option<&str>,
        ca_file: Option<PathBuf>,
    ) -> Result<ConnInfo, Error> {
        let (rest, ssl_mode, root_cert) = take_ssl_params(text)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("the database URL is not valid: {e}"),
            )
            .hint("use postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE or libpq key=value pairs")
        })?;
        if let Some(password) = password {
            config.password(password);
        }
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        let ssl_mode = ssl_mode.unwrap_or(SslMode::Prefer);
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        config.application_name("sluice");
        // Values read over SQL (refetched TOAST columns) must look like the
        // replication stream's: the same output settings.
        let options = match config.get_options() {
            Some(theirs) => format!("{theirs} {}", SESSION_OPTIONS),
            None => SESSION_OPTIONS.to_owned(),
        };
        config.options(&options);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        Ok(ConnInfo {
            config,
            ssl_mode,
            ssl_root_cert: root_cert.or(ca_file),
        })
    }

    pub fn user(&self) -> String {
        self.config
            .get_user()
            .map(str::to_owned)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into())
    }

    pub fn dbname(&self) -> String {
        self.config
            .get_dbname()
            .map(str::to_owned)
            .unwrap_or_else(|| self.user())
    }

    pub fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    pub fn host(&self) -> Host {
        self.config
            .get_hosts()
            .first()
            .cloned()
            .unwrap_or(Host::Tcp("localhost".into()))
    }

    /// Opens an ordinary SQL connection; its driver task runs in the background.
    pub async fn connect_sql(&self) -> Result<tokio_postgres::Client, Error> {
        if self.ssl_mode == SslMode::Disable {
            self.connect_with(tokio_postgres::NoTls).await
        } else {
            let tls = (*self.tls_config()?).clone();
            self.connect_with(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await
        }
    }

    async fn connect_with<T>(&self, tls: T) -> Result<tokio_postgres::Client, Error>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = self
            .config
            .connect(tls)
            .await
            .map_err(|e| self.connect_error(e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "SQL connection closed");
            }
        });
        Ok(client)
    }

    fn connect_error(&self, e: tokio_postgres::Error) -> Error {
        let text = e.to_string();
        let source = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        // A refused login (wrong password, no pg_hba.conf line, no such
        // role or database) does not get better by trying again.
        let refused = e
            .as_db_error()
            .is_some_and(|db| matches!(db.code().code(), "28000" | "28P01" | "3D000"));
        let (kind, hint) = if refused {
            (
                ErrorKind::Config,
                "check the user, password and database in source.database_url, and that pg_hba.conf lets this role in",
            )
        } else {
            (
                ErrorKind::Connection,
                "check that Postgres runs at that address and that the user, password and database are right",
            )
        };
        Error::new(
            kind,
            format!("cannot connect to {self}: {text} {source}")
                .trim_end()
                .to_owned(),
        )
        .hint(hint)
    }

    /// The rustls configuration matching `sslmode`.
    pub fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        crate::postgres::tls::client_config(self.ssl_mode, self.ssl_root_cert.as_deref())
    }
}

/// Removes `sslmode` and `sslrootcert` from a URL or key/value string.
fn take_ssl_params(text: &str) -> Result<(String, Option<SslMode>, Option<PathBuf>), Error> {
    let mut mode = None;
    let mut root = None;
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        let Some((base, query)) = text.split_once('?') else {
            return Ok((text.to_owned(), None, None));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("sslmode", value)) => mode = Some(SslMode::parse(value)?),
                Some(("sslrootcert", value)) => root = Some(PathBuf::from(percent_decode(value))),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((rest, mode, root))
    } else {
        let mut kept = Vec::new();
        for pair in text.split_whitespace() {
            match pair.split_once('=') {
                Some(("sslmode", value)) => mode = Some(SslMode::parse(value.trim_matches('\''))?),
                Some(("sslrootcert", value)) => {
                    root = Some(PathBuf::from(value.trim_matches('\'')))
                }
                _ => kept.push(pair),
            }
        }
        Ok((kept.join(" "), mode, root))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_params_are_taken_from_urls_and_key_values() {
        let info = ConnInfo::parse(
            "postgres://u:secret@db.example:6432/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3",
            None,
            None,
        )
        .unwrap();
        assert_eq!(info.ssl_mode, SslMode::VerifyFull);
        assert_eq!(info.ssl_root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(info.port(), 6432);
        assert_eq!(info.dbname(), "app");
        assert_eq!(info.to_string(), "u@db.example:6432/app");

        let info =
            ConnInfo::parse("host=h user=u dbname=d sslmode=disable", Some("pw"), None).unwrap();
        assert_eq!(info.ssl_mode, SslMode::Disable);
        assert_eq!(info.config.get_password(), Some(&b"pw"[..]));
    }

    #[test]
    fn bad_sslmode_is_a_clear_error() {
        let err = ConnInfo::parse("postgres://h/d?sslmode=maybe", None, None).unwrap_err();
        assert!(err.to_string().contains("sslmode `maybe`"), "{err}");
    }

    #[test]
    fn display_never_shows_the_password() {
        let info = ConnInfo::parse("postgres://u:hunter2@h/d", None, None).unwrap();
        assert!(!format!("{info} {info:?}").contains("hunter2"));
    }
}
