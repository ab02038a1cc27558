//! The decoder: pgoutput messages into changes, with the relation cache, the
//! type mapping and the transaction boundaries that define acknowledgeable positions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::change::RawBatch;
use super::change::{Change, ChangeBatch, ColumnInfo, Op, RelationInfo, Scope, ANNOTATIONS_PREFIX};
use super::filter::FilterMsg;
use super::stats::StageStats;
use crate::backfill::chunk::parse_copy;
use crate::backfill::window::{self, Mark, Marker, Verdict, Windows};
use crate::backfill::{Chunk, ChunkOutcome};
use crate::lsn::Lsn;
use crate::model::flow::Credit;
use crate::model::ident::TableName;
use crate::postgres::catalog;
use crate::postgres::pgoutput::{self, ColumnKind, Message, Oid, OldTuple, Tuple};
use crate::postgres::replication::ReplicationEvent;
use crate::postgres::types::TypeKind;

/// The most rows of a backfill's chunk in one batch.
const CHUNK_PIECE: usize = 1024;

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
    /// The prefix of this deployment's watermarks (`window::prefix`);
    /// others' are ignored.
    pub watermark_prefix: Arc<str>,
    /// The streamed tables' oids when the pipeline was set up.
    pub table_oids: Arc<BTreeMap<String, Oid>>,
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
    /// Backfill windows, and the chunks waiting for their high watermark,
    /// by backfill and chunk number (a backfill has a few chunks in flight).
    windows: Windows,
    chunks: BTreeMap<(u64, u64), Waiting>,
    /// Batches closed early in the current raw batch (at a chunk), and the
    /// credits of that raw batch, which every piece of it shares.
    pieces: Vec<ChangeBatch>,
    credits: Vec<Arc<Credit>>,
}

pub struct Decoder;

/// A backfill chunk waiting for its high watermark, split into rows, with
/// the hashes of their keys.
struct Waiting {
    chunk: Chunk,
    rows: Vec<Tuple>,
    keys: Vec<Option<u64>>,
}

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
            windows: Windows::default(),
            chunks: BTreeMap::new(),
            pieces: Vec::new(),
            credits: Vec::new(),
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
            DecoderMsg::Chunk(chunk) => {
                // Attempts number their chunks upwards, so chunks of the
                // backfill numbered as high or higher are an earlier
                // attempt's from before a clock step back: they never met
                // their high watermark.
                state.retry_chunks((chunk.backfill, chunk.number)..=(chunk.backfill, u64::MAX));
                match parse_copy(&chunk.copy, chunk.rel.columns.len()) {
                    Ok(rows) => {
                        let keys = rows
                            .iter()
                            .chain(chunk.gone.iter().flatten())
                            .map(|row| window::key_hash(row, &chunk.key_columns))
                            .collect();
                        state.chunks.insert(
                            (chunk.backfill, chunk.number),
                            Waiting { chunk, rows, keys },
                        );
                    }
                    Err(e) => {
                        let _ = chunk.reply.send(ChunkOutcome::Unreadable(e.to_string()));
                    }
                }
            }
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
        for event in raw.events {
            match event {
                ReplicationEvent::XLogData { data, .. } => match pgoutput::decode(&data) {
                    Ok(message) => self.apply(message, &mut changes).await?,
                    Err(e) => self
                        .args
                        .stats
                        .bad_record(format!("undecodable pgoutput message: {e}")),
                },
                ReplicationEvent::Keepalive { wal_end, .. } => {
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
                    if !self.windows.is_empty() {
                        self.windows.record(&rel, self.xid, Some(&[&new]));
                    }
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
                    let mut fill_unchanged = false;
                    if !self.windows.is_empty() {
                        match &old {
                            Some(old) => self.windows.record(&rel, self.xid, Some(&[&new, old])),
                            None => self.windows.record(&rel, self.xid, Some(&[&new])),
                        }
                        fill_unchanged = self.windows.tracks(rel.id)
                            && new.columns.iter().any(|c| c.kind == ColumnKind::Unchanged);
                    }
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
                    if !self.windows.is_empty() {
                        self.windows.record(&rel, self.xid, Some(&[&old]));
                    }
                    out.push(self.change(Op::Delete, rel, None, Some(old)));
                }
            }
            Message::Truncate { relation_ids, .. } => {
                for id in relation_ids {
                    if let Some(rel) = self.relation(id) {
                        if !self.windows.is_empty() {
                            self.windows.record(&rel, self.xid, None);
                        }
                        out.push(self.change(Op::Truncate, rel, None, None));
                    }
                }
            }
            Message::Message {
                prefix, content, ..
            } if *prefix == *self.args.watermark_prefix => match Marker::parse(&content) {
                Some(marker) if marker.mark == Mark::High => self.high(&marker, out),
                Some(marker) => self.windows.mark(&marker),
                None => self
                    .args
                    .stats
                    .bad_record("a backfill watermark that cannot be read".to_owned()),
            },
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
            Message::Type { .. } | Message::Origin { .. } | Message::Message { .. } => {}
        }
        Ok(())
    }

    /// Sends the waiting chunks at `at` (backfill, chunk number) back to be
    /// read again.
    fn retry_chunks(&mut self, at: impl std::ops::RangeBounds<(u64, u64)>) {
        let stale: Vec<(u64, u64)> = self.chunks.range(at).map(|(at, _)| *at).collect();
        for at in stale {
            if let Some(old) = self.chunks.remove(&at) {
                let _ = old.chunk.reply.send(ChunkOutcome::Retry);
            }
        }
    }

    /// A high watermark: the chunk it closes enters the stream here, as a
    /// batch of its own for its sink, less the rows its window says are stale.
    fn high(&mut self, marker: &Marker, out: &mut Vec<Change>) {
        // Earlier chunks of the backfill never met their high watermark.
        self.retry_chunks((marker.backfill, 0)..(marker.backfill, marker.chunk));
        let Some(Waiting {
            mut chunk,
            rows,
            keys,
        }) = self.chunks.remove(&(marker.backfill, marker.chunk))
        else {
            // Its chunk is gone (the backfill stopped), or the watermark is
            // an earlier run's, read again after a restart: close the window.
            self.windows
                .high(marker.backfill, marker.chunk, &Default::default(), &[]);
            return;
        };
        let keep = match self
            .windows
            .high(marker.backfill, marker.chunk, &chunk.snapshot, &keys)
        {
            Verdict::Insert(keep) => keep,
            Verdict::Retry => {
                let _ = chunk.reply.send(ChunkOutcome::Retry);
                return;
            }
        };
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
        let credits: Vec<Arc<Credit>> = chunk.credit.map(Arc::new).into_iter().collect();
        // In pieces, so the stages after work on a chunk at the same time.
        let mut kept = 0;
        let mut changes = Vec::with_capacity(CHUNK_PIECE);
        // The rows as read, then the rows asked for that are gone (deleted).
        let retry = chunk.gone.is_some();
        let gone = chunk.gone.take().unwrap_or_default();
        let rows = (rows.into_iter().map(|row| (Some(row), None)))
            .chain(gone.into_iter().map(|key| (None, Some(key))));
        for ((row, gone), keep) in rows.zip(keep) {
            if !keep {
                continue;
            }
            if changes.len() == CHUNK_PIECE {
                kept += changes.len();
                self.pieces.push(ChangeBatch {
                    items: std::mem::replace(&mut changes, Vec::with_capacity(CHUNK_PIECE)),
                    upto: self.upto,
                    credits: credits.clone(),
                    last: false,
                    scope,
                });
            }
            let op = if gone.is_some() { Op::Delete } else { Op::Read };
            let mut change = self.change(op, rel.clone(), row, gone);
            change.retry = retry;
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
        let _ = chunk.reply.send(ChunkOutcome::Delivered {
            lsn: self.commit_lsn,
            kept,
        });
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
