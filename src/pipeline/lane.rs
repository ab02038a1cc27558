//! A sink's lane: how the shards hand writes to one sink's writer without
//! ever waiting for that sink, so that one slow or broken sink does not stall
//! the others.
//!
//! The lane is the writer's queue. While the writer keeps up, batches wait in
//! memory, holding their flow-control credits. When a lane of a pipeline with
//! several sinks holds more than its share of bytes, or its oldest batch has
//! waited too long (the sink is slow or down), the lane *spills*: what it holds
//! and everything after it goes to a spool file in the data directory, and the
//! lane lets go of its credits and of those its writer holds uncommitted, so
//! the reader and the other sinks get the whole budget back. The writer reads
//! the spool back in order when it is ready; once the spool is empty the lane
//! holds batches in memory again.
//!
//! Live writes go before a backfill's: a backfill's chunk may hold thousands
//! of rows for a slow sink, and a live change behind it would wait until the
//! sink took them all. A live write may go first unless it is a truncate or
//! the last batch, or a partial document of a row a queued backfill write
//! holds; a live write of a row a queued backfill write holds supersedes that
//! (older) write, which is then left out. The writer's committed position
//! stays below every backfill batch not applied yet, so neither the backfill
//! nor the slot goes past rows the sink does not have.
//!
//! The spool is a cache, not a log: the slot's confirmed position never passes
//! what the sink committed, so after a restart Postgres sends everything again,
//! and a new lane starts with an empty spool. A spool that reaches
//! `spool_max_bytes` holds the shards back: the pipeline then waits for that
//! sink, and Postgres keeps the WAL.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::change::{doc_hash, Scope, WriteAction, WriteBatch, WriteOp};
use super::spool::{remove_spool_files, Spool};
use crate::error::Result;
use crate::lsn::Lsn;
use crate::model::flow::Credit;

/// How often a lane checks whether its oldest batch waited too long.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// When a lane spills to its spool.
#[derive(Debug, Clone, Copy)]
pub struct SpillPolicy {
    /// Bytes of writes waiting in memory beyond which the lane spills.
    pub memory_bytes: u64,
    /// The lane spills when its oldest batch waited this long.
    pub max_wait: Duration,
    /// The spool holds at most this many bytes; beyond, the shards wait.
    pub spool_max_bytes: u64,
}

impl SpillPolicy {
    /// A lane that never spills: with a single sink there is nobody to keep
    /// going, and the WAL is best kept by Postgres.
    pub fn never() -> SpillPolicy {
        SpillPolicy {
            memory_bytes: u64::MAX,
            max_wait: Duration::MAX,
            spool_max_bytes: 0,
        }
    }
}

/// One sink's queue of write batches.
/// Tells the lane's writer there is work (a stopped writer means the
/// pipeline is restarting: the call does nothing then).
pub type Wake = Box<dyn Fn() + Send + Sync>;

pub struct Lane {
    sink: String,
    dir: PathBuf,
    policy: SpillPolicy,
    wake: OnceLock<Wake>,
    state: Mutex<LaneState>,
}

/// A batch waiting in memory.
struct Queued {
    at: Instant,
    /// Order of arrival.
    seq: u64,
    batch: WriteBatch,
    /// A live batch that may go before backfill batches that arrived earlier.
    overtakes: bool,
}

struct LaneState {
    /// Live batches in memory, in order (only while not spooling).
    queue: VecDeque<Queued>,
    /// Backfill batches in memory, in order.
    backfill: VecDeque<Queued>,
    queued_bytes: u64,
    next_seq: u64,
    /// Backfill writes in `backfill`, by document (`doc_hash`), but for the
    /// last `uncounted` batches: counted only when a live batch needs to
    /// know, so a lane whose writer keeps up never hashes a backfill row.
    backfill_docs: HashMap<u64, u32>,
    uncounted: usize,
    /// Documents a live batch wrote: backfill writes of them that arrived
    /// before that batch (by `seq`) are stale.
    superseded: HashMap<u64, u64>,
    /// Positions of backfill batches not handed to the writer yet, in
    /// memory or spooled, with their number.
    unapplied: BTreeMap<Lsn, usize>,
    /// Credits of batches the writer applied but has not committed.
    held: Vec<Arc<Credit>>,
    /// The credits of commits a sink has not confirmed yet, oldest first
    /// (sinks that confirm their commits later).
    /// By the commit's number.
    sealed: VecDeque<(u64, Vec<Arc<Credit>>)>,
    spool: Option<Spool>,
    /// The writer was told there is work and has not found the lane empty since.
    woken: bool,
}

impl Lane {
    /// A lane for `sink`, spooling under `dir` (emptied now: a spool left by an
    /// earlier run is stale, Postgres sends its writes again).
    pub fn new(sink: &str, dir: PathBuf, policy: SpillPolicy) -> Arc<Lane> {
        remove_spool_files(&dir);
        let lane = Arc::new(Lane {
            sink: sink.to_owned(),
            dir,
            policy,
            wake: OnceLock::new(),
            state: Mutex::new(LaneState {
                queue: VecDeque::new(),
                backfill: VecDeque::new(),
                queued_bytes: 0,
                next_seq: 0,
                backfill_docs: HashMap::new(),
                uncounted: 0,
                superseded: HashMap::new(),
                unapplied: BTreeMap::new(),
                held: Vec::new(),
                sealed: VecDeque::new(),
                spool: None,
                woken: false,
            }),
        });
        if policy.max_wait != Duration::MAX {
            tokio::spawn(watch(Arc::downgrade(&lane)));
        }
        lane
    }

    /// Connects the writer the lane wakes when work arrives.
    pub fn attach(&self, wake: Wake) {
        let _ = self.wake.set(wake);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a batch for the writer: in memory while it keeps up, in the
    /// spool when it does not. Waits only while the spool is full.
    pub async fn send(&self, batch: WriteBatch) -> Result<()> {
        let mut warned = false;
        loop {
            {
                let mut state = self.lock();
                let empty = state.queue.is_empty() && state.backfill.is_empty();
                if state.spool.is_none()
                    && (empty || state.queued_bytes + batch.items.bytes <= self.policy.memory_bytes)
                {
                    state.queue_in_memory(batch);
                    self.wake(&mut state);
                    return Ok(());
                }
                if state.spool.is_none() {
                    self.spill(&mut state, "more writes wait for it than its share")?;
                }
                let pending = {
                    let LaneState {
                        spool, unapplied, ..
                    } = &mut *state;
                    let spool = spool.as_mut().expect("spilled");
                    if spool.pending() < self.policy.spool_max_bytes {
                        spool.append(&batch)?;
                        if let Scope::Backfill { .. } = batch.scope {
                            *unapplied.entry(batch.upto).or_default() += 1;
                        }
                        Some(spool.pending())
                    } else {
                        None
                    }
                };
                if let Some(pending) = pending {
                    self.report_spooled(pending);
                    self.wake(&mut state);
                    return Ok(());
                }
            }
            if !warned {
                warned = true;
                tracing::warn!(
                    sink = %self.sink,
                    spool_max_bytes = self.policy.spool_max_bytes,
                    "the sink's spool is full: the pipeline waits for it"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn wake(&self, state: &mut LaneState) {
        if !state.woken {
            if let Some(wake) = self.wake.get() {
                state.woken = true;
                wake();
            }
        }
    }

    /// Moves what waits in memory to a new spool and lets go of every credit.
    fn spill(&self, state: &mut LaneState, why: &str) -> Result<()> {
        let mut spool = Spool::create(&self.dir)?;
        // In order of arrival, less what live writes superseded (some of
        // those may be applied already).
        let mut waiting: Vec<Queued> = state.queue.drain(..).collect();
        for mut queued in std::mem::take(&mut state.backfill) {
            state.leave_out_superseded(&mut queued);
            waiting.push(queued);
        }
        waiting.sort_by_key(|queued| queued.seq);
        for queued in &waiting {
            spool.append(&queued.batch)?;
        }
        state.backfill_docs.clear();
        state.uncounted = 0;
        state.superseded.clear();
        tracing::warn!(
            sink = %self.sink,
            spooled_bytes = spool.pending(),
            dir = %self.dir.display(),
            "the sink is falling behind ({why}): spooling its writes to disk so the other sinks go on"
        );
        metrics::counter!("sluice_sink_spills_total", "sink" => self.sink.clone()).increment(1);
        state.queued_bytes = 0;
        state.held.clear();
        state.sealed.clear();
        state.spool = Some(spool);
        Ok(())
    }

    /// The next batch for the writer, or `None` when the lane is empty (the
    /// writer is woken again when work arrives).
    pub fn next(&self) -> Result<Option<WriteBatch>> {
        let mut state = self.lock();
        if let Some(batch) = state.next_in_memory() {
            return Ok(Some(batch));
        }
        let LaneState {
            spool, unapplied, ..
        } = &mut *state;
        if let Some(spool) = spool.as_mut() {
            if let Some(batch) = spool.read()? {
                if let Scope::Backfill { .. } = batch.scope {
                    applied(unapplied, batch.upto);
                }
                self.report_spooled(spool.pending());
                return Ok(Some(batch));
            }
            state.spool = None;
            tracing::info!(sink = %self.sink, "the sink caught up with its spool");
        }
        state.woken = false;
        Ok(None)
    }

    /// The lowest position of a backfill batch the writer has not been handed
    /// yet: its committed position must stay at or below it.
    pub fn unapplied_floor(&self) -> Option<Lsn> {
        self.lock().unapplied.keys().next().copied()
    }

    /// Keeps the credits of an applied batch until the writer commits, unless
    /// the lane spooled meanwhile (then nothing of this sink holds credits).
    pub fn hold(&self, credits: Vec<Arc<Credit>>) {
        let mut state = self.lock();
        if state.spool.is_none() {
            state.held.extend(credits);
        }
    }

    fn report_spooled(&self, pending: u64) {
        metrics::gauge!("sluice_sink_spooled_bytes", "sink" => self.sink.clone())
            .set(pending as f64);
    }

    /// Returns the credits of everything committed.
    pub fn release(&self) {
        let held = std::mem::take(&mut self.lock().held);
        drop(held);
    }

    /// Keeps the credits held so far for commit `commit`, which the sink
    /// confirms later.
    pub fn seal(&self, commit: u64) {
        let mut state = self.lock();
        let held = std::mem::take(&mut state.held);
        state.sealed.push_back((commit, held));
    }

    /// Returns the credits of the commits up to `commit`, now confirmed.
    pub fn release_sealed(&self, commit: u64) {
        let mut released = Vec::new();
        let mut state = self.lock();
        while state.sealed.front().is_some_and(|(n, _)| *n <= commit) {
            released.extend(state.sealed.pop_front().map(|(_, held)| held));
        }
        drop(state);
        drop(released);
    }

    /// Spills when the oldest batch waited longer than the policy allows.
    fn check_age(&self) {
        let mut state = self.lock();
        let too_old = [state.queue.front(), state.backfill.front()]
            .into_iter()
            .flatten()
            .any(|queued| queued.at.elapsed() > self.policy.max_wait);
        if too_old && state.spool.is_none() {
            if let Err(e) = self.spill(&mut state, "its oldest write waits too long") {
                tracing::error!(sink = %self.sink, error = %e, "cannot spool the sink's writes");
            }
        }
    }
}

impl LaneState {
    fn queue_in_memory(&mut self, batch: WriteBatch) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queued_bytes += batch.items.bytes;
        let at = Instant::now();
        if let Scope::Backfill { .. } = batch.scope {
            self.uncounted += 1;
            *self.unapplied.entry(batch.upto).or_default() += 1;
            self.backfill.push_back(Queued {
                at,
                seq,
                batch,
                overtakes: false,
            });
        } else {
            let overtakes = self.may_overtake(&batch, seq);
            self.queue.push_back(Queued {
                at,
                seq,
                batch,
                overtakes,
            });
        }
    }

    /// Whether live batch `batch` (arriving as `seq`) may go before the
    /// backfill batches queued now; if so, their writes of the documents it
    /// writes are superseded.
    fn may_overtake(&mut self, batch: &WriteBatch, seq: u64) -> bool {
        if batch.last {
            return false;
        }
        if self.backfill.is_empty() || batch.items.ops.is_empty() {
            return true;
        }
        self.count_backfill_docs();
        let mut held = Vec::new();
        for op in batch.items.ops.iter() {
            let doc = || doc_hash(&op.index, &op.id);
            match op.action {
                WriteAction::Truncate { .. } => return false,
                // Merges into the document as the backfill wrote it.
                WriteAction::Upsert { partial: true, .. } => {
                    if self.backfill_docs.contains_key(&doc()) {
                        return false;
                    }
                }
                WriteAction::Upsert { .. } | WriteAction::Delete => {
                    let doc = doc();
                    if self.backfill_docs.contains_key(&doc) {
                        held.push(doc);
                    }
                }
            }
        }
        for doc in held {
            self.superseded.insert(doc, seq);
        }
        true
    }

    /// Counts the documents of the backfill batches not counted yet.
    fn count_backfill_docs(&mut self) {
        let first = self.backfill.len() - self.uncounted;
        for queued in self.backfill.range(first..) {
            for op in queued.batch.items.ops.iter() {
                *self
                    .backfill_docs
                    .entry(doc_hash(&op.index, &op.id))
                    .or_default() += 1;
            }
        }
        self.uncounted = 0;
    }

    /// A live batch first when it may go before the backfill batches ahead
    /// of it, else the oldest backfill batch.
    fn next_in_memory(&mut self) -> Option<WriteBatch> {
        let live_first = match (self.queue.front(), self.backfill.front()) {
            (Some(live), Some(backfill)) => live.overtakes || live.seq < backfill.seq,
            (live, _) => live.is_some(),
        };
        let queued = if live_first {
            self.queue.pop_front()?
        } else {
            let counted = self.backfill.len() > self.uncounted;
            let mut queued = self.backfill.pop_front()?;
            applied(&mut self.unapplied, queued.batch.upto);
            if counted {
                for op in queued.batch.items.ops.iter() {
                    let doc = doc_hash(&op.index, &op.id);
                    if let Some(count) = self.backfill_docs.get_mut(&doc) {
                        *count -= 1;
                        if *count == 0 {
                            self.backfill_docs.remove(&doc);
                        }
                    }
                }
            } else {
                self.uncounted -= 1;
            }
            self.leave_out_superseded(&mut queued);
            if self.backfill.is_empty() {
                self.superseded.clear();
            }
            queued
        };
        self.queued_bytes -= queued.batch.items.bytes;
        Some(queued.batch)
    }

    /// Drops the writes of a backfill batch that a later live write superseded.
    fn leave_out_superseded(&self, queued: &mut Queued) {
        if self.superseded.is_empty() {
            return;
        }
        let stale = |op: &WriteOp| {
            self.superseded
                .get(&doc_hash(&op.index, &op.id))
                .is_some_and(|by| *by > queued.seq)
        };
        if queued.batch.items.ops.iter().any(stale) {
            Arc::make_mut(&mut queued.batch.items.ops).retain(|op| !stale(op));
        }
    }
}

/// Counts a backfill batch at `upto` as handed to the writer.
fn applied(unapplied: &mut BTreeMap<Lsn, usize>, upto: Lsn) {
    if let Some(count) = unapplied.get_mut(&upto) {
        *count -= 1;
        if *count == 0 {
            unapplied.remove(&upto);
        }
    }
}

/// Checks a lane's age limit until the lane is gone.
async fn watch(lane: Weak<Lane>) {
    let mut interval = tokio::time::interval(WATCH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(lane) = lane.upgrade() else { return };
        lane.check_age();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::pipeline::change::Writes;
    use crate::pipeline::spool::tests::{batch, same};

    #[tokio::test]
    async fn a_lane_spills_when_full_and_returns_to_memory_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let lane = Lane::new(
            "s",
            dir.path().join("spool"),
            SpillPolicy {
                memory_bytes: 1000,
                max_wait: Duration::from_secs(60),
                spool_max_bytes: 1 << 30,
            },
        );
        let flow = crate::model::flow::FlowControl::new(1 << 20);
        let mut sent = Vec::new();
        for i in 0..20 {
            let plain = batch(0, i, 5);
            let mut with_credits = plain.clone();
            with_credits.credits = vec![Arc::new(flow.acquire(10_000).await.0)];
            sent.push(plain);
            lane.send(with_credits).await.unwrap();
        }
        // Spilled: nothing of the lane holds credits any more.
        assert!(lane.lock().spool.is_some());
        assert_eq!(flow.in_flight(), 0);
        for expected in &sent {
            same(expected, &lane.next().unwrap().unwrap());
        }
        assert!(lane.next().unwrap().is_none());
        assert!(lane.lock().spool.is_none(), "back to memory");
        lane.send(batch(1, 99, 1)).await.unwrap();
        assert_eq!(lane.next().unwrap().unwrap().upto, Lsn(99));
    }

    #[tokio::test]
    async fn a_lane_spills_when_its_oldest_batch_waits_too_long() {
        let dir = tempfile::tempdir().unwrap();
        let lane = Lane::new(
            "s",
            dir.path().join("spool"),
            SpillPolicy {
                memory_bytes: 1 << 30,
                max_wait: Duration::from_millis(50),
                spool_max_bytes: 1 << 30,
            },
        );
        lane.send(batch(0, 1, 3)).await.unwrap();
        assert!(lane.lock().spool.is_none());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(lane.lock().spool.is_some());
        assert_eq!(lane.next().unwrap().unwrap().upto, Lsn(1));
    }

    /// A batch of upserts (or a truncate: id `!truncate`) of `ids`.
    fn writes(upto: u64, ids: &[&str], backfill: bool, partial: bool) -> WriteBatch {
        let ops: Vec<WriteOp> = ids
            .iter()
            .map(|id| WriteOp {
                index: Arc::from("items"),
                table: Arc::from("public.items"),
                id: id.to_string(),
                routing: None,
                lsn: Lsn(upto),
                action: match *id {
                    "!truncate" => WriteAction::Truncate {
                        barrier: 1,
                        scoped: false,
                    },
                    "!delete" => WriteAction::Delete,
                    _ => WriteAction::Upsert {
                        doc: b"{}".to_vec(),
                        partial,
                        fresh: false,
                    },
                },
            })
            .collect();
        WriteBatch {
            items: Writes::new(0, ops, 0),
            upto: Lsn(upto),
            credits: Vec::new(),
            last: false,
            scope: if backfill {
                Scope::Backfill {
                    sink: 0,
                    commit_above: Lsn(upto + 1),
                }
            } else {
                Scope::All
            },
        }
    }

    fn ids(batch: &WriteBatch) -> Vec<&str> {
        batch.items.ops.iter().map(|op| op.id.as_str()).collect()
    }

    fn memory_lane(dir: &Path) -> Arc<Lane> {
        Lane::new("s", dir.join("spool"), SpillPolicy::never())
    }

    #[tokio::test]
    async fn live_writes_go_before_a_backfill_and_supersede_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let lane = memory_lane(dir.path());
        lane.send(writes(10, &["a"], false, false)).await.unwrap();
        lane.send(writes(20, &["b", "c"], true, false))
            .await
            .unwrap();
        lane.send(writes(20, &["d"], true, false)).await.unwrap();
        lane.send(writes(30, &["c", "x"], false, false))
            .await
            .unwrap();
        lane.send(writes(40, &["c", "e"], true, false))
            .await
            .unwrap();
        assert_eq!(lane.unapplied_floor(), Some(Lsn(20)));
        // In order up to the first backfill batch, then the live one ahead.
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["a"]);
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["c", "x"]);
        // The backfill's older write of c is left out; the later one stays.
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["b"]);
        assert_eq!(lane.unapplied_floor(), Some(Lsn(20)));
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["d"]);
        assert_eq!(lane.unapplied_floor(), Some(Lsn(40)));
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["c", "e"]);
        assert_eq!(lane.unapplied_floor(), None);
        assert!(lane.next().unwrap().is_none());
    }

    #[tokio::test]
    async fn backfill_rows_are_counted_only_once_a_live_write_asks() {
        let dir = tempfile::tempdir().unwrap();
        let lane = memory_lane(dir.path());
        lane.send(writes(20, &["c"], true, false)).await.unwrap();
        // A batch without writes counts nothing.
        lane.send(writes(25, &[], false, false)).await.unwrap();
        assert_eq!(lane.lock().uncounted, 1);
        // A live write counts the backfill batches queued so far.
        lane.send(writes(30, &["x"], false, false)).await.unwrap();
        assert_eq!(lane.lock().uncounted, 0);
        lane.send(writes(40, &["c"], true, false)).await.unwrap();
        assert_eq!(lane.lock().uncounted, 1);
        assert_eq!(ids(&lane.next().unwrap().unwrap()), Vec::<&str>::new());
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["x"]);
        // The counted batch leaves the counts; the uncounted one stays apart.
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["c"]);
        assert!(lane.lock().backfill_docs.is_empty());
        // Counted now, and superseded by the live write of c.
        lane.send(writes(50, &["c"], false, false)).await.unwrap();
        assert_eq!(lane.lock().backfill_docs.len(), 1);
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["c"]);
        assert_eq!(lane.next().unwrap().unwrap().upto, Lsn(40));
        assert!(lane.lock().backfill_docs.is_empty());
        assert!(lane.next().unwrap().is_none());
    }

    #[tokio::test]
    async fn truncates_partial_documents_and_the_last_batch_keep_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let lane = memory_lane(dir.path());
        lane.send(writes(20, &["b"], true, false)).await.unwrap();
        lane.send(writes(30, &["!truncate"], false, false))
            .await
            .unwrap();
        lane.send(writes(40, &["y"], false, false)).await.unwrap();
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["b"]);
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["!truncate"]);
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["y"]);

        lane.send(writes(50, &["b"], true, false)).await.unwrap();
        // Partial, but of a row no backfill write holds: goes ahead.
        lane.send(writes(60, &["z"], false, true)).await.unwrap();
        // Merges into b as the backfill writes it: waits.
        lane.send(writes(70, &["b"], false, true)).await.unwrap();
        assert_eq!(lane.next().unwrap().unwrap().upto, Lsn(60));
        assert_eq!(lane.next().unwrap().unwrap().upto, Lsn(50));
        assert_eq!(lane.next().unwrap().unwrap().upto, Lsn(70));

        lane.send(writes(80, &["q"], true, false)).await.unwrap();
        let mut last = writes(90, &[], false, false);
        last.last = true;
        lane.send(last).await.unwrap();
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["q"]);
        assert!(lane.next().unwrap().unwrap().last);
    }

    #[tokio::test]
    async fn a_spill_keeps_the_order_of_arrival_less_superseded_rows() {
        let dir = tempfile::tempdir().unwrap();
        let lane = Lane::new(
            "s",
            dir.path().join("spool"),
            SpillPolicy {
                memory_bytes: 600,
                max_wait: Duration::from_secs(60),
                spool_max_bytes: 1 << 30,
            },
        );
        lane.send(writes(20, &["b", "c"], true, false))
            .await
            .unwrap();
        lane.send(writes(30, &["c", "!delete"], false, false))
            .await
            .unwrap();
        // The live write already went ahead when the lane spills.
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["c", "!delete"]);
        lane.send(writes(40, &["d"], true, false)).await.unwrap();
        lane.send(writes(50, &["e"], false, false)).await.unwrap();
        for i in 0..5 {
            lane.send(writes(60 + i, &["f", "g", "h"], false, false))
                .await
                .unwrap();
        }
        assert!(lane.lock().spool.is_some());
        assert_eq!(lane.unapplied_floor(), Some(Lsn(20)));
        let first = lane.next().unwrap().unwrap();
        assert_eq!(ids(&first), ["b"]);
        assert!(matches!(first.scope, Scope::Backfill { .. }));
        assert_eq!(lane.unapplied_floor(), Some(Lsn(40)));
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["d"]);
        assert_eq!(lane.unapplied_floor(), None);
        assert_eq!(ids(&lane.next().unwrap().unwrap()), ["e"]);
    }
}
