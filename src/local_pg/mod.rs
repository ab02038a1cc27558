//! Throwaway Postgres clusters for the integration tests, `sluice demo` and benchmarks.
//!
//! [`LocalPostgres::start`] runs `initdb` into a fresh directory under the system temp
//! dir, configures it for logical replication, starts `postgres` on a free port of
//! 127.0.0.1 and creates the test roles. Dropping the handle (or [`LocalPostgres::shutdown`])
//! stops the server and deletes the directory. The settings trade durability for speed
//! (`fsync=off`, `full_page_writes=off`): never point anything precious at it.
//!
//! # Roles and authentication
//! | role | how it logs in (TCP) | attributes |
//! | --- | --- | --- |
//! | `postgres` ([`SUPERUSER`]) | trust | superuser |
//! | `sluice_md5` ([`MD5_USER`]) | md5, password [`TEST_PASSWORD`] | LOGIN REPLICATION, `pg_read_all_data` |
//! | `sluice_scram` ([`SCRAM_USER`]) | scram-sha-256, password [`TEST_PASSWORD`] | LOGIN REPLICATION, `pg_read_all_data` |
//! | `sluice_norepl` ([`NO_REPLICATION_USER`]) | trust | LOGIN, `pg_read_all_data`, no REPLICATION |
//!
//! The password roles hold CREATE on every database made by
//! [`LocalPostgres::create_database`] (and on `postgres`), so they can create slots and
//! publications; `CREATE PUBLICATION ... FOR TABLE t` also needs them to own `t`
//! (create it as that role, or `ALTER TABLE t OWNER TO sluice_scram`), and `FOR ALL
//! TABLES` needs the superuser.
//!
//! # Running as root
//! Postgres refuses to run as root. When the effective uid is 0, `initdb` and
//! `postgres` run as the `postgres` system user, which must exist; the cluster
//! directory is created for that user under a temp dir it can traverse.
//!
//! # No orphans
//! The server gets `PR_SET_PDEATHSIG = SIGKILL`, so it dies with the process that
//! started it, even on a panic, a SIGKILL or a Ctrl-C. Linux ties that signal to the
//! *thread* that forked, so every child is spawned by one dedicated thread that lives
//! as long as the process. The server runs in its own process group, so a terminal's
//! Ctrl-C reaches only the owning process, which can shut down in its own order. A
//! directory left behind by a killed process (with its SysV shared memory segment) is
//! removed by the next [`LocalPostgres::start`] in the same temp dir.
//!
//! # Layout
//! The [`LocalPostgres`] handle (here) drives the steps, one file each: finding the
//! installation and the account to run it as (`install.rs`), the cluster's temp
//! directory and the cleanup of stale ones (`dirs.rs`), its configuration files and
//! certificate (`settings.rs`), spawning and stopping `initdb` and `postgres`
//! without orphans (`process.rs`), waiting until the server is ready (`ready.rs`),
//! URL and SQL quoting (`quote.rs`) and [`LocalPostgresError`] (`error.rs`).

mod dirs;
mod error;
mod install;
mod process;
mod quote;
mod ready;
mod settings;

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio_postgres::NoTls;

use self::dirs::{create_root, remove_stale_clusters, temp_base};
pub use self::error::LocalPostgresError;
use self::install::{find_bin_dir, server_major_version, server_user, ServerUser};
use self::process::{free_port, run_initdb, spawn_server, stop_server};
use self::quote::{percent_encode, quote_identifier, quote_literal};
use self::ready::{block_on_private, log_tail, port_was_taken, wait_until_ready, NotReady};
use self::settings::{
    append_settings, base_settings, generate_certificate, pg_hba_conf, validate_settings,
};

/// Password of [`MD5_USER`] and [`SCRAM_USER`].
pub const TEST_PASSWORD: &str = "sluice-test-password";
/// The superuser; it logs in without a password.
pub const SUPERUSER: &str = "postgres";
/// A LOGIN REPLICATION role whose password is stored as md5 and checked with md5.
pub const MD5_USER: &str = "sluice_md5";
/// A LOGIN REPLICATION role that authenticates with SCRAM-SHA-256.
pub const SCRAM_USER: &str = "sluice_scram";
/// A LOGIN role without REPLICATION, for privilege-check tests.
pub const NO_REPLICATION_USER: &str = "sluice_norepl";
/// Environment variable naming the directory of `initdb` and `postgres`; it wins over
/// `pg_config --bindir` and `/usr/lib/postgresql/*/bin`.
pub const BIN_DIR_ENV: &str = "SLUICE_PG_BINDIR";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at binding a port: another process may take the free port we picked.
const PORT_ATTEMPTS: usize = 5;

/// How to start a [`LocalPostgres`].
#[derive(Debug, Clone, Default)]
pub struct LocalPostgresOptions {
    /// Serve TLS (`ssl=on`) with a fresh self-signed certificate for `localhost` and
    /// `127.0.0.1`; trust [`LocalPostgres::tls_certificate`] to verify it.
    pub tls: bool,
    /// Extra `postgresql.conf` settings, written after ours so they override them.
    /// `port` is always chosen here and cannot be set.
    pub extra_settings: Vec<(String, String)>,
}

/// A running throwaway cluster; dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct LocalPostgres {
    /// The temp directory holding `data/`, the server log and the openssl config.
    root: PathBuf,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    pid: u32,
    major_version: u32,
    tls_certificate: Option<PathBuf>,
    run_as: Option<ServerUser>,
    /// `None` once shut down.
    server: Mutex<Option<Child>>,
}

impl LocalPostgres {
    /// Creates and starts a cluster, and waits until it accepts connections (~1-2 s).
    ///
    /// Blocking; callable from sync code and from inside a tokio runtime (it runs its
    /// own SQL on a private thread), though async callers should prefer
    /// `tokio::task::spawn_blocking` so they do not stall a runtime worker.
    pub fn start(options: LocalPostgresOptions) -> Result<LocalPostgres, LocalPostgresError> {
        validate_settings(&options.extra_settings)?;
        let bin_dir = find_bin_dir()?;
        let major_version = server_major_version(&bin_dir)?;
        let run_as = server_user()?;
        let base = temp_base(run_as.as_ref());
        remove_stale_clusters(&base);
        let root = create_root(&base, run_as.as_ref())?;
        let started = Self::start_in(&root, bin_dir, major_version, run_as, &options);
        if started.is_err() {
            let _ = fs::remove_dir_all(&root);
        }
        started
    }

    /// One cluster for the whole process, started on first use and stopped (its
    /// directory deleted) when the process exits normally: the usual fixture for a test
    /// binary, with one database per test via [`LocalPostgres::create_database`].
    pub fn shared() -> Result<&'static LocalPostgres, &'static LocalPostgresError> {
        static SHARED: OnceLock<Result<LocalPostgres, LocalPostgresError>> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(Ok(cluster)) = SHARED.get() {
                // A panic must not unwind out of an `extern "C"` exit handler.
                let _ = std::panic::catch_unwind(|| cluster.shutdown());
            }
        }
        SHARED
            .get_or_init(|| {
                let started = LocalPostgres::start(LocalPostgresOptions::default());
                if started.is_ok() {
                    // SAFETY: registers a plain function; statics outlive exit handlers.
                    unsafe { libc::atexit(stop_shared) };
                }
                started
            })
            .as_ref()
    }

    fn start_in(
        root: &Path,
        bin_dir: PathBuf,
        major_version: u32,
        run_as: Option<ServerUser>,
        options: &LocalPostgresOptions,
    ) -> Result<LocalPostgres, LocalPostgresError> {
        let data_dir = root.join("data");
        let log_file = root.join("server.log");
        run_initdb(&bin_dir, &data_dir, root, run_as)?;
        let tls_certificate = match options.tls {
            true => Some(generate_certificate(root, &data_dir, run_as)?),
            false => None,
        };
        let hba = data_dir.join("pg_hba.conf");
        fs::write(&hba, pg_hba_conf())
            .map_err(LocalPostgresError::io(format!("writing {}", hba.display())))?;
        let conf = data_dir.join("postgresql.conf");
        let mut settings = base_settings(&data_dir, tls_certificate.is_some());
        settings.extend(options.extra_settings.iter().cloned());
        append_settings(&conf, &settings).map_err(LocalPostgresError::io(format!(
            "writing {}",
            conf.display()
        )))?;

        let mut attempt = 0;
        let (child, port) = loop {
            attempt += 1;
            let port =
                free_port().map_err(LocalPostgresError::io("picking a free port on 127.0.0.1"))?;
            let log_start = fs::metadata(&log_file).map_or(0, |m| m.len());
            let mut child = spawn_server(&bin_dir, &data_dir, root, &log_file, port, run_as)?;
            match wait_until_ready(&mut child, port) {
                Ok(()) => break (child, port),
                Err(NotReady::Exited(_))
                    if attempt < PORT_ATTEMPTS && port_was_taken(&log_file, log_start) =>
                {
                    tracing::debug!(
                        port,
                        "port taken before the local Postgres bound it; retrying"
                    );
                }
                Err(not_ready) => {
                    stop_server(child);
                    let reason = match not_ready {
                        NotReady::Exited(status) => format!("the server exited ({status})"),
                        NotReady::TimedOut(last) => {
                            format!(
                                "no connection within {}s (last error: {last})",
                                READY_TIMEOUT.as_secs()
                            )
                        }
                    };
                    return Err(LocalPostgresError::StartFailed {
                        reason,
                        log_tail: log_tail(&log_file),
                    });
                }
            }
        };
        let cluster = LocalPostgres {
            root: root.to_path_buf(),
            data_dir,
            bin_dir,
            log_file,
            port,
            pid: child.id(),
            major_version,
            tls_certificate,
            run_as,
            server: Mutex::new(Some(child)),
        };
        // On error, dropping `cluster` stops the server and removes the directory.
        block_on_private(|| cluster.create_roles())
            .map_err(LocalPostgresError::io("running the setup runtime"))??;
        tracing::info!(port, data_dir = %cluster.data_dir.display(), "local Postgres started");
        Ok(cluster)
    }

    async fn create_roles(&self) -> Result<(), LocalPostgresError> {
        let (client, connection) = self
            .config("postgres")
            .connect(NoTls)
            .await
            .map_err(LocalPostgresError::sql("connecting to set up roles"))?;
        let connection = tokio::spawn(connection);
        let password = quote_literal(TEST_PASSWORD);
        let readers = format!("{MD5_USER}, {SCRAM_USER}");
        let setup = format!(
            "SET password_encryption = 'md5';
             CREATE ROLE {MD5_USER} LOGIN REPLICATION PASSWORD {password};
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE {SCRAM_USER} LOGIN REPLICATION PASSWORD {password};
             CREATE ROLE {NO_REPLICATION_USER} LOGIN;
             GRANT pg_read_all_data TO {readers}, {NO_REPLICATION_USER};
             GRANT CREATE ON DATABASE postgres TO {readers};"
        );
        let result = client.batch_execute(&setup).await;
        drop(client);
        let _ = connection.await;
        result.map_err(LocalPostgresError::sql("creating the test roles"))
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Process id of the postmaster.
    pub fn pid(&self) -> u32 {
        let server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        server.as_ref().map_or(self.pid, Child::id)
    }

    /// The cluster's data directory (`PGDATA`), also its Unix socket directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory of the `initdb` and `postgres` that run this cluster.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The server's log (stdout and stderr).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Major version of the server, e.g. 15.
    pub fn major_version(&self) -> u32 {
        self.major_version
    }

    /// The self-signed server certificate (PEM) when started with `tls: true`.
    pub fn tls_certificate(&self) -> Option<&Path> {
        self.tls_certificate.as_deref()
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`: the superuser, no password.
    pub fn url(&self, database: &str) -> String {
        self.url_as(SUPERUSER, None, database)
    }

    /// A URL for `user` (and `password`) on `database`, percent-encoded.
    pub fn url_as(&self, user: &str, password: Option<&str>, database: &str) -> String {
        let mut url = format!("postgres://{}", percent_encode(user));
        if let Some(password) = password {
            let _ = write!(url, ":{}", percent_encode(password));
        }
        let _ = write!(url, "@127.0.0.1:{}/{}", self.port, percent_encode(database));
        url
    }

    /// Connection settings for the superuser on `database`, over TCP.
    pub fn config(&self, database: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(SUPERUSER)
            .dbname(database)
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// Connects as the superuser without TLS; the connection runs on a `tokio::spawn`ed task.
    pub async fn connect(
        &self,
        database: &str,
    ) -> Result<tokio_postgres::Client, LocalPostgresError> {
        let (client, connection) =
            self.config(database)
                .connect(NoTls)
                .await
                .map_err(LocalPostgresError::sql(format!(
                    "connecting to {}",
                    self.url(database)
                )))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "local Postgres connection ended with an error");
            }
        });
        Ok(client)
    }

    /// `CREATE DATABASE name`, then grants CREATE on it to the password roles.
    pub async fn create_database(&self, name: &str) -> Result<(), LocalPostgresError> {
        let client = self.connect("postgres").await?;
        let database = quote_identifier(name);
        // Separate statements: CREATE DATABASE cannot run in a multi-statement query.
        client
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .map_err(LocalPostgresError::sql(format!(
                "creating database {database}"
            )))?;
        client
            .batch_execute(&format!(
                "GRANT CREATE ON DATABASE {database} TO {MD5_USER}, {SCRAM_USER}"
            ))
            .await
            .map_err(LocalPostgresError::sql(format!(
                "granting CREATE on database {database}"
            )))
    }

    /// Stops the server at once (immediate shutdown, as a crash would), waits
    /// `down_for`, and starts it again on the same port; returns when it
    /// accepts connections. Blocking.
    pub fn restart(&self, down_for: Duration) -> Result<(), LocalPostgresError> {
        let mut server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(child) = server.take() {
            stop_server(child);
        }
        std::thread::sleep(down_for);
        let mut child = spawn_server(
            &self.bin_dir,
            &self.data_dir,
            &self.root,
            &self.log_file,
            self.port,
            self.run_as,
        )?;
        match wait_until_ready(&mut child, self.port) {
            Ok(()) => {
                *server = Some(child);
                Ok(())
            }
            Err(not_ready) => {
                stop_server(child);
                Err(LocalPostgresError::StartFailed {
                    reason: match not_ready {
                        NotReady::Exited(status) => format!("the server exited ({status})"),
                        NotReady::TimedOut(last) => format!("no connection again: {last}"),
                    },
                    log_tail: log_tail(&self.log_file),
                })
            }
        }
    }

    /// Stops the server (immediate shutdown) and deletes the cluster's directory.
    /// Idempotent; also done by `Drop`. Blocks up to a few seconds.
    pub fn shutdown(&self) {
        let child = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(child) = child {
            stop_server(child);
        }
        match fs::remove_dir_all(&self.root) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(%error, dir = %self.root.display(), "could not remove a local Postgres directory");
            }
            _ => {}
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.shutdown();
    }
}
