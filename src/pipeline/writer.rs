//! The writer of one sink: applies the shards' writes in order per shard,
//! holds truncates as barriers until every shard reached them, commits on age
//! or held bytes, and reports the committed position to the acknowledger.
//!
//! The committed position is the lowest position every shard has delivered:
//! all changes below it are durable in this sink.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::ack::AckMsg;
use super::change::{WriteAction, WriteBatch};
use super::flow::Credit;
use super::stats::StageStats;
use crate::lsn::Lsn;
use crate::sink::Sink;

pub enum WriterMsg {
    Batch(WriteBatch),
    /// Commit if anything is pending.
    Tick,
}

pub struct WriterArgs {
    pub sink_index: usize,
    pub sink: Box<dyn Sink>,
    pub shards: usize,
    pub ack: ActorRef<AckMsg>,
    pub commit_interval: Duration,
    /// Commit early when the batches held since the last commit reach this many bytes.
    pub commit_bytes: u64,
    pub stats: Arc<StageStats>,
}

pub struct WriterState {
    args: WriterArgs,
    shard_upto: Vec<Lsn>,
    shard_last: Vec<bool>,
    /// Shards waiting at a truncate barrier, and what they sent meanwhile.
    blocked: Vec<bool>,
    queues: Vec<VecDeque<WriteBatch>>,
    held: Vec<Arc<Credit>>,
    /// Credits are shared by the pieces of one WAL batch: count each once.
    held_seen: HashSet<usize>,
    held_bytes: u64,
    dirty: bool,
    committed: Lsn,
    last_commit: Instant,
    finished: bool,
}

pub struct Writer;

impl Actor for Writer {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = WriterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WriterMsg>,
        args: WriterArgs,
    ) -> Result<WriterState, ActorProcessingErr> {
        let tick = (args.commit_interval / 4).max(Duration::from_millis(5));
        myself.send_interval(tick, || WriterMsg::Tick);
        let shards = args.shards;
        Ok(WriterState {
            args,
            shard_upto: vec![Lsn::ZERO; shards],
            shard_last: vec![false; shards],
            blocked: vec![false; shards],
            queues: (0..shards).map(|_| VecDeque::new()).collect(),
            held: Vec::new(),
            held_seen: HashSet::new(),
            held_bytes: 0,
            dirty: false,
            committed: Lsn::ZERO,
            last_commit: Instant::now(),
            finished: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<WriterMsg>,
        msg: WriterMsg,
        state: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WriterMsg::Batch(batch) => {
                let shard = batch.shard;
                if state.blocked[shard] {
                    state.queues[shard].push_back(batch);
                } else {
                    state.apply(batch).await?;
                    state.drain_queues().await?;
                }
                if !state.finished && state.shard_last.iter().all(|l| *l) {
                    state.commit(true).await?;
                    state.finished = true;
                } else if state.held_bytes() >= state.args.commit_bytes {
                    state.commit(false).await?;
                }
            }
            WriterMsg::Tick => {
                if !state.finished && state.last_commit.elapsed() >= state.args.commit_interval {
                    state.commit(false).await?;
                }
            }
        }
        Ok(())
    }
}

impl WriterState {
    fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    async fn apply(&mut self, batch: WriteBatch) -> Result<(), ActorProcessingErr> {
        let shard = batch.shard;
        if let [op] = batch.ops.as_slice() {
            if let WriteAction::Truncate { .. } = op.action {
                self.blocked[shard] = true;
                if self.blocked.iter().all(|b| *b) {
                    self.args.sink.write(&batch.ops).await?;
                    self.dirty = true;
                    self.blocked.iter_mut().for_each(|b| *b = false);
                }
                return Ok(());
            }
        }
        if !batch.ops.is_empty() {
            let start = Instant::now();
            self.args.sink.write(&batch.ops).await?;
            self.dirty = true;
            metrics::histogram!("sluice_sink_write_seconds", "sink" => self.args.sink.name().to_owned())
                .record(start.elapsed().as_secs_f64());
        }
        self.args.stats.batch(batch.ops.len(), batch.ops.len());
        self.shard_upto[shard] = self.shard_upto[shard].max(batch.upto);
        self.shard_last[shard] |= batch.last;
        for credit in batch.credits {
            if self.held_seen.insert(Arc::as_ptr(&credit) as usize) {
                self.held_bytes += credit.bytes();
            }
            self.held.push(credit);
        }
        Ok(())
    }

    /// Applies what blocked shards queued, once the barrier they waited on passed.
    async fn drain_queues(&mut self) -> Result<(), ActorProcessingErr> {
        loop {
            let mut progressed = false;
            for shard in 0..self.queues.len() {
                while !self.blocked[shard] {
                    let Some(batch) = self.queues[shard].pop_front() else {
                        break;
                    };
                    self.apply(batch).await?;
                    progressed = true;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    async fn commit(&mut self, last: bool) -> Result<(), ActorProcessingErr> {
        let upto = self.shard_upto.iter().copied().min().unwrap_or(Lsn::ZERO);
        if self.dirty || upto > self.committed || last {
            let start = Instant::now();
            self.args.sink.commit(upto).await?;
            metrics::histogram!("sluice_sink_commit_seconds", "sink" => self.args.sink.name().to_owned())
                .record(start.elapsed().as_secs_f64());
            self.dirty = false;
            self.committed = self.committed.max(upto);
            self.args.ack.cast(AckMsg::Committed {
                sink: self.args.sink_index,
                upto: self.committed,
                last,
            })?;
        }
        self.held.clear();
        self.held_seen.clear();
        self.held_bytes = 0;
        self.last_commit = Instant::now();
        Ok(())
    }
}
