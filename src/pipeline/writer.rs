//! The writer of one sink: takes the shards' writes from the sink's lane and
//! applies them in order per shard, holds truncates as barriers until every
//! shard reached them, commits, and reports the committed position to the
//! acknowledger.
//!
//! It commits as soon as nothing more is ready in the lane: no timer holds a
//! change back. While a commit (an engine's answer) is awaited, the lane
//! fills, so the next commit carries more: batches grow with the load, up to
//! the sink's batch limits and `commit_bytes`. A sink may ask for a spacing
//! between commits (`commit_interval`: the embedded index, whose commits
//! cost segments and merges, or a linger the user chose); a commit then waits
//! until that long after the last one started.
//!
//! A sink whose engine applies writes on its own time (Meilisearch's tasks)
//! confirms its commits later: the writer hands a commit over, goes on with
//! the next writes while the engine works, and acknowledges each commit, and
//! returns its credits, once the sink reports it durable.
//!
//! The committed position is the lowest position every shard has delivered:
//! all changes below it are durable in this sink. Live writes may go before
//! a backfill's rows (see the lane), so the position below which the
//! backfill's rows are durable too is reported apart, for the backfills.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::ack::AckMsg;
use super::change::{Scope, WriteAction, WriteBatch};
use super::lane::Lane;
use super::stats::StageStats;
use crate::lsn::Lsn;
use crate::sink::Sink;

pub enum WriterMsg {
    /// The lane has batches.
    Ready,
    /// Commit if anything is pending and the spacing passed; send parked
    /// writes queued for a retry.
    Tick,
    /// Ask the sink which of the commits it confirms later are durable.
    Confirm,
}

pub struct WriterArgs {
    pub sink_index: usize,
    pub sink: Box<dyn Sink>,
    pub lane: Arc<Lane>,
    pub shards: usize,
    pub ack: ActorRef<AckMsg>,
    /// The least time from the start of one commit to the start of the next
    /// (zero: commit whenever nothing more is ready).
    pub commit_interval: Duration,
    /// Commit early when the batches held since the last commit reach this many bytes.
    pub commit_bytes: u64,
    pub stats: Arc<StageStats>,
    /// Where route functions sent documents: a truncate of a routed table
    /// goes to each of those indexes.
    pub routes: Option<Arc<crate::functions::routes::RouteRecord>>,
}

pub struct WriterState {
    args: WriterArgs,
    shard_upto: Vec<Lsn>,
    shard_last: Vec<bool>,
    /// Shards waiting at a truncate barrier, and what they sent meanwhile.
    blocked: Vec<bool>,
    queues: Vec<VecDeque<WriteBatch>>,
    /// Credits are shared by the pieces of one WAL batch: count each once.
    held_seen: HashSet<usize>,
    held_bytes: u64,
    dirty: bool,
    committed: Lsn,
    /// The position below which backfill rows are durable as well, as reported.
    backfilled: Lsn,
    /// A backfill waits for this position: commit as soon as it is passed.
    commit_above: Lsn,
    last_commit: Instant,
    /// A tick is set for when the spacing between commits passed.
    tick_set: bool,
    finished: bool,
    /// Commits the sink confirms later, oldest first.
    unconfirmed: VecDeque<Unconfirmed>,
    /// How many commits the sink was asked to confirm later.
    commits_later: u64,
    /// A `Confirm` is set for when the sink asked to be looked at again.
    confirm_set: bool,
    /// The commit time of the oldest change written since the last commit
    /// (0: none known).
    oldest: i64,
}

/// A commit the sink confirms later, and what it acknowledges then.
struct Unconfirmed {
    /// Its number among the commits confirmed later, from 1.
    number: u64,
    upto: Lsn,
    backfilled: Lsn,
    last: bool,
    /// The commit time of its oldest change.
    oldest: i64,
}

pub struct Writer;

/// Batches a writer takes from its lane before it lets other messages in
/// (and commits, when the spacing allows).
const BATCHES_PER_TURN: usize = 64;

/// How often parked writes queued for a retry are looked for.
const REPLAY_EVERY: Duration = Duration::from_millis(100);

impl Actor for Writer {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = WriterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WriterMsg>,
        args: WriterArgs,
    ) -> Result<WriterState, ActorProcessingErr> {
        myself.send_interval(REPLAY_EVERY, || WriterMsg::Tick);
        let shards = args.shards;
        Ok(WriterState {
            args,
            shard_upto: vec![Lsn::ZERO; shards],
            shard_last: vec![false; shards],
            blocked: vec![false; shards],
            queues: (0..shards).map(|_| VecDeque::new()).collect(),
            held_seen: HashSet::new(),
            held_bytes: 0,
            dirty: false,
            committed: Lsn::ZERO,
            backfilled: Lsn::ZERO,
            commit_above: Lsn::ZERO,
            last_commit: Instant::now(),
            tick_set: false,
            finished: false,
            unconfirmed: VecDeque::new(),
            commits_later: 0,
            confirm_set: false,
            oldest: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WriterMsg>,
        msg: WriterMsg,
        state: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WriterMsg::Ready => state.take_ready(&myself).await?,
            WriterMsg::Tick => {
                state.tick_set = false;
                // Parked writes queued for a retry go between batches, in
                // order with the rest (not across a truncate barrier).
                if !state.finished && !state.blocked.iter().any(|b| *b) {
                    let at = state.backfilled;
                    if crate::sink::failed::replay(&mut *state.args.sink, at).await? > 0 {
                        state.dirty = true;
                    }
                }
                state.commit_when_due(&myself).await?;
            }
            WriterMsg::Confirm => state.confirm_set = false,
        }
        state.follow_confirmations(&myself).await
    }
}

impl WriterState {
    /// Takes a bounded turn of batches from the lane, so commits on age and
    /// stop requests get in.
    async fn take_ready(&mut self, myself: &ActorRef<WriterMsg>) -> Result<(), ActorProcessingErr> {
        for _ in 0..BATCHES_PER_TURN {
            let Some(batch) = self.args.lane.next()? else {
                // Nothing more is ready: what is pending goes now.
                return self.commit_when_due(myself).await;
            };
            self.receive(batch).await?;
        }
        self.commit_when_due(myself).await?;
        myself.cast(WriterMsg::Ready)?;
        Ok(())
    }

    /// Acknowledges the commits the sink confirmed since it was last asked,
    /// and sets a `Confirm` for when it wants to be asked again.
    async fn follow_confirmations(
        &mut self,
        myself: &ActorRef<WriterMsg>,
    ) -> Result<(), ActorProcessingErr> {
        if self.unconfirmed.is_empty() || self.confirm_set {
            return Ok(());
        }
        let confirmed = self.args.sink.confirmed().await?;
        while let Some(commit) = self
            .unconfirmed
            .front()
            .filter(|c| c.number <= confirmed.commits)
        {
            let (upto, backfilled, last) = (commit.upto, commit.backfilled, commit.last);
            self.args.lane.release_sealed(commit.number);
            self.durable(commit.oldest);
            self.unconfirmed.pop_front();
            self.acknowledge(upto, backfilled, last)?;
        }
        if !self.unconfirmed.is_empty() {
            let again = confirmed.look_again.unwrap_or(Duration::from_millis(10));
            self.confirm_set = true;
            myself.send_after(again, || WriterMsg::Confirm);
        }
        Ok(())
    }

    /// Tells the acknowledger that this sink holds everything below `upto`
    /// (and backfill rows below `backfilled`).
    fn acknowledge(
        &self,
        upto: Lsn,
        backfilled: Lsn,
        last: bool,
    ) -> Result<(), ActorProcessingErr> {
        metrics::gauge!("sluice_sink_committed_lsn", "sink" => self.args.sink.name().to_owned())
            .set(upto.0 as f64);
        self.args.ack.cast(AckMsg::Committed {
            sink: self.args.sink_index,
            upto,
            backfilled,
            last,
        })?;
        Ok(())
    }

    /// Notes the time from the commit of the oldest change of a commit of
    /// this sink to the moment the engine holds it.
    fn durable(&self, oldest: i64) {
        if let Some(age) = super::stats::since_commit(oldest) {
            metrics::histogram!("sluice_end_to_end_latency_seconds", "sink" => self.args.sink.name().to_owned())
                .record(age);
        }
    }

    fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    async fn receive(&mut self, batch: WriteBatch) -> Result<(), ActorProcessingErr> {
        let shard = batch.items.shard;
        if self.blocked[shard] {
            self.queues[shard].push_back(batch);
        } else {
            self.apply(batch).await?;
            self.drain_queues().await?;
        }
        let wanted =
            self.commit_above > self.backfilled && self.backfill_upto() > self.commit_above;
        if !self.finished && self.shard_last.iter().all(|l| *l) {
            self.commit(true).await?;
            self.finished = true;
        } else if wanted || self.held_bytes() >= self.args.commit_bytes {
            self.commit(false).await?;
        }
        Ok(())
    }

    /// Whether a commit would make anything durable or acknowledge anything.
    fn pending(&self) -> bool {
        self.dirty || self.upto() > self.committed || self.backfill_upto() > self.backfilled
    }

    /// Commits what is pending, at once or, with a spacing between commits,
    /// once it passed (a tick is set for then).
    async fn commit_when_due(
        &mut self,
        myself: &ActorRef<WriterMsg>,
    ) -> Result<(), ActorProcessingErr> {
        if self.finished || !self.pending() {
            return Ok(());
        }
        let since = self.last_commit.elapsed();
        if since >= self.args.commit_interval {
            self.commit(false).await?;
        } else if !self.tick_set {
            self.tick_set = true;
            myself.send_after(self.args.commit_interval - since, || WriterMsg::Tick);
        }
        Ok(())
    }

    async fn apply(&mut self, mut batch: WriteBatch) -> Result<(), ActorProcessingErr> {
        let shard = batch.items.shard;
        if let Scope::Backfill { commit_above, .. } = batch.scope {
            self.commit_above = self.commit_above.max(commit_above);
        }
        // The credits are the lane's to hold until the commit (or to let go
        // of, should the sink fall behind while this write waits).
        let credits = std::mem::take(&mut batch.credits);
        for credit in &credits {
            if self.held_seen.insert(Arc::as_ptr(credit) as usize) {
                self.held_bytes += credit.bytes();
            }
        }
        if credits.is_empty() {
            // Read back from the spool: count what it holds instead.
            self.held_bytes += batch.items.bytes;
        }
        self.args.lane.hold(credits);
        if let [op] = batch.items.ops.as_slice() {
            if let WriteAction::Truncate { .. } = op.action {
                self.blocked[shard] = true;
                if self.blocked.iter().all(|b| *b) {
                    // Every shard passed the truncate: every index a route
                    // wrote to before it is in the record.
                    let ops = match &self.args.routes {
                        Some(routes) => routes.truncates(op),
                        None => batch.items.ops.to_vec(),
                    };
                    if let Some(failed) = self.args.sink.failed() {
                        failed.discard_table(&op.table, op.lsn)?;
                    }
                    self.args.sink.write(&ops).await?;
                    self.dirty = true;
                    self.blocked.iter_mut().for_each(|b| *b = false);
                }
                return Ok(());
            }
        }
        if !batch.items.ops.is_empty() {
            if batch.items.commit_time > 0
                && (self.oldest == 0 || batch.items.commit_time < self.oldest)
            {
                self.oldest = batch.items.commit_time;
            }
            let start = Instant::now();
            self.args.sink.write(&batch.items.ops).await?;
            self.dirty = true;
            metrics::histogram!("sluice_sink_write_seconds", "sink" => self.args.sink.name().to_owned())
                .record(start.elapsed().as_secs_f64());
        }
        self.args
            .stats
            .batch(batch.items.ops.len(), batch.items.ops.len());
        self.shard_upto[shard] = self.shard_upto[shard].max(batch.upto);
        self.shard_last[shard] |= batch.last;
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

    /// The position every change below is applied at: the lowest any shard
    /// delivered.
    fn upto(&self) -> Lsn {
        self.shard_upto.iter().copied().min().unwrap_or(Lsn::ZERO)
    }

    /// The position every backfill row below is applied at too: below the
    /// backfill batches live writes went ahead of.
    fn backfill_upto(&self) -> Lsn {
        let upto = self.upto();
        match self.args.lane.unapplied_floor() {
            Some(floor) => upto.min(floor),
            None => upto,
        }
    }

    async fn commit(&mut self, last: bool) -> Result<(), ActorProcessingErr> {
        // The interval runs from the start of a commit: a slow commit does
        // not stretch the time a write waits for the next one.
        let started = Instant::now();
        let upto = self.upto();
        let backfilled = self.backfill_upto();
        if self.dirty || upto > self.committed || backfilled > self.backfilled || last {
            let start = Instant::now();
            // The sink's own record of its position must not pass backfill
            // rows it has not written: it takes writes below it for replays.
            let later = self.args.sink.commit_later(backfilled).await?;
            if !later {
                self.args.sink.commit(backfilled).await?;
            }
            metrics::histogram!("sluice_sink_commit_seconds", "sink" => self.args.sink.name().to_owned())
                .record(start.elapsed().as_secs_f64());
            self.dirty = false;
            self.committed = self.committed.max(upto);
            self.backfilled = self.backfilled.max(backfilled);
            if later {
                // Acknowledged, and its credits returned, once confirmed.
                self.commits_later += 1;
                self.args.lane.seal(self.commits_later);
                self.unconfirmed.push_back(Unconfirmed {
                    number: self.commits_later,
                    upto: self.committed,
                    backfilled: self.backfilled,
                    last,
                    oldest: self.oldest,
                });
            } else {
                self.durable(self.oldest);
                self.acknowledge(self.committed, self.backfilled, last)?;
            }
            self.oldest = 0;
        }
        self.args.lane.release();
        self.held_seen.clear();
        self.held_bytes = 0;
        self.last_commit = started;
        Ok(())
    }
}
