//! The decoder: pgoutput messages into changes, with the relation cache, the
//! type mapping and the transaction boundaries that define acknowledgeable positions.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::change::{Change, ChangeBatch, ColumnInfo, Op, RelationInfo};
use super::filter::FilterMsg;
use super::reader::RawBatch;
use super::stats::StageStats;
use crate::config::TableName;
use crate::lsn::Lsn;
use crate::postgres::catalog;
use crate::postgres::pgoutput::{self, Message, Oid, OldTuple};
use crate::postgres::replication::ReplicationEvent;
use crate::postgres::types::TypeKind;

pub enum DecoderMsg {
    Raw(RawBatch),
}

pub struct DecoderArgs {
    /// For type lookups of columns whose types are not built in.
    pub sql: Arc<tokio_postgres::Client>,
    pub downstream: ActorRef<FilterMsg>,
    pub stats: Arc<StageStats>,
}

pub struct DecoderState {
    args: DecoderArgs,
    relations: HashMap<Oid, Arc<RelationInfo>>,
    types: HashMap<Oid, TypeKind>,
    in_transaction: bool,
    commit_lsn: Lsn,
    commit_time: i64,
    seq: u32,
    upto: Lsn,
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
            args,
            relations: HashMap::new(),
            types: HashMap::new(),
            in_transaction: false,
            commit_lsn: Lsn::ZERO,
            commit_time: 0,
            seq: 0,
            upto: Lsn::ZERO,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<DecoderMsg>,
        msg: DecoderMsg,
        state: &mut DecoderState,
    ) -> Result<(), ActorProcessingErr> {
        let DecoderMsg::Raw(raw) = msg;
        let batch = state.decode_batch(raw).await?;
        state.args.downstream.cast(FilterMsg::Batch(batch))?;
        Ok(())
    }
}

impl DecoderState {
    async fn decode_batch(&mut self, raw: RawBatch) -> Result<ChangeBatch, ActorProcessingErr> {
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
        self.args.stats.batch(n, changes.len());
        Ok(ChangeBatch {
            changes,
            upto: self.upto,
            credits: raw.credit.map(Arc::new).into_iter().collect(),
            last: raw.last,
        })
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
                ..
            } => {
                self.in_transaction = true;
                self.commit_lsn = final_lsn;
                self.commit_time = commit_time;
                self.seq = 0;
            }
            Message::Commit { end_lsn, .. } => {
                self.in_transaction = false;
                self.upto = self.upto.max(end_lsn);
            }
            Message::Relation(relation) => {
                let info = self.relation_info(relation).await?;
                self.relations.insert(info.id, Arc::new(info));
            }
            Message::Insert { relation_id, new } => {
                if let Some(rel) = self.relation(relation_id) {
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
                    out.push(self.change(Op::Update, rel, Some(new), old));
                }
            }
            Message::Delete { relation_id, old } => {
                if let Some(rel) = self.relation(relation_id) {
                    let old = match old {
                        OldTuple::Key(t) | OldTuple::Full(t) => t,
                    };
                    out.push(self.change(Op::Delete, rel, None, Some(old)));
                }
            }
            Message::Truncate { relation_ids, .. } => {
                for id in relation_ids {
                    if let Some(rel) = self.relation(id) {
                        out.push(self.change(Op::Truncate, rel, None, None));
                    }
                }
            }
            Message::Type { .. } | Message::Origin { .. } | Message::Message { .. } => {}
        }
        Ok(())
    }

    fn relation(&self, id: Oid) -> Option<Arc<RelationInfo>> {
        let rel = self.relations.get(&id).cloned();
        if rel.is_none() {
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
