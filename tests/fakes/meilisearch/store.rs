//! Indexes, documents and the task queue, as Meilisearch keeps them: writes
//! are enqueued as tasks and applied later, in enqueue order, each task
//! atomically (a failed task applies nothing).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// One index: its primary key (set by the first write) and its documents.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub primary_key: Option<String>,
    pub docs: BTreeMap<String, Map<String, Value>>,
    /// `filterableAttributes`, as set.
    pub filterable: Vec<String>,
}

/// What a task does when it is processed.
#[derive(Debug, Clone)]
pub(super) enum TaskOp {
    /// `POST` (replace) or `PUT` (update) of documents.
    Add {
        docs: Vec<Map<String, Value>>,
        primary_key: Option<String>,
        update: bool,
    },
    DeleteIds(Vec<String>),
    Clear,
    /// `POST documents/delete` with `field = "value"`.
    DeleteWhere {
        field: String,
        value: String,
    },
    /// `PUT settings/filterable-attributes`.
    SetFilterable(Vec<String>),
}

/// A task as `GET /tasks/{uid}` shows it (plus its work, until processed).
#[derive(Debug, Clone)]
pub struct Task {
    pub uid: u64,
    pub index_uid: String,
    /// `enqueued`, `processing`, `succeeded` or `failed`.
    pub status: &'static str,
    /// `documentAdditionOrUpdate` or `documentDeletion`.
    pub kind: &'static str,
    /// The error object of a failed task.
    pub error: Option<Value>,
    pub details: Value,
    pub enqueued_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub(super) op: Option<TaskOp>,
}

impl Task {
    /// The documents it adds, or the ids it deletes.
    pub fn documents(&self) -> usize {
        match &self.op {
            Some(TaskOp::Add { docs, .. }) => docs.len(),
            Some(TaskOp::DeleteIds(ids)) => ids.len(),
            _ => 0,
        }
    }

    /// The error code of a failed task.
    pub fn error_code(&self) -> Option<&str> {
        self.error.as_ref()?.get("code")?.as_str()
    }

    pub fn view(&self) -> Value {
        json!({
            "uid": self.uid,
            "batchUid": if self.started_at.is_some() { json!(self.uid) } else { Value::Null },
            "indexUid": self.index_uid,
            "status": self.status,
            "type": self.kind,
            "canceledBy": null,
            "details": self.details,
            "error": self.error,
            "duration": if self.finished_at.is_some() { json!("PT0.001S") } else { Value::Null },
            "enqueuedAt": self.enqueued_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        })
    }

    /// The summarized task a write answers with.
    pub fn summary(&self) -> Value {
        json!({
            "taskUid": self.uid,
            "indexUid": self.index_uid,
            "status": "enqueued",
            "type": self.kind,
            "enqueuedAt": self.enqueued_at,
        })
    }
}

/// An error object as Meilisearch writes them.
pub(super) fn error(code: &str, kind: &str, message: impl Into<String>) -> Value {
    json!({
        "message": message.into(),
        "code": code,
        "type": kind,
        "link": format!("https://docs.meilisearch.com/errors#{code}"),
    })
}

#[derive(Debug, Default)]
pub(super) struct Store {
    pub indexes: BTreeMap<String, Index>,
    /// Every task; a task's uid is its position.
    pub tasks: Vec<Task>,
    /// The next task to process.
    pub next: usize,
    /// Batches processed.
    pub batches: usize,
}

impl Store {
    pub fn enqueue(&mut self, index_uid: &str, op: TaskOp) -> &Task {
        let (kind, details) = match &op {
            TaskOp::Add { docs, .. } => (
                "documentAdditionOrUpdate",
                json!({"receivedDocuments": docs.len(), "indexedDocuments": null}),
            ),
            TaskOp::DeleteIds(ids) => (
                "documentDeletion",
                json!({"providedIds": ids.len(), "deletedDocuments": null}),
            ),
            TaskOp::Clear => (
                "documentDeletion",
                json!({"providedIds": 0, "deletedDocuments": null, "originalFilter": null}),
            ),
            TaskOp::DeleteWhere { field, value } => (
                "documentDeletion",
                json!({"providedIds": 0, "deletedDocuments": null, "originalFilter": format!("{field} = {value:?}")}),
            ),
            TaskOp::SetFilterable(attributes) => (
                "settingsUpdate",
                json!({"filterableAttributes": attributes}),
            ),
        };
        let uid = self.tasks.len() as u64;
        self.tasks.push(Task {
            uid,
            index_uid: index_uid.to_owned(),
            status: "enqueued",
            kind,
            error: None,
            details,
            enqueued_at: now(),
            started_at: None,
            finished_at: None,
            op: Some(op),
        });
        self.tasks.last().expect("pushed")
    }

    /// The tasks of the next batch: the next task and the enqueued ones
    /// right after it that Meilisearch's auto-batcher merges with it (same
    /// index; document additions of the same method, or deletions by id).
    pub fn next_batch(&self) -> Vec<usize> {
        let Some(first) = self.tasks.get(self.next) else {
            return Vec::new();
        };
        let mergeable = |task: &Task| {
            task.index_uid == first.index_uid
                && match (&task.op, &first.op) {
                    (Some(TaskOp::Add { update: a, .. }), Some(TaskOp::Add { update: b, .. })) => {
                        a == b
                    }
                    (Some(TaskOp::DeleteIds(_)), Some(TaskOp::DeleteIds(_))) => true,
                    _ => false,
                }
        };
        let mut batch = vec![self.next];
        batch.extend(
            (self.next + 1..self.tasks.len()).take_while(|&uid| mergeable(&self.tasks[uid])),
        );
        batch
    }

    /// Applies task `uid` (all or nothing), or fails it with `forced_error`.
    pub fn process(&mut self, uid: usize, forced_error: Option<Value>) {
        let op = self.tasks[uid].op.take().expect("a task is processed once");
        let index_uid = self.tasks[uid].index_uid.clone();
        let result = match forced_error {
            Some(error) => Err(error),
            None => self.apply(&index_uid, op),
        };
        let task = &mut self.tasks[uid];
        task.finished_at = Some(now());
        match result {
            Ok(done) => {
                task.status = "succeeded";
                if let Some(details) = task.details.as_object_mut() {
                    for (key, value) in done {
                        details.insert(key.into(), json!(value));
                    }
                }
            }
            Err(error) => {
                task.status = "failed";
                task.error = Some(error);
            }
        }
    }

    fn apply(&mut self, index_uid: &str, op: TaskOp) -> Result<Vec<(&'static str, usize)>, Value> {
        match op {
            TaskOp::Add {
                docs,
                primary_key,
                update,
            } => {
                let current = self
                    .indexes
                    .get(index_uid)
                    .and_then(|i| i.primary_key.clone());
                let key = match (current, primary_key) {
                    (Some(current), Some(asked)) if current != asked => {
                        return Err(error(
                            "index_primary_key_already_exists",
                            "invalid_request",
                            format!("Index `{index_uid}`: primary key `{current}` cannot be changed to `{asked}`."),
                        ))
                    }
                    (Some(current), _) => current,
                    (None, Some(asked)) => asked,
                    (None, None) => infer_primary_key(&docs)?,
                };
                let mut ids = Vec::with_capacity(docs.len());
                for doc in &docs {
                    ids.push(check_document(doc, &key)?);
                }
                let index = self.indexes.entry(index_uid.to_owned()).or_default();
                index.primary_key = Some(key);
                let count = docs.len();
                for (id, doc) in ids.into_iter().zip(docs) {
                    match index.docs.get_mut(&id) {
                        Some(existing) if update => existing.extend(doc),
                        _ => {
                            index.docs.insert(id, doc);
                        }
                    }
                }
                Ok(vec![("indexedDocuments", count)])
            }
            TaskOp::DeleteIds(ids) => {
                let index = self
                    .indexes
                    .get_mut(index_uid)
                    .ok_or_else(|| not_found(index_uid))?;
                let deleted = ids
                    .iter()
                    .filter(|id| index.docs.remove(*id).is_some())
                    .count();
                Ok(vec![("deletedDocuments", deleted)])
            }
            TaskOp::Clear => {
                let index = self
                    .indexes
                    .get_mut(index_uid)
                    .ok_or_else(|| not_found(index_uid))?;
                let deleted = index.docs.len();
                index.docs.clear();
                Ok(vec![("deletedDocuments", deleted)])
            }
            TaskOp::DeleteWhere { field, value } => {
                let index = self
                    .indexes
                    .get_mut(index_uid)
                    .ok_or_else(|| not_found(index_uid))?;
                if !index.filterable.contains(&field) {
                    return Err(error(
                        "invalid_document_filter",
                        "invalid_request",
                        format!("Attribute `{field}` is not filterable."),
                    ));
                }
                let before = index.docs.len();
                index
                    .docs
                    .retain(|_, doc| doc.get(&field) != Some(&Value::String(value.clone())));
                Ok(vec![("deletedDocuments", before - index.docs.len())])
            }
            TaskOp::SetFilterable(attributes) => {
                // Updating settings creates a missing index.
                self.indexes
                    .entry(index_uid.to_owned())
                    .or_default()
                    .filterable = attributes;
                Ok(Vec::new())
            }
        }
    }
}

pub(super) fn not_found(index_uid: &str) -> Value {
    error(
        "index_not_found",
        "invalid_request",
        format!("Index `{index_uid}` not found."),
    )
}

/// The one field whose name ends with `id`, as Meilisearch guesses it.
fn infer_primary_key(docs: &[Map<String, Value>]) -> Result<String, Value> {
    let candidates: Vec<&String> = docs
        .first()
        .map(|doc| {
            doc.keys()
                .filter(|k| k.to_lowercase().ends_with("id"))
                .collect()
        })
        .unwrap_or_default();
    match candidates.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(error(
            "index_primary_key_no_candidate_found",
            "invalid_request",
            "The primary key inference failed as the engine did not find any field ending with `id` in its name. Please specify the primary key manually using the `primaryKey` query parameter.",
        )),
        _ => Err(error(
            "index_primary_key_multiple_candidates_found",
            "invalid_request",
            "The primary key inference failed as the engine found multiple fields ending with `id` in their names. Please specify the primary key manually using the `primaryKey` query parameter.",
        )),
    }
}

/// A document's id, or the error that fails its task: a missing or invalid
/// id, or a `_geo` field that is not an object with `lat` and `lng`.
fn check_document(doc: &Map<String, Value>, key: &str) -> Result<String, Value> {
    let id = match doc.get(key) {
        None => {
            return Err(error(
                "missing_document_id",
                "invalid_request",
                format!("Document doesn't have a `{key}` attribute: `{}`.", Value::Object(doc.clone())),
            ))
        }
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        Some(Value::String(s)) if valid_id(s) => s.clone(),
        Some(other) => {
            return Err(error(
                "invalid_document_id",
                "invalid_request",
                format!("Document identifier `{other}` is invalid. A document identifier can be of type integer or string, only composed of alphanumeric characters (a-z A-Z 0-9), hyphens (-) and underscores (_), and can not be more than 511 bytes."),
            ))
        }
    };
    if let Some(geo) = doc.get("_geo") {
        let ok = geo
            .as_object()
            .is_some_and(|g| g.contains_key("lat") && g.contains_key("lng"));
        if !ok && !geo.is_null() {
            return Err(error(
                "invalid_document_geo_field",
                "invalid_request",
                format!("The `_geo` field in the document with the id: `{id}` is not an object. Was expecting an object with the `_geo.lat` and `_geo.lng` fields but instead got `{geo}`."),
            ));
        }
    }
    Ok(id)
}

/// Meilisearch's rule for string ids.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 511
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The current time in RFC 3339, as task timestamps are written.
pub(super) fn now() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_micros()
    )
}
