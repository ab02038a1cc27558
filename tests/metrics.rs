//! `/metrics` as an operator's Prometheus sees it: every series METRICS.md
//! lists is served from the start, at zero, with its `# HELP` and `# TYPE`,
//! for every configured sink, table, stage and function; and nothing is
//! served that METRICS.md does not list.

mod common;
mod fakes;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Sluice, TestDb};

/// A series as METRICS.md or `/metrics` describes it: its type and the
/// names of its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    kind: String,
    labels: BTreeSet<String>,
}

/// The table of METRICS.md, by series name.
fn documented() -> BTreeMap<String, Shape> {
    let text = std::fs::read_to_string("METRICS.md").expect("METRICS.md");
    text.lines()
        .filter(|line| line.starts_with("| `sluice_") || line.starts_with("| `process_"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_owned();
            let labels = cells[3]
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            let shape = Shape {
                kind: cells[2].to_owned(),
                labels,
            };
            (name, shape)
        })
        .collect()
}

/// What `/metrics` serves: each series' shape, whether it has help text,
/// and the label values seen per series and label.
struct Served {
    shapes: BTreeMap<String, Shape>,
    helped: BTreeSet<String>,
    values: BTreeMap<(String, String), BTreeSet<String>>,
}

fn parse(body: &str) -> Served {
    let mut served = Served {
        shapes: BTreeMap::new(),
        helped: BTreeSet::new(),
        values: BTreeMap::new(),
    };
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if !help.trim().is_empty() {
                served.helped.insert(name.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            served.shapes.insert(
                name.to_owned(),
                Shape {
                    kind: kind.to_owned(),
                    labels: BTreeSet::new(),
                },
            );
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, _value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|b| served.shapes.get(*b).is_some_and(|s| s.kind == "histogram"))
                })
                .unwrap_or(name)
                .to_owned();
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (label, value) = pair.split_once('=').unwrap();
                if label == "le" {
                    continue;
                }
                if let Some(shape) = served.shapes.get_mut(&base) {
                    shape.labels.insert(label.to_owned());
                }
                served
                    .values
                    .entry((base.clone(), label.to_owned()))
                    .or_default()
                    .insert(value.trim_matches('"').to_owned());
            }
        }
    }
    served
}

async fn scrape(port: u16) -> Option<String> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?;
    response.text().await.ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_md_is_what_metrics_serves_from_the_start() {
    let db = TestDb::new("metrics_catalogue").await;
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, name text); \
         ALTER TABLE items REPLICA IDENTITY FULL",
    )
    .await;
    db.exec("CREATE TABLE notes (id int PRIMARY KEY)").await;
    let port = common::free_port();
    let config = db.config_with_sinks(
        "[[tables]]\nname = \"items\"\nfilter = \"keep\"\n\n[[tables]]\nname = \"notes\"\n\n\
         [functions.keep]\nkind = \"filter\"\ncode = 'function filter(action, record) return true end'",
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
        "[[sinks]]\nname = \"embedded\"\ntype = \"embedded\"\n\n[[sinks]]\nname = \"void\"\ntype = \"null\"\n",
    );
    let mut sluice = Sluice::run_config(&config);
    // The first scrape that answers: before anything streamed.
    let mut body = None;
    for _ in 0..300 {
        sluice.assert_running();
        body = scrape(port).await;
        if body.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let served = parse(&body.expect("/metrics answers"));
    let documented = documented();
    assert!(documented.len() >= 20, "METRICS.md's table was not read");

    let missing: Vec<&String> = documented
        .keys()
        .filter(|name| !served.shapes.contains_key(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "in METRICS.md, not served at start: {missing:?}"
    );
    let undocumented: Vec<&String> = served
        .shapes
        .keys()
        .filter(|name| !documented.contains_key(*name))
        .collect();
    assert!(
        undocumented.is_empty(),
        "served, not in METRICS.md: {undocumented:?}"
    );
    for (name, shape) in &documented {
        assert_eq!(
            &served.shapes[name], shape,
            "{name}: METRICS.md and /metrics differ"
        );
        assert!(served.helped.contains(name), "{name} has no # HELP");
    }

    // At zero for every configured sink, table, stage and function.
    let values = |series: &str, label: &str| -> Vec<String> {
        served
            .values
            .get(&(series.to_owned(), label.to_owned()))
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(
        values("sluice_end_to_end_latency_seconds", "sink"),
        ["embedded", "void"]
    );
    assert_eq!(
        values("sluice_sink_requests_total", "sink"),
        ["embedded", "void"]
    );
    assert_eq!(
        values("sluice_backfill_rows_total", "table"),
        ["public.items", "public.notes"]
    );
    assert_eq!(values("sluice_stage_errors_total", "stage").len(), 7);
    assert_eq!(
        values("sluice_function_failures_total", "function"),
        ["keep"]
    );

    // The new sinks' first backfills run, then are done.
    let done = common::wait_until(Duration::from_secs(60), || async {
        scrape(port).await.is_some_and(|body| {
            value(&body, "sluice_backfills{state=\"completed\"}") == Some(2.0)
                && value(&body, "sluice_backfills{state=\"running\"}") == Some(0.0)
        })
    })
    .await;
    sluice.assert_running();
    assert!(
        done,
        "{}\nlog:\n{}",
        scrape(port).await.unwrap_or_default(),
        sluice.log_text()
    );
    assert!(sluice.stop().success());
}

/// Every series the source records is in METRICS.md, so one recorded only
/// after some event (and absent from the scrape at start) is listed too.
#[test]
fn every_series_the_source_records_is_documented() {
    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    sources(std::path::Path::new("src"), &mut files);
    let documented = documented();
    let mut recorded = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for macro_name in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(macro_name) {
                let after = text[at + macro_name.len()..].trim_start();
                if let Some(rest) = after.strip_prefix("\"sluice_") {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    recorded.insert((format!("sluice_{name}"), file.display().to_string()));
                }
            }
        }
    }
    assert!(recorded.len() >= 20, "the macros were not found");
    for (name, file) in recorded {
        assert!(
            documented.contains_key(&name),
            "{file} records {name}, which METRICS.md does not list"
        );
    }
}

/// The value of one series (`name` or `name{labels}`, as served) in a scrape.
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A sink that stops answering shows as a lag that grows, for it alone;
/// once it is back and everything is in, every lag is 0 again: a stuck
/// pipeline is told from an idle one.
#[tokio::test(flavor = "multi_thread")]
async fn the_lag_grows_for_a_stuck_sink_only_and_is_0_when_caught_up() {
    let es = fakes::elasticsearch::FakeElasticsearch::start(fakes::elasticsearch::FakeOptions {
        faults: fakes::elasticsearch::Faults {
            dead: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let db = TestDb::new("metrics_lag").await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, name text)")
        .await;
    let port = common::free_port();
    let sinks = format!(
        "[[sinks]]\nname = \"embedded\"\ntype = \"embedded\"\ncommit_interval_ms = 100\n\n\
         [[sinks]]\nname = \"es\"\ntype = \"elasticsearch\"\nurl = \"{}\"\nretry_max_backoff_ms = 200\n",
        es.url()
    );
    let config = db.config_with_sinks(
        "[[tables]]\nname = \"items\"\n\n[api]\nlisten = \"127.0.0.1:0\"",
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
        &sinks,
    );
    let mut sluice = Sluice::run_config(&config);
    db.wait_streaming(&mut sluice).await;
    db.exec("INSERT INTO items SELECT i, 'n' FROM generate_series(1, 100) i")
        .await;

    let stuck = common::wait_until(Duration::from_secs(60), || async {
        let Some(body) = scrape(port).await else {
            return false;
        };
        value(&body, "sluice_sink_lag_seconds{sink=\"es\"}").is_some_and(|s| s >= 2.0)
            && value(&body, "sluice_sink_lag_seconds{sink=\"embedded\"}") == Some(0.0)
            && value(&body, "sluice_replication_lag_seconds").is_some_and(|s| s >= 2.0)
            && value(&body, "sluice_replication_lag_bytes").is_some_and(|b| b > 0.0)
            && value(&body, "sluice_slot_retained_wal_bytes").is_some_and(|b| b > 0.0)
    })
    .await;
    let lines = |body: String| -> String {
        body.lines()
            .filter(|l| {
                !l.starts_with('#')
                    && ["lag", "retained", "backfills{"]
                        .iter()
                        .any(|s| l.contains(s))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(stuck, "{}", lines(scrape(port).await.unwrap_or_default()));
    // The API and `sluice status` say it too.
    let (code, out, err) =
        common::cli(&["status", "--config", config.to_str().unwrap(), "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pipeline = &status["pipelines"][0];
    assert!(
        pipeline["lag_seconds"].as_f64().unwrap() >= 2.0,
        "{pipeline}"
    );
    assert!(pipeline["lag_bytes"].as_u64().unwrap() > 0, "{pipeline}");
    let sinks = pipeline["sinks"].as_array().unwrap();
    let lag_of = |name: &str| {
        sinks.iter().find(|s| s["name"] == name).unwrap()["lag_seconds"]
            .as_f64()
            .unwrap()
    };
    assert!(
        lag_of("es") >= 2.0 && lag_of("embedded") == 0.0,
        "{pipeline}"
    );
    let (_, out, _) = common::cli(&["status", "--config", config.to_str().unwrap()]).await;
    assert!(
        out.contains("sink es (elasticsearch): committed") && out.contains(", lag "),
        "{out}"
    );

    es.update_faults(|f| f.dead = false);
    let caught_up = common::wait_until(Duration::from_secs(60), || async {
        let Some(body) = scrape(port).await else {
            return false;
        };
        value(&body, "sluice_sink_lag_seconds{sink=\"es\"}") == Some(0.0)
            && value(&body, "sluice_replication_lag_seconds") == Some(0.0)
    })
    .await;
    let body = scrape(port).await.unwrap_or_default();
    assert!(
        caught_up,
        "{}\nlog:\n{}",
        lines(body.clone()),
        sluice.log_text()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let changes = |op: &str| {
        let series = format!("sluice_changes_total{{table=\"public.items\",op=\"{op}\"}}");
        value(&body, &series)
    };
    assert_eq!(
        (changes("insert"), changes("delete")),
        (Some(100.0), Some(0.0)),
        "{body}"
    );
    let last = value(&body, "sluice_last_change_timestamp_seconds").unwrap();
    assert!(now - last < 120.0 && last <= now + 1.0, "{last} vs {now}");
    assert!(sluice.stop().success());
}
