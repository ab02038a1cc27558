//! The transformer: decides which columns become which document fields
//! (keep, drop, rename, added fields, or a path), once per relation, and
//! attaches that shape (`document::DocShape`) to changes. Values are
//! encoded later, by the shards, straight from the WAL bytes.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::change::{ChangeBatch, RelationInfo, Shaped, ShapedBatch};
use super::document::{DocShape, TransformConfig};
use super::router::RouterMsg;
use super::stats::StageStats;
use crate::postgres::pgoutput::Oid;

pub enum TransformMsg {
    Batch(ChangeBatch),
}

pub struct TransformArgs {
    /// Per table (`schema.table`).
    pub transforms: HashMap<String, TransformConfig>,
    /// Tables whose documents carry their table (`shared_index`).
    pub tagged: std::collections::HashSet<String>,
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
        let n = batch.items.len();
        let mut items = Vec::with_capacity(n);
        for change in batch.items {
            let shape = state.shape(&change.rel)?;
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
    /// The document shape of `rel`'s table; an error when the transform
    /// names a column the table does not have.
    fn shape(&mut self, rel: &Arc<RelationInfo>) -> crate::error::Result<Arc<DocShape>> {
        if let Some((cached, shape)) = self.shapes.get(&rel.id) {
            if Arc::ptr_eq(cached, rel) {
                return Ok(shape.clone());
            }
        }
        let default = TransformConfig::default();
        let config = self
            .args
            .transforms
            .get(&*rel.qualified)
            .unwrap_or(&default);
        for (field, column) in config.named_columns() {
            rel.require_column(&field, &column)?;
        }
        let mut shape = DocShape::new(rel, config);
        if self.args.tagged.contains(&*rel.qualified) {
            shape = shape.tagged(&rel.qualified);
        }
        let shape = Arc::new(shape);
        self.shapes.insert(rel.id, (rel.clone(), shape.clone()));
        Ok(shape)
    }
}
