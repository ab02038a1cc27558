//! `sluice-loadtest`: puts a load on Postgres and measures, by itself, how
//! long each committed change takes to reach the index through sluice.
//!
//! The harness starts a throwaway Postgres (or uses `--database-url`, in a
//! schema of its own that it drops afterwards), serves an
//! Elasticsearch-compatible bulk endpoint that answers at once and notes
//! when each document arrives, runs `sluice run` between the two with
//! default settings, and writes transactions on a fixed schedule. The
//! latency of a change runs from the moment its COMMIT returned to the
//! client to the moment its document arrived at the endpoint.

mod chart;
mod embedded;
mod endpoint;
mod engine;
mod measure;
mod process;
mod report;
mod stages;
mod tracker;
mod workload;

use std::path::PathBuf;

use clap::Parser;
use tokio_postgres::Client;

use workload::{Scenario, Tables};

#[derive(Parser, Debug)]
#[command(
    name = "sluice-loadtest",
    version,
    about = "Measures how long a committed change takes to reach the index through sluice, under a load you choose"
)]
struct Args {
    /// What the transactions do: `steady` inserts; `updates` of hot keys
    /// (Zipf); `mixed` inserts, updates and deletes; `toast` rows stored out
    /// of line, updated leaving them unchanged; `huge`, one transaction;
    /// `backlog`, drained from a standing start beside `pg_recvlogical`;
    /// `backfill`, the initial backfill under a `mixed` load.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Where sluice writes: `bulk`, an Elasticsearch-compatible endpoint the
    /// harness serves, answering at once (latency to the document's
    /// arrival); `embedded`, sluice's own index (latency until a search
    /// from another process finds the document); or `elasticsearch`,
    /// `meilisearch` or `typesense` at `--engine-url` (latency until a
    /// search by id finds it). A search cannot see deletes: not with `mixed`.
    #[arg(long, value_enum, default_value_t = Target::Bulk)]
    sink: Target,
    /// The engine's URL, for `--sink elasticsearch`, `meilisearch` or
    /// `typesense`. The
    /// harness creates indexes named after its schema and removes them.
    #[arg(long)]
    engine_url: Option<String>,
    /// The environment variable holding the engine's API key (Elasticsearch:
    /// `ApiKey`; Meilisearch: bearer; Typesense: `X-TYPESENSE-API-KEY`),
    /// read by the harness and by sluice.
    #[arg(long)]
    engine_api_key_env: Option<String>,
    /// A setting of sluice's sink, `KEY=VALUE` with VALUE as TOML writes it
    /// (`commit_interval_ms=50`, `batch_max_docs=5000`); may be repeated.
    /// Without it, sluice runs on its defaults.
    #[arg(long = "sink-option", value_name = "KEY=VALUE")]
    sink_options: Vec<String>,
    /// A `[backfill]` setting of sluice, as `--sink-option` takes one
    /// (`chunks_in_flight=8`); may be repeated.
    #[arg(long = "backfill-option", value_name = "KEY=VALUE")]
    backfill_options: Vec<String>,
    /// Changes per second to commit (`backlog`: as fast as the database
    /// takes them, `--rate` × `--duration` in all).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Rows each transaction changes [default: 1; `huge`: 200000].
    #[arg(long)]
    rows_per_txn: Option<usize>,
    /// Bytes of text in each row [default: 200; `toast`: 8000].
    #[arg(long)]
    row_bytes: Option<usize>,
    /// Database connections writing at once.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Rows loaded before the run, for `updates`, `mixed`, `toast` and
    /// `backfill`.
    #[arg(long, default_value_t = 10_000)]
    keys: i64,
    /// Tables the rows are spread over (`items`, or `items_1` to `items_N`).
    #[arg(long, default_value_t = 1)]
    tables: usize,
    /// The database to load (a schema of the harness's own is created and
    /// dropped; the role needs CREATE and REPLICATION; `sslmode` as sluice
    /// takes it). Default: a throwaway Postgres the harness starts.
    #[arg(long)]
    database_url: Option<String>,
    /// The sluice binary. Default: the one beside this program, then `sluice`
    /// on the PATH.
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Where the JSON report, the SVG chart and sluice's log go.
    #[arg(long, default_value = "loadtest-results")]
    out: PathBuf,
    /// Seconds to wait, after the load, for the last documents.
    #[arg(long, default_value_t = 60.0)]
    drain_timeout: f64,
    /// Seed of the random choices (keys, operations, row text).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Where sluice writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Target {
    Bulk,
    Embedded,
    Elasticsearch,
    Meilisearch,
    Typesense,
}

impl Target {
    /// Whether documents are seen by a search, which cannot see deletes.
    fn searched(self) -> bool {
        self != Target::Bulk
    }

    /// As the command line says it.
    fn name(self) -> &'static str {
        match self {
            Target::Bulk => "bulk",
            Target::Embedded => "embedded",
            Target::Elasticsearch => "elasticsearch",
            Target::Meilisearch => "meilisearch",
            Target::Typesense => "typesense",
        }
    }

    /// The engine, for targets that are one.
    fn engine(self) -> Option<engine::Kind> {
        match self {
            Target::Elasticsearch => Some(engine::Kind::Elasticsearch),
            Target::Meilisearch => Some(engine::Kind::Meilisearch),
            Target::Typesense => Some(engine::Kind::Typesense),
            Target::Bulk | Target::Embedded => None,
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("sluice-loadtest: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be above 0");
    anyhow::ensure!(args.duration > 0.0, "--duration must be above 0");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        args.rows_per_txn != Some(0),
        "--rows-per-txn must be at least 1"
    );
    anyhow::ensure!(
        (1..=100).contains(&args.tables),
        "--tables must be from 1 to 100"
    );
    anyhow::ensure!(
        !(args.sink.searched() && args.scenario == Scenario::Mixed),
        "--sink {} measures when a search finds a document, which a delete is not: use steady, updates, toast, huge, backlog or backfill",
        args.sink.name()
    );
    anyhow::ensure!(
        args.sink.engine().is_some() == args.engine_url.is_some(),
        "--engine-url goes with --sink elasticsearch, meilisearch or typesense, and they need it"
    );
    for (flag, options) in [
        ("--sink-option", &args.sink_options),
        ("--backfill-option", &args.backfill_options),
    ] {
        for option in options {
            anyhow::ensure!(
                option
                    .split_once('=')
                    .is_some_and(|(k, v)| !k.trim().is_empty() && !v.trim().is_empty()),
                "{flag} {option:?} is not KEY=VALUE"
            );
        }
    }
    let binary = process::find_sluice(args.sluice.as_deref())?;
    // A throwaway Postgres lives as long as this value.
    let (url, local) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            // Commits wait for their WAL flush, as on a production server:
            // the walsender sends only flushed WAL.
            let options = sluice::local_pg::LocalPostgresOptions {
                extra_settings: vec![("synchronous_commit".into(), "on".into())],
                ..Default::default()
            };
            let local =
                tokio::task::spawn_blocking(|| sluice::local_pg::LocalPostgres::start(options))
                    .await?
                    .map_err(|e| anyhow::anyhow!("cannot start a throwaway Postgres: {e}"))?;
            (local.url("postgres"), Some(local))
        }
    };
    let admin = connect(&url).await?;
    let schema = format!(
        "sluice_loadtest_{}_{}",
        std::process::id(),
        rand::random::<u16>()
    );
    let tables = Tables::new(&schema, args.tables);
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}; {}", tables.create()))
        .await?;
    let bin_dir = local.as_ref().map(|l| l.bin_dir().to_owned());
    let outcome = measure::measure(&args, &binary, &url, bin_dir.as_deref(), &admin, &tables).await;
    // Whatever happened, the database is left as it was.
    let cleaned = admin
        .batch_execute(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name IN ('{schema}', '{raw}') AND NOT active;
             DROP PUBLICATION IF EXISTS {schema};
             DROP SCHEMA {schema} CASCADE;",
            raw = measure::raw_slot(&schema),
        ))
        .await;
    let report = outcome?;
    cleaned.map_err(|e| anyhow::anyhow!("cleaning up schema {schema} failed: {e}"))?;
    report.print();
    let name = serde_json::to_value(args.scenario)?
        .as_str()
        .unwrap_or("run")
        .to_owned();
    let path = args.out.join(format!("{name}.json"));
    report.write(&path)?;
    println!("report: {}", path.display());
    if report.seconds.len() > 1 {
        let chart = args.out.join(format!("{name}.svg"));
        chart::draw(&report, &chart)?;
        println!("chart: {}", chart.display());
    }
    Ok(())
}

/// A connection as sluice makes it, TLS as the URL's `sslmode` says.
async fn connect(url: &str) -> anyhow::Result<Client> {
    let password = std::env::var("PGPASSWORD").ok();
    let mut info = sluice::postgres::conninfo::ConnInfo::parse(url, password.as_deref(), None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    info.config.application_name("sluice-loadtest");
    info.connect_sql()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the database: {e}"))
}

/// A TOML string.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialize")
}
