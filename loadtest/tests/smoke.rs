//! A short run of every scenario: the harness starts its Postgres and
//! sluice, puts the load on, and writes its report with every change
//! delivered.

#[path = "../../tests/fakes/mod.rs"]
mod fakes;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// Runs `scenario` into `sink` for two seconds at 300 changes/s; its report.
fn run(out: &Path, scenario: &str, sink: &str, extra: &[&str]) -> Value {
    let out = out.join(format!("{scenario}-{sink}"));
    let result = Command::new(env!("CARGO_BIN_EXE_sluice-loadtest"))
        .args([scenario, "--sink", sink, "--rate", "300", "--duration", "2"])
        .args(["--keys", "500", "--drain-timeout", "30"])
        .args(extra)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "{scenario} into {sink}: {}\n{stdout}\n{stderr}",
        result.status
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join(format!("{scenario}.json"))).unwrap())
            .unwrap();
    assert!(
        report["latency_ms"]["count"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["not_arrived"], 0, "{scenario} into {sink}: {stdout}");
    match scenario {
        "backlog" => assert!(report["drain"]["ratio"].as_f64().unwrap() > 0.0, "{report}"),
        // The rows loaded before, and those inserted before the backfill
        // read their part of the table.
        "backfill" => assert!(
            report["backfill"]["rows"].as_u64().unwrap() >= 500,
            "{report}"
        ),
        _ => {}
    }
    if report["seconds"].as_array().unwrap().len() > 1 {
        let chart = std::fs::read_to_string(out.join(format!("{scenario}.svg"))).unwrap();
        assert!(chart.starts_with("<svg"), "{scenario}: {chart:.100}");
    }
    report
}

#[test]
fn every_scenario_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let runs: [(&str, &str, &[&str]); 8] = [
        ("steady", "bulk", &["--rows-per-txn", "3"]),
        ("updates", "bulk", &["--rows-per-txn", "3"]),
        ("mixed", "bulk", &["--rows-per-txn", "3", "--tables", "2"]),
        ("toast", "bulk", &["--row-bytes", "4000"]),
        ("huge", "bulk", &["--rows-per-txn", "5000"]),
        ("backlog", "bulk", &["--rows-per-txn", "10"]),
        ("backfill", "bulk", &["--rows-per-txn", "3"]),
        (
            "steady",
            "embedded",
            &[
                "--rows-per-txn",
                "3",
                "--sink-option",
                "commit_interval_ms=50",
            ],
        ),
    ];
    for (scenario, sink, extra) in runs {
        run(dir.path(), scenario, sink, extra);
    }
}

/// Into engines found by a search by id: the fakes of tests/fakes, as a
/// user's real ones would be.
#[tokio::test(flavor = "multi_thread")]
async fn runs_into_an_engine_are_measured_by_searches() {
    let dir = tempfile::tempdir().unwrap();
    let es = fakes::elasticsearch::FakeElasticsearch::start(Default::default()).await;
    let url = es.url();
    let out = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let extra = ["--engine-url", &url, "--rows-per-txn", "3", "--tables", "2"];
        run(&out, "updates", "elasticsearch", &extra);
    })
    .await
    .unwrap();
    assert!(es.indexes().is_empty(), "left behind: {:?}", es.indexes());

    let ts = fakes::typesense::FakeTypesense::start(Default::default()).await;
    let url = ts.url();
    let out = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        run(
            &out,
            "steady",
            "typesense",
            &["--engine-url", &url, "--rows-per-txn", "3"],
        );
    })
    .await
    .unwrap();
    assert!(
        ts.collections().is_empty(),
        "left behind: {:?}",
        ts.collections()
    );

    // Meilisearch charges per batch of tasks: the direct load of 20,000
    // documents a task pays once for the 500 rows, sluice's backfill about
    // as few times.
    let meili = fakes::meilisearch::FakeMeilisearch::start(fakes::meilisearch::FakeOptions {
        processing_delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let url = meili.url();
    let out = dir.path().to_owned();
    let report = tokio::task::spawn_blocking(move || {
        run(&out, "backfill", "meilisearch", &["--engine-url", &url])
    })
    .await
    .unwrap();
    let direct = &report["direct_load"];
    println!("direct load beside sluice's backfill: {direct}");
    assert!(direct["documents"].as_u64().unwrap() >= 500, "{report}");
    assert!(direct["ratio"].as_f64().unwrap() > 0.0, "{report}");
}
