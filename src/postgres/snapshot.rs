//! Transaction snapshots as `pg_current_snapshot()` prints them, and whether
//! one sees a committed transaction of the replication stream.
//!
//! A commit record reaches the WAL (and the stream) before its transaction
//! is visible to new snapshots: in between, Postgres flushes the WAL and
//! waits for synchronous standbys. Whoever reads the table because of a
//! streamed change must first make sure its snapshot sees that change.

/// What a transaction snapshot sees (`pg_current_snapshot()`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

impl Snapshot {
    /// Parses the text form `xmin:xmax:xip,xip,…`.
    pub fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.trim().split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        parts
            .next()
            .is_none()
            .then_some(Snapshot { xmin, xmax, xip })
    }

    /// Whether the snapshot does not see the (committed) top-level
    /// transaction `xid`, given as the stream gives it: 32 bits, compared
    /// modulo 2^32 like Postgres does.
    pub fn hides(&self, xid: u32) -> bool {
        let xmax = self.xmax as u32;
        xid.wrapping_sub(xmax) as i32 >= 0 || self.xip.iter().any(|&x| x as u32 == xid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(xmax: u64, xip: &[u64]) -> Snapshot {
        Snapshot {
            xmin: xip.iter().copied().min().unwrap_or(xmax),
            xmax,
            xip: xip.to_vec(),
        }
    }

    #[test]
    fn snapshots_parse() {
        assert_eq!(
            Snapshot::parse("10:12:"),
            Some(snapshot(12, &[])).map(|s| Snapshot { xmin: 10, ..s })
        );
        assert_eq!(Snapshot::parse("10:20:10,15").unwrap().xip, vec![10, 15]);
        assert_eq!(Snapshot::parse("10:x:"), None);
        assert_eq!(Snapshot::parse("1:2:3:4"), None);
    }

    #[test]
    fn visibility_follows_xmax_and_the_running_list_across_wraparound() {
        let s = snapshot(100, &[90]);
        assert!(!s.hides(89) && !s.hides(99));
        assert!(s.hides(90) && s.hides(100) && s.hides(5000));
        // xmax just past the 32-bit wrap: an xid just before it is older.
        let s = snapshot((1 << 32) + 5, &[]);
        assert!(!s.hides(u32::MAX) && !s.hides(4));
        assert!(s.hides(5) && s.hides(6));
    }
}
