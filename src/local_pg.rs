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

use std::ffi::CString;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{env, thread};

use tokio_postgres::NoTls;

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

/// `pg_read_all_data` appeared in Postgres 14.
const MIN_MAJOR_VERSION: u32 = 14;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at binding a port: another process may take the free port we picked.
const PORT_ATTEMPTS: usize = 5;
/// Cluster directories are named `sluice-pg-<owner pid>-<unique>`.
const DIR_PREFIX: &str = "sluice-pg-";
const LOG_TAIL_LINES: usize = 40;

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
x509_extensions = server
[dn]
[server]
basicConstraints = critical, CA:FALSE
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
";

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
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| Self::Sql { context, source }
    }
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
        self.pid
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

/// The account that runs `initdb` and `postgres` when we are root.
#[derive(Debug, Clone, Copy)]
struct ServerUser {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

fn server_user() -> Result<Option<ServerUser>, LocalPostgresError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    lookup_user(SUPERUSER)
        .map(Some)
        .ok_or(LocalPostgresError::NoPostgresUser)
}

fn lookup_user(name: &str) -> Option<ServerUser> {
    let name = CString::new(name).ok()?;
    // SAFETY: `passwd` is plain data; getpwnam_r fills it with pointers into `buffer`,
    // which outlives every read below.
    unsafe {
        let mut entry: libc::passwd = std::mem::zeroed();
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        let mut found = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        );
        (rc == 0 && !found.is_null()).then_some(ServerUser {
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        })
    }
}

fn find_bin_dir() -> Result<PathBuf, LocalPostgresError> {
    if let Some(dir) = env::var_os(BIN_DIR_ENV) {
        let dir = PathBuf::from(dir);
        return match has_server_binaries(&dir) {
            true => Ok(dir),
            false => Err(LocalPostgresError::BinariesNotFound {
                searched: format!("{BIN_DIR_ENV}={}", dir.display()),
            }),
        };
    }
    let mut searched = Vec::new();
    match Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
            searched.push(format!("{} (from pg_config --bindir)", dir.display()));
        }
        _ => searched.push("pg_config --bindir (no pg_config)".to_string()),
    }
    let mut installed: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let major = name.split('.').next()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    installed.sort();
    if let Some((_, dir)) = installed
        .into_iter()
        .rev()
        .find(|(_, dir)| has_server_binaries(dir))
    {
        return Ok(dir);
    }
    searched.push("/usr/lib/postgresql/*/bin".to_string());
    Err(LocalPostgresError::BinariesNotFound {
        searched: searched.join(", "),
    })
}

fn has_server_binaries(dir: &Path) -> bool {
    let executable = |name| {
        fs::metadata(dir.join(name))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    executable("initdb") && executable("postgres")
}

fn server_major_version(bin_dir: &Path) -> Result<u32, LocalPostgresError> {
    let postgres = bin_dir.join("postgres");
    let output =
        Command::new(&postgres)
            .arg("--version")
            .output()
            .map_err(LocalPostgresError::io(format!(
                "running {} --version",
                postgres.display()
            )))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    match parse_major_version(&version) {
        Some(major) if major >= MIN_MAJOR_VERSION => Ok(major),
        _ => Err(LocalPostgresError::UnsupportedVersion {
            version,
            bin_dir: bin_dir.to_path_buf(),
        }),
    }
}

/// `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` -> 15.
fn parse_major_version(version: &str) -> Option<u32> {
    let number = version.split(')').nth(1)?.trim_start();
    number
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The system temp dir, or `/tmp` when the server user could not reach the former.
fn temp_base(run_as: Option<&ServerUser>) -> PathBuf {
    let base = env::temp_dir();
    match run_as {
        Some(user) if !traversable_by(&base, user) => PathBuf::from("/tmp"),
        _ => base,
    }
}

fn traversable_by(dir: &Path, user: &ServerUser) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    dir.ancestors().all(|path| {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).is_ok_and(|m| {
            let bit = match (m.uid() == user.uid, m.gid() == user.gid) {
                (true, _) => 0o100,
                (false, true) => 0o010,
                (false, false) => 0o001,
            };
            m.mode() & bit != 0
        })
    })
}

fn create_root(base: &Path, run_as: Option<&ServerUser>) -> Result<PathBuf, LocalPostgresError> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    loop {
        let unique = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = base.join(format!(
            "{DIR_PREFIX}{}-{nanos:08x}{unique}",
            std::process::id()
        ));
        match fs::DirBuilder::new().mode(0o700).create(&root) {
            Ok(()) => {
                if let Some(user) = run_as {
                    let chown = std::os::unix::fs::chown(&root, Some(user.uid), Some(user.gid));
                    if let Err(error) = chown {
                        let _ = fs::remove_dir(&root);
                        return Err(LocalPostgresError::io(format!(
                            "handing {} to user postgres",
                            root.display()
                        ))(error));
                    }
                }
                return Ok(root);
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                return Err(LocalPostgresError::io(format!(
                    "creating a directory in {}",
                    base.display()
                ))(error))
            }
        }
    }
}

/// Removes cluster directories whose owner process and postmaster are both dead
/// (left by a SIGKILL or Ctrl-C), with the postmaster's SysV shared memory segment.
fn remove_stale_clusters(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|n| n.split('-').next());
        let Some(owner) = owner.and_then(|pid| pid.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        if process_alive(owner) {
            continue;
        }
        let dir = entry.path();
        // postmaster.pid lines: pid, data dir, start time, port, socket dir, listen
        // address, shared memory key and id, status.
        if let Ok(lock) = fs::read_to_string(dir.join("data/postmaster.pid")) {
            let lines: Vec<&str> = lock.lines().map(str::trim).collect();
            let field = |n: usize| lines.get(n).copied().unwrap_or_default();
            // The socket catches a server whose pid we cannot see (another pid
            // namespace sharing this temp dir).
            let socket = Path::new(field(4)).join(format!(".s.PGSQL.{}", field(3)));
            if field(0).parse().is_ok_and(process_alive) || UnixStream::connect(socket).is_ok() {
                continue;
            }
            let mut shmem = field(6).split_whitespace().map(str::parse::<i64>);
            if let (Some(Ok(key)), Some(Ok(id))) = (shmem.next(), shmem.next()) {
                remove_orphan_shared_memory(key, id);
            }
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::debug!(dir = %dir.display(), "removed a stale local Postgres directory")
            }
            Err(error) => {
                tracing::debug!(%error, dir = %dir.display(), "could not remove a stale local Postgres directory")
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn remove_orphan_shared_memory(key: i64, id: i64) {
    let Ok(id) = libc::c_int::try_from(id) else {
        return;
    };
    // SAFETY: IPC_STAT fills a plain struct; IPC_RMID only after checking that the
    // segment is still the postmaster's (same key) and nothing is attached.
    unsafe {
        let mut stat: libc::shmid_ds = std::mem::zeroed();
        if libc::shmctl(id, libc::IPC_STAT, &mut stat) == 0
            && i64::from(stat.shm_perm.__key) == key
            && stat.shm_nattch == 0
        {
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn remove_orphan_shared_memory(_key: i64, _id: i64) {}

/// Alive, and not a zombie waiting to be reaped.
fn process_alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if pid <= 0
        || (unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH))
    {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

fn run_initdb(
    bin_dir: &Path,
    data_dir: &Path,
    root: &Path,
    run_as: Option<ServerUser>,
) -> Result<(), LocalPostgresError> {
    let mut command = child_command(&bin_dir.join("initdb"), root, run_as);
    command
        .arg("--pgdata")
        .arg(data_dir)
        .args([
            "--username",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = spawn_from_keeper_thread(command)
        .and_then(Child::wait_with_output)
        .map_err(LocalPostgresError::io(format!(
            "running {}/initdb",
            bin_dir.display()
        )))?;
    if output.status.success() {
        return Ok(());
    }
    Err(LocalPostgresError::CommandFailed {
        command: format!(
            "{}/initdb --pgdata {}",
            bin_dir.display(),
            data_dir.display()
        ),
        status: output.status,
        output: String::from_utf8_lossy(&[output.stdout, output.stderr].concat()).into_owned(),
    })
}

/// A self-signed certificate and its key in the data dir, readable by the server only.
fn generate_certificate(
    root: &Path,
    data_dir: &Path,
    run_as: Option<ServerUser>,
) -> Result<PathBuf, LocalPostgresError> {
    let config = root.join("openssl.cnf");
    fs::write(&config, OPENSSL_CONFIG).map_err(LocalPostgresError::io(format!(
        "writing {}",
        config.display()
    )))?;
    let (certificate, key) = (data_dir.join("server.crt"), data_dir.join("server.key"));
    let output = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-config",
        ])
        .arg(&config)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&certificate)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => LocalPostgresError::OpensslNotFound,
            _ => LocalPostgresError::io("running openssl")(error),
        })?;
    if !output.status.success() {
        return Err(LocalPostgresError::CommandFailed {
            command: "openssl req -x509 -newkey rsa:2048 ...".to_string(),
            status: output.status,
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    // Postgres refuses a key that others can read.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).map_err(
        LocalPostgresError::io(format!("restricting {}", key.display())),
    )?;
    if let Some(user) = run_as {
        for file in [&key, &certificate] {
            std::os::unix::fs::chown(file, Some(user.uid), Some(user.gid)).map_err(
                LocalPostgresError::io(format!("handing {} to user postgres", file.display())),
            )?;
        }
    }
    Ok(certificate)
}

/// Password rules for the test roles first (first match wins), then trust for the rest.
fn pg_hba_conf() -> String {
    let mut hba = String::from("# Written by sluice local_pg. TYPE DATABASE USER ADDRESS METHOD\n");
    for (user, method) in [(MD5_USER, "md5"), (SCRAM_USER, "scram-sha-256")] {
        for database in ["all", "replication"] {
            let _ = writeln!(hba, "host {database} {user} 127.0.0.1/32 {method}");
        }
    }
    for database in ["all", "replication"] {
        let _ = writeln!(hba, "local {database} all trust");
        let _ = writeln!(hba, "host {database} all 127.0.0.1/32 trust");
    }
    hba
}

fn base_settings(data_dir: &Path, tls: bool) -> Vec<(String, String)> {
    let data = data_dir.display().to_string();
    let mut settings = vec![
        ("wal_level", "logical".to_string()),
        ("max_replication_slots", "32".to_string()),
        ("max_wal_senders", "32".to_string()),
        ("max_connections", "200".to_string()),
        ("shared_buffers", "128MB".to_string()),
        ("listen_addresses", "127.0.0.1".to_string()),
        ("unix_socket_directories", data.clone()),
        // Throwaway data: durability off.
        ("fsync", "off".to_string()),
        ("synchronous_commit", "off".to_string()),
        ("full_page_writes", "off".to_string()),
        // The server's stderr is redirected to server.log by us.
        ("logging_collector", "off".to_string()),
        ("log_destination", "stderr".to_string()),
        // Segments in the data dir, not /dev/shm: nothing outlives a removed directory.
        ("dynamic_shared_memory_type", "mmap".to_string()),
        // pgoutput sends values as text: keep timestamptz output independent of the host.
        ("timezone", "UTC".to_string()),
        ("log_timezone", "UTC".to_string()),
    ];
    if tls {
        settings.push(("ssl", "on".to_string()));
        settings.push(("ssl_cert_file", format!("{data}/server.crt")));
        settings.push(("ssl_key_file", format!("{data}/server.key")));
    }
    settings
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
}

fn validate_settings(settings: &[(String, String)]) -> Result<(), LocalPostgresError> {
    let mut problems = Vec::new();
    for (name, value) in settings {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            problems.push(format!(
                "`{name}` is not a setting name (letters, digits, `_`, `.`)"
            ));
        } else if name.eq_ignore_ascii_case("port") {
            problems
                .push("`port` is chosen by local_pg; read it with LocalPostgres::port".to_string());
        }
        if value.contains(['\n', '\r', '\0']) {
            problems.push(format!(
                "the value of `{name}` contains a line break or NUL"
            ));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(LocalPostgresError::InvalidSettings { problems }),
    }
}

fn append_settings(conf: &Path, settings: &[(String, String)]) -> io::Result<()> {
    let mut text = String::from("\n# Written by sluice local_pg; later lines win.\n");
    for (name, value) in settings {
        let value = value.replace('\\', "\\\\").replace('\'', "''");
        let _ = writeln!(text, "{name} = '{value}'");
    }
    OpenOptions::new()
        .append(true)
        .open(conf)?
        .write_all(text.as_bytes())
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn spawn_server(
    bin_dir: &Path,
    data_dir: &Path,
    root: &Path,
    log_file: &Path,
    port: u16,
    run_as: Option<ServerUser>,
) -> Result<Child, LocalPostgresError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .map_err(LocalPostgresError::io(format!(
            "opening {}",
            log_file.display()
        )))?;
    let log_err = log
        .try_clone()
        .map_err(LocalPostgresError::io("duplicating the log file handle"))?;
    let mut command = child_command(&bin_dir.join("postgres"), root, run_as);
    command
        .arg("-D")
        .arg(data_dir)
        .arg("-p")
        .arg(port.to_string())
        .stdout(log)
        .stderr(log_err);
    spawn_from_keeper_thread(command).map_err(LocalPostgresError::io(format!(
        "starting {}/postgres",
        bin_dir.display()
    )))
}

/// A command for `initdb` or `postgres`: run as the server user when we are root,
/// killed when this process dies, in its own process group.
fn child_command(program: &Path, root: &Path, run_as: Option<ServerUser>) -> Command {
    let mut command = Command::new(program);
    // The server user may not be allowed into our working directory.
    command.current_dir(root).stdin(Stdio::null());
    for name in [
        "PGDATA",
        "PGPORT",
        "PGHOST",
        "PGUSER",
        "PGDATABASE",
        "PGOPTIONS",
    ] {
        command.env_remove(name);
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs between fork and exec; it only makes async-signal-safe syscalls and
    // does not allocate (errors come from errno).
    unsafe { command.pre_exec(move || in_child(parent, run_as)) };
    command
}

/// Runs in the forked child, before exec.
fn in_child(parent: libc::pid_t, run_as: Option<ServerUser>) -> io::Result<()> {
    fn check(rc: libc::c_int) -> io::Result<()> {
        match rc {
            -1 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        }
    }
    // SAFETY: plain syscalls on the calling process.
    unsafe {
        check(libc::setpgid(0, 0))?;
        if let Some(user) = run_as {
            check(libc::setgroups(1, &user.gid))?;
            check(libc::setgid(user.gid))?;
            check(libc::setuid(user.uid))?;
        }
        // After the uid change, which clears the parent-death signal.
        #[cfg(target_os = "linux")]
        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
        ))?;
        // If the parent died before prctl, nothing would kill us later.
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` from a thread that never exits: the parent-death signal fires when
/// the forking *thread* ends, and test harnesses run each test on a short-lived thread.
fn spawn_from_keeper_thread(command: Command) -> io::Result<Child> {
    static KEEPER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);
    let keeper = {
        let mut keeper = KEEPER.lock().unwrap_or_else(PoisonError::into_inner);
        if keeper.is_none() {
            let (requests, inbox) = mpsc::channel::<SpawnRequest>();
            thread::Builder::new()
                .name("sluice-local-pg".to_string())
                .spawn(move || {
                    // Ends only with the process: the sender lives in a static.
                    for (mut command, reply) in inbox {
                        let _ = reply.send(command.spawn());
                    }
                })?;
            *keeper = Some(requests);
        }
        keeper.clone().expect("keeper thread started above")
    };
    let (reply, spawned) = mpsc::channel();
    let gone = || io::Error::other("the local Postgres spawner thread is gone");
    keeper.send((command, reply)).map_err(|_| gone())?;
    spawned.recv().map_err(|_| gone())?
}

enum NotReady {
    Exited(ExitStatus),
    TimedOut(String),
}

/// Polls until the server accepts a connection, it exits, or [`READY_TIMEOUT`].
fn wait_until_ready(child: &mut Child, port: u16) -> Result<(), NotReady> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(SUPERUSER)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2));
    let outcome = block_on_private(|| async move {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(NotReady::Exited(status));
            }
            let error = match config.connect(NoTls).await {
                Ok((client, connection)) => {
                    // Let the connection send its Terminate message.
                    let connection = tokio::spawn(connection);
                    drop(client);
                    let _ = connection.await;
                    return Ok(());
                }
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                return Err(NotReady::TimedOut(describe_sql_error(&error)));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    outcome.unwrap_or_else(|error| Err(NotReady::TimedOut(format!("setup runtime: {error}"))))
}

/// Runs a future on a current-thread runtime of its own thread, so that sync code and
/// code already inside a runtime (where `block_on` would panic) can both call it.
fn block_on_private<T: Send, F: Future<Output = T>>(
    make: impl FnOnce() -> F + Send,
) -> io::Result<T> {
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name("sluice-local-pg-setup".to_string())
            .spawn_scoped(scope, || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(runtime.block_on(make()))
            })?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Immediate shutdown (SIGQUIT): the data is throwaway, and a fast shutdown would wait
/// for walsenders to drain. SIGKILL if it takes longer than [`STOP_TIMEOUT`].
fn stop_server(mut child: Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: the child is not reaped yet, so the pid is still ours.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            _ => return,
        }
    }
    tracing::warn!(
        pid = child.id(),
        "local Postgres ignored SIGQUIT; killing it"
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn port_was_taken(log_file: &Path, from: u64) -> bool {
    read_from(log_file, from).contains("could not create any TCP/IP sockets")
}

fn log_tail(log_file: &Path) -> String {
    let len = fs::metadata(log_file).map_or(0, |m| m.len());
    let text = read_from(log_file, len.saturating_sub(16 * 1024));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

fn read_from(file: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(file) {
        let _ = file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_to_end(&mut bytes));
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// tokio-postgres prints only "db error" for a server error: add the server's words.
fn describe_sql_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded.push(byte as char)
            }
            _ => {
                let _ = write!(encoded, "%{byte:02X}");
            }
        }
    }
    encoded
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_versions() {
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 17beta1"),
            Some(17)
        );
        assert_eq!(parse_major_version("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major_version("garbage"), None);
    }

    #[test]
    fn encodes_url_parts() {
        assert_eq!(
            percent_encode("sluice-test-password"),
            "sluice-test-password"
        );
        assert_eq!(percent_encode("a b@c/d:é"), "a%20b%40c%2Fd%3A%C3%A9");
    }

    #[test]
    fn quotes_sql() {
        assert_eq!(quote_identifier("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn rejects_bad_settings_all_at_once() {
        let settings = vec![
            ("port".to_string(), "5432".to_string()),
            ("bad name".to_string(), "x".to_string()),
            ("work_mem".to_string(), "1\n2".to_string()),
            ("work_mem".to_string(), "64MB".to_string()),
        ];
        match validate_settings(&settings) {
            Err(LocalPostgresError::InvalidSettings { problems }) => {
                assert_eq!(problems.len(), 3, "{problems:?}")
            }
            other => panic!("expected InvalidSettings, got {other:?}"),
        }
    }

    #[test]
    fn hba_puts_password_rules_before_trust() {
        let hba = pg_hba_conf();
        let md5 = hba.find("sluice_md5 127.0.0.1/32 md5").expect("md5 rule");
        let scram = hba
            .find("sluice_scram 127.0.0.1/32 scram-sha-256")
            .expect("scram rule");
        let trust = hba.find("trust").expect("trust rule");
        assert!(md5 < trust && scram < trust, "{hba}");
        assert!(hba.contains("host replication sluice_scram 127.0.0.1/32 scram-sha-256"));
    }
}
