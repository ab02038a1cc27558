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
//! The spool is a cache, not a log: the slot's confirmed position never passes
//! what the sink committed, so after a restart Postgres sends everything again,
//! and a new lane starts with an empty spool. A spool that reaches
//! `spool_max_bytes` holds the shards back: the pipeline then waits for that
//! sink, and Postgres keeps the WAL.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use ractor::ActorRef;

use super::change::{Scope, WriteAction, WriteBatch, WriteOp};
use super::flow::Credit;
use super::writer::WriterMsg;
use crate::error::{Error, Result};
use crate::lsn::Lsn;

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

struct LaneState {
    /// Batches in memory, with when they arrived (only while not spooling).
    queue: VecDeque<(Instant, WriteBatch)>,
    queued_bytes: u64,
    /// Credits of batches the writer applied but has not committed.
    held: Vec<Arc<Credit>>,
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
                queued_bytes: 0,
                held: Vec::new(),
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
                if state.spool.is_none()
                    && (state.queue.is_empty()
                        || state.queued_bytes + batch.bytes <= self.policy.memory_bytes)
                {
                    state.queued_bytes += batch.bytes;
                    state.queue.push_back((Instant::now(), batch));
                    self.wake(&mut state);
                    return Ok(());
                }
                if state.spool.is_none() {
                    self.spill(&mut state, "more writes wait for it than its share")?;
                }
                let spool = state.spool.as_mut().expect("spilled");
                if spool.pending() < self.policy.spool_max_bytes {
                    spool.append(&batch)?;
                    self.report_spooled(spool.pending());
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
        for (_, batch) in state.queue.drain(..) {
            spool.append(&batch)?;
        }
        tracing::warn!(
            sink = %self.sink,
            spooled_bytes = spool.pending(),
            dir = %self.dir.display(),
            "the sink is falling behind ({why}): spooling its writes to disk so the other sinks go on"
        );
        metrics::counter!("sluice_sink_spills_total", "sink" => self.sink.clone()).increment(1);
        state.queued_bytes = 0;
        state.held.clear();
        state.spool = Some(spool);
        Ok(())
    }

    /// The next batch for the writer, or `None` when the lane is empty (the
    /// writer is woken again when work arrives).
    pub fn next(&self) -> Result<Option<WriteBatch>> {
        let mut state = self.lock();
        if let Some((_, batch)) = state.queue.pop_front() {
            state.queued_bytes -= batch.bytes;
            return Ok(Some(batch));
        }
        if let Some(spool) = state.spool.as_mut() {
            if let Some(batch) = spool.read()? {
                self.report_spooled(spool.pending());
                return Ok(Some(batch));
            }
            state.spool = None;
            tracing::info!(sink = %self.sink, "the sink caught up with its spool");
        }
        state.woken = false;
        Ok(None)
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

    /// Spills when the oldest batch waited longer than the policy allows.
    fn check_age(&self) {
        let mut state = self.lock();
        let too_old = state
            .queue
            .front()
            .is_some_and(|(at, _)| at.elapsed() > self.policy.max_wait);
        if too_old && state.spool.is_none() {
            if let Err(e) = self.spill(&mut state, "its oldest write waits too long") {
                tracing::error!(sink = %self.sink, error = %e, "cannot spool the sink's writes");
            }
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

/// A batch as a frame: `len:u32` then shard, upto, last, bytes, the op count
/// and each op (lsn, index, table, id, action). Strings and documents are
/// `len:u32` + bytes; integers little-endian. Credits stay behind.
fn encode(batch: &WriteBatch, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(batch.shard as u32).to_le_bytes());
    out.extend_from_slice(&batch.upto.0.to_le_bytes());
    out.push(batch.last as u8);
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
            WriteAction::Truncate { barrier } => {
                out.push(2);
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
            2 => WriteAction::Truncate { barrier: r.u64()? },
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
        // Only a hint to commit early: a spooled backfill batch waits for
        // its sink's next regular commit.
        scope: Scope::All,
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
                    _ => WriteAction::Truncate { barrier: i as u64 },
                },
            })
            .collect();
        WriteBatch {
            shard,
            bytes: batch_bytes(&ops),
            ops: Arc::new(ops),
            upto: Lsn(upto),
            credits: Vec::new(),
            last: upto % 2 == 0,
            scope: Scope::All,
        }
    }

    fn same(a: &WriteBatch, b: &WriteBatch) {
        assert_eq!(
            (a.shard, a.upto, a.last, a.bytes, a.ops.len()),
            (b.shard, b.upto, b.last, b.bytes, b.ops.len())
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
        let flow = super::super::flow::FlowControl::new(1 << 20);
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
}
