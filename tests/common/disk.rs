//! A small file system of the test's own (a tmpfs), whose disk a test can
//! fill and free again. Mounting needs root; where it is not allowed the
//! test learns so and says what it leaves out.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A tmpfs mounted on a directory; unmounted when dropped.
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` on `dir` (created when missing); `None`
    /// where mounting is not allowed (not root).
    pub fn mount(dir: &Path, bytes: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| SmallDisk {
            dir: dir.to_owned(),
        })
    }

    /// Writes a ballast file until the disk is full.
    pub fn fill(&self) {
        let Ok(mut file) = std::fs::File::create(self.ballast()) else {
            return;
        };
        let block = vec![0u8; 1 << 20];
        while file.write_all(&block).is_ok() {}
        let _ = file.flush();
    }

    /// Removes the ballast: the disk has room again.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.ballast());
    }

    fn ballast(&self) -> PathBuf {
        self.dir.join("ballast")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}
