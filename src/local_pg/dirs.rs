//! The cluster's temp directory, and the removal of those left behind by a killed
//! process.

use std::env;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::install::ServerUser;
use super::LocalPostgresError;

/// Cluster directories are named `sluice-pg-<owner pid>-<unique>`.
const DIR_PREFIX: &str = "sluice-pg-";

/// The system temp dir, or `/tmp` when the server user could not reach the former.
pub(super) fn temp_base(run_as: Option<&ServerUser>) -> PathBuf {
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

pub(super) fn create_root(
    base: &Path,
    run_as: Option<&ServerUser>,
) -> Result<PathBuf, LocalPostgresError> {
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
pub(super) fn remove_stale_clusters(base: &Path) {
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
