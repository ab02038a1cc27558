//! Waiting until a started server accepts connections, on a private runtime, and
//! reading its log to explain why it did not.

use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use super::error::describe_sql_error;
use super::{READY_TIMEOUT, SUPERUSER};

const LOG_TAIL_LINES: usize = 40;

pub(super) enum NotReady {
    Exited(ExitStatus),
    TimedOut(String),
}

/// Polls until the server accepts a connection, it exits, or [`READY_TIMEOUT`].
pub(super) fn wait_until_ready(child: &mut Child, port: u16) -> Result<(), NotReady> {
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
pub(super) fn block_on_private<T: Send, F: Future<Output = T>>(
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

pub(super) fn port_was_taken(log_file: &Path, from: u64) -> bool {
    read_from(log_file, from).contains("could not create any TCP/IP sockets")
}

pub(super) fn log_tail(log_file: &Path) -> String {
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
