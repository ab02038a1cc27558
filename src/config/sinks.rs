//! `[[sinks]]`: where documents are written.

use std::collections::HashSet;

use super::{is_pg_name, Config};
use crate::model::problem::ConfigProblem;
use crate::sink::settings::{SinkConfig, SinkKind, DEFAULT_COMMIT_INTERVAL_MS};

/// One embedded index, when the file names no sink.
pub(super) fn default_sinks() -> Vec<SinkConfig> {
    vec![SinkConfig {
        name: "embedded".into(),
        kind: SinkKind::Embedded {
            commit_interval_ms: DEFAULT_COMMIT_INTERVAL_MS,
            max_document_bytes: crate::sink::http::DEFAULT_MAX_DOCUMENT_BYTES,
        },
    }]
}

impl Config {
    pub(super) fn validate_sinks(&self, problems: &mut Vec<ConfigProblem>) {
        let mut problem =
            |field: String, message: String| problems.push(ConfigProblem { field, message });
        if self.sinks.is_empty() {
            problem("sinks".into(), "at least one sink is required".into());
        }
        let mut names = HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            if !is_pg_name(&sink.name) && !sink.name.contains('-') {
                problem(
                    format!("sinks[{i}].name"),
                    format!(
                        "`{}` must be lowercase letters, digits, `_` or `-`",
                        sink.name
                    ),
                );
            }
            if !names.insert(&sink.name) {
                problem(
                    format!("sinks[{i}].name"),
                    format!("sink `{}` is defined twice", sink.name),
                );
            }
            let path = format!("sinks[{i}]");
            let mut found = Vec::new();
            match &sink.kind {
                SinkKind::Embedded {
                    commit_interval_ms,
                    max_document_bytes,
                } => {
                    if *commit_interval_ms == 0 {
                        problem(
                            format!("{path}.commit_interval_ms"),
                            "must be at least 1".into(),
                        );
                    }
                    if *max_document_bytes < 1024 {
                        problem(
                            format!("{path}.max_document_bytes"),
                            "must be at least 1024".into(),
                        );
                    }
                }
                SinkKind::Elasticsearch(es) => es.validate(&path, &mut found),
                SinkKind::Typesense(ts) => ts.validate(&path, &mut found),
                SinkKind::Meilisearch(ms) => ms.validate(&path, &mut found),
                SinkKind::Turbopuffer(tp) => tp.validate(&path, &mut found),
                _ => {}
            }
            for p in found {
                problem(p.field, p.message);
            }
        }
    }
}
