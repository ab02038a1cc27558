//! Spawning `initdb` and `postgres` so that they never outlive this process, and
//! stopping the server.

use std::fs::OpenOptions;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::install::ServerUser;
use super::{LocalPostgresError, SUPERUSER};

const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn run_initdb(
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

pub(super) fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

pub(super) fn spawn_server(
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

/// Immediate shutdown (SIGQUIT): the data is throwaway, and a fast shutdown would wait
/// for walsenders to drain. SIGKILL if it takes longer than [`STOP_TIMEOUT`].
pub(super) fn stop_server(mut child: Child) {
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
