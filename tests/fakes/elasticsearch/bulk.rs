//! Reading a `_bulk` body: NDJSON action/metadata lines, each followed by its
//! source (index, create), its partial document (update) or nothing (delete),
//! with the checks Elasticsearch makes before it runs any item.

use std::time::Instant;

use rand::rngs::StdRng;
use serde_json::{Map, Value};

use super::errors::EsError;
use super::options::Faults;
use super::store::{Item, Store};

/// A bulk action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpType {
    Index,
    Create,
    Update,
    Delete,
}

impl OpType {
    pub fn name(self) -> &'static str {
        match self {
            OpType::Index => "index",
            OpType::Create => "create",
            OpType::Update => "update",
            OpType::Delete => "delete",
        }
    }
}

/// How a write's `version` is compared with the stored one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum VersionType {
    /// The cluster counts versions itself.
    Internal,
    /// Applies when the given version is higher than the stored one.
    External,
    /// Applies when the given version is higher than or equal to it.
    ExternalGte,
}

/// One item of a bulk request.
#[derive(Debug)]
pub(super) struct Action<'a> {
    pub op: OpType,
    pub index: String,
    pub id: Option<String>,
    pub version: Option<u64>,
    pub version_type: VersionType,
    /// The shard key the document is placed by (its id when `None`).
    pub routing: Option<String>,
    /// The source line of an index or create, as sent.
    pub source: Option<&'a [u8]>,
    pub update: Option<UpdateBody>,
}

/// The body of an update item.
#[derive(Debug)]
pub(super) struct UpdateBody {
    pub doc: Value,
    pub upsert: Option<Value>,
    pub doc_as_upsert: bool,
    pub detect_noop: bool,
}

const METADATA: &[&str] = &[
    "_index",
    "_id",
    "routing",
    "version",
    "version_type",
    "if_seq_no",
    "if_primary_term",
    "retry_on_conflict",
    "pipeline",
    "require_alias",
    "require_data_stream",
    "dynamic_templates",
    "list_executed_pipelines",
    "op_type",
    "_source",
];

/// Runs a bulk body against `store`: the `_bulk` answer (JSON), or the
/// error of the whole request. Items run independently, in order.
pub(super) fn run(
    store: &mut Store,
    faults: &Faults,
    rng: &mut StdRng,
    path_index: Option<&str>,
    body: &[u8],
) -> Result<(Vec<u8>, usize), EsError> {
    let started = Instant::now();
    let actions = parse(body, path_index)?;
    let items: Vec<Item> = actions
        .iter()
        .map(|a| store.apply(a, faults, rng))
        .collect();
    let errors = items.iter().any(|item| item.error.is_some());
    let took = started.elapsed().as_millis();
    // Written by hand: a bench sends millions of items through here.
    let mut answer = Vec::with_capacity(64 + items.len() * 160);
    answer.extend_from_slice(format!(r#"{{"took":{took},"errors":{errors},"items":["#).as_bytes());
    for (n, (action, item)) in actions.iter().zip(&items).enumerate() {
        if n > 0 {
            answer.push(b',');
        }
        answer.extend_from_slice(format!(r#"{{"{}":"#, action.op.name()).as_bytes());
        serde_json::to_writer(&mut answer, item).expect("writing to memory");
        answer.push(b'}');
    }
    answer.extend_from_slice(b"]}");
    Ok((answer, items.len()))
}

/// Parses and validates a whole bulk body; any problem fails the whole request
/// (400), as it does in Elasticsearch.
pub(super) fn parse<'a>(
    body: &'a [u8],
    path_index: Option<&str>,
) -> Result<Vec<Action<'a>>, EsError> {
    let Some(body) = body.strip_suffix(b"\n") else {
        return Err(if body.is_empty() {
            EsError::validation(&["no requests added".into()])
        } else {
            EsError::illegal_argument("The bulk request must be terminated by a newline [\\n]")
        });
    };
    let mut lines = body
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .enumerate()
        .map(|(n, line)| (n + 1, line));
    let mut actions = Vec::new();
    let mut problems = Vec::new();
    while let Some((n, line)) = lines.next() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (op, meta) = action_line(n, line)?;
        let mut action = checked_action(n, op, &meta, path_index, &mut problems)?;
        if op != OpType::Delete {
            let Some((n, source)) = lines.next() else {
                return Err(EsError::illegal_argument(format!(
                    "Malformed action/metadata line [{n}], expected a source on the next line"
                )));
            };
            if op == OpType::Update {
                action.update = Some(update_body(n, source, &mut problems)?);
            } else {
                action.source = Some(source);
            }
        }
        actions.push(action);
    }
    if actions.is_empty() {
        problems.push("no requests added".into());
    }
    if problems.is_empty() {
        Ok(actions)
    } else {
        Err(EsError::validation(&problems))
    }
}

/// The item an action line describes. Problems Elasticsearch's validation
/// would list go to `problems`; the ones its parser throws on are returned.
fn checked_action<'a>(
    n: usize,
    op: OpType,
    meta: &Map<String, Value>,
    path_index: Option<&str>,
    problems: &mut Vec<String>,
) -> Result<Action<'a>, EsError> {
    let index = meta.get("_index").and_then(Value::as_str).or(path_index);
    if index.is_none() {
        problems.push("index is missing".into());
    }
    let id = match meta.get("_id") {
        Some(Value::String(id)) => Some(id.clone()),
        Some(Value::Number(id)) => Some(id.to_string()),
        _ => None,
    };
    let version = match meta.get("version") {
        None => None,
        Some(v) => match v.as_i64().or_else(|| v.as_str()?.parse().ok()) {
            Some(version) => Some(version),
            None => {
                let reason = format!("[{n}:1] [version] must be a long, got [{v}]");
                let status = axum::http::StatusCode::BAD_REQUEST;
                return Err(EsError::new(status, "x_content_parse_exception", reason));
            }
        },
    };
    let version_type = match meta.get("version_type").and_then(Value::as_str) {
        None | Some("internal") => VersionType::Internal,
        Some("external" | "external_gt") => VersionType::External,
        Some("external_gte") => VersionType::ExternalGte,
        Some(other) => {
            return Err(EsError::illegal_argument(format!(
                "No version type match [{other}]"
            )))
        }
    };
    if op == OpType::Update && (version.is_some() || version_type != VersionType::Internal) {
        return Err(EsError::illegal_argument(
            "Update requests do not support versioning. \
             Please use `if_seq_no` and `if_primary_term` instead",
        ));
    }
    match (version_type, version) {
        (VersionType::Internal, Some(_)) => problems.push(
            "internal versioning can not be used for optimistic concurrency control. \
             Please use `if_seq_no` and `if_primary_term` instead"
                .into(),
        ),
        (VersionType::Internal, None) => {}
        (external, version) if version.is_none_or(|v| v < 0) => {
            let name = match external {
                VersionType::External => "EXTERNAL",
                _ => "EXTERNAL_GTE",
            };
            let version = version.unwrap_or(-3); // Versions.MATCH_ANY
            problems.push(format!(
                "illegal version value [{version}] for version type [{name}]"
            ));
        }
        _ => {}
    }
    if op == OpType::Create && version_type != VersionType::Internal {
        problems
            .push("create operations only support internal versioning. use index instead".into());
    }
    match &id {
        None if matches!(op, OpType::Update | OpType::Delete) => {
            problems.push("id is missing".into())
        }
        Some(id) if id.len() > 512 => problems.push(format!(
            "id [{id}] is too long, must be no longer than 512 bytes but was: {}",
            id.len()
        )),
        _ => {}
    }
    Ok(Action {
        op,
        index: index.unwrap_or_default().to_owned(),
        id,
        version: version.map(|v| v.max(0) as u64),
        version_type,
        routing: meta
            .get("routing")
            .and_then(Value::as_str)
            .map(str::to_owned),
        source: None,
        update: None,
    })
}

/// `{"<op>": {metadata}}`.
fn action_line(n: usize, line: &[u8]) -> Result<(OpType, Map<String, Value>), EsError> {
    let malformed = |what: String| {
        EsError::illegal_argument(format!("Malformed action/metadata line [{n}], {what}"))
    };
    let Value::Object(outer) = serde_json::from_slice(line).map_err(|e| EsError::parse(n, &e))?
    else {
        return Err(malformed("expected START_OBJECT but found [VALUE]".into()));
    };
    let mut entries = outer.into_iter();
    let (name, meta) = match (entries.next(), entries.next()) {
        (Some(entry), None) => entry,
        (None, _) => {
            return Err(malformed(
                "expected FIELD_NAME but found [END_OBJECT]".into(),
            ))
        }
        (Some(_), Some(_)) => {
            return Err(malformed(
                "expected END_OBJECT but found [FIELD_NAME]".into(),
            ))
        }
    };
    let op = match name.as_str() {
        "index" => OpType::Index,
        "create" => OpType::Create,
        "update" => OpType::Update,
        "delete" => OpType::Delete,
        other => {
            return Err(malformed(format!(
                "expected field [create], [delete], [index] or [update] but found [{other}]"
            )))
        }
    };
    let Value::Object(meta) = meta else {
        return Err(malformed(
            "expected START_OBJECT or END_OBJECT but found [VALUE]".into(),
        ));
    };
    if let Some(unknown) = meta.keys().find(|k| !METADATA.contains(&k.as_str())) {
        return Err(EsError::illegal_argument(format!(
            "Action/metadata line [{n}] contains an unknown parameter [{unknown}]"
        )));
    }
    Ok((op, meta))
}

/// `{"doc": {...}, "doc_as_upsert": bool, "upsert": {...}, "detect_noop": bool}`.
fn update_body(n: usize, line: &[u8], problems: &mut Vec<String>) -> Result<UpdateBody, EsError> {
    let body: Value = serde_json::from_slice(line).map_err(|e| EsError::parse(n, &e))?;
    let Value::Object(mut body) = body else {
        return Err(EsError::illegal_argument(format!(
            "[{n}:1] Malformed update request"
        )));
    };
    if let Some(unknown) = body.keys().find(|k| {
        ![
            "doc",
            "upsert",
            "doc_as_upsert",
            "detect_noop",
            "_source",
            "script",
            "scripted_upsert",
        ]
        .contains(&k.as_str())
    }) {
        return Err(EsError::illegal_argument(format!(
            "[{n}:1] [UpdateRequest] unknown field [{unknown}]"
        )));
    }
    if body.contains_key("script") {
        return Err(EsError::illegal_argument(
            "this fake Elasticsearch does not run scripts",
        ));
    }
    let flag = |v: Option<Value>, default| v.and_then(|v| v.as_bool()).unwrap_or(default);
    let doc = body.remove("doc");
    if !matches!(doc, Some(Value::Object(_))) {
        problems.push("script or doc is missing".into());
    }
    Ok(UpdateBody {
        doc: doc.unwrap_or(Value::Null),
        upsert: body.remove("upsert"),
        doc_as_upsert: flag(body.remove("doc_as_upsert"), false),
        detect_noop: flag(body.remove("detect_noop"), true),
    })
}
