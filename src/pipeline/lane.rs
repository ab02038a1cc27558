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
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use ractor::ActorRef;

use super::change::{doc_hash, Scope, WriteAction, WriteBatch, WriteOp};
use super::writer::WriterMsg;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::model::flow::Credit;

/// A spool file is closed at this many bytes and a new one begun, so that
/// what was read back can be deleted while the sink catches up.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
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
pub struct Lane {
    sink: String,
    dir: PathBuf,
    policy: SpillPolicy,
    writer: OnceLock<ActorRef<WriterMsg>>,
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
            writer: OnceLock::new(),
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
    pub fn attach(&self, writer: ActorRef<WriterMsg>) {
        let _ = self.writer.set(writer);
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
                    && (empty || state.queued_bytes + batch.bytes <= self.policy.memory_bytes)
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
            if let Some(writer) = self.writer.get() {
                state.woken = true;
                // A stopped writer means the pipeline is restarting.
                let _ = writer.cast(WriterMsg::Ready);
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
        self.queued_bytes += batch.bytes;
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
        if self.backfill.is_empty() || batch.ops.is_empty() {
            return true;
        }
        self.count_backfill_docs();
        let mut held = Vec::new();
        for op in batch.ops.iter() {
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
            for op in queued.batch.ops.iter() {
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
                for op in queued.batch.ops.iter() {
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
        self.queued_bytes -= queued.batch.bytes;
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
        if queued.batch.ops.iter().any(stale) {
            Arc::make_mut(&mut queued.batch.ops).retain(|op| !stale(op));
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

fn remove_spool_files(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "spool") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Write batches on disk, in order, in segment files read back and deleted
/// one after the other. Frames are length-prefixed; see [`encode`].
struct Spool {
    dir: PathBuf,
    segment_bytes: u64,
    write_segment: u64,
    write_file: File,
    write_offset: u64,
    /// Sizes of the closed segments not yet read to their end.
    closed: VecDeque<u64>,
    read_segment: u64,
    read_file: File,
    read_offset: u64,
    written: u64,
    read: u64,
    frame: Vec<u8>,
    names: HashMap<Box<str>, Arc<str>>,
}

impl Spool {
    fn create(dir: &Path) -> Result<Spool> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::io(
                format!("cannot create spool directory {}", dir.display()),
                e,
            )
        })?;
        remove_spool_files(dir);
        let write_file = create_segment(dir, 0)?;
        let read_file = open_segment(dir, 0)?;
        Ok(Spool {
            dir: dir.to_owned(),
            segment_bytes: SEGMENT_BYTES,
            write_segment: 0,
            write_file,
            write_offset: 0,
            closed: VecDeque::new(),
            read_segment: 0,
            read_file,
            read_offset: 0,
            written: 0,
            read: 0,
            frame: Vec::new(),
            names: HashMap::new(),
        })
    }

    /// Bytes written and not read back yet.
    fn pending(&self) -> u64 {
        self.written - self.read
    }

    fn append(&mut self, batch: &WriteBatch) -> Result<()> {
        if self.write_offset >= self.segment_bytes {
            self.closed.push_back(self.write_offset);
            self.write_segment += 1;
            self.write_file = create_segment(&self.dir, self.write_segment)?;
            self.write_offset = 0;
        }
        self.frame.clear();
        encode(batch, &mut self.frame);
        self.write_file.write_all(&self.frame).map_err(|e| {
            Error::io(
                format!("cannot write to the spool in {}", self.dir.display()),
                e,
            )
        })?;
        self.write_offset += self.frame.len() as u64;
        self.written += self.frame.len() as u64;
        Ok(())
    }

    fn read(&mut self) -> Result<Option<WriteBatch>> {
        if self.read == self.written {
            return Ok(None);
        }
        if self.read_segment < self.write_segment && Some(&self.read_offset) == self.closed.front()
        {
            self.closed.pop_front();
            let _ = std::fs::remove_file(segment_path(&self.dir, self.read_segment));
            self.read_segment += 1;
            self.read_file = open_segment(&self.dir, self.read_segment)?;
            self.read_offset = 0;
        }
        let io = |e| {
            Error::io(
                format!("cannot read the spool in {}", self.dir.display()),
                e,
            )
        };
        let mut len = [0u8; 4];
        self.read_file.read_exact(&mut len).map_err(io)?;
        let len = u32::from_le_bytes(len) as usize;
        self.frame.resize(len, 0);
        self.read_file.read_exact(&mut self.frame).map_err(io)?;
        self.read_offset += 4 + len as u64;
        self.read += 4 + len as u64;
        let frame = std::mem::take(&mut self.frame);
        let batch = decode(&frame, &mut self.names);
        self.frame = frame;
        batch.map(Some).ok_or_else(|| {
            Error::new(
                crate::error::ErrorKind::Protocol,
                format!("the spool in {} is corrupt", self.dir.display()),
            )
        })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        remove_spool_files(&self.dir);
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:08}.spool"))
}

fn create_segment(dir: &Path, segment: u64) -> Result<File> {
    let path = segment_path(dir, segment);
    File::create(&path).map_err(|e| Error::io(format!("cannot create {}", path.display()), e))
}

fn open_segment(dir: &Path, segment: u64) -> Result<File> {
    let path = segment_path(dir, segment);
    File::open(&path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))
}

/// A batch as a frame: `len:u32` then shard, upto, last, scope (0 for every
/// sink; 1, the sink and the position to commit above for a backfill's
/// rows), bytes, the op count and each op (lsn, index, table, id, action). Strings and documents are
/// `len:u32` + bytes; integers little-endian. Credits stay behind.
fn encode(batch: &WriteBatch, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(batch.shard as u32).to_le_bytes());
    out.extend_from_slice(&batch.upto.0.to_le_bytes());
    out.push(batch.last as u8);
    match batch.scope {
        Scope::All => out.push(0),
        Scope::Backfill { sink, commit_above } => {
            out.push(1);
            out.extend_from_slice(&(sink as u32).to_le_bytes());
            out.extend_from_slice(&commit_above.0.to_le_bytes());
        }
    }
    out.extend_from_slice(&batch.bytes.to_le_bytes());
    out.extend_from_slice(&(batch.ops.len() as u32).to_le_bytes());
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    for op in batch.ops.iter() {
        out.extend_from_slice(&op.lsn.0.to_le_bytes());
        bytes(out, op.index.as_bytes());
        bytes(out, op.table.as_bytes());
        bytes(out, op.id.as_bytes());
        match &op.routing {
            Some(routing) => {
                out.push(1);
                bytes(out, routing.as_bytes());
            }
            None => out.push(0),
        }
        match &op.action {
            WriteAction::Upsert {
                doc,
                partial,
                fresh,
            } => {
                out.push(0);
                out.push(*partial as u8 | (*fresh as u8) << 1);
                bytes(out, doc);
            }
            WriteAction::Delete => out.push(1),
            WriteAction::Truncate { barrier, scoped } => {
                out.push(if *scoped { 3 } else { 2 });
                out.extend_from_slice(&barrier.to_le_bytes());
            }
        }
    }
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
}

/// Reads a frame (without its length) back; `None` when it is malformed.
fn decode(frame: &[u8], names: &mut HashMap<Box<str>, Arc<str>>) -> Option<WriteBatch> {
    let mut r = Reader(frame);
    let shard = r.u32()? as usize;
    let upto = Lsn(r.u64()?);
    let last = r.u8()? != 0;
    let scope = match r.u8()? {
        0 => Scope::All,
        1 => Scope::Backfill {
            sink: r.u32()? as usize,
            commit_above: Lsn(r.u64()?),
        },
        _ => return None,
    };
    let bytes = r.u64()?;
    let n = r.u32()? as usize;
    let mut ops = Vec::with_capacity(n.min(frame.len()));
    let mut name = |r: &mut Reader| -> Option<Arc<str>> {
        let text = std::str::from_utf8(r.bytes()?).ok()?;
        Some(match names.get(text) {
            Some(name) => name.clone(),
            None => {
                let name: Arc<str> = Arc::from(text);
                names.insert(text.into(), name.clone());
                name
            }
        })
    };
    for _ in 0..n {
        let lsn = Lsn(r.u64()?);
        let index = name(&mut r)?;
        let table = name(&mut r)?;
        let id = std::str::from_utf8(r.bytes()?).ok()?.to_owned();
        let routing = match r.u8()? {
            0 => None,
            1 => Some(std::str::from_utf8(r.bytes()?).ok()?.into()),
            _ => return None,
        };
        let action = match r.u8()? {
            0 => {
                let flags = r.u8()?;
                WriteAction::Upsert {
                    partial: flags & 1 != 0,
                    fresh: flags & 2 != 0,
                    doc: r.bytes()?.to_vec(),
                }
            }
            1 => WriteAction::Delete,
            2 => WriteAction::Truncate {
                barrier: r.u64()?,
                scoped: false,
            },
            3 => WriteAction::Truncate {
                barrier: r.u64()?,
                scoped: true,
            },
            _ => return None,
        };
        ops.push(WriteOp {
            index,
            table,
            id,
            lsn,
            action,
            routing,
        });
    }
    r.0.is_empty().then(|| WriteBatch {
        shard,
        ops: Arc::new(ops),
        upto,
        credits: Vec::new(),
        last,
        bytes,
        scope,
        // Not kept in the spool: a write read back is not timed.
        commit_time: 0,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

/// The bytes a batch's writes take in memory (documents and ids, roughly).
pub fn batch_bytes(ops: &[WriteOp]) -> u64 {
    ops.iter()
        .map(|op| {
            let doc = match &op.action {
                WriteAction::Upsert { doc, .. } => doc.len(),
                _ => 0,
            };
            (doc + op.id.len() + 64) as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(shard: usize, upto: u64, n: usize) -> WriteBatch {
        let index: Arc<str> = Arc::from("items");
        let table: Arc<str> = Arc::from("public.items");
        let ops: Vec<WriteOp> = (0..n)
            .map(|i| WriteOp {
                index: index.clone(),
                table: table.clone(),
                id: format!("{upto}-{i}"),
                routing: (i % 2 == 0).then(|| format!("r{i}").into()),
                lsn: Lsn(upto),
                action: match i % 3 {
                    0 => WriteAction::Upsert {
                        doc: format!("{{\"n\":{i}}}").into_bytes(),
                        partial: i % 2 == 0,
                        fresh: true,
                    },
                    1 => WriteAction::Delete,
                    _ => WriteAction::Truncate {
                        barrier: i as u64,
                        scoped: i % 2 == 0,
                    },
                },
            })
            .collect();
        WriteBatch {
            shard,
            bytes: batch_bytes(&ops),
            ops: Arc::new(ops),
            upto: Lsn(upto),
            credits: Vec::new(),
            last: upto.is_multiple_of(2),
            commit_time: 0,
            scope: if upto.is_multiple_of(3) {
                Scope::Backfill {
                    sink: shard,
                    commit_above: Lsn(upto + 1),
                }
            } else {
                Scope::All
            },
        }
    }

    fn same(a: &WriteBatch, b: &WriteBatch) {
        assert_eq!(
            (a.shard, a.upto, a.last, a.scope, a.bytes, a.ops.len()),
            (b.shard, b.upto, b.last, b.scope, b.bytes, b.ops.len())
        );
        for (x, y) in a.ops.iter().zip(b.ops.iter()) {
            assert_eq!(
                (&x.index, &x.table, &x.id, &x.routing, x.lsn, &x.action),
                (&y.index, &y.table, &y.id, &y.routing, y.lsn, &y.action)
            );
        }
    }

    #[test]
    fn frames_round_trip_and_truncated_frames_are_refused() {
        let original = batch(3, 42, 7);
        let mut frame = Vec::new();
        encode(&original, &mut frame);
        let mut names = HashMap::new();
        let decoded = decode(&frame[4..], &mut names).unwrap();
        same(&original, &decoded);
        for cut in 4..frame.len() - 1 {
            assert!(decode(&frame[4..cut], &mut names).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn the_spool_reads_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(dir.path()).unwrap();
        // Small segments: a new one every few frames.
        spool.segment_bytes = 2000;
        let batches: Vec<_> = (0..50).map(|i| batch(i % 4, i as u64, i)).collect();
        for (i, b) in batches.iter().enumerate() {
            spool.append(b).unwrap();
            if i % 3 == 0 {
                let first = spool.read().unwrap().unwrap();
                same(&batches[i / 3], &first);
            }
        }
        let mut read = 17;
        while let Some(b) = spool.read().unwrap() {
            same(&batches[read], &b);
            read += 1;
        }
        assert_eq!(read, 50);
        assert_eq!(spool.pending(), 0);
        assert!(spool.write_segment > 5, "segments were rotated");
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 2, "read segments are deleted: {files} left");
        drop(spool);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

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
            shard: 0,
            bytes: batch_bytes(&ops),
            ops: Arc::new(ops),
            upto: Lsn(upto),
            credits: Vec::new(),
            last: false,
            commit_time: 0,
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
        batch.ops.iter().map(|op| op.id.as_str()).collect()
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
