//! Meilisearch's asynchronous tasks: the summarized task a write answers with,
//! the task object `GET /tasks/{uid}` returns, and what a finished task means
//! for its writes.

use serde::Deserialize;

use super::request::Kind;

/// The 202 answer to a write: `{"taskUid": …, "status": "enqueued", …}`.
#[derive(Debug, Deserialize)]
pub struct Summary {
    #[serde(rename = "taskUid")]
    pub task_uid: u64,
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Enqueued,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    /// A status this version does not know: treated as not finished.
    #[serde(other)]
    Unknown,
}

impl Status {
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Canceled)
    }
}

/// The task object (the fields sluice reads).
#[derive(Debug, Deserialize)]
pub struct Task {
    pub status: Status,
    #[serde(default)]
    pub error: Option<ApiError>,
}

/// Meilisearch's error object, in failed tasks and in error answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ApiError {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub code: String,
    /// `invalid_request`, `internal`, `auth` or `system`.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub link: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.kind, self.message)
    }
}

/// What a finished task (or a rejected request) means for its writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied, or nothing to do (a delete in a missing index).
    Done,
    /// Nothing was applied, and sending it again may work (internal and
    /// system errors, a canceled task).
    Retry(String),
    /// Nothing was applied because of what the writes contain (a bad
    /// document, or a payload over Meilisearch's size limit): the bad ones
    /// are to be found and parked, the others sent again.
    BadDocuments(String),
    /// Nothing was applied, and nothing will be until the operator acts.
    Fatal { problem: String, hint: String },
}

/// Classifies a finished task of a `kind` request.
pub fn classify(kind: Kind, status: Status, error: Option<&ApiError>) -> Outcome {
    match status {
        Status::Succeeded => Outcome::Done,
        Status::Canceled => Outcome::Retry("the task was canceled".into()),
        Status::Failed => classify_error(kind, error.unwrap_or(&ApiError::default())),
        Status::Enqueued | Status::Processing | Status::Unknown => {
            unreachable!("only finished tasks are classified")
        }
    }
}

/// Classifies the error of a failed task or a rejected request.
pub fn classify_error(kind: Kind, error: &ApiError) -> Outcome {
    let text = error.to_string();
    match (error.code.as_str(), error.kind.as_str()) {
        ("index_not_found", _) if matches!(kind, Kind::Delete | Kind::Clear | Kind::ClearTable) => {
            Outcome::Done
        }
        ("index_primary_key_already_exists" | "index_primary_key_multiple_candidates_found", _) => {
            Outcome::Fatal {
                problem: text,
                hint: "the index has another primary key: set the sink's primary_key to it, or \
                       delete the index so sluice creates it"
                    .into(),
            }
        }
        (_, "auth") => Outcome::Fatal {
            problem: text,
            hint: "check the sink's api_key_env: the key needs the documents.add, \
                   documents.delete and tasks.get actions on the index"
                .into(),
        },
        (_, "invalid_request") if matches!(kind, Kind::Clear | Kind::ClearTable) => {
            Outcome::Fatal {
                problem: text,
                hint: "Meilisearch refuses to delete the documents of a truncated table".into(),
            }
        }
        (_, "invalid_request") => Outcome::BadDocuments(text),
        // internal, system, and anything this version does not know.
        _ => Outcome::Retry(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(json: &str) -> Task {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn task_objects_are_read_and_classified() {
        let failed = task(
            r#"{"uid":4,"batchUid":2,"indexUid":"movies","status":"failed","type":"documentAdditionOrUpdate",
            "canceledBy":null,"details":{"receivedDocuments":2,"indexedDocuments":0},
            "error":{"message":"Document identifier `\"a|b\"` is invalid.","code":"invalid_document_id",
            "type":"invalid_request","link":"https://docs.meilisearch.com/errors#invalid_document_id"},
            "duration":"PT0.01S","enqueuedAt":"2025-01-01T00:00:00Z","startedAt":null,"finishedAt":null}"#,
        );
        let outcome = classify(Kind::Replace, failed.status, failed.error.as_ref());
        assert!(matches!(outcome, Outcome::BadDocuments(e) if e.contains("invalid_document_id")));
        let enqueued = task(r#"{"uid":5,"status":"enqueued","error":null}"#);
        assert!(!enqueued.status.is_finished());
        assert!(!task(r#"{"uid":5,"status":"paused"}"#).status.is_finished());
        let internal = ApiError {
            code: "internal".into(),
            kind: "internal".into(),
            ..ApiError::default()
        };
        assert!(matches!(
            classify_error(Kind::Update, &internal),
            Outcome::Retry(_)
        ));
        let missing = ApiError {
            code: "index_not_found".into(),
            kind: "invalid_request".into(),
            ..ApiError::default()
        };
        assert_eq!(classify_error(Kind::Delete, &missing), Outcome::Done);
        assert_eq!(classify_error(Kind::Clear, &missing), Outcome::Done);
        assert_eq!(
            classify(Kind::Replace, Status::Canceled, None),
            Outcome::Retry("the task was canceled".into())
        );
        let summary: Summary = serde_json::from_str(
            r#"{"taskUid":12,"indexUid":"movies","status":"enqueued","type":"documentDeletion","enqueuedAt":"2025-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(summary.task_uid, 12);
        let too_large = ApiError {
            code: "payload_too_large".into(),
            kind: "invalid_request".into(),
            ..ApiError::default()
        };
        assert!(matches!(
            classify_error(Kind::Replace, &too_large),
            Outcome::BadDocuments(_)
        ));
    }
}
