//! The data directory's own state: the lock that keeps a second `sluice run`
//! out of it, and the deployment's identity.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// The lock file's name in the data directory.
const LOCK_FILE: &str = "sluice.lock";

/// Creates the data directory when missing.
pub fn create(data_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        unusable(
            format!("cannot create data directory {}", data_dir.display()),
            e,
        )
    })
}

/// An error using the data directory. One that no retry fixes (no
/// permission, a read-only file system, a file where a directory should be
/// or on the way to it)
/// is the operator's to fix: a configuration error, which stops sluice. The
/// others (a full disk) are I/O errors, waited out.
pub fn unusable(context: impl std::fmt::Display, e: std::io::Error) -> Error {
    use std::io::ErrorKind as Io;
    match e.kind() {
        Io::PermissionDenied
        | Io::ReadOnlyFilesystem
        | Io::NotADirectory
        | Io::IsADirectory
        | Io::AlreadyExists => Error::new(ErrorKind::Config, format!("{context}: {e}"))
            .hint("give sluice a data directory it can write (pipeline.data_dir, or --data-dir)"),
        _ => Error::io(context, e),
    }
}

/// Held while a process streams into a data directory: two writers would
/// fight over its indexes, spools and positions. The operating system
/// releases the lock when the process ends, however it ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `data_dir`, or says which process holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock> {
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| unusable(format!("cannot open {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                };
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "the data directory {} is in use by another sluice process{holder}",
                        data_dir.display()
                    ),
                )
                .hint(
                    "stop that process first, or give this one a data directory of its own \
                     (pipeline.data_dir, or --data-dir)",
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("cannot lock {}", path.display()), e))
            }
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        written.map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        Ok(DataDirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The file recording the slot this data directory streams from.
const SLOT_FILE: &str = "slot.json";

/// The slot this data directory streams from, recorded when sluice created
/// (or first used) it: a slot of the same name that is not this one (on
/// another server, or created anew) has none of the changes in between.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotRecord {
    pub slot: String,
    /// `pg_control_system()`'s identifier of the database system.
    pub system_identifier: String,
    pub database: String,
    /// The position the slot started at.
    pub created_at: crate::lsn::Lsn,
    /// The highest position sluice may have confirmed to the slot: written
    /// before each confirmation, so a slot whose confirmed position is past
    /// it was advanced by someone else, or created anew.
    #[serde(default)]
    pub confirmed: Option<crate::lsn::Lsn>,
}

impl SlotRecord {
    pub fn load(data_dir: &Path) -> Result<Option<SlotRecord>> {
        let path = data_dir.join(SLOT_FILE);
        match std::fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text).map(Some).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("{} is not a slot record: {e}", path.display()),
                )
                .hint("restore the file; without it sluice cannot tell whether its slot is the one it streamed from")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
        }
    }

    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("slot records serialize");
        replace_file(&data_dir.join(SLOT_FILE), &bytes)
    }
}

/// The file holding the deployment's id.
const DEPLOYMENT_FILE: &str = "deployment_id";

/// This deployment's id: random, made with its data directory and kept in
/// it. It tells this deployment's marks in the WAL from those of another
/// one reading the same database.
pub fn deployment_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(DEPLOYMENT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if is_deployment_id(text.trim()) => return Ok(text.trim().to_owned()),
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::Config,
                format!("{} does not hold a deployment id", path.display()),
            )
            .hint("restore the file, or delete it (a backfill that runs gets a new id and reads its current chunks again)"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
    let id = format!("{:016x}", rand::random::<u64>());
    replace_file(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

fn is_deployment_id(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Replaces `path` with `bytes` atomically and durably: written aside,
/// synced, renamed, and the directory synced.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e| Error::io(format!("cannot write {}", path.display()), e);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let aside = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&aside).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&aside, path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let refused = DataDirLock::acquire(dir.path()).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Config);
        assert!(
            refused
                .message()
                .contains(&format!("(pid {})", std::process::id())),
            "{refused}"
        );
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn the_deployment_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = deployment_id(dir.path()).unwrap();
        assert!(is_deployment_id(&id));
        assert_eq!(deployment_id(dir.path()).unwrap(), id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(deployment_id(other.path()).unwrap(), id);
        std::fs::write(dir.path().join(DEPLOYMENT_FILE), "garbage").unwrap();
        assert!(deployment_id(dir.path()).is_err());
    }
}
