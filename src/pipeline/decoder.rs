//! The decoder: pgoutput messages into changes, with the relation cache, the
//! type mapping and the transaction boundaries that define acknowledgeable positions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::change::RawBatch;
use super::change::{Change, ChangeBatch, ColumnInfo, Op, RelationInfo, Scope, ANNOTATIONS_PREFIX};
use super::filter::FilterMsg;
use super::stats::StageStats;
use crate::backfill::seam::{self, Released, Seam, BACKFILL_PIECE};
use crate::backfill::Chunk;
use crate::lsn::Lsn;
use crate::model::flow::Credit;
use crate::model::ident::TableName;
use crate::postgres::catalog;
use crate::postgres::pgoutput::{self, Message, Oid, OldTuple};
use crate::postgres::replication::ReplicationEvent;
use crate::postgres::types::TypeKind;

pub enum DecoderMsg {
    Raw(RawBatch),
    /// A backfill's chunk, inserted at its high watermark.
    Chunk(Chunk),
}

pub struct DecoderArgs {
    /// For type lookups of columns whose types are not built in.
    pub sql: Arc<tokio_postgres::Client>,
    pub downstream: ActorRef<FilterMsg>,
    pub stats: Arc<StageStats>,
    /// The prefix of this deployment's backfill watermarks
    /// (`backfill::window::prefix`); others' are ignored.
    pub watermark_prefix: Arc<str>,
    /// The streamed tables' oids when the pipeline was set up.
    pub table_oids: Arc<BTreeMap<String, Oid>>,
    /// Where the lag is kept: the batches read, and the server's position.
    pub status: Arc<super::status::PipelineStatus>,
}

pub struct DecoderState {
    args: DecoderArgs,
    relations: HashMap<Oid, Arc<RelationInfo>>,
    /// Relations of streamed tables' names dropped since: their changes
    /// are skipped.
    dropped: HashSet<Oid>,
    types: HashMap<Oid, TypeKind>,
    in_transaction: bool,
    commit_lsn: Lsn,
    commit_time: i64,
    seq: u32,
    /// Annotations the application set on the transaction being decoded.
    annotations: Option<Arc<str>>,
    upto: Lsn,
    /// The transaction being decoded.
    xid: u32,
    /// Where backfill chunks enter the stream.
    backfills: Seam,
    /// Batches closed early in the current raw batch (at a chunk), and the
    /// credits of that raw batch, which every piece of it shares.
    pieces: Vec<ChangeBatch>,
    credits: Vec<Arc<Credit>>,
    /// `sluice_changes_total` of each table, by operation.
    counted: HashMap<Oid, [metrics::Counter; 4]>,
}

pub struct Decoder;

impl Actor for Decoder {
    type Msg = DecoderMsg;
    type State = DecoderState;
    type Arguments = DecoderArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<DecoderMsg>,
        args: DecoderArgs,
    ) -> Result<DecoderState, ActorProcessingErr> {
        Ok(DecoderState {
            backfills: Seam::new(args.watermark_prefix.clone()),
            args,
            relations: HashMap::new(),
            dropped: HashSet::new(),
            types: HashMap::new(),
            in_transaction: false,
            commit_lsn: Lsn::ZERO,
            commit_time: 0,
            seq: 0,
            annotations: None,
            upto: Lsn::ZERO,
            xid: 0,
            pieces: Vec::new(),
            credits: Vec::new(),
            counted: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<DecoderMsg>,
        msg: DecoderMsg,
        state: &mut DecoderState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DecoderMsg::Raw(raw) => {
                for batch in state.decode_batch(raw).await? {
                    state.args.downstream.cast(FilterMsg::Batch(batch))?;
                }
            }
            DecoderMsg::Chunk(chunk) => state.backfills.accept(chunk),
        }
        Ok(())
    }
}

impl DecoderState {
    /// Decodes a raw batch into one change batch, or several when backfill
    /// chunks enter the stream inside it.
    async fn decode_batch(
        &mut self,
        raw: RawBatch,
    ) -> Result<Vec<ChangeBatch>, ActorProcessingErr> {
        self.credits = raw.credit.map(Arc::new).into_iter().collect();
        let mut changes = Vec::with_capacity(raw.events.len());
        let n = raw.events.len();
        let mut server_at = Lsn::ZERO;
        for event in raw.events {
            match event {
                ReplicationEvent::XLogData { data, end, .. } => {
                    server_at = server_at.max(end);
                    match pgoutput::decode(&data) {
                        Ok(message) => self.apply(message, &mut changes).await?,
                        Err(e) => self
                            .args
                            .stats
                            .bad_record(format!("undecodable pgoutput message: {e}")),
                    }
                }
                ReplicationEvent::Keepalive { wal_end, .. } => {
                    server_at = server_at.max(wal_end);
                    // Everything committed before the server's position has been
                    // sent already; outside a transaction that position is ours too.
                    if !self.in_transaction {
                        self.upto = self.upto.max(wal_end);
                    }
                }
            }
        }
        let mut batches = std::mem::take(&mut self.pieces);
        batches.push(ChangeBatch {
            items: changes,
            upto: self.upto,
            credits: std::mem::take(&mut self.credits),
            last: raw.last,
            scope: Scope::All,
        });
        let out = batches.iter().map(|b| b.items.len()).sum();
        self.args.stats.batch(n, out);
        if let Some(oldest) = batches.iter().find_map(|b| b.items.first()) {
            self.args.stats.left(oldest.commit_time);
        }
        self.args.status.server_at(server_at);
        for batch in batches.iter().filter(|b| b.scope == Scope::All) {
            if let (Some(first), Some(last)) = (batch.items.first(), batch.items.last()) {
                self.args
                    .status
                    .read(batch.upto, first.commit_time, last.commit_time);
            }
            count(&mut self.counted, &batch.items);
        }
        Ok(batches)
    }

    async fn apply(
        &mut self,
        message: Message,
        out: &mut Vec<Change>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                self.xid = xid;
                self.in_transaction = true;
                self.commit_lsn = final_lsn;
                self.commit_time = commit_time;
                self.seq = 0;
                self.annotations = None;
            }
            Message::Commit { end_lsn, .. } => {
                self.in_transaction = false;
                self.upto = self.upto.max(end_lsn);
            }
            Message::Relation(relation) => {
                let info = self.relation_info(relation).await?;
                if self.of_dropped_table(&info).await? {
                    self.relations.remove(&info.id);
                    self.dropped.insert(info.id);
                } else {
                    self.dropped.remove(&info.id);
                    self.relations.insert(info.id, Arc::new(info));
                }
            }
            Message::Insert { relation_id, new } => {
                if let Some(rel) = self.relation(relation_id) {
                    self.backfills.saw(&rel, self.xid, Some(&[&new]));
                    out.push(self.change(Op::Insert, rel, Some(new), None));
                }
            }
            Message::Update {
                relation_id,
                old,
                new,
            } => {
                if let Some(rel) = self.relation(relation_id) {
                    let old = old.map(|o| match o {
                        OldTuple::Key(t) | OldTuple::Full(t) => t,
                    });
                    match &old {
                        Some(old) => self.backfills.saw(&rel, self.xid, Some(&[&new, old])),
                        None => self.backfills.saw(&rel, self.xid, Some(&[&new])),
                    }
                    let fill_unchanged = self.backfills.needs_unchanged(&rel, &new);
                    let mut change = self.change(Op::Update, rel, Some(new), old);
                    change.fill_unchanged = fill_unchanged;
                    out.push(change);
                }
            }
            Message::Delete { relation_id, old } => {
                if let Some(rel) = self.relation(relation_id) {
                    let old = match old {
                        OldTuple::Key(t) | OldTuple::Full(t) => t,
                    };
                    self.backfills.saw(&rel, self.xid, Some(&[&old]));
                    out.push(self.change(Op::Delete, rel, None, Some(old)));
                }
            }
            Message::Truncate { relation_ids, .. } => {
                for id in relation_ids {
                    if let Some(rel) = self.relation(id) {
                        self.backfills.saw(&rel, self.xid, None);
                        out.push(self.change(Op::Truncate, rel, None, None));
                    }
                }
            }
            Message::Message {
                transactional: true,
                prefix,
                content,
                ..
            } if prefix == ANNOTATIONS_PREFIX => {
                match serde_json::from_slice::<serde_json::Value>(&content) {
                    Ok(value @ serde_json::Value::Object(_)) => {
                        self.annotations = Some(Arc::from(value.to_string()));
                    }
                    _ => self.args.stats.bad_record(format!(
                        "transaction annotations ({ANNOTATIONS_PREFIX}) that are not a JSON object"
                    )),
                }
            }
            Message::Message {
                prefix, content, ..
            } => match self.backfills.message(&prefix, &content) {
                seam::Message::Released(chunk) => self.enter(chunk, out),
                seam::Message::Unreadable => self
                    .args
                    .stats
                    .bad_record("a backfill watermark that cannot be read".to_owned()),
                seam::Message::NotOurs | seam::Message::Marked => {}
            },
            Message::Type { .. } | Message::Origin { .. } => {}
        }
        Ok(())
    }

    /// A chunk released at its high watermark enters the stream here, as
    /// batches of its own for its sink, after everything before it.
    fn enter(&mut self, mut chunk: Released, out: &mut Vec<Change>) {
        // Everything before the watermark goes first, for every sink.
        self.pieces.push(ChangeBatch {
            items: std::mem::take(out),
            upto: self.upto,
            credits: self.credits.clone(),
            last: false,
            scope: Scope::All,
        });
        let rel = self.same_relation(&chunk.rel);
        let scope = Scope::Backfill {
            sink: chunk.sink,
            commit_above: self.commit_lsn,
        };
        let credits: Vec<Arc<Credit>> = chunk.credit.take().map(Arc::new).into_iter().collect();
        // In pieces, so the stages after work on a chunk at the same time.
        let mut kept = 0;
        let mut changes = Vec::with_capacity(BACKFILL_PIECE.min(chunk.rows.len()));
        for (row, gone) in std::mem::take(&mut chunk.rows) {
            if changes.len() == BACKFILL_PIECE {
                kept += changes.len();
                self.pieces.push(ChangeBatch {
                    items: std::mem::replace(&mut changes, Vec::with_capacity(BACKFILL_PIECE)),
                    upto: self.upto,
                    credits: credits.clone(),
                    last: false,
                    scope,
                });
            }
            let op = if gone.is_some() { Op::Delete } else { Op::Read };
            let mut change = self.change(op, rel.clone(), row, gone);
            change.retry = chunk.retry;
            changes.push(change);
        }
        kept += changes.len();
        self.pieces.push(ChangeBatch {
            items: changes,
            upto: self.upto,
            credits,
            last: false,
            scope,
        });
        chunk.delivered(self.commit_lsn, kept);
    }

    /// The stream's own description of a chunk's table when it has the same
    /// columns (so later stages keep their per-relation caches), else the
    /// chunk's.
    fn same_relation(&self, rel: &Arc<RelationInfo>) -> Arc<RelationInfo> {
        match self.relations.get(&rel.id) {
            Some(known)
                if known.columns.len() == rel.columns.len()
                    && known
                        .columns
                        .iter()
                        .zip(&rel.columns)
                        .all(|(a, b)| a.name == b.name && a.type_oid == b.type_oid) =>
            {
                known.clone()
            }
            _ => rel.clone(),
        }
    }

    /// Whether `rel` has a streamed table's name but another oid than the
    /// pipeline was set up with: its changes are of a table dropped since
    /// (its rows are gone with it), unless it is the table the catalog has
    /// now, created again while streaming: then the pipeline is set up again.
    async fn of_dropped_table(&self, rel: &RelationInfo) -> Result<bool, ActorProcessingErr> {
        match self.args.table_oids.get(&*rel.qualified) {
            Some(&oid) if oid != rel.id => {}
            _ => return Ok(false),
        }
        let now = catalog::current_oids(&self.args.sql, std::iter::once(&*rel.qualified)).await?;
        if now.get(&*rel.qualified) == Some(&rel.id) {
            return Err(crate::error::Error::new(
                crate::error::ErrorKind::TableRecreated,
                format!("table {} was dropped and created again", rel.qualified),
            )
            .into());
        }
        tracing::info!(table = %rel.qualified, relation = rel.id, "skipping the changes of a table of this name dropped since");
        Ok(true)
    }

    fn relation(&self, id: Oid) -> Option<Arc<RelationInfo>> {
        let rel = self.relations.get(&id).cloned();
        if rel.is_none() && !self.dropped.contains(&id) {
            self.args.stats.bad_record(format!(
                "change for relation {id} arrived before its description"
            ));
        }
        rel
    }

    fn change(
        &mut self,
        op: Op,
        rel: Arc<RelationInfo>,
        new: Option<pgoutput::Tuple>,
        old: Option<pgoutput::Tuple>,
    ) -> Change {
        let seq = self.seq;
        self.seq += 1;
        Change {
            op,
            rel,
            new,
            old,
            commit_lsn: self.commit_lsn,
            commit_time: self.commit_time,
            seq,
            xid: self.xid,
            fill_unchanged: false,
            retry: false,
            annotations: self.annotations.clone(),
        }
    }

    async fn relation_info(
        &mut self,
        relation: pgoutput::Relation,
    ) -> Result<RelationInfo, ActorProcessingErr> {
        let unknown: Vec<Oid> = relation
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|oid| TypeKind::builtin(*oid).is_none() && !self.types.contains_key(oid))
            .collect();
        if !unknown.is_empty() {
            let resolved = catalog::resolve_types(&self.args.sql, &unknown).await?;
            self.types.extend(resolved);
        }
        let columns = relation
            .columns
            .into_iter()
            .map(|c| ColumnInfo {
                kind: TypeKind::builtin(c.type_oid)
                    .or_else(|| self.types.get(&c.type_oid).cloned())
                    .unwrap_or(TypeKind::Text),
                name: c.name,
                type_oid: c.type_oid,
                is_key: c.is_key,
            })
            .collect();
        let name = TableName {
            schema: relation.namespace,
            table: relation.name,
        };
        tracing::debug!(table = %name, id = relation.id, "relation described");
        Ok(RelationInfo {
            id: relation.id,
            qualified: Arc::from(name.to_string()),
            name,
            columns,
            replica_identity: relation.replica_identity,
        })
    }
}

/// Counts the changes of the stream by table and operation
/// (`sluice_changes_total`), once a run of changes of one table and
/// operation, with each table's counters kept in `counted`.
fn count(counted: &mut HashMap<Oid, [metrics::Counter; 4]>, changes: &[Change]) {
    let mut at = 0;
    while let Some(first) = changes.get(at) {
        let run = changes[at..]
            .iter()
            .take_while(|c| c.op == first.op && Arc::ptr_eq(&c.rel, &first.rel))
            .count();
        at += run;
        let op = match first.op {
            Op::Insert => 0,
            Op::Update => 1,
            Op::Delete => 2,
            Op::Truncate => 3,
            Op::Read => continue,
        };
        let counters = counted.entry(first.rel.id).or_insert_with(|| {
            let table = first.rel.qualified.to_string();
            crate::telemetry::CHANGE_OPS.map(|op| {
                metrics::counter!("sluice_changes_total", "table" => table.clone(), "op" => op)
            })
        });
        counters[op].increment(run as u64);
    }
}
