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
//! commit point names any more, so here it is kept in memory and replaced
//! on disk (a new file renamed over it, synced with the others) once per
//! directory sync, before the commit point that may need it. `sluice
//! search` and any other reader open the list too: they always find a whole
//! one. A crash can leave files the list does not name yet, so `open` adds
//! every index file it finds: tantivy then deletes those the last commit
//! point does not name, as it would have.
//!
//! A commit point (`meta.json`, renamed over the last one) is durable only
//! once its directory is synced: `atomic_write` syncs it before it returns,
//! so the commit's position can be confirmed to Postgres.
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

/// The content of `.managed.json` when it changed since the last directory sync.
type Managed = Arc<Mutex<Option<Vec<u8>>>>;

/// Files are written back in pieces of this size while they are written,
/// and synced as soon as they are finished once they reach it.
const LARGE_FILE_BYTES: u64 = 1024 * 1024;

/// tantivy's list of the files it manages.
const MANAGED: &str = ".managed.json";

/// The next list, written and synced before it is renamed over `MANAGED`.
/// Its name starts with a dot, as tantivy's own files that are not index
/// files do.
const MANAGED_NEXT: &str = ".managed.json.next";

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
        let mut unreadable = false;
        let mut listed: Vec<PathBuf> = match std::fs::read(&managed) {
            Ok(text) => serde_json::from_slice(&text).unwrap_or_else(|_| {
                tracing::warn!(path = %managed.display(), "unreadable list of index files: listing the directory instead");
                unreadable = true;
                Vec::new()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let before = listed.len();
        let known: std::collections::HashSet<PathBuf> = listed.iter().cloned().collect();
        listed.extend(
            index_files(root)?
                .into_iter()
                .filter(|f| !known.contains(f)),
        );
        if unreadable || listed.len() != before {
            replace_synced(root, &serde_json::to_vec(&listed)?)?;
        }
        Ok(GroupSyncDirectory {
            inner: MmapDirectory::open(root)?,
            root: root.to_owned(),
            unsynced: Unsynced::default(),
            managed: Managed::default(),
        })
    }
}

/// Replaces `.managed.json` with `data` atomically and durably.
fn replace_synced(root: &Path, data: &[u8]) -> io::Result<()> {
    let next = write_next(root, data)?;
    next.sync_data()?;
    std::fs::rename(root.join(MANAGED_NEXT), root.join(MANAGED))?;
    sync_dir(root)
}

/// Writes the next list beside the current one.
fn write_next(root: &Path, data: &[u8]) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(root.join(MANAGED_NEXT))?;
    file.write_all(data)?;
    Ok(file)
}

/// Makes the directory's entries (new and renamed files) durable.
fn sync_dir(root: &Path) -> io::Result<()> {
    File::open(root)?.sync_all()
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
        if path == Path::new(MANAGED) {
            if let Some(data) = &*self.managed.lock().expect("managed file list") {
                return Ok(data.clone());
            }
        }
        self.inner.atomic_read(path)
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if path == Path::new(MANAGED) {
            *self.managed.lock().expect("managed file list") = Some(data.to_vec());
            return Ok(());
        }
        // `meta.json`: renamed into place by tantivy, durable once the
        // directory is synced.
        self.inner.atomic_write(path, data)?;
        sync_dir(&self.root)
    }

    fn sync_directory(&self) -> io::Result<()> {
        let files = std::mem::take(&mut *self.unsynced.lock().expect("unsynced files"));
        let managed = self.managed.lock().expect("managed file list").take();
        let next = match &managed {
            Some(data) => Some(write_next(&self.root, data)?),
            None => None,
        };
        let synced = std::thread::scope(|scope| {
            let syncs: Vec<_> = files
                .iter()
                .chain(next.as_ref())
                .map(|file| scope.spawn(|| file.sync_data()))
                .collect();
            // The scope joins every thread, also after an error.
            syncs
                .into_iter()
                .try_for_each(|sync| sync.join().expect("a file sync panicked"))
        })
        .and_then(|()| match next {
            Some(_) => std::fs::rename(self.root.join(MANAGED_NEXT), self.root.join(MANAGED)),
            None => Ok(()),
        });
        if let Err(e) = synced {
            // Not durable: sync them again before the next commit point.
            self.unsynced.lock().expect("unsynced files").extend(files);
            let mut pending = self.managed.lock().expect("managed file list");
            if pending.is_none() {
                *pending = managed;
            }
            return Err(e);
        }
        sync_dir(&self.root)
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
    fn the_file_list_is_replaced_at_each_sync_and_completed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let directory = GroupSyncDirectory::open(dir.path()).unwrap();
        directory
            .atomic_write(Path::new(MANAGED), b"[\"a.idx\", \"b.pos\"]\n")
            .unwrap();
        directory
            .atomic_write(Path::new(MANAGED), b"[\"a.idx\"]\n")
            .unwrap();
        // Kept in memory until the next sync; tantivy reads its own writes.
        assert!(!dir.path().join(MANAGED).exists());
        assert_eq!(
            directory.atomic_read(Path::new(MANAGED)).unwrap(),
            b"[\"a.idx\"]\n"
        );
        directory.sync_directory().unwrap();
        assert!(directory.managed.lock().unwrap().is_none());
        assert!(!dir.path().join(MANAGED_NEXT).exists());
        assert_eq!(
            std::fs::read(dir.path().join(MANAGED)).unwrap(),
            b"[\"a.idx\"]\n"
        );
        // Files a crash left unlisted are added (tantivy deletes those no
        // commit point names); locks and lists are not index files.
        for name in ["meta.json", "seg.idx", ".tantivy-writer.lock"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        GroupSyncDirectory::open(dir.path()).unwrap();
        let listed = |dir: &Path| -> Vec<PathBuf> {
            serde_json::from_slice(&std::fs::read(dir.join(MANAGED)).unwrap()).unwrap()
        };
        assert_eq!(
            listed(dir.path()),
            ["a.idx", "meta.json", "seg.idx"].map(PathBuf::from)
        );
        // An unreadable list is rebuilt from the directory.
        std::fs::write(dir.path().join(MANAGED), b"[\"a.id").unwrap();
        GroupSyncDirectory::open(dir.path()).unwrap();
        assert_eq!(
            listed(dir.path()),
            ["meta.json", "seg.idx"].map(PathBuf::from)
        );
    }

    #[test]
    fn a_reader_never_sees_a_partial_file_list() {
        let dir = tempfile::tempdir().unwrap();
        let directory = GroupSyncDirectory::open(dir.path()).unwrap();
        let names: Vec<String> = (0..400).map(|i| format!("segment-{i}.idx")).collect();
        directory
            .atomic_write(Path::new(MANAGED), &serde_json::to_vec(&names).unwrap())
            .unwrap();
        directory.sync_directory().unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = std::fs::read(dir.path().join(MANAGED)).unwrap();
                    serde_json::from_slice::<Vec<PathBuf>>(&text)
                        .unwrap_or_else(|e| panic!("read {reads}: {e}"));
                    reads += 1;
                }
                reads
            });
            for n in 0..300 {
                let list = serde_json::to_vec(&names[..100 + n]).unwrap();
                directory.atomic_write(Path::new(MANAGED), &list).unwrap();
                directory.sync_directory().unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(reader.join().unwrap() > 0);
        });
    }
}
