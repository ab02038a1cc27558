//! The series sluice exports to Prometheus, in one catalogue: each one's
//! name, type, labels, unit and help text. At start every series is
//! described (`# HELP`) and set to zero for every configured sink, table,
//! stage and function, so that a dashboard and an alert see it before its
//! first event (`rate()` of a counter that appears late misses its first
//! increase; an absent series cannot alert). METRICS.md lists the same
//! catalogue for people; a test keeps the two equal to what `/metrics`
//! serves.
//!
//! Plain data and the exporter only: it imports nothing of the pipeline.

/// A Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// As Prometheus's `# TYPE` line names it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Where a label's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// The configured sinks' names.
    Sinks,
    /// The configured tables, as `schema.table`.
    Tables,
    /// The pipeline's stages.
    Stages,
    /// The configured functions' names.
    Functions,
    /// A fixed set.
    Fixed(&'static [&'static str]),
}

/// One exported series.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [(&'static str, Values)],
    /// What one unit is: `seconds`, `bytes`, `changes`…
    pub unit: &'static str,
    pub help: &'static str,
}

/// The pipeline's stages, in stage order.
pub const STAGES: &[&str] = &[
    "reader",
    "decoder",
    "filter",
    "transformer",
    "router",
    "shard",
    "writer",
];

/// The outcomes of a request to an engine, as `sluice_sink_requests_total`
/// counts them: the class of the HTTP status, rate limits apart, and
/// `error` for a request that got no answer (refused, reset, timed out).
pub const REQUEST_STATUSES: &[&str] = &["2xx", "3xx", "4xx", "429", "5xx", "error"];

/// The status label of a request that got `status` (`None`: no answer).
pub fn request_status(status: Option<u16>) -> &'static str {
    match status {
        None => "error",
        Some(429) => "429",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "error",
    }
}

/// Why the pipeline restarted: the kinds of errors a restart may fix, and
/// `other` (a stage that stopped without a typed error).
pub const RESTART_CAUSES: &[&str] = &["connection", "protocol", "sink", "io", "other"];

/// The states of a backfill, as `sluice_backfills` labels them.
pub const BACKFILL_STATES: &[&str] = &["running", "paused", "completed", "cancelled", "failed"];

/// The operations `sluice_changes_total` counts, in `Op` order.
pub const CHANGE_OPS: [&str; 4] = ["insert", "update", "delete", "truncate"];

use Values::{Fixed, Functions, Sinks, Stages, Tables};

/// Every series sluice exports.
pub const SERIES: &[Series] = &[
    Series {
        name: "sluice_pipeline_up",
        kind: Kind::Gauge,
        labels: &[],
        unit: "boolean",
        help: "1 while the pipeline streams, 0 while it starts, restarts or has stopped.",
    },
    Series {
        name: "sluice_pipeline_restarts_total",
        kind: Kind::Counter,
        labels: &[("cause", Fixed(RESTART_CAUSES))],
        unit: "restarts",
        help: "Pipeline restarts after a failure, by its kind (connection lost, protocol, sink, I/O; other: a stage that stopped without a typed error).",
    },
    Series {
        name: "sluice_wal_bytes_total",
        kind: Kind::Counter,
        labels: &[],
        unit: "bytes",
        help: "Bytes of WAL data read from the replication stream.",
    },
    Series {
        name: "sluice_confirmed_lsn",
        kind: Kind::Gauge,
        labels: &[],
        unit: "bytes",
        help: "The position confirmed to the replication slot (every change below it is in every sink), as a number.",
    },
    Series {
        name: "sluice_replication_lag_bytes",
        kind: Kind::Gauge,
        labels: &[],
        unit: "bytes",
        help: "WAL the server has written that is not yet in every sink: the server's end of WAL, as the replication stream last said, minus the confirmed position.",
    },
    Series {
        name: "sluice_replication_lag_seconds",
        kind: Kind::Gauge,
        labels: &[],
        unit: "seconds",
        help: "Age of the oldest change read and not yet in every sink (0 when caught up).",
    },
    Series {
        name: "sluice_sink_lag_seconds",
        kind: Kind::Gauge,
        labels: &[("sink", Sinks)],
        unit: "seconds",
        help: "Age of the oldest change read and not yet in the sink (0 when caught up).",
    },
    Series {
        name: "sluice_slot_retained_wal_bytes",
        kind: Kind::Gauge,
        labels: &[],
        unit: "bytes",
        help: "WAL the replication slot holds on the primary (measured every 10 s); it cannot be recycled until sluice confirms it.",
    },
    Series {
        name: "sluice_last_change_timestamp_seconds",
        kind: Kind::Gauge,
        labels: &[],
        unit: "seconds",
        help: "Commit time (Unix seconds) of the newest change read; 0 before the first.",
    },
    Series {
        name: "sluice_bytes_in_flight",
        kind: Kind::Gauge,
        labels: &[],
        unit: "bytes",
        help: "Bytes of changes read and not yet committed by every sink (bounded by pipeline.max_bytes_in_flight).",
    },
    Series {
        name: "sluice_changes_total",
        kind: Kind::Counter,
        labels: &[("table", Tables), ("op", Fixed(&CHANGE_OPS))],
        unit: "changes",
        help: "Changes read from the replication stream, by table and operation.",
    },
    Series {
        name: "sluice_stage_changes_total",
        kind: Kind::Counter,
        labels: &[("stage", Stages), ("direction", Fixed(&["in", "out"]))],
        unit: "changes",
        help: "Changes into and out of each pipeline stage.",
    },
    Series {
        name: "sluice_stage_dropped_total",
        kind: Kind::Counter,
        labels: &[("stage", Stages)],
        unit: "changes",
        help: "Changes a stage left out on purpose (filtered rows and operations).",
    },
    Series {
        name: "sluice_stage_errors_total",
        kind: Kind::Counter,
        labels: &[("stage", Stages)],
        unit: "changes",
        help: "Bad records a stage counted and skipped or parked.",
    },
    Series {
        name: "sluice_backpressure_microseconds_total",
        kind: Kind::Counter,
        labels: &[("stage", Stages)],
        unit: "microseconds",
        help: "Time each stage waited on the next one or on flow control.",
    },
    Series {
        name: "sluice_change_age_seconds",
        kind: Kind::Histogram,
        labels: &[("stage", Stages)],
        unit: "seconds",
        help: "Time from a change's commit to its batch leaving a stage.",
    },
    Series {
        name: "sluice_end_to_end_latency_seconds",
        kind: Kind::Histogram,
        labels: &[("sink", Sinks)],
        unit: "seconds",
        help: "Time from a change's commit in Postgres to the engine's acknowledgement of the write that holds it.",
    },
    Series {
        name: "sluice_sink_write_seconds",
        kind: Kind::Histogram,
        labels: &[("sink", Sinks)],
        unit: "seconds",
        help: "Time a sink took to take a batch of writes (buffering, and requests it had to wait for).",
    },
    Series {
        name: "sluice_sink_commit_seconds",
        kind: Kind::Histogram,
        labels: &[("sink", Sinks)],
        unit: "seconds",
        help: "Time a sink took to make its pending writes durable.",
    },
    Series {
        name: "sluice_sink_committed_lsn",
        kind: Kind::Gauge,
        labels: &[("sink", Sinks)],
        unit: "bytes",
        help: "The position below which every change is durable in the sink, as a number.",
    },
    Series {
        name: "sluice_sink_writes_total",
        kind: Kind::Counter,
        labels: &[("sink", Sinks)],
        unit: "writes",
        help: "Writes (upserts, deletes, truncates) handed to the sink.",
    },
    Series {
        name: "sluice_sink_requests_total",
        kind: Kind::Counter,
        labels: &[("sink", Sinks), ("status", Fixed(REQUEST_STATUSES))],
        unit: "requests",
        help: "Requests to the engine by the class of its answer (429 apart; error: no answer).",
    },
    Series {
        name: "sluice_sink_retries_total",
        kind: Kind::Counter,
        labels: &[("sink", Sinks)],
        unit: "retries",
        help: "Requests or writes sent again after a failure a retry may fix.",
    },
    Series {
        name: "sluice_sink_available",
        kind: Kind::Gauge,
        labels: &[("sink", Sinks)],
        unit: "boolean",
        help: "0 while the engine is down or refuses (waited out), 1 otherwise.",
    },
    Series {
        name: "sluice_sink_failed_messages_total",
        kind: Kind::Counter,
        labels: &[("sink", Sinks)],
        unit: "writes",
        help: "Writes parked in the failed-message store (refused for good, or out of retries).",
    },
    Series {
        name: "sluice_sink_parked_messages",
        kind: Kind::Gauge,
        labels: &[("sink", Sinks)],
        unit: "writes",
        help: "Writes parked in the failed-message store now.",
    },
    Series {
        name: "sluice_sink_paused",
        kind: Kind::Gauge,
        labels: &[("sink", Sinks)],
        unit: "boolean",
        help: "1 while the sink waits because too many of its writes are parked (sink max_parked).",
    },
    Series {
        name: "sluice_sink_spills_total",
        kind: Kind::Counter,
        labels: &[("sink", Sinks)],
        unit: "spills",
        help: "Times a sink fell behind and its writes went to its spool on disk, so the others went on.",
    },
    Series {
        name: "sluice_sink_spooled_bytes",
        kind: Kind::Gauge,
        labels: &[("sink", Sinks)],
        unit: "bytes",
        help: "Bytes of writes waiting in the sink's spool.",
    },
    Series {
        name: "sluice_backfills",
        kind: Kind::Gauge,
        labels: &[("state", Fixed(BACKFILL_STATES))],
        unit: "backfills",
        help: "Backfills by state (those kept in the data directory: running, paused, and the finished ones).",
    },
    Series {
        name: "sluice_backfill_rows_total",
        kind: Kind::Counter,
        labels: &[("sink", Sinks), ("table", Tables)],
        unit: "rows",
        help: "Rows backfills read into the sink.",
    },
    Series {
        name: "sluice_function_failures_total",
        kind: Kind::Counter,
        labels: &[("function", Functions)],
        unit: "calls",
        help: "Calls of a function that failed (raised, wrong shape, out of time or memory); the change is parked.",
    },
];

/// The label values a run knows at start.
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub sinks: Vec<String>,
    pub tables: Vec<String>,
    pub functions: Vec<String>,
}

impl Known {
    fn values(&self, values: Values) -> Vec<&str> {
        match values {
            Sinks => self.sinks.iter().map(String::as_str).collect(),
            Tables => self.tables.iter().map(String::as_str).collect(),
            Functions => self.functions.iter().map(String::as_str).collect(),
            Stages => STAGES.to_vec(),
            Fixed(values) => values.to_vec(),
        }
    }

    /// Every combination of label values of `series`.
    fn label_sets(&self, series: &Series) -> Vec<Vec<metrics::Label>> {
        let mut sets: Vec<Vec<metrics::Label>> = vec![Vec::new()];
        for &(label, values) in series.labels {
            let values = self.values(values);
            sets = sets
                .iter()
                .flat_map(|set| {
                    values.iter().map(move |value| {
                        let mut set = set.clone();
                        set.push(metrics::Label::new(label, value.to_string()));
                        set
                    })
                })
                .collect();
        }
        sets
    }
}

/// Describes every series to the installed recorder (its `# HELP` line)
/// and registers each of its label sets at zero.
pub fn register(known: &Known) {
    for series in SERIES {
        let help = series.help;
        match series.kind {
            Kind::Counter => metrics::describe_counter!(series.name, help),
            Kind::Gauge => metrics::describe_gauge!(series.name, help),
            Kind::Histogram => metrics::describe_histogram!(series.name, help),
        }
        for labels in known.label_sets(series) {
            match series.kind {
                Kind::Counter => metrics::counter!(series.name, labels).increment(0),
                Kind::Gauge => metrics::gauge!(series.name, labels).increment(0.0),
                Kind::Histogram => {
                    let _registered = metrics::histogram!(series.name, labels);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_follow_prometheus_conventions() {
        let mut names: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SERIES.len(), "a name is listed twice");
        for s in SERIES {
            assert!(s.name.starts_with("sluice_"), "{}", s.name);
            assert_eq!(
                s.kind == Kind::Counter,
                s.name.ends_with("_total"),
                "{}: counters, and only they, end in _total",
                s.name
            );
            if s.kind == Kind::Histogram {
                assert!(
                    s.name.ends_with("_seconds"),
                    "{}: histogram buckets are set for _seconds",
                    s.name
                );
            }
            assert!(!s.help.is_empty() && s.help.ends_with('.'), "{}", s.name);
        }
    }

    #[test]
    fn every_combination_of_known_values_is_registered() {
        let known = Known {
            sinks: vec!["a".into(), "b".into()],
            tables: vec!["public.t".into()],
            functions: vec![],
        };
        let requests = SERIES
            .iter()
            .find(|s| s.name == "sluice_sink_requests_total")
            .unwrap();
        assert_eq!(known.label_sets(requests).len(), 2 * REQUEST_STATUSES.len());
        let failures = SERIES
            .iter()
            .find(|s| s.name == "sluice_function_failures_total")
            .unwrap();
        assert!(
            known.label_sets(failures).is_empty(),
            "no function, no series"
        );
        let up = SERIES
            .iter()
            .find(|s| s.name == "sluice_pipeline_up")
            .unwrap();
        assert_eq!(known.label_sets(up), vec![Vec::new()]);
    }

    #[test]
    fn request_statuses_are_classes() {
        assert_eq!(request_status(Some(201)), "2xx");
        assert_eq!(request_status(Some(429)), "429");
        assert_eq!(request_status(Some(404)), "4xx");
        assert_eq!(request_status(Some(503)), "5xx");
        assert_eq!(request_status(None), "error");
        for status in [None, Some(100), Some(302), Some(999)] {
            assert!(REQUEST_STATUSES.contains(&request_status(status)));
        }
    }
}
