//! The writes: transactions on a schedule fixed in advance (open loop), so a
//! slow commit delays only itself and never hides the latency of the ones
//! due after it, each noted with the moment its COMMIT returned.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

use crate::tracker::Tracker;

/// What the transactions do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Inserts of new rows.
    Steady,
    /// Updates of rows loaded before, keys drawn from a Zipf distribution
    /// (a few rows take most updates).
    Updates,
    /// Inserts, updates and deletes (50 / 35 / 15 %).
    Mixed,
    /// Rows of `--row-bytes` (8,000 by default) that Postgres stores out of
    /// line (TOAST): updates that leave the large column unchanged (80 %)
    /// and inserts (20 %).
    Toast,
    /// One transaction of `--rows-per-txn` inserts (200,000 by default).
    Huge,
    /// `--rate` × `--duration` changes committed while sluice is stopped,
    /// then drained from a standing start, beside `pg_recvlogical` reading
    /// the same backlog.
    Backlog,
    /// The initial backfill of `--keys` rows with `mixed` changes at
    /// `--rate` from its first moment (updates in place of deletes when
    /// the far end is found by a search).
    Backfill,
}

impl Scenario {
    /// Whether the table is loaded with `keys` rows before the run.
    pub fn loads_rows(self) -> bool {
        matches!(
            self,
            Scenario::Updates | Scenario::Mixed | Scenario::Toast | Scenario::Backfill
        )
    }

    /// Rows in a transaction unless `--rows-per-txn` says.
    pub fn default_rows_per_txn(self) -> usize {
        match self {
            Scenario::Huge => 200_000,
            _ => 1,
        }
    }

    /// Bytes of text in a row unless `--row-bytes` says.
    pub fn default_row_bytes(self) -> usize {
        match self {
            Scenario::Toast => 8_000,
            _ => 200,
        }
    }

    /// Whether the operations are drawn at random from rows no connection
    /// is changing.
    fn mix_of_operations(self) -> bool {
        matches!(self, Scenario::Mixed | Scenario::Toast | Scenario::Backfill)
    }

    /// Where the draw of an operation turns from insert to update, and from
    /// update to delete.
    fn mix(self) -> (f64, f64) {
        match self {
            Scenario::Toast => (0.2, 1.0),
            _ => (0.5, 0.85),
        }
    }
}

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct Load {
    pub scenario: Scenario,
    /// Changes per second.
    pub rate: f64,
    pub duration: Duration,
    pub rows_per_txn: usize,
    /// Rows loaded before the run (`updates`, `mixed`).
    pub keys: i64,
    pub seed: u64,
    /// Transactions go on their schedule; without it, as fast as the
    /// connections can (a backlog).
    pub paced: bool,
    /// Whether rows are deleted (a search cannot tell a deleted document
    /// from one not written yet: the share of deletes goes to updates).
    pub deletes: bool,
}

/// How the schedule was kept.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Kept {
    pub transactions: u64,
    pub changes: u64,
    /// The longest a transaction started after its scheduled time, in ms.
    pub max_behind_ms: f64,
    /// Seconds from the first scheduled transaction to the last commit.
    pub seconds: f64,
}

/// The tables of the run, in a schema of their own: `items`, or with
/// `--tables N`, `items_1` to `items_N`. Row `id` lives in table
/// `id mod N`, so ids are unique across them.
#[derive(Debug, Clone)]
pub struct Tables {
    pub schema: String,
    pub names: Vec<String>,
}

impl Tables {
    pub fn new(schema: &str, count: usize) -> Tables {
        let names = match count {
            0 | 1 => vec!["items".to_owned()],
            n => (1..=n).map(|i| format!("items_{i}")).collect(),
        };
        Tables {
            schema: schema.to_owned(),
            names,
        }
    }

    /// The table of row `id`, as an index into `names`.
    pub fn of(&self, id: i64) -> usize {
        id.rem_euclid(self.names.len() as i64) as usize
    }

    /// `schema.name` of each table.
    pub fn qualified(&self) -> impl Iterator<Item = String> + '_ {
        self.names.iter().map(|n| format!("{}.{n}", self.schema))
    }

    /// The SQL that creates them.
    pub fn create(&self) -> String {
        self.qualified()
            .map(|table| {
                format!(
                    "CREATE TABLE {table} (
                        id bigint PRIMARY KEY,
                        seq bigint NOT NULL,
                        n integer NOT NULL DEFAULT 0,
                        body text NOT NULL,
                        updated_at timestamptz NOT NULL DEFAULT now()
                    );"
                )
            })
            .collect()
    }
}

/// Text of `bytes` random hexadecimal digits: Postgres cannot compress it,
/// so a row holds all of it (out of line past about 2 kB).
pub fn body(bytes: usize, seed: u64) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    (0..bytes)
        .map(|_| DIGITS[rng.random_range(0..16)] as char)
        .collect()
}

/// Loads rows 1..=`keys` (with `seq` 0: no write of the run).
pub async fn load_rows(
    client: &Client,
    tables: &Tables,
    keys: i64,
    body: &str,
) -> anyhow::Result<()> {
    if keys <= 0 {
        return Ok(());
    }
    let count = tables.names.len() as i64;
    for (at, table) in tables.qualified().enumerate() {
        client
            .execute(
                &format!(
                    "INSERT INTO {table} (id, seq, body)
                     SELECT g, 0, $2::text FROM generate_series(1, $1::int8) g
                     WHERE g % $3::int8 = $4::int8"
                ),
                &[&keys, &body, &count, &(at as i64)],
            )
            .await?;
    }
    Ok(())
}

/// Shared between the connections.
struct Shared {
    load: Load,
    tables: Tables,
    body: String,
    next_id: AtomicI64,
    next_seq: AtomicI64,
    /// Rows that exist and no connection is changing (`mixed`).
    idle: Mutex<Vec<i64>>,
    zipf: Vec<f64>,
    behind_us: AtomicU64,
    tracker: Arc<Tracker>,
}

/// Runs the load through `clients` (one per connection); returns how the
/// schedule was kept.
pub async fn run(
    load: Load,
    tables: Tables,
    body: String,
    clients: Vec<Client>,
    tracker: Arc<Tracker>,
) -> anyhow::Result<Kept> {
    let per_txn = load.rows_per_txn.max(1);
    let transactions = match load.scenario {
        Scenario::Huge => 1,
        _ => ((load.rate * load.duration.as_secs_f64()) / per_txn as f64).ceil() as u64,
    };
    let interval = Duration::from_secs_f64(per_txn as f64 / load.rate);
    let shared = Arc::new(Shared {
        tables,
        body,
        next_id: AtomicI64::new(load.keys + 1),
        next_seq: AtomicI64::new(1),
        idle: Mutex::new((1..=load.keys).collect()),
        zipf: zipf_cdf(load.keys.max(1) as usize, 1.1),
        behind_us: AtomicU64::new(0),
        tracker,
        load,
    });
    let start = Instant::now();
    let connections = clients.len() as u64;
    let mut tasks = Vec::new();
    for (worker, client) in clients.into_iter().enumerate() {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(shared.load.seed ^ worker as u64);
            let mut statements = Vec::with_capacity(shared.tables.names.len());
            for table in shared.tables.qualified() {
                statements.push(Statements::prepare(&client, &table).await?);
            }
            let mut k = worker as u64;
            let mut changes = 0u64;
            while k < transactions {
                let due = start + interval.mul_f64(k as f64);
                let now = Instant::now();
                if !shared.load.paced {
                    // A backlog: as fast as the database takes it.
                } else if due > now {
                    tokio::time::sleep_until(due.into()).await;
                } else {
                    let behind = (now - due).as_micros() as u64;
                    shared.behind_us.fetch_max(behind, Ordering::Relaxed);
                }
                changes += shared.transaction(&client, &statements, &mut rng).await? as u64;
                k += connections;
            }
            anyhow::Ok(changes)
        }));
    }
    let mut kept = Kept {
        transactions,
        ..Kept::default()
    };
    for task in tasks {
        kept.changes += task.await??;
    }
    kept.seconds = start.elapsed().as_secs_f64();
    kept.max_behind_ms = shared.behind_us.load(Ordering::Relaxed) as f64 / 1000.0;
    Ok(kept)
}

struct Statements {
    insert: tokio_postgres::Statement,
    update: tokio_postgres::Statement,
    delete: tokio_postgres::Statement,
}

impl Statements {
    /// The statements on `table` (`schema.name`).
    async fn prepare(client: &Client, table: &str) -> anyhow::Result<Statements> {
        Ok(Statements {
            insert: client
                .prepare(&format!(
                    "INSERT INTO {table} (id, seq, body)
                     SELECT unnest($1::int8[]), unnest($2::int8[]), $3::text"
                ))
                .await?,
            // The body is left as it is: a large one stays unchanged TOAST.
            update: client
                .prepare(&format!(
                    "UPDATE {table} AS t SET seq = v.seq, n = t.n + 1, updated_at = now()
                     FROM unnest($1::int8[], $2::int8[]) AS v(id, seq) WHERE t.id = v.id"
                ))
                .await?,
            delete: client
                .prepare(&format!("DELETE FROM {table} WHERE id = ANY($1::int8[])"))
                .await?,
        })
    }
}

/// What one transaction does to the rows.
#[derive(Default)]
struct Plan {
    inserts: Vec<i64>,
    updates: Vec<i64>,
    deletes: Vec<i64>,
}

impl Shared {
    fn seqs(&self, n: usize) -> Vec<i64> {
        let first = self.next_seq.fetch_add(n as i64, Ordering::Relaxed);
        (first..first + n as i64).collect()
    }

    fn plan(&self, rng: &mut impl Rng) -> Plan {
        let n = self.load.rows_per_txn.max(1);
        let mut plan = Plan::default();
        match self.load.scenario {
            Scenario::Steady | Scenario::Huge | Scenario::Backlog => {
                let first = self.next_id.fetch_add(n as i64, Ordering::Relaxed);
                plan.inserts = (first..first + n as i64).collect();
            }
            Scenario::Updates => {
                // Distinct rows: one update of each per transaction.
                let mut chosen = HashSet::with_capacity(n);
                while chosen.len() < n.min(self.zipf.len()) {
                    let u: f64 = rng.random();
                    let at = self.zipf.partition_point(|&c| c < u);
                    chosen.insert(at.min(self.zipf.len() - 1) as i64 + 1);
                }
                // In key order, as every transaction locks them.
                plan.updates = chosen.into_iter().collect();
                plan.updates.sort_unstable();
            }
            Scenario::Mixed | Scenario::Toast | Scenario::Backfill => {
                let (inserts, mut updates) = self.load.scenario.mix();
                if !self.load.deletes {
                    updates = 1.0;
                }
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                for _ in 0..n {
                    let roll: f64 = rng.random();
                    if roll < inserts || idle.is_empty() {
                        plan.inserts
                            .push(self.next_id.fetch_add(1, Ordering::Relaxed));
                    } else {
                        // Taken out while this transaction changes it.
                        let at = rng.random_range(0..idle.len());
                        let id = idle.swap_remove(at);
                        if roll < updates {
                            plan.updates.push(id);
                        } else {
                            plan.deletes.push(id);
                        }
                    }
                }
            }
        }
        plan
    }

    /// Runs one transaction; the number of changes it made. One that
    /// Postgres rolled back for a deadlock or a serialization failure
    /// (concurrent updates of hot keys) is run again.
    async fn transaction(
        &self,
        client: &Client,
        statements: &[Statements],
        rng: &mut impl Rng,
    ) -> anyhow::Result<usize> {
        let plan = self.plan(rng);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(client, statements, &plan).await {
                Err(e) if attempt < 10 && retryable(&e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                }
                Err(e) => return Err(e.into()),
                Ok(n) => return Ok(n),
            }
        }
    }

    async fn attempt(
        &self,
        client: &Client,
        statements: &[Statements],
        plan: &Plan,
    ) -> Result<usize, tokio_postgres::Error> {
        let inserted = self.seqs(plan.inserts.len());
        let updated = self.seqs(plan.updates.len());
        let deleted = self.seqs(plan.deletes.len());
        let inserts = self.by_table(&plan.inserts, &inserted);
        let updates = self.by_table(&plan.updates, &updated);
        let deletes = self.by_table(&plan.deletes, &deleted);
        let single = inserts.len() + updates.len() + deletes.len() == 1;
        if !single {
            client.batch_execute("BEGIN").await?;
        }
        for (table, ids, seqs) in &inserts {
            client
                .execute(&statements[*table].insert, &[ids, seqs, &self.body])
                .await?;
        }
        for (table, ids, seqs) in &updates {
            client
                .execute(&statements[*table].update, &[ids, seqs])
                .await?;
        }
        for (table, ids, _) in &deletes {
            client.execute(&statements[*table].delete, &[ids]).await?;
        }
        if !single {
            client.batch_execute("COMMIT").await?;
        }
        let at = Instant::now();
        let writes: Vec<(i64, i64)> = plan
            .inserts
            .iter()
            .copied()
            .zip(inserted)
            .chain(plan.updates.iter().copied().zip(updated))
            .chain(plan.deletes.iter().copied().zip(deleted))
            .collect();
        self.tracker.committed(&writes, at);
        if self.load.scenario.mix_of_operations() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.extend(plan.inserts.iter().chain(&plan.updates));
        }
        Ok(writes.len())
    }

    /// `ids` and their `seqs` split by table, in table order (as every
    /// transaction locks them); only tables with rows.
    fn by_table(&self, ids: &[i64], seqs: &[i64]) -> Vec<(usize, Vec<i64>, Vec<i64>)> {
        let mut split: Vec<(usize, Vec<i64>, Vec<i64>)> = Vec::new();
        for (&id, &seq) in ids.iter().zip(seqs) {
            let table = self.tables.of(id);
            match split.iter_mut().find(|(t, _, _)| *t == table) {
                Some((_, ids, seqs)) => {
                    ids.push(id);
                    seqs.push(seq);
                }
                None => split.push((table, vec![id], vec![seq])),
            }
        }
        split.sort_unstable_by_key(|(table, _, _)| *table);
        split
    }
}

/// A deadlock or a serialization failure: the transaction can run again.
fn retryable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// The cumulative distribution of a Zipf distribution over `n` ranks with
/// exponent `s`.
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut sum = 0.0;
    weights
        .iter()
        .map(|w| {
            sum += w / total;
            sum
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_ranks_the_first_keys_highest() {
        let cdf = zipf_cdf(1000, 1.1);
        assert!((cdf[999] - 1.0).abs() < 1e-9);
        // The first key takes more than a tenth of the draws.
        assert!(cdf[0] > 0.1, "{}", cdf[0]);
        assert!(cdf.windows(2).all(|w| w[0] < w[1]));
    }
}
