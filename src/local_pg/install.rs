//! Which Postgres to run (`initdb` and `postgres`, of a supported version) and, when
//! we are root, the account to run it as.

use std::env;
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{LocalPostgresError, BIN_DIR_ENV, SUPERUSER};

/// `pg_read_all_data` appeared in Postgres 14.
pub(super) const MIN_MAJOR_VERSION: u32 = 14;

/// The account that runs `initdb` and `postgres` when we are root.
#[derive(Debug, Clone, Copy)]
pub(super) struct ServerUser {
    pub(super) uid: libc::uid_t,
    pub(super) gid: libc::gid_t,
}

pub(super) fn server_user() -> Result<Option<ServerUser>, LocalPostgresError> {
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

pub(super) fn find_bin_dir() -> Result<PathBuf, LocalPostgresError> {
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

pub(super) fn server_major_version(bin_dir: &Path) -> Result<u32, LocalPostgresError> {
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
}
