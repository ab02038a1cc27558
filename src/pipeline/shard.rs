//! A key shard: collapses several changes to one document within a batch into
//! its last state (merging unchanged TOAST values from earlier states), encodes
//! documents, and hands the writes to the lane of every sink, in order.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::change::{
    doc_hash, Op, RouteAction, Routed, Scope, ShardBatch, ShardItem, WriteAction, WriteBatch,
    WriteOp, Writes,
};
use super::lane::Lane;
use super::stats::StageStats;
use crate::backfill::seam::BACKFILL_PIECE;
use crate::functions::apply::{Outcome, ShardFunctions};
use crate::functions::FunctionPlan;
use crate::postgres::pgoutput::{ColumnKind, ColumnValue, Tuple};

pub enum ShardMsg {
    Batch(ShardBatch),
}

pub struct ShardArgs {
    pub shard: usize,
    pub lanes: Vec<Arc<Lane>>,
    pub stats: Arc<StageStats>,
    /// The functions tables use, if any.
    pub functions: Option<Arc<FunctionPlan>>,
}

pub struct ShardState {
    args: ShardArgs,
    /// Position in `pending` of the last change per (index, id).
    /// Keyed by a hash of (index, id), so no id is copied per change; the
    /// rare keys whose hash is taken by another key go to `collided`.
    latest: HashMap<u64, usize>,
    collided: HashMap<(Arc<str>, String), usize>,
    pending: Vec<Option<Routed>>,
    /// The position of the last batch sent whole.
    delivered: crate::lsn::Lsn,
    /// This shard's runtime for the functions tables use.
    functions: Option<ShardFunctions>,
}

pub struct Shard;

impl Actor for Shard {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        let functions = match &args.functions {
            Some(plan) => Some(ShardFunctions::new(plan.clone())?),
            None => None,
        };
        Ok(ShardState {
            args,
            latest: HashMap::new(),
            collided: HashMap::new(),
            pending: Vec::new(),
            delivered: crate::lsn::Lsn::ZERO,
            functions,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        let ShardMsg::Batch(batch) = msg;
        let n = batch.items.len();
        let mut written = 0;
        for item in batch.items {
            match item {
                ShardItem::Change(routed) => {
                    let with_functions = state
                        .functions
                        .as_ref()
                        .is_some_and(|f| f.of(&routed.change.rel.qualified).is_some());
                    if with_functions {
                        // Every change goes through the functions, in order:
                        // a filter or route decides per change.
                        state.pending.push(Some(routed));
                    } else {
                        state.collapse(routed);
                    }
                }
                ShardItem::Truncate {
                    index,
                    table,
                    scoped,
                    lsn,
                    barrier,
                } => {
                    // Everything before the truncate goes first, the truncate alone
                    // after. Neither covers this batch's position: the rest of the
                    // batch is not written yet.
                    let delivered = state.delivered;
                    written += state
                        .flush(
                            delivered,
                            &batch.credits,
                            batch.scope,
                            Flush::BeforeTruncate,
                        )
                        .await?;
                    let op = WriteOp {
                        index,
                        table,
                        id: String::new(),
                        lsn,
                        action: WriteAction::Truncate { barrier, scoped },
                        routing: None,
                    };
                    let ops = vec![op];
                    state
                        .send(WriteBatch {
                            items: Writes::new(state.args.shard, ops, 0),
                            upto: delivered,
                            credits: batch.credits.clone(),
                            last: false,
                            scope: batch.scope,
                        })
                        .await?;
                }
            }
        }
        written += state
            .flush(
                batch.upto,
                &batch.credits,
                batch.scope,
                Flush::End { last: batch.last },
            )
            .await?;
        state.delivered = batch.upto;
        state.args.stats.batch(n, written);
        Ok(())
    }
}

impl ShardState {
    fn collapse(&mut self, routed: Routed) {
        let hash = doc_hash(&routed.index, &routed.id);
        let same = |other: &Routed| other.id == routed.id && other.index == routed.index;
        let at = match self.latest.get(&hash) {
            None => {
                self.latest.insert(hash, self.pending.len());
                None
            }
            Some(&at) if self.pending[at].as_ref().is_some_and(same) => Some(at),
            Some(_) => {
                let key = (routed.index.clone(), routed.id.clone());
                match self.collided.get(&key) {
                    Some(&at) => Some(at),
                    None => {
                        self.collided.insert(key, self.pending.len());
                        None
                    }
                }
            }
        };
        match at {
            Some(at) => {
                let previous = self.pending[at]
                    .take()
                    .expect("latest points at a pending change");
                self.pending[at] = Some(merge(previous, routed));
            }
            None => self.pending.push(Some(routed)),
        }
    }

    /// Encodes and sends the collapsed changes. At a batch's end it sends even
    /// an empty batch, so the writers learn the position. A backfill's
    /// rows go in pieces of at most `BACKFILL_PIECE` writes, so that live
    /// writes can go between them (see the lane); only the last piece
    /// carries the position.
    async fn flush(
        &mut self,
        upto: crate::lsn::Lsn,
        credits: &[Arc<crate::model::flow::Credit>],
        scope: Scope,
        why: Flush,
    ) -> Result<usize, ActorProcessingErr> {
        self.latest.clear();
        self.collided.clear();
        let last = match why {
            Flush::BeforeTruncate if self.pending.is_empty() => return Ok(0),
            Flush::BeforeTruncate => false,
            Flush::End { last } => last,
        };
        let piece = match scope {
            Scope::All => usize::MAX,
            Scope::Backfill { .. } => BACKFILL_PIECE,
        };
        let mut pending = std::mem::take(&mut self.pending);
        let oldest = pending
            .iter()
            .flatten()
            .map(|r| r.change.commit_time)
            .filter(|&t| t > 0)
            .min()
            .unwrap_or(0);
        self.args.stats.left(oldest);
        let targets = self.targets(scope, &pending);
        let mut n = 0;
        let count = targets.len();
        for (i, target) in targets.into_iter().enumerate() {
            // The last target takes the changes, the others copies.
            let routed: Vec<Routed> = if i + 1 == count {
                pending.drain(..).flatten().collect()
            } else {
                pending.iter().flatten().cloned().collect()
            };
            let ops = self.writes(routed, target)?;
            if let Some(functions) = self.functions.as_mut() {
                functions.wait_below_max_parked().await;
            }
            let envelope = Envelope {
                upto,
                credits,
                last,
                scope,
                commit_time: oldest,
            };
            n = n.max(self.send_pieces(ops, piece, &envelope, target).await?);
        }
        pending.clear();
        self.pending = pending;
        Ok(n)
    }

    /// Where the pending writes go: every lane in the batch's scope at once,
    /// or, when a function may answer differently per sink
    /// (`metadata.sink`), each lane with writes of its own.
    fn targets(&self, scope: Scope, pending: &[Option<Routed>]) -> Vec<Target> {
        let per_sink = self.functions.as_ref().is_some_and(|f| {
            f.sinks() > 1
                && pending
                    .iter()
                    .flatten()
                    .any(|r| f.of(&r.change.rel.qualified).is_some())
        });
        match scope {
            Scope::Backfill { sink, .. } => vec![Target::Lane(sink)],
            Scope::All if per_sink => (0..self.args.lanes.len()).map(Target::Lane).collect(),
            Scope::All => vec![Target::All],
        }
    }

    /// The writes of `routed`, through the functions of their tables.
    fn writes(
        &mut self,
        routed: Vec<Routed>,
        target: Target,
    ) -> Result<Vec<WriteOp>, ActorProcessingErr> {
        let Some(functions) = self.functions.as_mut() else {
            return Ok(routed.into_iter().map(|r| encode(r, None)).collect());
        };
        let sink = match target {
            Target::Lane(lane) => functions.sink_name(lane).map(str::to_owned),
            Target::All if functions.sinks() == 1 => functions.sink_name(0).map(str::to_owned),
            Target::All => None,
        };
        let run = || -> Result<Vec<WriteOp>, ActorProcessingErr> {
            let mut ops = Vec::with_capacity(routed.len());
            for routed in routed {
                if functions.of(&routed.change.rel.qualified).is_none() {
                    ops.push(encode(routed, None));
                    continue;
                }
                if routed.change.retry {
                    retried(functions, routed, sink.as_deref(), &mut ops)?;
                    continue;
                }
                match functions.apply(routed, sink.as_deref())? {
                    Outcome::Write { routed, doc, left } => {
                        if let Some(left) = left {
                            // The route sends the row elsewhere now: its
                            // document leaves the index it was in first.
                            ops.push(delete_from(left, &routed));
                        }
                        ops.push(encode(routed, doc));
                    }
                    Outcome::Filtered | Outcome::Failed => {}
                }
            }
            Ok(ops)
        };
        // Functions run on a budget, but a long one must not hold up the
        // other tasks of this worker thread.
        let ops = tokio::task::block_in_place(run);
        functions.log_parked();
        ops
    }

    /// Sends `ops` to `target` in pieces of at most `piece` writes; only the
    /// last piece carries the position.
    async fn send_pieces(
        &self,
        ops: Vec<WriteOp>,
        piece: usize,
        envelope: &Envelope<'_>,
        target: Target,
    ) -> Result<usize, ActorProcessingErr> {
        let n = ops.len();
        let batch = |ops: Vec<WriteOp>, upto, last| WriteBatch {
            items: Writes::new(self.args.shard, ops, envelope.commit_time),
            upto,
            credits: envelope.credits.to_vec(),
            last,
            scope: envelope.scope,
        };
        let (upto, last) = (envelope.upto, envelope.last);
        // Pieces taken off the front, each write moved once.
        let mut ops = ops.into_iter();
        while ops.len() > piece {
            let full: Vec<WriteOp> = ops.by_ref().take(piece).collect();
            self.send_to(batch(full, self.delivered, false), target)
                .await?;
        }
        self.send_to(batch(ops.collect(), upto, last), target)
            .await?;
        Ok(n)
    }

    async fn send_to(&self, batch: WriteBatch, target: Target) -> Result<(), ActorProcessingErr> {
        match target {
            Target::All => self.send(batch).await,
            Target::Lane(lane) => {
                if let Some(lane) = self.args.lanes.get(lane) {
                    lane.send(batch).await?;
                }
                Ok(())
            }
        }
    }

    /// Hands a batch to the lane of every sink it is for (lanes are in the
    /// order of the sinks).
    async fn send(&self, batch: WriteBatch) -> Result<(), ActorProcessingErr> {
        if let Scope::Backfill { sink, .. } = batch.scope {
            if let Some(lane) = self.args.lanes.get(sink) {
                lane.send(batch).await?;
            }
            return Ok(());
        }
        if let [lanes @ .., last] = self.args.lanes.as_slice() {
            for lane in lanes {
                lane.send(batch.clone()).await?;
            }
            last.send(batch).await?;
        }
        Ok(())
    }
}

/// The writes of a row a retry of parked function calls backfilled, or
/// found gone: what the functions say for the row now, and the document
/// leaves every other index it may be in (while its calls were parked, the
/// row may have moved to another route, been filtered out, or deleted).
fn retried(
    functions: &mut ShardFunctions,
    routed: Routed,
    sink: Option<&str>,
    ops: &mut Vec<WriteOp>,
) -> Result<(), ActorProcessingErr> {
    let table = routed.change.rel.qualified.clone();
    let everywhere = functions
        .routed_indexes(&table)
        .unwrap_or_else(|| vec![routed.index.to_string()]);
    let delete = delete_from(routed.index.clone(), &routed);
    let written = if routed.change.op == Op::Delete {
        // Gone: there is no row to run the functions on.
        None
    } else {
        match functions.apply(routed, sink)? {
            Outcome::Write { routed, doc, .. } if routed.action == RouteAction::Upsert => {
                let index = routed.index.clone();
                ops.push(encode(routed, doc));
                Some(index)
            }
            Outcome::Write { .. } | Outcome::Filtered => None,
            // Parked again: its documents stay as they are until then.
            Outcome::Failed => return Ok(()),
        }
    };
    for index in everywhere {
        if written.as_deref() != Some(index.as_str()) {
            ops.push(WriteOp {
                index: index.into(),
                ..delete.clone()
            });
        }
    }
    Ok(())
}

/// A delete of `routed`'s document from `index`.
fn delete_from(index: Arc<str>, routed: &Routed) -> WriteOp {
    WriteOp {
        index,
        table: routed.change.rel.qualified.clone(),
        id: routed.id.clone(),
        lsn: routed.change.commit_lsn,
        action: WriteAction::Delete,
        routing: routed.routing.clone(),
    }
}

/// Why the shard flushes what it collapsed.
#[derive(Debug, Clone, Copy)]
enum Flush {
    /// A truncate comes next: what is pending goes first, if anything.
    BeforeTruncate,
    /// The end of a batch (`last`: the last before shutdown).
    End { last: bool },
}

/// What every piece of one flush carries besides its writes.
struct Envelope<'a> {
    upto: crate::lsn::Lsn,
    credits: &'a [Arc<crate::model::flow::Credit>],
    last: bool,
    scope: Scope,
    /// The commit time of the flush's oldest change.
    commit_time: i64,
}

/// Where a shard's writes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Every lane the batch's scope includes.
    All,
    /// One lane.
    Lane(usize),
}

/// The state after `next` was applied to `previous` (same document).
fn merge(previous: Routed, mut next: Routed) -> Routed {
    // Whether a document existed before the batch depends on its first change.
    next.fresh = previous.fresh;
    if next.action == RouteAction::Upsert && previous.action == RouteAction::Upsert {
        if let (Some(prev), Some(new)) = (previous.change.new.as_ref(), next.change.new.as_ref()) {
            if new.has_unchanged() {
                next.change.new = Some(fill_unchanged(new, prev));
            }
        }
    }
    next
}

/// A copy of `tuple` whose unchanged columns take their value from `from`.
fn fill_unchanged(tuple: &Tuple, from: &Tuple) -> Tuple {
    let mut data = BytesMut::new();
    let mut columns = Vec::with_capacity(tuple.columns.len());
    for (i, column) in tuple.columns.iter().enumerate() {
        // Only a real value replaces an unchanged one: a key-only old tuple has
        // NULLs in its other columns, which say nothing about the row.
        let from_has_value = matches!(from.kind(i), ColumnKind::Text | ColumnKind::Binary);
        let (source, value) = if column.kind == ColumnKind::Unchanged && from_has_value {
            (from, from.columns[i])
        } else {
            (tuple, *column)
        };
        let start = data.len() as u32;
        let bytes = match value.kind {
            ColumnKind::Text | ColumnKind::Binary => source.value(i).unwrap_or_default(),
            _ => &[],
        };
        data.extend_from_slice(bytes);
        columns.push(ColumnValue {
            kind: value.kind,
            start,
            len: bytes.len() as u32,
        });
    }
    Tuple {
        data: data.freeze(),
        columns,
    }
}

/// The write of `routed`; its document is `made` by a transform function,
/// or encoded from the row in the table's shape.
fn encode(routed: Routed, made: Option<Vec<u8>>) -> WriteOp {
    let Routed {
        change,
        action,
        index,
        shape,
        id,
        routing,
        fresh,
    } = routed;
    let action = match action {
        RouteAction::Delete => WriteAction::Delete,
        RouteAction::Upsert => {
            let mut new = change.new.expect("upserts carry a new row");
            // With REPLICA IDENTITY FULL the old row holds unchanged TOAST values.
            if new.has_unchanged() {
                if let Some(old) = change.old.as_ref() {
                    new = fill_unchanged(&new, old);
                }
            }
            let (mut doc, partial) = match made {
                // Made by a transform function; fields from columns the WAL
                // left out are kept from the stored document.
                Some(doc) => (doc, new.has_unchanged()),
                None => {
                    let mut doc = Vec::with_capacity(new.data.len() + shape.fields.len() * 16 + 2);
                    let complete = shape.encode(&new, &mut doc);
                    (doc, !complete)
                }
            };
            shape.tag(&mut doc);
            WriteAction::Upsert {
                doc,
                partial,
                fresh,
            }
        }
    };
    WriteOp {
        index,
        table: change.rel.qualified.clone(),
        id,
        lsn: change.commit_lsn,
        action,
        routing,
    }
}
