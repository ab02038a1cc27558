//! The sluice under test: a child process running `sluice run` on a
//! configuration the harness writes, watched for memory and CPU.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `sluice` binary: `--sluice`, else the one beside this program (cargo
/// builds both into one directory), else `sluice` on the `PATH`.
pub fn find_sluice(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        anyhow::ensure!(path.is_file(), "--sluice {}: no such file", path.display());
        return Ok(path.to_owned());
    }
    let beside = std::env::current_exe()?.with_file_name("sluice");
    if beside.is_file() {
        return Ok(beside);
    }
    // A test binary lives one directory further down (`deps/`).
    if let Some(parent) = std::env::current_exe()?.parent().and_then(Path::parent) {
        let up = parent.join("sluice");
        if up.is_file() {
            return Ok(up);
        }
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("sluice"))
            .find(|p| p.is_file())
    });
    on_path.ok_or_else(|| {
        anyhow::anyhow!(
            "cannot find the sluice binary: build it with `cargo build --release` (it goes beside sluice-loadtest), or pass --sluice PATH"
        )
    })
}

pub struct Sluice {
    child: Child,
    pub log: PathBuf,
}

impl Sluice {
    pub fn start(binary: &Path, config: &Path, log: &Path) -> anyhow::Result<Sluice> {
        // A second start (after a backlog was committed) adds to the log.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
        Ok(Sluice {
            child,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error with the end of sluice's log when it is no longer running.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "sluice exited ({status}); its log ends:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM, then waits for the exit (killing it after a minute).
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                anyhow::bail!("sluice did not stop within a minute of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process's resident memory in bytes (`VmRSS`), if it runs.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A Postgres client program: from `bin_dir` (the throwaway server's),
/// else from `pg_config --bindir`, else from the `PATH`.
pub fn pg_program(name: &str, bin_dir: Option<&Path>) -> PathBuf {
    if let Some(path) = bin_dir.map(|dir| dir.join(name)).filter(|p| p.is_file()) {
        return path;
    }
    let configured = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join(name))
        .filter(|p| p.is_file());
    configured.unwrap_or_else(|| PathBuf::from(name))
}

/// CPU time the process used so far (user and system).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Duration::from_secs_f64(ticks as f64 / per_second))
}
