//! The writes waiting to be sent, and the choice of the next request: per
//! key, only the oldest waiting write may go, and only while no write to that
//! key is in flight, so writes to one document apply in order although
//! Typesense has no versions, even with several requests in flight; across
//! keys, writes of one kind and collection are gathered into one request.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use super::request::{filter_value, Kind};
use crate::lsn::Lsn;

/// A write waiting to be sent (again).
#[derive(Debug)]
pub struct Item {
    pub collection: Arc<str>,
    pub table: Arc<str>,
    pub id: String,
    pub lsn: Lsn,
    pub kind: Kind,
    /// The import line (no newline); empty for deletes.
    pub line: Vec<u8>,
    pub attempts: u32,
    pub last_error: String,
    /// Set after a retryable failure: not sent again before.
    pub not_before: Option<Instant>,
    /// Its queue number (set by `push`): stable while positions shift.
    pub seq: u64,
    /// Part of a request in flight.
    pub in_flight: bool,
    /// The most writes a request holding it may have: halved each time a
    /// request with it is refused as a whole.
    pub most: usize,
}

/// Limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_docs: usize,
    pub max_bytes: u64,
    pub max_filter_bytes: usize,
}

/// Waiting writes, oldest first.
#[derive(Debug, Default)]
pub struct Queue {
    items: Vec<Item>,
    bytes: u64,
    next_seq: u64,
}

impl Queue {
    pub fn push(&mut self, mut item: Item) {
        self.bytes += item.line.len() as u64 + 1;
        item.seq = self.next_seq;
        self.next_seq += 1;
        self.items.push(item);
    }

    /// The position of the write numbered `seq`, if it still waits.
    pub fn position(&self, seq: u64) -> Option<usize> {
        self.items.binary_search_by_key(&seq, |item| item.seq).ok()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn get(&self, index: usize) -> &Item {
        &self.items[index]
    }

    pub fn get_mut(&mut self, index: usize) -> &mut Item {
        &mut self.items[index]
    }

    /// The positions of the writes of the next request: writes that are the
    /// oldest of their key, not in flight and not waiting for a retry, of the
    /// kind and collection of the first such write, within `limits`. Empty if
    /// every write waits.
    pub fn next_request(&self, now: Instant, limits: Limits) -> Vec<usize> {
        let mut seen: HashSet<(&str, &str)> = HashSet::new();
        let mut chosen: Option<(&str, Kind)> = None;
        let mut picked = Vec::new();
        let (mut bytes, mut filter_bytes) = (0u64, 0usize);
        let mut cap = limits.max_docs;
        for (n, item) in self.items.iter().enumerate() {
            if !seen.insert((&item.collection, &item.id)) {
                continue; // an older write to this document goes first
            }
            if item.in_flight || item.not_before.is_some_and(|t| t > now) {
                continue;
            }
            match chosen {
                None => chosen = Some((&item.collection, item.kind)),
                Some((collection, kind)) => {
                    if kind != item.kind || collection != &*item.collection {
                        continue;
                    }
                }
            }
            if picked.len() >= item.most || picked.len() >= cap {
                continue; // it goes in a smaller request
            }
            if !picked.is_empty() {
                let full = match item.kind {
                    Kind::Delete => {
                        let size = filter_value(&item.id).map_or(0, |v| v.len() + 1);
                        filter_bytes + size > limits.max_filter_bytes
                    }
                    _ => bytes + item.line.len() as u64 + 1 > limits.max_bytes,
                };
                if full {
                    break;
                }
            }
            bytes += item.line.len() as u64 + 1;
            filter_bytes += filter_value(&item.id).map_or(0, |v| v.len() + 1);
            picked.push(n);
            cap = cap.min(item.most);
            if picked.len() >= cap {
                break;
            }
        }
        picked
    }

    /// When the first write waiting for a retry may go.
    pub fn next_retry(&self) -> Option<Instant> {
        self.items
            .iter()
            .filter(|i| !i.in_flight)
            .filter_map(|i| i.not_before)
            .min()
    }

    /// Removes the writes at `done` (sorted positions) and returns them.
    pub fn remove(&mut self, done: &[usize]) -> Vec<Item> {
        if done.is_empty() {
            return Vec::new();
        }
        let mut removed = Vec::with_capacity(done.len());
        let mut kept = Vec::with_capacity(self.items.len() - done.len());
        let mut next = done.iter().peekable();
        for (n, item) in std::mem::take(&mut self.items).into_iter().enumerate() {
            if next.peek() == Some(&&n) {
                next.next();
                self.bytes -= item.line.len() as u64 + 1;
                removed.push(item);
            } else {
                kept.push(item);
            }
        }
        self.items = kept;
        removed
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn item(id: &str, kind: Kind) -> Item {
        Item {
            collection: Arc::from("c"),
            table: Arc::from("public.t"),
            id: id.into(),
            lsn: Lsn(1),
            kind,
            line: if kind == Kind::Delete {
                Vec::new()
            } else {
                format!("{{\"id\":\"{id}\"}}").into_bytes()
            },
            attempts: 0,
            last_error: String::new(),
            not_before: None,
            seq: 0,
            in_flight: false,
            most: usize::MAX,
        }
    }

    const LIMITS: Limits = Limits {
        max_docs: 100,
        max_bytes: 1 << 20,
        max_filter_bytes: 1 << 10,
    };

    #[test]
    fn later_writes_to_a_key_wait_for_the_oldest() {
        let mut queue = Queue::default();
        queue.push(item("1", Kind::Upsert));
        queue.push(item("2", Kind::Delete));
        queue.push(item("1", Kind::Delete));
        queue.push(item("3", Kind::Upsert));
        queue.push(item("1", Kind::Upsert));
        let now = Instant::now();
        assert_eq!(queue.next_request(now, LIMITS), [0, 3]);
        queue.get_mut(0).not_before = Some(now + Duration::from_secs(60));
        assert_eq!(
            queue.next_request(now, LIMITS),
            [1],
            "key 1 waits behind its retry; key 2 flows"
        );
        assert_eq!(queue.remove(&[0, 3]).len(), 2);
        assert_eq!(queue.next_request(now, LIMITS), [0, 1]);
        assert_eq!(queue.len(), 3);
    }

    #[test]
    fn a_key_with_a_write_in_flight_waits_for_it() {
        let mut queue = Queue::default();
        queue.push(item("1", Kind::Upsert));
        queue.push(item("2", Kind::Upsert));
        queue.push(item("1", Kind::Upsert));
        queue.push(item("3", Kind::Upsert));
        let now = Instant::now();
        let first = queue.next_request(
            now,
            Limits {
                max_docs: 1,
                ..LIMITS
            },
        );
        assert_eq!(first, [0]);
        queue.get_mut(0).in_flight = true;
        assert_eq!(
            queue.next_request(now, LIMITS),
            [1, 3],
            "key 1's second write waits for the first in flight"
        );
        let seq = queue.get(3).seq;
        assert_eq!(queue.remove(&[0]).len(), 1);
        assert_eq!(queue.position(seq), Some(2));
        assert_eq!(queue.next_request(now, LIMITS), [0, 1, 2]);
    }

    #[test]
    fn requests_respect_their_limits() {
        let mut queue = Queue::default();
        for n in 0..10 {
            queue.push(item(&n.to_string(), Kind::Upsert));
        }
        let limits = Limits {
            max_docs: 4,
            ..LIMITS
        };
        assert_eq!(queue.next_request(Instant::now(), limits).len(), 4);
        let limits = Limits {
            max_bytes: 25,
            ..LIMITS
        };
        assert_eq!(queue.next_request(Instant::now(), limits).len(), 2);
        assert_eq!(queue.bytes(), 110);
    }
}
