//! Reading the TOML: every section (and every table and sink) is read on its
//! own, so one run reports every problem of the file, each under its setting's
//! path and in the file's words (`pipeline.shards: expected a whole number,
//! got "four"`), not the parser's type names.

use serde::de::DeserializeOwned;

use super::{default_sinks, Config, ConfigProblem, SinkConfig};
use crate::sink::settings::RawSink;

/// The top-level sections a configuration may have.
const SECTIONS: [&str; 7] = [
    "source",
    "pipeline",
    "tables",
    "sinks",
    "backfill",
    "api",
    "functions",
];

/// Parses `text` (TOML) into a configuration, or lists every problem found.
/// A syntax error is reported alone, with its line, as the parser gives it.
pub(super) fn parse(text: &str) -> Result<Config, Result<Vec<ConfigProblem>, String>> {
    let mut file: toml::Table = toml::from_str(text).map_err(|e| Err(e.to_string()))?;
    let mut problems = Vec::new();
    for key in file.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            problems.push(ConfigProblem {
                field: key.clone(),
                message: format!("unknown section (sections: {})", SECTIONS.join(", ")),
            });
        }
    }
    let source = match file.remove("source") {
        Some(value) => section("source", value, &mut problems),
        None => {
            problems.push(ConfigProblem {
                field: "source".into(),
                message: "missing: the [source] section says which database to read".into(),
            });
            None
        }
    };
    let tables = match file.remove("tables") {
        Some(value) => list("tables", value, &mut problems, section),
        None => {
            problems.push(ConfigProblem {
                field: "tables".into(),
                message: "missing: list the tables to stream with [[tables]]".into(),
            });
            None
        }
    };
    let sinks = match file.remove("sinks") {
        Some(value) => list("sinks", value, &mut problems, sink),
        None => Some(default_sinks()),
    };
    let pipeline = optional("pipeline", &mut file, &mut problems);
    let backfill = optional("backfill", &mut file, &mut problems);
    let api = optional("api", &mut file, &mut problems);
    let functions = optional("functions", &mut file, &mut problems);
    match (source, tables, sinks, pipeline, backfill, api, functions) {
        (
            Some(source),
            Some(tables),
            Some(sinks),
            Some(pipeline),
            Some(backfill),
            Some(api),
            Some(functions),
        ) if problems.is_empty() => Ok(Config {
            source,
            pipeline,
            tables,
            sinks,
            backfill,
            api,
            functions,
            base_dir: Default::default(),
        }),
        _ => Err(Ok(problems)),
    }
}

/// A section that may be left out (its defaults then).
fn optional<T: DeserializeOwned + Default>(
    name: &str,
    file: &mut toml::Table,
    problems: &mut Vec<ConfigProblem>,
) -> Option<T> {
    match file.remove(name) {
        Some(value) => section(name, value, problems),
        None => Some(T::default()),
    }
}

/// A list of tables (`[[tables]]`), each element read on its own by `read`.
fn list<T>(
    name: &str,
    value: toml::Value,
    problems: &mut Vec<ConfigProblem>,
    read: fn(&str, toml::Value, &mut Vec<ConfigProblem>) -> Option<T>,
) -> Option<Vec<T>> {
    let toml::Value::Array(items) = value else {
        problems.push(ConfigProblem {
            field: name.into(),
            message: format!(
                "expected a list of tables ([[{name}]]), got {}",
                describe(&value)
            ),
        });
        return None;
    };
    let read: Vec<Option<T>> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| read(&format!("{name}[{i}]"), item, problems))
        .collect();
    read.into_iter().collect()
}

/// The sink types, as `type` names them.
const SINK_TYPES: [&str; 7] = [
    "embedded",
    "null",
    "elasticsearch",
    "opensearch",
    "typesense",
    "meilisearch",
    "turbopuffer",
];

/// One `[[sinks]]`: its `type` chooses the settings the rest is read as.
fn sink(at: &str, value: toml::Value, problems: &mut Vec<ConfigProblem>) -> Option<SinkConfig> {
    let mut problem = |field: String, message: String| {
        problems.push(ConfigProblem { field, message });
        None
    };
    let toml::Value::Table(mut table) = value else {
        return problem(
            at.into(),
            format!("expected a table of settings, got {}", describe(&value)),
        );
    };
    let kind = match table.remove("type") {
        Some(toml::Value::String(kind)) => kind,
        Some(other) => {
            return problem(
                format!("{at}.type"),
                format!("expected a string, got {}", describe(&other)),
            )
        }
        None => {
            return problem(
                format!("{at}.type"),
                format!("missing: say which engine ({})", SINK_TYPES.join(", ")),
            )
        }
    };
    let rest = toml::Value::Table(table);
    let raw = match kind.as_str() {
        "embedded" => section(at, rest, problems).map(RawSink::Embedded),
        "null" => section(at, rest, problems).map(RawSink::Null),
        "elasticsearch" | "opensearch" => section(at, rest, problems).map(RawSink::Elasticsearch),
        "typesense" => section(at, rest, problems).map(RawSink::Typesense),
        "meilisearch" => section(at, rest, problems).map(RawSink::Meilisearch),
        "turbopuffer" => section(at, rest, problems).map(RawSink::Turbopuffer),
        other => {
            return problem(
                format!("{at}.type"),
                format!("\"{other}\" is not one of {}", SINK_TYPES.join(", ")),
            )
        }
    };
    raw.map(SinkConfig::from)
}

/// Most problems reported for one section.
const MAX_PROBLEMS: usize = 20;

/// Reads one section; a problem names the setting's full path. The parser
/// stops at the first problem, so the setting it names is taken out and the
/// section read again, until nothing is left to report.
fn section<T: DeserializeOwned>(
    at: &str,
    mut value: toml::Value,
    problems: &mut Vec<ConfigProblem>,
) -> Option<T> {
    let before = problems.len();
    let mut taken = Vec::new();
    for _ in 0..MAX_PROBLEMS {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(read) if problems.len() == before => return Some(read),
            Ok(_) => return None,
            Err(e) => e,
        };
        let inner = e.path().to_string();
        let segments: Vec<serde_path_to_error::Segment> = e.path().iter().cloned().collect();
        let message = e.into_inner().message().to_owned();
        let (field, message) = plain(at, &inner, &message);
        if taken.contains(&field) {
            // Missing now because it was taken out: already reported.
            return None;
        }
        problems.push(ConfigProblem {
            field: field.clone(),
            message,
        });
        if !take_out(&mut value, &segments) {
            return None;
        }
        taken.push(field);
    }
    None
}

/// Removes the setting at `path` from `value`; false when there is none
/// (a missing setting, or a path the value does not have).
fn take_out(value: &mut toml::Value, path: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = value;
    for segment in parents {
        let next = match (segment, at) {
            (Segment::Map { key }, toml::Value::Table(table)) => table.get_mut(key),
            (Segment::Seq { index }, toml::Value::Array(items)) => items.get_mut(*index),
            _ => None,
        };
        match next {
            Some(next) => at = next,
            None => return false,
        }
    }
    match (last, at) {
        (Segment::Map { key }, toml::Value::Table(table)) => table.remove(key).is_some(),
        (Segment::Seq { index }, toml::Value::Array(items)) if *index < items.len() => {
            items.remove(*index);
            true
        }
        _ => false,
    }
}

/// The setting's path and the parser's message in the file's words.
fn plain(at: &str, inner: &str, message: &str) -> (String, String) {
    let path = |tail: &str| {
        let mut path = at.to_owned();
        for part in [inner, tail] {
            if part.is_empty() || part == "." {
                continue;
            }
            if !part.starts_with('[') {
                path.push('.');
            }
            path.push_str(part);
        }
        path
    };
    if let Some(rest) = message.strip_prefix("missing field ") {
        return (
            path(&unquote(rest)),
            "missing: this setting is required".into(),
        );
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (_, known) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let known = known.trim_start_matches("one of ").replace('`', "");
        let message = if known.is_empty() {
            "unknown setting".to_owned()
        } else {
            format!("unknown setting (settings here: {known})")
        };
        return (path(""), message);
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let (name, known) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let known = known.trim_start_matches("one of ").replace('`', "\"");
        return (
            path(""),
            format!("\"{}\" is not one of {known}", unquote(name)),
        );
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (got, expected) = rest.split_once(", expected ").unwrap_or((rest, "?"));
            return (
                path(""),
                format!(
                    "expected {}, got {}",
                    expected_words(expected),
                    got_words(got)
                ),
            );
        }
    }
    (path(""), message.to_owned())
}

fn unquote(text: &str) -> String {
    text.trim().trim_matches('`').to_owned()
}

/// What serde expected, as the file would say it.
fn expected_words(expected: &str) -> String {
    let expected = expected.trim();
    match expected {
        "usize" | "u8" | "u16" | "u32" | "u64" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list such as [\"a\", \"b\"]".into(),
        "a map" => "a table such as { key = \"value\" }".into(),
        e if e.starts_with("struct ") => "a table of settings".into(),
        e if e.starts_with("a string") || e.starts_with("string") => "a string".into(),
        e => e.to_owned(),
    }
}

/// What the file held, as it would write it.
fn got_words(got: &str) -> String {
    let got = got.trim();
    for prefix in ["string ", "integer ", "floating point ", "boolean "] {
        if let Some(value) = got.strip_prefix(prefix) {
            return value.trim_matches('`').to_owned();
        }
    }
    match got {
        "sequence" => "a list".into(),
        "map" => "a table".into(),
        other => other.to_owned(),
    }
}

fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Table(_) => "a table".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => Vec::new(),
            Err(Ok(problems)) => problems.iter().map(|p| p.to_string()).collect(),
            Err(Err(syntax)) => vec![syntax],
        }
    }

    #[test]
    fn every_problem_of_the_file_is_named_in_its_words() {
        let found = problems(
            r#"
            [source]
            database_url = "postgres://localhost/app"
            slott = "x"
            [pipeline]
            shards = "four"
            max_bytes_in_flight = -1
            [[tables]]
            name = "items"
            operations = ["insert", "upsert"]
            [[tables]]
            name = "other"
            transform = { drop = "secret" }
            [[tables]]
            index = "x"
            [api]
            enabled = "yes"
            [extra]
            "#,
        );
        let expected = [
            "extra: unknown section",
            "source.slott: unknown setting (settings here: database_url,",
            "tables[0].operations[1]: \"upsert\" is not one of \"insert\", \"update\", \"delete\", \"truncate\"",
            "tables[1].transform.drop: expected a list such as [\"a\", \"b\"], got \"secret\"",
            "tables[2].name: missing: this setting is required",
            "pipeline.max_bytes_in_flight: expected a whole number (0 or more), got -1",
            "pipeline.shards: expected a whole number (0 or more), got \"four\"",
            "api.enabled: expected true or false, got \"yes\"",
        ];
        for want in expected {
            assert!(
                found.iter().any(|f| f.starts_with(want)),
                "{want}\nin {found:#?}"
            );
        }
    }

    #[test]
    fn a_sink_is_read_as_its_type_says() {
        let head = "[source]\ndatabase_url = 'x'\n[[tables]]\nname = 'a'\n";
        let found = problems(&format!(
            "{head}[[sinks]]\nname = 's'\ntype = 'elasticsearch'\nurl = 5\n\
             [[sinks]]\nname = 't'\ntype = 'elastic'\n\
             [[sinks]]\nname = 'u'\ntype = 'typesense'\nurl = 'http://x'\nbatch_max_docs = 'x'\nbogus = 1\n\
             [[sinks]]\nname = 'v'\n"
        ));
        assert_eq!(
            found,
            [
                "sinks[0].url: expected a string, got 5",
                "sinks[1].type: \"elastic\" is not one of embedded, null, elasticsearch, opensearch, typesense, meilisearch, turbopuffer",
                "sinks[2].batch_max_docs: expected a whole number (0 or more), got \"x\"",
                "sinks[2].bogus: unknown setting (settings here: name, url, api_key_env, batch_max_docs, batch_max_bytes, delete_max_filter_bytes, flush_interval_ms, request_timeout_ms, concurrency, max_retries, retry_initial_backoff_ms, retry_max_backoff_ms, max_parked, max_document_bytes, schema)",
                "sinks[3].type: missing: say which engine (embedded, null, elasticsearch, opensearch, typesense, meilisearch, turbopuffer)",
            ]
        );
    }

    #[test]
    fn a_good_file_reads_as_before() {
        let text = r#"
            [source]
            database_url = "postgres://localhost/app"
            [[tables]]
            name = "items"
            transform = { drop = ["secret"] }
        "#;
        let config = parse(text).map_err(|e| format!("{e:?}")).unwrap();
        assert_eq!(config.tables[0].transform.drop, ["secret"]);
        assert_eq!(config.sinks.len(), 1);
        let syntax = problems("[source\n");
        assert!(syntax[0].contains("line 1"), "{syntax:?}");
    }
}
