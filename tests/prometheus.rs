//! grafana/ as an operator runs it: a real Prometheus (Debian's
//! `prometheus`, which `.ci/run` installs) scrapes a running sluice under a
//! write load, with grafana/alerts.yml loaded; every query of the dashboard
//! must parse and return data, every alert rule's expression must parse,
//! and `promtool check rules` must pass. The compose setup's sluice
//! configuration must be one sluice accepts.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Sluice, TestDb};
use serde_json::Value;

/// A Prometheus of the test's own; stopped when dropped.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` every second, with sluice's alert rules.
    fn start(dir: &Path, target: u16) -> Prometheus {
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/alerts.yml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [\"127.0.0.1:{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = common::free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Prometheus (Debian's `prometheus` package: apt-get install prometheus)");
        Prometheus { child, port }
    }

    /// Waits until Prometheus serves queries.
    async fn ready(&mut self, dir: &Path) {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
                panic!("Prometheus exited ({status}):\n{log}");
            }
            let url = format!("http://127.0.0.1:{}/-/ready", self.port);
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Prometheus did not get ready within 30 s");
    }

    /// Runs an instant query: Prometheus's answer.
    async fn query(&self, expr: &str) -> Value {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", expr)])
            .send()
            .await
            .expect("Prometheus answers")
            .json()
            .await
            .expect("JSON")
    }
}

/// Every query of the dashboard, with Grafana's `$__rate_interval` as the
/// window Grafana would pick for this scrape interval.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "15s");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    queries
}

/// Every alert rule's name and expression.
fn alert_rules() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/alerts.yml"))
            .unwrap();
    // The rule file's own shape: `- alert: Name` then `expr: …` on one line.
    let mut rules = Vec::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        if let Some(alert) = line.strip_prefix("- alert: ") {
            name = Some(alert.to_owned());
        } else if let Some(expr) = line.strip_prefix("expr: ") {
            rules.push((
                name.take().expect("an alert before its expr"),
                expr.to_owned(),
            ));
        }
    }
    rules
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/alerts.yml"))
        .output()
        .expect("promtool (Debian's `prometheus` package)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", alert_rules().len())),
        "{text}"
    );
}

#[test]
fn the_compose_setup_gives_sluice_a_valid_configuration() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/sluice.toml"))
            .unwrap();
    let config = sluice::config::Config::from_toml(&text).expect("grafana/sluice.toml parses");
    assert_eq!(
        config.pipeline.metrics_listen.as_deref(),
        Some("0.0.0.0:9187")
    );
    let prometheus = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/prometheus.yml"),
    )
    .unwrap();
    assert!(
        prometheus.contains("sluice:9187"),
        "Prometheus scrapes sluice's metrics port"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let db = TestDb::new("prometheus").await;
    db.exec(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL); \
         ALTER TABLE items REPLICA IDENTITY FULL",
    )
    .await;
    let metrics = common::free_port();
    let config = db.config(
        "[[tables]]\nname = \"items\"\nfilter = \"keep\"\n\n\
         [functions.keep]\nkind = \"filter\"\ncode = 'function filter(action, record) return true end'",
        &format!("metrics_listen = \"127.0.0.1:{metrics}\""),
    );
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    let mut prometheus = Prometheus::start(db.dir.path(), metrics);
    prometheus.ready(db.dir.path()).await;

    // A write load while Prometheus scrapes.
    let load = {
        let url = db.url.clone();
        tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            for i in 0..400i64 {
                let sql = format!(
                    "INSERT INTO items SELECT g, 'item ' || g FROM generate_series({}, {}) g; \
                     UPDATE items SET name = name || '!' WHERE id % 7 = {}; \
                     DELETE FROM items WHERE id % 11 = {}",
                    i * 50,
                    i * 50 + 49,
                    i % 7,
                    i % 11
                );
                if client.batch_execute(&sql).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "the dashboard's queries were not read");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let empty = loop {
        let mut empty = Vec::new();
        for (panel, expr) in &queries {
            let answer = prometheus.query(expr).await;
            assert_eq!(
                answer["status"], "success",
                "{panel}: `{expr}` is refused: {answer}"
            );
            let has_data = answer["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
            if !has_data {
                empty.push(format!("{panel}: {expr}"));
            }
        }
        if empty.is_empty() || std::time::Instant::now() > deadline {
            break empty;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let all_answer = empty.is_empty();
    assert!(
        all_answer,
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );

    for (alert, expr) in alert_rules() {
        let answer = prometheus.query(&expr).await;
        assert_eq!(
            answer["status"], "success",
            "{alert}: `{expr}` is refused: {answer}"
        );
    }
    // The rules are loaded, and evaluated without errors.
    let rules: Value = reqwest::get(format!("http://127.0.0.1:{}/api/v1/rules", prometheus.port))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), alert_rules().len(), "{rules}");
    for rule in loaded {
        assert_ne!(rule["health"], "err", "{rule}");
    }
    load.abort();
    assert!(sluice.stop().success());
}
