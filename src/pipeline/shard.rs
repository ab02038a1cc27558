//! A key shard: collapses several changes to one document within a batch into
//! its last state (merging unchanged TOAST values from earlier states), encodes
//! documents, and hands the writes to the lane of every sink, in order.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::change::{
    doc_hash, RouteAction, Routed, Scope, ShardBatch, ShardItem, WriteAction, WriteBatch, WriteOp,
};
use super::lane::{batch_bytes, Lane};
use super::stats::StageStats;
use crate::postgres::pgoutput::{ColumnKind, ColumnValue, Tuple};

/// The most writes of a backfill's chunk the shard hands over in one batch.
const BACKFILL_PIECE: usize = 512;

pub enum ShardMsg {
    Batch(ShardBatch),
}

pub struct ShardArgs {
    pub shard: usize,
    pub lanes: Vec<Arc<Lane>>,
    pub stats: Arc<StageStats>,
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
        Ok(ShardState {
            args,
            latest: HashMap::new(),
            collided: HashMap::new(),
            pending: Vec::new(),
            delivered: crate::lsn::Lsn::ZERO,
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
                ShardItem::Change(routed) => state.collapse(routed),
                ShardItem::Truncate {
                    index,
                    table,
                    lsn,
                    barrier,
                } => {
                    // Everything before the truncate goes first, the truncate alone
                    // after. Neither covers this batch's position: the rest of the
                    // batch is not written yet.
                    let delivered = state.delivered;
                    written += state
                        .flush(delivered, &batch.credits, false, true, batch.scope)
                        .await?;
                    let op = WriteOp {
                        index,
                        table,
                        id: String::new(),
                        lsn,
                        action: WriteAction::Truncate { barrier },
                        routing: None,
                    };
                    let ops = vec![op];
                    state
                        .send(WriteBatch {
                            shard: state.args.shard,
                            bytes: batch_bytes(&ops),
                            ops: Arc::new(ops),
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
            .flush(batch.upto, &batch.credits, batch.last, false, batch.scope)
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

    /// Encodes and sends the collapsed changes. Sends even an empty batch so
    /// the writers learn the position (unless `only_if_any`). A backfill's
    /// rows go in pieces of at most `BACKFILL_PIECE` writes, so that live
    /// writes can go between them (see the lane); only the last piece
    /// carries the position.
    async fn flush(
        &mut self,
        upto: crate::lsn::Lsn,
        credits: &[Arc<super::flow::Credit>],
        last: bool,
        only_if_any: bool,
        scope: Scope,
    ) -> Result<usize, ActorProcessingErr> {
        self.latest.clear();
        self.collided.clear();
        if only_if_any && self.pending.is_empty() {
            return Ok(0);
        }
        let piece = match scope {
            Scope::All => usize::MAX,
            Scope::Backfill { .. } => BACKFILL_PIECE,
        };
        let mut pending = std::mem::take(&mut self.pending);
        let mut ops = Vec::with_capacity(pending.len().min(piece));
        let mut n = 0;
        for routed in pending.drain(..).flatten() {
            if ops.len() == piece {
                let full = std::mem::replace(&mut ops, Vec::with_capacity(piece));
                n += full.len();
                self.send(WriteBatch {
                    shard: self.args.shard,
                    bytes: batch_bytes(&full),
                    ops: Arc::new(full),
                    upto: self.delivered,
                    credits: credits.to_vec(),
                    last: false,
                    scope,
                })
                .await?;
            }
            ops.push(encode(routed));
        }
        self.pending = pending;
        n += ops.len();
        self.send(WriteBatch {
            shard: self.args.shard,
            bytes: batch_bytes(&ops),
            ops: Arc::new(ops),
            upto,
            credits: credits.to_vec(),
            last,
            scope,
        })
        .await?;
        Ok(n)
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

/// The state after `next` was applied to `previous` (same document).
fn merge(previous: Routed, mut next: Routed) -> Routed {
    // Whether a document existed before the batch depends on its first change.
    next.fresh = previous.fresh;
    if next.action == RouteAction::Upsert && previous.action == RouteAction::Upsert {
        if let (Some(prev), Some(new)) = (previous.change.new.as_ref(), next.change.new.as_ref()) {
            if has_unchanged(new) {
                next.change.new = Some(fill_unchanged(new, prev));
            }
        }
    }
    next
}

fn has_unchanged(tuple: &Tuple) -> bool {
    tuple
        .columns
        .iter()
        .any(|c| c.kind == ColumnKind::Unchanged)
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

fn encode(routed: Routed) -> WriteOp {
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
            if has_unchanged(&new) {
                if let Some(old) = change.old.as_ref() {
                    new = fill_unchanged(&new, old);
                }
            }
            let mut doc = Vec::with_capacity(new.data.len() + shape.fields.len() * 16 + 2);
            let complete = shape.encode(&new, &mut doc);
            WriteAction::Upsert {
                doc,
                partial: !complete,
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
