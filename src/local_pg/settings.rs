//! What the cluster is configured with: `pg_hba.conf`, `postgresql.conf` settings
//! (ours, then the caller's, checked first) and the TLS certificate.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::install::ServerUser;
use super::{LocalPostgresError, MD5_USER, SCRAM_USER};

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
x509_extensions = server
[dn]
[server]
basicConstraints = critical, CA:FALSE
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
";

/// A self-signed certificate and its key in the data dir, readable by the server only.
pub(super) fn generate_certificate(
    root: &Path,
    data_dir: &Path,
    run_as: Option<ServerUser>,
) -> Result<PathBuf, LocalPostgresError> {
    let config = root.join("openssl.cnf");
    fs::write(&config, OPENSSL_CONFIG).map_err(LocalPostgresError::io(format!(
        "writing {}",
        config.display()
    )))?;
    let (certificate, key) = (data_dir.join("server.crt"), data_dir.join("server.key"));
    let output = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-config",
        ])
        .arg(&config)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&certificate)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => LocalPostgresError::OpensslNotFound,
            _ => LocalPostgresError::io("running openssl")(error),
        })?;
    if !output.status.success() {
        return Err(LocalPostgresError::CommandFailed {
            command: "openssl req -x509 -newkey rsa:2048 ...".to_string(),
            status: output.status,
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    // Postgres refuses a key that others can read.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).map_err(
        LocalPostgresError::io(format!("restricting {}", key.display())),
    )?;
    if let Some(user) = run_as {
        for file in [&key, &certificate] {
            std::os::unix::fs::chown(file, Some(user.uid), Some(user.gid)).map_err(
                LocalPostgresError::io(format!("handing {} to user postgres", file.display())),
            )?;
        }
    }
    Ok(certificate)
}

/// Password rules for the test roles first (first match wins), then trust for the rest.
pub(super) fn pg_hba_conf() -> String {
    let mut hba = String::from("# Written by sluice local_pg. TYPE DATABASE USER ADDRESS METHOD\n");
    for (user, method) in [(MD5_USER, "md5"), (SCRAM_USER, "scram-sha-256")] {
        for database in ["all", "replication"] {
            let _ = writeln!(hba, "host {database} {user} 127.0.0.1/32 {method}");
        }
    }
    for database in ["all", "replication"] {
        let _ = writeln!(hba, "local {database} all trust");
        let _ = writeln!(hba, "host {database} all 127.0.0.1/32 trust");
    }
    hba
}

pub(super) fn base_settings(data_dir: &Path, tls: bool) -> Vec<(String, String)> {
    let data = data_dir.display().to_string();
    let mut settings = vec![
        ("wal_level", "logical".to_string()),
        ("max_replication_slots", "32".to_string()),
        ("max_wal_senders", "32".to_string()),
        ("max_connections", "200".to_string()),
        ("shared_buffers", "128MB".to_string()),
        ("listen_addresses", "127.0.0.1".to_string()),
        ("unix_socket_directories", data.clone()),
        // Throwaway data: durability off.
        ("fsync", "off".to_string()),
        ("synchronous_commit", "off".to_string()),
        ("full_page_writes", "off".to_string()),
        // The server's stderr is redirected to server.log by us.
        ("logging_collector", "off".to_string()),
        ("log_destination", "stderr".to_string()),
        // Segments in the data dir, not /dev/shm: nothing outlives a removed directory.
        ("dynamic_shared_memory_type", "mmap".to_string()),
        // pgoutput sends values as text: keep timestamptz output independent of the host.
        ("timezone", "UTC".to_string()),
        ("log_timezone", "UTC".to_string()),
    ];
    if tls {
        settings.push(("ssl", "on".to_string()));
        settings.push(("ssl_cert_file", format!("{data}/server.crt")));
        settings.push(("ssl_key_file", format!("{data}/server.key")));
    }
    settings
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
}

pub(super) fn validate_settings(settings: &[(String, String)]) -> Result<(), LocalPostgresError> {
    let mut problems = Vec::new();
    for (name, value) in settings {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            problems.push(format!(
                "`{name}` is not a setting name (letters, digits, `_`, `.`)"
            ));
        } else if name.eq_ignore_ascii_case("port") {
            problems
                .push("`port` is chosen by local_pg; read it with LocalPostgres::port".to_string());
        }
        if value.contains(['\n', '\r', '\0']) {
            problems.push(format!(
                "the value of `{name}` contains a line break or NUL"
            ));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(LocalPostgresError::InvalidSettings { problems }),
    }
}

pub(super) fn append_settings(conf: &Path, settings: &[(String, String)]) -> io::Result<()> {
    let mut text = String::from("\n# Written by sluice local_pg; later lines win.\n");
    for (name, value) in settings {
        let value = value.replace('\\', "\\\\").replace('\'', "''");
        let _ = writeln!(text, "{name} = '{value}'");
    }
    OpenOptions::new()
        .append(true)
        .open(conf)?
        .write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_settings_all_at_once() {
        let settings = vec![
            ("port".to_string(), "5432".to_string()),
            ("bad name".to_string(), "x".to_string()),
            ("work_mem".to_string(), "1\n2".to_string()),
            ("work_mem".to_string(), "64MB".to_string()),
        ];
        match validate_settings(&settings) {
            Err(LocalPostgresError::InvalidSettings { problems }) => {
                assert_eq!(problems.len(), 3, "{problems:?}")
            }
            other => panic!("expected InvalidSettings, got {other:?}"),
        }
    }

    #[test]
    fn hba_puts_password_rules_before_trust() {
        let hba = pg_hba_conf();
        let md5 = hba.find("sluice_md5 127.0.0.1/32 md5").expect("md5 rule");
        let scram = hba
            .find("sluice_scram 127.0.0.1/32 scram-sha-256")
            .expect("scram rule");
        let trust = hba.find("trust").expect("trust rule");
        assert!(md5 < trust && scram < trust, "{hba}");
        assert!(hba.contains("host replication sluice_scram 127.0.0.1/32 scram-sha-256"));
    }
}
