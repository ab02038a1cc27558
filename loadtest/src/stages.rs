//! Where a change's time goes inside sluice, read at the end of a run from
//! sluice's own metrics (the run's latency is the harness's own, never
//! these): for each stage, how long ago the oldest change of each batch
//! leaving it had committed, by the commit timestamp Postgres gives it; for
//! each sink, the same when the engine acknowledged the commit that held it.
//! One stage's figure less the one before it is the time spent there.
//!
//! The figures come from histogram buckets, interpolated within a bucket,
//! and run on the database server's clock: on another machine, its offset
//! from this one is in them.

use std::collections::BTreeMap;

use serde::Serialize;

/// The age of changes as they leave one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageAge {
    /// `decoder`, `router`, `shard`, or `sink <name>` (acknowledged).
    pub stage: String,
    pub batches: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The stages in the order a change passes them.
const ORDER: [&str; 3] = ["decoder", "router", "shard"];

/// Reads the stages' ages from sluice's metrics at `address`.
pub async fn read(address: &str) -> anyhow::Result<Vec<StageAge>> {
    let text = reqwest::get(format!("http://{address}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(parse(&text))
}

/// The stages' ages in a Prometheus text exposition.
pub fn parse(text: &str) -> Vec<StageAge> {
    // Per stage: (upper bound, cumulative count) of each bucket.
    let mut buckets: BTreeMap<(u8, String), Vec<(f64, u64)>> = BTreeMap::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => continue,
        };
        let labels: BTreeMap<&str, &str> = labels
            .split(',')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        let stage = match name {
            "sluice_change_age_seconds_bucket" => {
                let Some(at) = ORDER.iter().position(|s| Some(s) == labels.get("stage")) else {
                    continue;
                };
                (at as u8, ORDER[at].to_owned())
            }
            "sluice_end_to_end_latency_seconds_bucket" => (
                ORDER.len() as u8,
                format!("sink {}", labels.get("sink").unwrap_or(&"?")),
            ),
            _ => continue,
        };
        let bound = match labels.get("le") {
            Some(&"+Inf") => f64::INFINITY,
            Some(le) => match le.parse() {
                Ok(bound) => bound,
                Err(_) => continue,
            },
            None => continue,
        };
        buckets
            .entry(stage)
            .or_default()
            .push((bound, count as u64));
    }
    buckets
        .into_iter()
        .filter_map(|((_, stage), mut buckets)| {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let total = buckets.last()?.1;
            (total > 0).then(|| StageAge {
                stage,
                batches: total,
                p50_ms: quantile(&buckets, 0.5) * 1000.0,
                p99_ms: quantile(&buckets, 0.99) * 1000.0,
            })
        })
        .collect()
}

/// The `q` quantile of cumulative `buckets`, interpolated within its bucket
/// (the last finite bound for the open one).
fn quantile(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0, |b| b.1);
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            if bound.is_infinite() {
                return lower;
            }
            let inside = (count - below).max(1) as f64;
            return lower + (bound - lower) * ((rank - below as f64) / inside).clamp(0.0, 1.0);
        }
        (lower, below) = (bound, count);
    }
    lower
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stages_come_in_order_with_interpolated_percentiles() {
        let text = r#"# TYPE sluice_change_age_seconds histogram
sluice_change_age_seconds_bucket{stage="shard",le="0.001"} 0
sluice_change_age_seconds_bucket{stage="shard",le="0.002"} 100
sluice_change_age_seconds_bucket{stage="shard",le="+Inf"} 100
sluice_change_age_seconds_bucket{stage="decoder",le="0.001"} 100
sluice_change_age_seconds_bucket{stage="decoder",le="+Inf"} 100
sluice_change_age_seconds_bucket{stage="filter",le="+Inf"} 100
sluice_end_to_end_latency_seconds_bucket{sink="bulk",le="0.001"} 0
sluice_end_to_end_latency_seconds_bucket{sink="bulk",le="+Inf"} 4
sluice_end_to_end_latency_seconds_count{sink="bulk"} 4
"#;
        let stages = parse(text);
        let names: Vec<&str> = stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(names, ["decoder", "shard", "sink bulk"]);
        assert!((stages[0].p50_ms - 0.5).abs() < 1e-9, "{stages:?}");
        assert!((stages[1].p50_ms - 1.5).abs() < 1e-9, "{stages:?}");
        assert!((stages[1].p99_ms - 1.99).abs() < 1e-9, "{stages:?}");
        // Beyond the last bound: that bound.
        assert_eq!(stages[2].p50_ms, 1.0);
        assert_eq!(stages[2].batches, 4);
    }
}
