//! The fake's data: collections of documents, and what imports and deletes
//! do to them, line by line, as Typesense documents it.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Map, Value};

use super::Faults;

#[derive(Debug, Default)]
pub(super) struct Store {
    pub collections: BTreeMap<String, Collection>,
    /// Failures injected so far (lines and whole requests).
    pub injected: u64,
    next_id: u64,
}

#[derive(Debug)]
pub(super) struct Collection {
    /// As given at creation (with its name).
    pub schema: Value,
    pub documents: BTreeMap<String, Map<String, Value>>,
}

/// How an import writes each document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Create,
    Upsert,
    Update,
    Emplace,
}

impl Action {
    pub fn parse(name: &str) -> Option<Action> {
        Some(match name {
            "create" => Action::Create,
            "upsert" => Action::Upsert,
            "update" => Action::Update,
            "emplace" => Action::Emplace,
            _ => return None,
        })
    }
}

/// A failed line: its code and error text.
fn failed(code: u16, error: impl Into<String>, line: &str) -> Value {
    json!({ "success": false, "code": code, "error": error.into(), "document": line })
}

impl Store {
    /// Creates a collection; false if it exists.
    pub fn create(&mut self, schema: Value) -> bool {
        let name = schema["name"].as_str().unwrap_or_default().to_owned();
        if self.collections.contains_key(&name) {
            return false;
        }
        let documents = BTreeMap::new();
        self.collections
            .insert(name, Collection { schema, documents });
        true
    }

    /// Imports JSONL lines into `collection` (which exists); one answer line each.
    pub fn import(
        &mut self,
        collection: &str,
        action: Action,
        body: &str,
        faults: &Faults,
        rng: &mut StdRng,
    ) -> Vec<Value> {
        let mut answers = Vec::new();
        for line in body.split('\n') {
            if line.trim().is_empty() {
                continue;
            }
            answers.push(self.import_line(collection, action, line, faults, rng));
        }
        answers
    }

    fn import_line(
        &mut self,
        collection: &str,
        action: Action,
        line: &str,
        faults: &Faults,
        rng: &mut StdRng,
    ) -> Value {
        let Ok(Value::Object(mut doc)) = serde_json::from_str::<Value>(line) else {
            return failed(400, "Bad JSON.", line);
        };
        let id = match doc.get("id") {
            Some(Value::String(id)) => id.clone(),
            Some(_) => return failed(400, "Document's `id` field should be a string.", line),
            None if matches!(action, Action::Update | Action::Emplace) => {
                return failed(400, "For update, the `id` key must be provided.", line)
            }
            None => {
                self.next_id += 1;
                let id = format!("auto{}", self.next_id);
                doc.insert("id".into(), Value::String(id.clone()));
                id
            }
        };
        let draw: f64 = rng.random();
        if draw < faults.line_rejected_429 + faults.line_unavailable_503 {
            self.injected += 1;
        }
        if draw < faults.line_rejected_429 {
            return failed(429, "Rate limit exceeded or blocked", line);
        }
        if draw < faults.line_rejected_429 + faults.line_unavailable_503 {
            return failed(503, "Not Ready or Lagging", line);
        }
        let poisoned = faults.poison_ids.contains(&id)
            || faults
                .poison_field
                .as_ref()
                .is_some_and(|f| doc.get(f) == Some(&Value::Bool(true)));
        if poisoned {
            let field = faults.poison_field.as_deref().unwrap_or("id");
            return failed(400, format!("Field `{field}` must be a string."), line);
        }
        let documents = &mut self
            .collections
            .get_mut(collection)
            .expect("checked by the caller")
            .documents;
        match (action, documents.get_mut(&id)) {
            (Action::Create, Some(_)) => {
                return failed(
                    409,
                    format!("A document with id {id} already exists."),
                    line,
                )
            }
            (Action::Update, None) => {
                return failed(
                    404,
                    format!("Could not find a document with id: {id}"),
                    line,
                )
            }
            (Action::Update | Action::Emplace, Some(stored)) => stored.extend(doc),
            (_, _) => {
                documents.insert(id, doc);
            }
        }
        json!({ "success": true })
    }
}

/// The ids a `filter_by` names: `id:[a, `b,c`]`, `id:=a` or `id:a`; `None`
/// for other filters.
pub(super) fn filter_ids(filter: &str) -> Option<Vec<String>> {
    let rest = filter.trim().strip_prefix("id")?.trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    let Some(list) = rest.strip_prefix('[') else {
        return Some(vec![unquote(rest)?]);
    };
    let list = list.trim_end().strip_suffix(']')?;
    let mut ids = Vec::new();
    let mut chars = list.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'`') {
            chars.next();
            loop {
                match chars.next() {
                    Some('`') => break,
                    Some(c) => value.push(c),
                    None => return None, // unterminated
                }
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_owned();
            if value.is_empty() {
                return None;
            }
        }
        ids.push(value);
        match chars.next() {
            Some(',') => continue,
            None => return Some(ids),
            Some(_) => return None,
        }
    }
}

/// `field:=value` (or `field:value`, a value in backticks or bare) on a
/// field other than `id`: the field and the value; `None` otherwise.
pub(super) fn filter_field(filter: &str) -> Option<(String, String)> {
    let (field, rest) = filter.split_once(':')?;
    let field = field.trim();
    if field == "id" || field.is_empty() || !field.chars().all(|c| c.is_alphanumeric() || c == '_')
    {
        return None;
    }
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest);
    Some((field.to_owned(), unquote(rest)?))
}

impl Collection {
    /// Whether the schema declares `field` (by name, or a `.*` auto field),
    /// as a filter needs.
    pub fn has_field(&self, field: &str) -> bool {
        self.schema["fields"].as_array().is_some_and(|fields| {
            fields
                .iter()
                .any(|f| f["name"] == field || f["name"] == ".*")
        })
    }
}

fn unquote(value: &str) -> Option<String> {
    let value = value.trim();
    if let Some(inner) = value.strip_prefix('`') {
        return inner.strip_suffix('`').map(str::to_owned);
    }
    (!value.is_empty() && !value.contains([',', '[', ']', ' '])).then(|| value.to_owned())
}
