//! Both sides of a comparison, spread over bucket files by the hash of the
//! document id: each bucket holds what one side has of a share of the ids,
//! so comparing them holds one bucket of one side in memory at a time,
//! whatever the table's size.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};

/// Ids per bucket the bucket count aims at.
const IDS_PER_BUCKET: u64 = 100_000;

/// The ids and content hashes one side holds.
pub struct Side {
    files: Vec<(PathBuf, BufWriter<File>)>,
}

/// How many buckets `expected` ids take.
pub fn count_for(expected: u64) -> usize {
    (expected / IDS_PER_BUCKET + 1).min(1024) as usize
}

impl Side {
    /// A side of `buckets` files in `dir`, named after `name`.
    pub fn create(dir: &Path, name: &str, buckets: usize) -> Result<Side> {
        let mut files = Vec::with_capacity(buckets);
        for n in 0..buckets {
            let path = dir.join(format!("{name}-{n}"));
            let file = File::create(&path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
            files.push((path, BufWriter::with_capacity(64 * 1024, file)));
        }
        Ok(Side { files })
    }

    pub fn push(&mut self, id: &str, hash: u64) -> Result<()> {
        let bucket = (xxh3_64(id.as_bytes()) % self.files.len() as u64) as usize;
        let (path, file) = &mut self.files[bucket];
        let write = |file: &mut BufWriter<File>| -> std::io::Result<()> {
            file.write_all(&hash.to_le_bytes())?;
            file.write_all(&(id.len() as u32).to_le_bytes())?;
            file.write_all(id.as_bytes())
        };
        write(file).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
    }

    /// The bucket files, written out.
    pub fn finish(self) -> Result<Vec<PathBuf>> {
        self.files
            .into_iter()
            .map(|(path, mut file)| {
                file.flush()
                    .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
                Ok(path)
            })
            .collect()
    }
}

/// The entries of one bucket file, in the order they were written.
pub fn read(path: &Path, mut each: impl FnMut(String, u64)) -> Result<()> {
    let fail = |e| Error::io(format!("cannot read {}", path.display()), e);
    let file = File::open(path).map_err(fail)?;
    let mut input = BufReader::with_capacity(64 * 1024, file);
    let mut head = [0u8; 12];
    loop {
        match input.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(fail(e)),
        }
        let hash = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(head[8..].try_into().expect("4 bytes")) as usize;
        let mut id = vec![0; len];
        input.read_exact(&mut id).map_err(fail)?;
        each(String::from_utf8_lossy(&id).into_owned(), hash);
    }
}

/// What comparisons found: how many of each difference, and the ids of
/// the first `keep` of them.
#[derive(Debug, Default)]
pub struct Found {
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub stale: Vec<String>,
    /// Missing, extra and stale, each counted whole.
    pub counts: [u64; 3],
    keep: usize,
}

impl Found {
    pub fn keeping(keep: usize) -> Found {
        Found {
            keep,
            ..Found::default()
        }
    }

    fn note(&mut self, kind: usize, id: String) {
        self.counts[kind] += 1;
        if self.missing.len() + self.extra.len() + self.stale.len() < self.keep {
            [&mut self.missing, &mut self.extra, &mut self.stale][kind].push(id);
        }
    }
}

/// Compares the table's entries of a bucket with the index's; `extra`
/// false leaves documents without a row out (the table was read in part).
pub fn compare(table: &Path, index: &Path, extra: bool, found: &mut Found) -> Result<()> {
    // The index's side in memory: the id, its hash, and how often it came.
    let mut held: HashMap<String, (u64, u32)> = HashMap::new();
    read(index, |id, hash| {
        held.entry(id)
            .and_modify(|(_, n)| *n += 1)
            .or_insert((hash, 1));
    })?;
    read(table, |id, hash| match held.remove(&id) {
        None => found.note(0, id),
        // An id held twice is stale, whatever either copy holds.
        Some((held, n)) if held != hash || n > 1 => found.note(2, id),
        Some(_) => {}
    })?;
    if extra {
        for id in held.into_keys() {
            found.note(1, id);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_find_every_difference() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = Side::create(dir.path(), "table", 3).unwrap();
        let mut index = Side::create(dir.path(), "index", 3).unwrap();
        for n in 0..1000u64 {
            table.push(&n.to_string(), n).unwrap();
        }
        for n in 10..1010u64 {
            let hash = if n == 500 { 0 } else { n };
            index.push(&n.to_string(), hash).unwrap();
        }
        index.push("42", 42).unwrap();
        let (table, index) = (table.finish().unwrap(), index.finish().unwrap());
        let mut found = Found::keeping(100);
        for (t, i) in table.iter().zip(&index) {
            compare(t, i, true, &mut found).unwrap();
        }
        let sorted = |mut v: Vec<String>| {
            v.sort_by_key(|id| id.parse::<u64>().unwrap());
            v
        };
        let numbers = |r: std::ops::Range<u64>| r.map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(found.counts, [10, 10, 2]);
        assert_eq!(sorted(found.missing), numbers(0..10));
        assert_eq!(sorted(found.extra), numbers(1000..1010));
        assert_eq!(sorted(found.stale), vec!["42".to_owned(), "500".to_owned()]);
    }
}
