//! A short run of every scenario: the harness starts its Postgres and
//! sluice, puts the load on, and writes its report with every change
//! delivered.

use std::process::Command;

#[test]
fn every_scenario_runs_and_reports() {
    let out = tempfile::tempdir().unwrap();
    for scenario in ["steady", "updates", "mixed"] {
        let result = Command::new(env!("CARGO_BIN_EXE_sluice-loadtest"))
            .args([
                scenario,
                "--rate",
                "300",
                "--duration",
                "2",
                "--keys",
                "500",
            ])
            .args(["--rows-per-txn", "3", "--drain-timeout", "30", "--out"])
            .arg(out.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&result.stdout);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(
            result.status.success(),
            "{scenario}: {}\n{stdout}\n{stderr}",
            result.status
        );
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.path().join(format!("{scenario}.json"))).unwrap(),
        )
        .unwrap();
        assert!(
            report["latency_ms"]["count"].as_u64().unwrap() > 0,
            "{report}"
        );
        assert_eq!(report["not_arrived"], 0, "{scenario}: {stdout}");
        assert!(
            report["latency_ms"]["p50"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
}
