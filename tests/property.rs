//! Random workloads: whatever mix of inserts, updates, deletes, key changes
//! and truncates runs, and wherever sluice is killed, the index ends equal to
//! the table. Each run prints its
//! seed; `SLUICE_SEED=N cargo test --test property` replays one.

mod common;

use common::{assert_index_equals_table, Sluice, TestDb};

/// A small deterministic generator (xorshift64*), so a seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn statement(rng: &mut Rng) -> String {
    let key = rng.below(400);
    match rng.below(100) {
        0..=39 => format!(
            "INSERT INTO t VALUES ({key}, {v}, 'n{v}', repeat(md5('{v}'), {r})) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v, body = EXCLUDED.body",
            v = rng.below(1_000_000),
            r = 1 + rng.below(200),
        ),
        40..=64 => format!("UPDATE t SET v = v + 1 WHERE id BETWEEN {key} AND {}", key + rng.below(20)),
        65..=74 => format!("UPDATE t SET name = 'renamed' WHERE id = {key}"),
        75..=89 => format!("DELETE FROM t WHERE id BETWEEN {key} AND {}", key + rng.below(5)),
        90..=97 => format!(
            "UPDATE t SET id = {} WHERE id = {key} AND NOT EXISTS (SELECT 1 FROM t WHERE id = {})",
            key + 1000,
            key + 1000
        ),
        _ => "TRUNCATE t".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_workloads_leave_the_index_equal_to_the_table() {
    let seeds: Vec<u64> = match std::env::var("SLUICE_SEED") {
        Ok(seed) => vec![seed.parse().expect("SLUICE_SEED is a number")],
        Err(_) => {
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            (0..3_u64)
                .map(|i| base.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
                .collect()
        }
    };
    for seed in seeds {
        println!("seed {seed} (replay with SLUICE_SEED={seed})");
        let db = TestDb::new("prop").await;
        db.exec(
            "CREATE TABLE t (id int PRIMARY KEY, v int, name text, body text);
             ALTER TABLE t ALTER COLUMN body SET STORAGE EXTERNAL;",
        )
        .await;
        let config = db.config(
            "[[tables]]\nname = \"t\"",
            "shards = 3\nbatch_max_changes = 64",
        );
        let mut sluice = Sluice::run_config(&config);
        db.wait_streaming(&mut sluice).await;
        let mut rng = Rng(seed);
        for round in 0..150 {
            let statements: Vec<String> =
                (0..1 + rng.below(8)).map(|_| statement(&mut rng)).collect();
            db.exec(&format!("BEGIN; {}; COMMIT", statements.join("; ")))
                .await;
            // A crash somewhere in the middle: the restart reads changes again.
            if round == 50 + seed % 50 {
                sluice.kill();
                sluice = Sluice::run_config(&config);
            }
        }
        sluice.assert_running();
        assert_index_equals_table(&db, "t", "t", "id").await;
        assert!(sluice.stop().success(), "seed {seed}");
    }
}
