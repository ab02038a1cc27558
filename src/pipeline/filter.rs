//! The filter: keeps the changes of configured tables and operations.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::change::{ChangeBatch, Op};
use super::stats::StageStats;
use super::transform::TransformMsg;
use crate::config::Operation;
use crate::postgres::pgoutput::Oid;

pub enum FilterMsg {
    Batch(ChangeBatch),
}

/// Allowed operations per table (`schema.table`).
pub type TableOperations = HashMap<String, Vec<Operation>>;

pub struct FilterArgs {
    pub tables: TableOperations,
    pub downstream: ActorRef<TransformMsg>,
    pub stats: Arc<StageStats>,
}

pub struct FilterState {
    args: FilterArgs,
    /// Per relation: a bit per allowed `Op` (0 when the table is not streamed).
    allowed: HashMap<Oid, u8>,
}

pub struct Filter;

fn bit(op: Op) -> u8 {
    match op {
        // A row a backfill read is an insert into the index.
        Op::Insert | Op::Read => 1,
        Op::Update => 2,
        Op::Delete => 4,
        Op::Truncate => 8,
    }
}

impl Actor for Filter {
    type Msg = FilterMsg;
    type State = FilterState;
    type Arguments = FilterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<FilterMsg>,
        args: FilterArgs,
    ) -> Result<FilterState, ActorProcessingErr> {
        Ok(FilterState {
            args,
            allowed: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<FilterMsg>,
        msg: FilterMsg,
        state: &mut FilterState,
    ) -> Result<(), ActorProcessingErr> {
        let FilterMsg::Batch(mut batch) = msg;
        let before = batch.changes.len();
        let FilterState { args, allowed } = state;
        batch.changes.retain(|change| {
            let mask = *allowed.entry(change.rel.id).or_insert_with(|| {
                args.tables
                    .get(&*change.rel.qualified)
                    .map(|ops| {
                        ops.iter().fold(0, |m, op| {
                            m | bit(match op {
                                Operation::Insert => Op::Insert,
                                Operation::Update => Op::Update,
                                Operation::Delete => Op::Delete,
                                Operation::Truncate => Op::Truncate,
                            })
                        })
                    })
                    .unwrap_or(0)
            });
            mask & bit(change.op) != 0
        });
        let after = batch.changes.len();
        args.stats.batch(before, after);
        if before > after {
            args.stats.dropped(before - after);
        }
        args.downstream.cast(TransformMsg::Batch(batch))?;
        Ok(())
    }
}
