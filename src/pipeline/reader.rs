//! The WAL reader: reads the replication stream in batches, takes flow-control
//! credits for them before reading, and reports the acknowledged position back
//! to Postgres. When the budget is spent it stops reading the socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;

use super::ack::AckState;
use super::change::RawBatch;
use super::decoder::DecoderMsg;
use super::slot::ConfirmLedger;
use super::stats::StageStats;
use crate::lsn::Lsn;
use crate::model::flow::FlowControl;
use crate::postgres::conninfo::ConnInfo;
use crate::postgres::replication::{ReplicationConnection, ReplicationEvent};

pub struct ReaderArgs {
    /// How long a drain may take before shutdown gives up waiting
    /// (`pipeline.drain_timeout_ms`).
    pub drain_timeout: Duration,
    pub conninfo: ConnInfo,
    pub slot: String,
    pub publication: String,
    pub flow: FlowControl,
    pub downstream: ActorRef<DecoderMsg>,
    pub acks: watch::Receiver<AckState>,
    pub batch_max_changes: usize,
    pub batch_max_bytes: u64,
    pub linger: Duration,
    pub status_interval: Duration,
    pub stats: Arc<StageStats>,
    /// Where each position is recorded before it is confirmed (`None`:
    /// confirmed as soon as every sink acknowledged it).
    pub ledger: Option<ConfirmLedger>,
}

pub enum ReaderMsg {
    /// Read the next batch.
    Poll,
    /// Stop reading, flush the pipeline, confirm the final position and stop.
    Drain,
}

pub struct ReaderState {
    args: ReaderArgs,
    conn: Option<ReplicationConnection>,
    confirmed: Lsn,
    last_status: Instant,
    draining: bool,
}

pub struct Reader;

impl Actor for Reader {
    type Msg = ReaderMsg;
    type State = ReaderState;
    type Arguments = ReaderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ReaderMsg>,
        args: ReaderArgs,
    ) -> Result<ReaderState, ActorProcessingErr> {
        let mut conn = ReplicationConnection::connect(&args.conninfo).await?;
        conn.start_replication(&args.slot, Lsn::ZERO, &args.publication)
            .await?;
        tracing::info!(slot = %args.slot, publication = %args.publication, source = %args.conninfo, "replication started");
        myself.cast(ReaderMsg::Poll)?;
        let confirmed = args.acks.borrow().lsn;
        Ok(ReaderState {
            args,
            conn: Some(conn),
            confirmed,
            last_status: Instant::now(),
            draining: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ReaderMsg>,
        msg: ReaderMsg,
        state: &mut ReaderState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ReaderMsg::Poll if !state.draining => {
                state.poll().await?;
                myself.cast(ReaderMsg::Poll)?;
            }
            ReaderMsg::Poll => {}
            ReaderMsg::Drain => {
                state.draining = true;
                state.args.downstream.cast(DecoderMsg::Raw(RawBatch {
                    events: Vec::new(),
                    credit: None,
                    last: true,
                }))?;
                let mut acks = state.args.acks.clone();
                let drain_timeout = state.args.drain_timeout;
                let timed_out = tokio::time::timeout(drain_timeout, acks.wait_for(|s| s.drained))
                    .await
                    .is_err();
                if timed_out {
                    tracing::warn!(drain_timeout_ms = drain_timeout.as_millis() as u64, "the pipeline did not drain within pipeline.drain_timeout_ms; unacknowledged changes will be read again at the next start");
                }
                let lsn = state.args.acks.borrow().lsn;
                if let Some(mut conn) = state.conn.take() {
                    let recorded = match &state.args.ledger {
                        Some(ledger) => ledger.record(lsn).await,
                        None => Ok(()),
                    };
                    if let Err(e) = recorded {
                        tracing::warn!(error = %e, "the final position is not confirmed: it is read again at the next start");
                    } else if lsn > state.confirmed {
                        conn.send_status(lsn, false).await?;
                        tracing::info!(confirmed = %lsn, "confirmed final position");
                    }
                    conn.close().await;
                }
                myself.stop(Some("drained".into()));
            }
        }
        Ok(())
    }
}

impl ReaderState {
    async fn poll(&mut self) -> Result<(), ActorProcessingErr> {
        let credit = loop {
            match self
                .args
                .flow
                .acquire_timeout(self.args.batch_max_bytes, self.args.status_interval)
                .await
            {
                Some((credit, waited)) => {
                    if waited > Duration::from_millis(1) {
                        self.args.stats.blocked(waited);
                    }
                    break credit;
                }
                // Waiting on writes: keep the server's timeout at bay meanwhile.
                None => self.send_status(false).await?,
            }
        };
        let conn = self.conn.as_mut().expect("connected while polling");
        let mut events = Vec::with_capacity(self.args.batch_max_changes.min(8192));
        let idle = self.args.status_interval.min(Duration::from_millis(500));
        let bytes = conn
            .read_events(
                &mut events,
                self.args.batch_max_changes,
                self.args.batch_max_bytes as usize,
                self.args.linger,
                idle,
            )
            .await?;
        let reply_requested = events.iter().any(|e| {
            matches!(
                e,
                ReplicationEvent::Keepalive {
                    reply_requested: true,
                    ..
                }
            )
        });
        let credit = credit.shrink_to(bytes as u64);
        let changed = self.confirmable() > self.confirmed;
        if reply_requested || changed || self.last_status.elapsed() >= self.args.status_interval {
            // Ask for a keepalive when idle, so an idle slot advances too.
            self.send_status(events.is_empty()).await?;
        }
        if !events.is_empty() {
            let n = events.len();
            self.args.stats.batch(n, n);
            metrics::counter!("sluice_wal_bytes_total").increment(bytes as u64);
            self.args.downstream.cast(DecoderMsg::Raw(RawBatch {
                events,
                credit: Some(credit),
                last: false,
            }))?;
        }
        Ok(())
    }

    /// The position every sink acknowledged, as far as it is recorded.
    fn confirmable(&self) -> Lsn {
        let acked = self.args.acks.borrow().lsn;
        match &self.args.ledger {
            Some(ledger) => ledger.allowed(acked),
            None => acked,
        }
    }

    async fn send_status(&mut self, reply_requested: bool) -> Result<(), ActorProcessingErr> {
        let lsn = self.confirmable();
        if let Some(conn) = self.conn.as_mut() {
            conn.send_status(lsn, reply_requested).await?;
        }
        if lsn > self.confirmed {
            tracing::debug!(confirmed = %lsn, "confirmed position");
            metrics::gauge!("sluice_confirmed_lsn").set(lsn.0 as f64);
        }
        self.confirmed = lsn;
        self.last_status = Instant::now();
        Ok(())
    }
}
