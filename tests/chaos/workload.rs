//! The chaos suite's writes: several connections, each drawing random
//! transactions from its own seeded generator: inserts, updates that leave
//! the TOASTed body unchanged, updates of the body, deletes, key changes,
//! several statements in one transaction, and now and then a truncate. A
//! connection that breaks (Postgres restarting) connects again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const TABLE: &str = "
CREATE TABLE chaos (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    n integer NOT NULL,
    price numeric(12, 2),
    seen timestamptz NOT NULL DEFAULT now(),
    body text
);
ALTER TABLE chaos ALTER COLUMN body SET STORAGE EXTERNAL;";

/// Keys are drawn below this; a key change moves a row above it.
const KEYS: i64 = 20_000;

pub struct Workload {
    pub stop: Arc<AtomicBool>,
    /// Rows changed by committed transactions.
    pub changes: Arc<AtomicU64>,
    /// Transactions that failed (a restart, a deadlock, a key taken).
    pub failed: Arc<AtomicU64>,
    pub truncates: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// `connections` writers on `url`, about `rate` changed rows a second
    /// between them; truncates only when `truncate`.
    pub fn start(url: &str, seed: u64, connections: usize, truncate: bool, rate: f64) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let truncates = Arc::new(AtomicU64::new(0));
        let tasks = (0..connections)
            .map(|n| {
                let writer = Writer {
                    url: url.to_owned(),
                    rng: StdRng::seed_from_u64(seed.wrapping_add(n as u64 * 7919)),
                    stop: stop.clone(),
                    changes: changes.clone(),
                    failed: failed.clone(),
                    truncates: truncates.clone(),
                    // One connection truncates, the others do not.
                    truncate: truncate && n == 0,
                    truncated: std::time::Instant::now(),
                    rate: rate / connections as f64,
                };
                tokio::spawn(writer.run())
            })
            .collect();
        Workload {
            stop,
            changes,
            failed,
            truncates,
            tasks,
        }
    }

    pub async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

struct Writer {
    url: String,
    rng: StdRng,
    stop: Arc<AtomicBool>,
    changes: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    truncates: Arc<AtomicU64>,
    truncate: bool,
    /// When this writer last truncated: at most one a while.
    truncated: std::time::Instant,
    /// Rows a second this writer changes, about.
    rate: f64,
}

/// The least time between two truncates.
const TRUNCATE_EVERY: Duration = Duration::from_secs(8);

impl Writer {
    async fn run(mut self) {
        let started = std::time::Instant::now();
        let mut written = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let Ok((client, connection)) =
                tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(connection);
            while !self.stop.load(Ordering::Relaxed) && !client.is_closed() {
                // Ahead of the pace: wait for it.
                let due = Duration::from_secs_f64(written as f64 / self.rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
                let sql = self.transaction();
                match client.simple_query(&sql).await {
                    Ok(messages) => {
                        let rows: u64 = messages
                            .iter()
                            .map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::CommandComplete(n) => *n,
                                _ => 0,
                            })
                            .sum();
                        self.changes.fetch_add(rows, Ordering::Relaxed);
                        written += rows.max(1);
                    }
                    Err(_) => {
                        written += 1;
                        self.failed.fetch_add(1, Ordering::Relaxed);
                        let _ = client.simple_query("ROLLBACK").await;
                    }
                }
            }
        }
    }

    /// One transaction of one to four statements.
    fn transaction(&mut self) -> String {
        if self.truncate && self.truncated.elapsed() > TRUNCATE_EVERY && self.rng.random_bool(0.01)
        {
            self.truncated = std::time::Instant::now();
            self.truncates.fetch_add(1, Ordering::Relaxed);
            return "TRUNCATE chaos".into();
        }
        let statements = match self.rng.random_range(0..10) {
            0..=5 => 1,
            6..=8 => 2,
            _ => 4,
        };
        let mut sql = String::from("BEGIN;");
        for _ in 0..statements {
            sql.push_str(&self.statement());
            sql.push(';');
        }
        sql.push_str("COMMIT");
        sql
    }

    fn statement(&mut self) -> String {
        let at = self.rng.random_range(1..KEYS);
        let span = self.rng.random_range(0..20);
        match self.rng.random_range(0..100) {
            0..=34 => format!(
                "INSERT INTO chaos (id, name, n, price, body) \
                 SELECT i, 'row ' || i, 0, i * 0.25, \
                        CASE WHEN i % 5 = 0 THEN repeat(md5(i::text), 100) END \
                 FROM generate_series({at}, {}) AS i ON CONFLICT (id) DO NOTHING",
                at + span
            ),
            // The body stays as it was: the WAL says 'unchanged'.
            35..=64 => format!(
                "UPDATE chaos SET n = n + 1, name = 'renamed ' || n, seen = now() \
                 WHERE id BETWEEN {at} AND {}",
                at + span
            ),
            65..=74 => {
                format!("UPDATE chaos SET body = repeat(md5(random()::text), 120) WHERE id = {at}")
            }
            75..=89 => format!(
                "DELETE FROM chaos WHERE id BETWEEN {at} AND {}",
                at + span / 2
            ),
            _ => format!(
                "UPDATE chaos SET id = id + {KEYS} * (1 + (random() * 5)::int) \
                 WHERE id = {at} AND id < {KEYS}"
            ),
        }
    }
}
