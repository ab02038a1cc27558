//! A short run of every scenario: the harness starts its Postgres and
//! sluice, puts the load on, and writes its report with every change
//! delivered.

use std::process::Command;

#[test]
fn every_scenario_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let runs = [
        ("steady", "bulk"),
        ("updates", "bulk"),
        ("mixed", "bulk"),
        ("steady", "embedded"),
    ];
    for (scenario, sink) in runs {
        let out = dir.path().join(sink);
        let result = Command::new(env!("CARGO_BIN_EXE_sluice-loadtest"))
            .args([scenario, "--sink", sink, "--rate", "300", "--duration", "2"])
            .args([
                "--keys",
                "500",
                "--rows-per-txn",
                "3",
                "--drain-timeout",
                "30",
            ])
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
        assert!(
            report["latency_ms"]["p50"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
}
