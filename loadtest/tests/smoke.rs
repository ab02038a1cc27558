//! A short run of every scenario: the harness starts its Postgres and
//! sluice, puts the load on, and writes its report with every change
//! delivered.

use std::process::Command;

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
        ("steady", "embedded", &["--rows-per-txn", "3"]),
    ];
    for (scenario, sink, extra) in runs {
        let out = dir.path().join(format!("{scenario}-{sink}"));
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
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{scenario}.json"))).unwrap())
                .unwrap();
        assert!(
            report["latency_ms"]["count"].as_u64().unwrap() > 0,
            "{report}"
        );
        assert_eq!(report["not_arrived"], 0, "{scenario} into {sink}: {stdout}");
        match scenario {
            "backlog" => assert!(report["drain"]["ratio"].as_f64().unwrap() > 0.0, "{report}"),
            "backfill" => assert_eq!(report["backfill"]["rows"], 500, "{report}"),
            _ => {}
        }
        if report["seconds"].as_array().unwrap().len() > 1 {
            let chart = std::fs::read_to_string(out.join(format!("{scenario}.svg"))).unwrap();
            assert!(chart.starts_with("<svg"), "{scenario}: {chart:.100}");
        }
    }
}
