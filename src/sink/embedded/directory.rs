//! The directory an embedded index lives in: tantivy's memory-mapped one,
//! with the files of new segments synced together before each commit point.
//!
//! tantivy's `MmapDirectory` syncs every file it writes when the file is
//! finished: a new segment costs one `fdatasync` per file (six or more),
//! one after the other, on the indexing thread, while the commit that
//! flushed the segment waits. None of them has to be durable before the
//! `meta.json` that names the segment is, and tantivy syncs the directory
//! right before writing each `meta.json`. Here finished files are only
//! flushed and remembered, and that directory sync first syncs all of them
//! at once, on threads of their own, so the disk sees them together.
//!
//! A large file (a merged segment's, mostly) is written back as it is
//! written, a mebibyte at a time, and synced by the thread that wrote it
//! when it is finished. Left to the next directory sync, a merged
//! segment's files went to the disk at once, and the commit that came next
//! waited for them for hundreds of milliseconds, the live changes with it.
//!
//! tantivy also rewrites `.managed.json`, its list of the files it created,
//! atomically and synced, for every new file: a new file and an `fdatasync`
//! each, dozens a second while a backfill commits and merges. Creating files
//! is not free: ext4 without a journal scans past every inode deleted in the
//! last minute to allocate one. The list only serves to delete files no
//! commit point names any more, so here it is rewritten in place, unsynced,
//! and synced with the other files. Should a crash leave it unreadable,
//! `open` lists the directory's files instead: tantivy then deletes those
//! the last commit point does not name, as it would have.
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, TerminatingWrite,
    WatchCallback, WatchHandle, WritePtr,
};

/// Files finished since the last directory sync, not yet synced.
type Unsynced = Arc<Mutex<Vec<File>>>;

/// `.managed.json`, open while it was rewritten since the last directory sync.
type Managed = Arc<Mutex<Option<File>>>;

/// Files are written back in pieces of this size while they are written,
/// and synced as soon as they are finished once they reach it.
const LARGE_FILE_BYTES: u64 = 1024 * 1024;

/// tantivy's list of the files it manages.
const MANAGED: &str = ".managed.json";

#[derive(Debug, Clone)]
pub(super) struct GroupSyncDirectory {
    inner: MmapDirectory,
    root: PathBuf,
    unsynced: Unsynced,
    managed: Managed,
}

impl GroupSyncDirectory {
    pub(super) fn open(root: &Path) -> tantivy::Result<GroupSyncDirectory> {
        let managed = root.join(MANAGED);
        if let Ok(text) = std::fs::read(&managed) {
            if serde_json::from_slice::<Vec<PathBuf>>(&text).is_err() {
                tracing::warn!(path = %managed.display(), "unreadable list of index files (a crash while it was written): listing the directory instead");
                let listed = serde_json::to_vec(&index_files(root)?)?;
                std::fs::write(&managed, listed)?;
                File::open(&managed)?.sync_all()?;
            }
        }
        Ok(GroupSyncDirectory {
            inner: MmapDirectory::open(root)?,
            root: root.to_owned(),
            unsynced: Unsynced::default(),
            managed: Managed::default(),
        })
    }
}

impl Directory for GroupSyncDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        self.inner.get_file_handle(path)
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.inner.delete(path)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.root.join(path))
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    OpenWriteError::FileAlreadyExists(path.to_owned())
                } else {
                    OpenWriteError::wrap_io_error(e, path.to_owned())
                }
            })?;
        Ok(BufWriter::new(Box::new(SyncLater {
            file: Some(file),
            written: 0,
            written_back: 0,
            unsynced: self.unsynced.clone(),
        })))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.inner.atomic_read(path)
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if path != Path::new(MANAGED) {
            return self.inner.atomic_write(path, data);
        }
        let mut managed = self.managed.lock().expect("managed file list");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.root.join(path))?;
        file.write_all(data)?;
        *managed = Some(file);
        Ok(())
    }

    fn sync_directory(&self) -> io::Result<()> {
        let mut files = std::mem::take(&mut *self.unsynced.lock().expect("unsynced files"));
        files.extend(self.managed.lock().expect("managed file list").take());
        let synced = std::thread::scope(|scope| {
            let syncs: Vec<_> = files
                .iter()
                .map(|file| scope.spawn(|| file.sync_data()))
                .collect();
            // The scope joins every thread, also after an error.
            syncs
                .into_iter()
                .try_for_each(|sync| sync.join().expect("a file sync panicked"))
        });
        if let Err(e) = synced {
            // Not durable: sync them again before the next commit point.
            self.unsynced.lock().expect("unsynced files").extend(files);
            return Err(e);
        }
        self.inner.sync_directory()
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }
}

/// The files tantivy manages in `root`: all but its locks and lists, whose
/// names start with a dot.
fn index_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = PathBuf::from(entry.file_name());
        if entry.file_type()?.is_file() && !name.to_string_lossy().starts_with('.') {
            files.push(name);
        }
    }
    files.sort();
    Ok(files)
}

/// A new file: flushed when finished, synced then if it is large, at the
/// next directory sync otherwise.
struct SyncLater {
    /// `None` once finished.
    file: Option<File>,
    written: u64,
    /// Bytes whose write-back was started.
    written_back: u64,
    unsynced: Unsynced,
}

impl SyncLater {
    fn file(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("write to a finished index file"))
    }
}

impl Write for SyncLater {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file()?.write(buf)?;
        self.written += n as u64;
        if self.written - self.written_back >= LARGE_FILE_BYTES {
            if let Some(file) = &self.file {
                start_write_back(file, self.written_back, self.written - self.written_back);
            }
            self.written_back = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file()?.flush()
    }
}

impl TerminatingWrite for SyncLater {
    fn terminate_ref(&mut self, _: AntiCallToken) -> io::Result<()> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("an index file finished twice"))?;
        file.flush()?;
        if self.written >= LARGE_FILE_BYTES {
            return file.sync_data();
        }
        self.unsynced.lock().expect("unsynced files").push(file);
        Ok(())
    }
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to
/// the disk, without waiting for them.
#[cfg(target_os = "linux")]
fn start_write_back(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor `file` keeps open; it only
    // schedules write-back, and an error just leaves that to the sync.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_write_back(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_files_wait_for_the_directory_sync() {
        let dir = tempfile::tempdir().unwrap();
        let directory = GroupSyncDirectory::open(dir.path()).unwrap();
        for name in ["a.idx", "b.pos"] {
            let mut writer = directory.open_write(Path::new(name)).unwrap();
            writer.write_all(b"data").unwrap();
            writer.terminate().unwrap();
        }
        assert_eq!(directory.unsynced.lock().unwrap().len(), 2);
        // A large file is synced when finished, not kept for the next sync.
        let mut writer = directory.open_write(Path::new("c.store")).unwrap();
        writer
            .write_all(&vec![7; LARGE_FILE_BYTES as usize])
            .unwrap();
        writer.terminate().unwrap();
        assert_eq!(directory.unsynced.lock().unwrap().len(), 2);
        assert!(matches!(
            directory.open_write(Path::new("a.idx")),
            Err(OpenWriteError::FileAlreadyExists(_))
        ));
        directory.sync_directory().unwrap();
        assert!(directory.unsynced.lock().unwrap().is_empty());
        assert_eq!(
            directory
                .open_read(Path::new("b.pos"))
                .unwrap()
                .read_bytes()
                .unwrap()
                .as_slice(),
            b"data"
        );
    }

    #[test]
    fn the_file_list_is_rewritten_in_place_and_rebuilt_when_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let directory = GroupSyncDirectory::open(dir.path()).unwrap();
        directory
            .atomic_write(Path::new(MANAGED), b"[\"a.idx\", \"b.pos\"]\n")
            .unwrap();
        directory
            .atomic_write(Path::new(MANAGED), b"[\"a.idx\"]\n")
            .unwrap();
        assert!(directory.managed.lock().unwrap().is_some());
        assert_eq!(
            directory.atomic_read(Path::new(MANAGED)).unwrap(),
            b"[\"a.idx\"]\n"
        );
        directory.sync_directory().unwrap();
        assert!(directory.managed.lock().unwrap().is_none());
        GroupSyncDirectory::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(MANAGED)).unwrap(),
            b"[\"a.idx\"]\n"
        );
        // A crash while it was written: the files on disk are listed instead.
        for name in ["meta.json", "seg.idx", ".tantivy-writer.lock"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::write(dir.path().join(MANAGED), b"[\"a.id").unwrap();
        GroupSyncDirectory::open(dir.path()).unwrap();
        let listed: Vec<PathBuf> =
            serde_json::from_slice(&std::fs::read(dir.path().join(MANAGED)).unwrap()).unwrap();
        assert_eq!(
            listed,
            [PathBuf::from("meta.json"), PathBuf::from("seg.idx")]
        );
    }
}
