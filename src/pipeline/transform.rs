//! The transformer: decides which columns become which document fields
//! (keep, drop, rename), once per relation, and attaches that shape to changes.
//! Values are encoded later, by the shards, straight from the WAL bytes.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::change::{Change, ChangeBatch, RelationInfo};
use super::router::RouterMsg;
use super::stats::StageStats;
use crate::config::TransformConfig;
use crate::postgres::pgoutput::{ColumnKind, Oid, Tuple};
use crate::postgres::types::{write_json, write_json_string, TypeKind};

/// One output field.
#[derive(Debug, Clone)]
pub struct Field {
    /// Column position in the tuple.
    pub column: usize,
    /// `"name":`, escaped once.
    pub key: Box<[u8]>,
    pub kind: TypeKind,
}

/// How a relation's rows become documents.
#[derive(Debug, Default)]
pub struct DocShape {
    pub fields: Vec<Field>,
}

impl DocShape {
    pub fn new(rel: &RelationInfo, transform: &TransformConfig) -> DocShape {
        let fields = rel
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| match &transform.keep {
                Some(keep) => keep.iter().any(|k| k == &c.name),
                None => !transform.drop.iter().any(|d| d == &c.name),
            })
            .map(|(i, c)| {
                let name = transform.rename.get(&c.name).unwrap_or(&c.name);
                let mut key = Vec::with_capacity(name.len() + 3);
                write_json_string(name.as_bytes(), &mut key);
                key.push(b':');
                Field {
                    column: i,
                    key: key.into_boxed_slice(),
                    kind: c.kind.clone(),
                }
            })
            .collect();
        DocShape { fields }
    }

    /// Encodes a row as a JSON object into `out`. Returns false when some
    /// field was an unchanged TOAST value and left out (a partial document).
    pub fn encode(&self, tuple: &Tuple, out: &mut Vec<u8>) -> bool {
        let mut complete = true;
        let mut first = true;
        out.push(b'{');
        for field in &self.fields {
            let kind = tuple.kind(field.column);
            if kind == ColumnKind::Unchanged {
                complete = false;
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&field.key);
            match tuple.value(field.column) {
                Some(text) if kind == ColumnKind::Text => write_json(&field.kind, text, out),
                Some(bytes) => write_json_string(bytes, out),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
        complete
    }
}

/// A change with the shape of its document.
#[derive(Debug)]
pub struct Shaped {
    pub change: Change,
    pub shape: Arc<DocShape>,
}

/// A batch of shaped changes.
#[derive(Debug, Default)]
pub struct ShapedBatch {
    pub items: Vec<Shaped>,
    pub upto: crate::lsn::Lsn,
    pub credits: Vec<Arc<super::flow::Credit>>,
    pub last: bool,
    pub scope: super::change::Scope,
}

pub enum TransformMsg {
    Batch(ChangeBatch),
}

pub struct TransformArgs {
    /// Per table (`schema.table`).
    pub transforms: HashMap<String, TransformConfig>,
    pub downstream: ActorRef<RouterMsg>,
    pub stats: Arc<StageStats>,
}

pub struct TransformState {
    args: TransformArgs,
    shapes: HashMap<Oid, (Arc<RelationInfo>, Arc<DocShape>)>,
}

pub struct Transformer;

impl Actor for Transformer {
    type Msg = TransformMsg;
    type State = TransformState;
    type Arguments = TransformArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<TransformMsg>,
        args: TransformArgs,
    ) -> Result<TransformState, ActorProcessingErr> {
        Ok(TransformState {
            args,
            shapes: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<TransformMsg>,
        msg: TransformMsg,
        state: &mut TransformState,
    ) -> Result<(), ActorProcessingErr> {
        let TransformMsg::Batch(batch) = msg;
        let n = batch.changes.len();
        let mut items = Vec::with_capacity(n);
        for change in batch.changes {
            let shape = state.shape(&change.rel);
            items.push(Shaped { change, shape });
        }
        state.args.stats.batch(n, items.len());
        state.args.downstream.cast(RouterMsg::Batch(ShapedBatch {
            items,
            upto: batch.upto,
            credits: batch.credits,
            last: batch.last,
            scope: batch.scope,
        }))?;
        Ok(())
    }
}

impl TransformState {
    fn shape(&mut self, rel: &Arc<RelationInfo>) -> Arc<DocShape> {
        if let Some((cached, shape)) = self.shapes.get(&rel.id) {
            if Arc::ptr_eq(cached, rel) {
                return shape.clone();
            }
        }
        let default = TransformConfig::default();
        let config = self
            .args
            .transforms
            .get(&*rel.qualified)
            .unwrap_or(&default);
        for name in config
            .keep
            .iter()
            .flatten()
            .chain(&config.drop)
            .chain(config.rename.keys())
        {
            if rel.column_index(name).is_none() {
                tracing::warn!(table = %rel.qualified, column = %name, "the transform names a column the table does not have");
            }
        }
        let shape = Arc::new(DocShape::new(rel, config));
        self.shapes.insert(rel.id, (rel.clone(), shape.clone()));
        shape
    }
}
