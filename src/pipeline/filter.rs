//! The filter: keeps the changes of configured tables and operations, and
//! holds each table's index to the rows its column predicates match (see
//! `predicate`).

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::change::{Change, ChangeBatch, Op, RelationInfo};
use super::predicate::{Predicate, Verdict};
use super::stats::StageStats;
use super::transform::TransformMsg;
use crate::postgres::pgoutput::Oid;

pub enum FilterMsg {
    Batch(ChangeBatch),
}

/// Allowed operations per table (`schema.table`).
pub type TableOperations = HashMap<String, Vec<Operation>>;

pub struct FilterArgs {
    pub tables: TableOperations,
    /// Column predicates by table (`schema.table`).
    pub predicates: HashMap<String, Vec<Predicate>>,
    pub downstream: ActorRef<TransformMsg>,
    pub stats: Arc<StageStats>,
}

pub struct FilterState {
    args: FilterArgs,
    /// Per relation: a bit per allowed `Op` (0 when the table is not streamed).
    allowed: HashMap<Oid, u8>,
    /// Per relation description: its table's predicates with the columns
    /// they read (`None` for a column the table does not have; none at all
    /// for a table without predicates).
    compiled: HashMap<usize, (Arc<RelationInfo>, Compiled)>,
}

/// A table's predicates with their column positions.
type Compiled = Vec<(usize, Predicate)>;

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
            compiled: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<FilterMsg>,
        msg: FilterMsg,
        state: &mut FilterState,
    ) -> Result<(), ActorProcessingErr> {
        let FilterMsg::Batch(mut batch) = msg;
        let before = batch.items.len();
        let FilterState {
            args,
            allowed,
            compiled,
        } = state;
        batch.items.retain(|change| {
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
        if !args.predicates.is_empty() {
            let mut failed = None;
            batch.items.retain_mut(|change| {
                if failed.is_some() {
                    return true;
                }
                match compile(compiled, &change.rel, &args.predicates) {
                    Ok(compiled) => matches(compiled, change),
                    Err(e) => {
                        failed = Some(e);
                        true
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
        let after = batch.items.len();
        args.stats.batch(before, after);
        if before > after {
            args.stats.dropped(before - after);
        }
        args.downstream.cast(TransformMsg::Batch(batch))?;
        Ok(())
    }
}

/// The predicates of `rel`'s table with their columns, compiled once per
/// relation description: a change costs one lookup by pointer. A predicate
/// on a column the table does not have is an error: ignoring it would index
/// every row.
fn compile<'c>(
    cache: &'c mut HashMap<usize, (Arc<RelationInfo>, Compiled)>,
    rel: &Arc<RelationInfo>,
    predicates: &HashMap<String, Vec<Predicate>>,
) -> crate::error::Result<&'c Compiled> {
    let key = Arc::as_ptr(rel) as usize;
    let known = cache
        .get(&key)
        .is_some_and(|(known, _)| Arc::ptr_eq(known, rel));
    if !known {
        let compiled = predicates
            .get(&*rel.qualified)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(j, p)| {
                let at = rel.require_column(&format!("where[{j}]"), &p.column)?;
                Ok((at, p.clone()))
            })
            .collect::<crate::error::Result<_>>()?;
        cache.insert(key, (rel.clone(), compiled));
    }
    Ok(&cache[&key].1)
}

/// Whether `change` goes on; an update to a row that no longer matches
/// becomes a delete of its document.
fn matches(compiled: &Compiled, change: &mut Change) -> bool {
    let row = match change.op {
        Op::Insert | Op::Read | Op::Update => change.new.as_ref(),
        Op::Delete | Op::Truncate => return true,
    };
    let Some(row) = row else { return true };
    let fails = compiled
        .iter()
        .any(|(at, predicate)| predicate.check(row, *at) == Verdict::Fails);
    if !fails {
        return true;
    }
    if change.op == Op::Update {
        // The row may have matched before: its document goes.
        change.op = Op::Delete;
        change.old = change.new.take();
        return true;
    }
    false
}

/// Operations a table can emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Operation {
    pub const ALL: [Operation; 4] = [
        Operation::Insert,
        Operation::Update,
        Operation::Delete,
        Operation::Truncate,
    ];
}
