//! A sink's spool: the write batches its lane holds on disk while the sink
//! falls behind, in order, in segment files read back and deleted one after
//! the other, and the frame each batch is written as.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::change::{Scope, WriteAction, WriteBatch, WriteOp, Writes};
use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// A spool file is closed at this many bytes and a new one begun, so that
/// what was read back can be deleted while the sink catches up.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Removes the spool files left in `dir`.
pub fn remove_spool_files(dir: &Path) {
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
pub struct Spool {
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
    pub fn create(dir: &Path) -> Result<Spool> {
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
    pub fn pending(&self) -> u64 {
        self.written - self.read
    }

    pub fn append(&mut self, batch: &WriteBatch) -> Result<()> {
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

    pub fn read(&mut self) -> Result<Option<WriteBatch>> {
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
pub(crate) fn encode(batch: &WriteBatch, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(batch.items.shard as u32).to_le_bytes());
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
    out.extend_from_slice(&batch.items.bytes.to_le_bytes());
    out.extend_from_slice(&(batch.items.ops.len() as u32).to_le_bytes());
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    for op in batch.items.ops.iter() {
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
pub(crate) fn decode(frame: &[u8], names: &mut HashMap<Box<str>, Arc<str>>) -> Option<WriteBatch> {
    let mut r = FrameReader(frame);
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
    let mut name = |r: &mut FrameReader| -> Option<Arc<str>> {
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
        items: Writes {
            shard,
            ops: Arc::new(ops),
            bytes,
            // Not kept in the spool: a write read back is not timed.
            commit_time: 0,
        },
        upto,
        credits: Vec::new(),
        last,
        scope,
    })
}

/// Reads a frame's fields in turn.
struct FrameReader<'a>(&'a [u8]);

impl<'a> FrameReader<'a> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn batch(shard: usize, upto: u64, n: usize) -> WriteBatch {
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
            items: Writes::new(shard, ops, 0),
            upto: Lsn(upto),
            credits: Vec::new(),
            last: upto.is_multiple_of(2),
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

    pub fn same(a: &WriteBatch, b: &WriteBatch) {
        assert_eq!(
            (
                a.items.shard,
                a.upto,
                a.last,
                a.scope,
                a.items.bytes,
                a.items.ops.len()
            ),
            (
                b.items.shard,
                b.upto,
                b.last,
                b.scope,
                b.items.bytes,
                b.items.ops.len()
            )
        );
        for (x, y) in a.items.ops.iter().zip(b.items.ops.iter()) {
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
}
