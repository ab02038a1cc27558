//! The cluster's state: indexes, documents with their versions, tombstones of
//! deleted documents; and how one bulk item changes it, with Elasticsearch's
//! version rules.

use std::collections::HashMap;

use axum::http::StatusCode;
use rand::rngs::StdRng;
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};

use super::bulk::{Action, OpType, UpdateBody, VersionType};
use super::errors::EsError;
use super::options::Faults;

/// What is known of one `_id`.
#[derive(Clone, Debug)]
pub(super) enum Slot {
    /// A document and its source as sent (empty when sources are not kept).
    Live {
        version: u64,
        seq_no: u64,
        source: Box<str>,
    },
    /// A deleted document's tombstone (`index.gc_deletes`, kept forever here).
    Deleted { version: u64 },
}

impl Slot {
    fn version(&self) -> u64 {
        match self {
            Slot::Live { version, .. } | Slot::Deleted { version } => *version,
        }
    }
}

#[derive(Debug)]
pub(super) struct Index {
    pub name: String,
    /// The body of `PUT /{index}` (`{}` when created by a write).
    pub definition: Value,
    pub uuid: String,
    pub slots: HashMap<String, Slot>,
    /// The routing each document was last written with, where one was
    /// given. An index of several shards places a document by it: a get by
    /// id finds the document only with the same routing.
    pub routing: HashMap<String, String>,
    next_seq_no: u64,
}

impl Index {
    /// Whether `id` is a live document, and its version or its tombstone's.
    fn current(&self, id: &str) -> (bool, Option<u64>) {
        let slot = self.slots.get(id);
        (
            matches!(slot, Some(Slot::Live { .. })),
            slot.map(Slot::version),
        )
    }

    /// The version a write of `action` gets, or its version conflict.
    fn next_version(&self, action: &Action, id: &str) -> Result<u64, EsError> {
        let (_, current) = self.current(id);
        let given = action.version.unwrap_or(0);
        match (action.version_type, current) {
            (VersionType::Internal, current) => Ok(current.map_or(1, |c| c + 1)),
            (VersionType::External, Some(c)) if c >= given => Err(self.conflict(
                id,
                format!("current version [{c}] is higher or equal to the one provided [{given}]"),
            )),
            (VersionType::ExternalGte, Some(c)) if c > given => Err(self.conflict(
                id,
                format!("current version [{c}] is higher than the one provided [{given}]"),
            )),
            _ => Ok(given),
        }
    }

    fn conflict(&self, id: &str, detail: String) -> EsError {
        let reason = format!("[{id}]: version conflict, {detail}");
        EsError::new(
            StatusCode::CONFLICT,
            "version_conflict_engine_exception",
            reason,
        )
        .with("index_uuid", self.uuid.clone())
        .with("shard", "0")
        .with("index", self.name.clone())
    }

    /// An index or create.
    fn write(
        &mut self,
        action: &Action,
        id: &str,
        faults: &Faults,
        keep: bool,
    ) -> Result<Done, EsError> {
        let (live, current) = self.current(id);
        if action.op == OpType::Create && live {
            let c = current.unwrap_or(0);
            return Err(self.conflict(
                id,
                format!("document already exists (current version [{c}])"),
            ));
        }
        let version = self.next_version(action, id)?;
        let source = checked_source(action.source.unwrap_or_default(), id, faults, keep)?;
        let (result, status) = if live {
            ("updated", StatusCode::OK)
        } else {
            ("created", StatusCode::CREATED)
        };
        Ok(self.store(id, version, source, result, status))
    }

    fn delete(&mut self, action: &Action, id: &str) -> Result<Done, EsError> {
        let (live, _) = self.current(id);
        let version = self.next_version(action, id)?;
        // The tombstone is written even for a document that was not there.
        self.slots.insert(id.to_owned(), Slot::Deleted { version });
        let (result, status) = if live {
            ("deleted", StatusCode::OK)
        } else {
            ("not_found", StatusCode::NOT_FOUND)
        };
        let seq_no = self.seq_no();
        Ok(Done {
            version,
            seq_no,
            result,
            status,
        })
    }

    /// A partial update, or an upsert when the document is missing.
    fn update(
        &mut self,
        action: &Action,
        id: &str,
        faults: &Faults,
        keep: bool,
    ) -> Result<Done, EsError> {
        let update = action.update.as_ref().expect("updates carry a body");
        let serialize = |value: &Value| {
            if keep {
                value.to_string().into()
            } else {
                Box::default()
            }
        };
        if let Some(Slot::Live {
            version,
            seq_no,
            source,
        }) = self.slots.get(id)
        {
            let (merged, changed) = merge_update(source, update, keep);
            poison_check(id, &merged, faults)?;
            if !changed && update.detect_noop {
                let (version, seq_no) = (*version, *seq_no);
                return Ok(Done {
                    version,
                    seq_no,
                    result: "noop",
                    status: StatusCode::OK,
                });
            }
            let version = version + 1;
            return Ok(self.store(id, version, serialize(&merged), "updated", StatusCode::OK));
        }
        let fresh = match (&update.upsert, update.doc_as_upsert) {
            (Some(upsert), _) => upsert,
            (None, true) => &update.doc,
            (None, false) => {
                let reason = format!("[{id}]: document missing");
                return Err(EsError::new(
                    StatusCode::NOT_FOUND,
                    "document_missing_exception",
                    reason,
                )
                .with("index_uuid", self.uuid.clone())
                .with("shard", "0")
                .with("index", self.name.clone()));
            }
        };
        poison_check(id, fresh, faults)?;
        let version = self.current(id).1.map_or(1, |c| c + 1);
        Ok(self.store(
            id,
            version,
            serialize(fresh),
            "created",
            StatusCode::CREATED,
        ))
    }

    fn store(
        &mut self,
        id: &str,
        version: u64,
        source: Box<str>,
        result: &'static str,
        status: StatusCode,
    ) -> Done {
        let seq_no = self.seq_no();
        self.slots.insert(
            id.to_owned(),
            Slot::Live {
                version,
                seq_no,
                source,
            },
        );
        Done {
            version,
            seq_no,
            result,
            status,
        }
    }

    fn seq_no(&mut self) -> u64 {
        self.next_seq_no += 1;
        self.next_seq_no - 1
    }
}

/// One entry of a bulk answer's `items`, under its action's name.
#[derive(Debug, Serialize)]
pub(super) struct Item {
    #[serde(rename = "_index")]
    pub index: String,
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_version", skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'static str>,
    #[serde(rename = "_shards", skip_serializing_if = "Option::is_none")]
    pub shards: Option<Shards>,
    #[serde(rename = "_seq_no", skip_serializing_if = "Option::is_none")]
    pub seq_no: Option<u64>,
    #[serde(rename = "_primary_term", skip_serializing_if = "Option::is_none")]
    pub primary_term: Option<u64>,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

#[derive(Debug, Serialize)]
pub(super) struct Shards {
    total: u8,
    successful: u8,
    failed: u8,
}

/// A successful write.
struct Done {
    version: u64,
    seq_no: u64,
    result: &'static str,
    status: StatusCode,
}

#[derive(Debug, Default)]
pub(super) struct Store {
    pub indexes: HashMap<String, Index>,
    pub store_sources: bool,
    next_uuid: u64,
    next_auto_id: u64,
}

impl Store {
    pub fn new(store_sources: bool) -> Self {
        Store {
            store_sources,
            ..Store::default()
        }
    }

    /// Creates `name`; false if it exists already.
    pub fn create_index(&mut self, name: &str, definition: Value) -> bool {
        if self.indexes.contains_key(name) {
            return false;
        }
        self.next_uuid += 1;
        let index = Index {
            name: name.to_owned(),
            definition,
            uuid: format!("fAkEuUiD{:014}", self.next_uuid),
            slots: HashMap::new(),
            routing: HashMap::new(),
            next_seq_no: 0,
        };
        self.indexes.insert(name.to_owned(), index);
        true
    }

    /// Runs one bulk item: its entry of `items`.
    pub fn apply(&mut self, action: &Action, faults: &Faults, rng: &mut StdRng) -> Item {
        let id = match &action.id {
            Some(id) => id.clone(),
            None => {
                self.next_auto_id += 1;
                format!("auto{:016}", self.next_auto_id)
            }
        };
        let outcome = self.execute(action, &id, faults, rng);
        let mut item = Item {
            index: action.index.clone(),
            id,
            version: None,
            result: None,
            shards: None,
            seq_no: None,
            primary_term: None,
            status: 0,
            error: None,
        };
        match outcome {
            Ok(done) => {
                let successful = u8::from(done.result != "noop");
                item.version = Some(done.version);
                item.result = Some(done.result);
                item.shards = Some(Shards {
                    total: 2 * successful,
                    successful,
                    failed: 0,
                });
                item.seq_no = Some(done.seq_no);
                item.primary_term = Some(1);
                item.status = done.status.as_u16();
            }
            Err(error) => {
                item.status = error.status.as_u16();
                item.error = Some(error.cause());
            }
        }
        item
    }

    fn execute(
        &mut self,
        action: &Action,
        id: &str,
        faults: &Faults,
        rng: &mut StdRng,
    ) -> Result<Done, EsError> {
        let transient = faults.item_rejected_429 + faults.item_unavailable_503;
        if transient > 0.0 {
            let draw: f64 = rng.random();
            if draw < faults.item_rejected_429 {
                return Err(EsError::rejected());
            }
            if draw < transient {
                let reason = format!(
                    "[{}][0] primary shard is not active Timeout: [1m]",
                    action.index
                );
                let status = StatusCode::SERVICE_UNAVAILABLE;
                return Err(EsError::new(status, "unavailable_shards_exception", reason));
            }
        }
        EsError::check_index_name(&action.index)?;
        if !self.indexes.contains_key(&action.index) {
            // Elasticsearch creates missing indexes for writes, not for deletes.
            if action.op == OpType::Delete {
                return Err(EsError::index_not_found(&action.index));
            }
            self.create_index(&action.index, json!({}));
        }
        let store_sources = self.store_sources;
        let index = self.indexes.get_mut(&action.index).expect("created above");
        match &action.routing {
            Some(routing) => index.routing.insert(id.to_owned(), routing.clone()),
            None => index.routing.remove(id),
        };
        match action.op {
            OpType::Index | OpType::Create => index.write(action, id, faults, store_sources),
            OpType::Delete => index.delete(action, id),
            OpType::Update => index.update(action, id, faults, store_sources),
        }
    }

    /// Deletes every document of `index` as delete-by-query does (internal
    /// versioning: each leaves a tombstone one version above it). Returns how
    /// many were deleted.
    pub fn delete_all(&mut self, index: &str) -> Option<usize> {
        self.delete_where(index, |_| true)
    }

    /// Deletes the live documents whose source `matches`.
    pub fn delete_where(&mut self, index: &str, matches: impl Fn(&str) -> bool) -> Option<usize> {
        let index = self.indexes.get_mut(index)?;
        let mut deleted = 0;
        for slot in index.slots.values_mut() {
            if let Slot::Live {
                version, source, ..
            } = slot
            {
                if !matches(source) {
                    continue;
                }
                *slot = Slot::Deleted {
                    version: *version + 1,
                };
                deleted += 1;
            }
        }
        index.next_seq_no += deleted as u64;
        Some(deleted)
    }
}

/// The source to store for an index or create, after the checks a mapping
/// would make: valid JSON, an object, and not poison.
fn checked_source(
    raw: &[u8],
    id: &str,
    faults: &Faults,
    store_sources: bool,
) -> Result<Box<str>, EsError> {
    let failed = || {
        EsError::new(
            StatusCode::BAD_REQUEST,
            "mapper_parsing_exception",
            "failed to parse",
        )
    };
    if store_sources || faults.poison_field.is_some() {
        let text = std::str::from_utf8(raw).map_err(|_| failed())?.trim();
        let value: Value = serde_json::from_str(text).map_err(|_| failed())?;
        if !value.is_object() {
            return Err(failed());
        }
        poison_check(id, &value, faults)?;
        return Ok(if store_sources {
            text.into()
        } else {
            Box::default()
        });
    }
    poison_check(id, &Value::Null, faults)?;
    Ok(Box::default())
}

fn poison_check(id: &str, source: &Value, faults: &Faults) -> Result<(), EsError> {
    let field = faults.poison_field.as_deref();
    let poisoned_field = field.filter(|f| source.get(*f) == Some(&Value::Bool(true)));
    if faults.poison_ids.contains(id) || poisoned_field.is_some() {
        let field = poisoned_field.unwrap_or("poison");
        return Err(EsError::new(
            StatusCode::BAD_REQUEST,
            "mapper_parsing_exception",
            format!(
                "failed to parse field [{field}] of type [long] in document with id '{id}'. \
                 Preview of field's value: 'true'"
            ),
        ));
    }
    Ok(())
}

/// The stored source with the update's `doc` merged in, and whether that
/// changed anything.
fn merge_update(stored: &str, update: &UpdateBody, store_sources: bool) -> (Value, bool) {
    if !store_sources {
        return (update.doc.clone(), true);
    }
    let mut source: Value = serde_json::from_str(stored).unwrap_or_else(|_| json!({}));
    let changed = merge(&mut source, &update.doc);
    (source, changed)
}

/// Merges `changes` into `target` as Elasticsearch does: objects recursively,
/// anything else replaced.
fn merge(target: &mut Value, changes: &Value) -> bool {
    let (Value::Object(target), Value::Object(changes)) = (target, changes) else {
        return false;
    };
    let mut changed = false;
    for (key, new) in changes {
        match target.get_mut(key) {
            Some(old @ Value::Object(_)) if new.is_object() => changed |= merge(old, new),
            Some(old) if old == new => {}
            _ => {
                target.insert(key.clone(), new.clone());
                changed = true;
            }
        }
    }
    changed
}
