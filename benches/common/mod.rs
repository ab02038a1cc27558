//! What the process-driving benchmarks share: a child process killed when
//! the benchmark fails, its memory, and its log's last lines.

#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::Child;

/// A child process that is killed if the benchmark fails while it runs.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A `kB` field of `/proc/PID/status`, such as `VmRSS:` or `VmHWM:`.
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// The last lines of a log file, for error messages.
pub fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_else(|e| format!("({}: {e})", log.display()));
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {} (last lines) ---\n{}",
        log.display(),
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}
