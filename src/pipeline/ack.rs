//! The acknowledger: the position every sink has committed, published to the
//! reader, which confirms it to Postgres as the slot's flush position.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;

use super::status::PipelineStatus;
use crate::lsn::Lsn;

/// What may be confirmed to Postgres.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckState {
    /// Every change below this position is durable in every sink.
    pub lsn: Lsn,
    /// Every sink committed its last batch (shutdown).
    pub drained: bool,
}

pub enum AckMsg {
    /// Sink `sink` committed every change below `upto`, and every backfill
    /// row below `backfilled` (which trails `upto` while live writes went
    /// ahead of backfill rows).
    Committed {
        sink: usize,
        upto: Lsn,
        backfilled: Lsn,
        last: bool,
    },
}

pub struct AckArgs {
    pub sinks: usize,
    pub publish: watch::Sender<AckState>,
    /// The position each sink committed backfill rows below, for backfills
    /// waiting on one sink.
    pub positions: watch::Sender<Vec<Lsn>>,
    pub status: Arc<PipelineStatus>,
}

pub struct AckActorState {
    args: AckArgs,
    committed: Vec<Lsn>,
    backfilled: Vec<Lsn>,
    last: Vec<bool>,
}

pub struct Acknowledger;

impl Actor for Acknowledger {
    type Msg = AckMsg;
    type State = AckActorState;
    type Arguments = AckArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<AckMsg>,
        args: AckArgs,
    ) -> Result<AckActorState, ActorProcessingErr> {
        let sinks = args.sinks;
        Ok(AckActorState {
            args,
            committed: vec![Lsn::ZERO; sinks],
            backfilled: vec![Lsn::ZERO; sinks],
            last: vec![false; sinks],
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<AckMsg>,
        msg: AckMsg,
        state: &mut AckActorState,
    ) -> Result<(), ActorProcessingErr> {
        let AckMsg::Committed {
            sink,
            upto,
            backfilled,
            last,
        } = msg;
        state.committed[sink] = state.committed[sink].max(upto);
        state.last[sink] |= last;
        if backfilled > state.backfilled[sink] {
            state.backfilled[sink] = backfilled;
            state.args.positions.send_replace(state.backfilled.clone());
        }
        let lsn = state.committed.iter().copied().min().unwrap_or(Lsn::ZERO);
        state.args.status.committed(sink, upto, lsn);
        let drained = state.last.iter().all(|l| *l);
        state.args.publish.send_if_modified(|current| {
            let next = AckState {
                lsn: current.lsn.max(lsn),
                drained,
            };
            let changed = next != *current;
            *current = next;
            changed
        });
        Ok(())
    }
}
