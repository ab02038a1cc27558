//! The streaming pipeline: supervised actors per stage, exchanging batches
//! under a bound on the bytes in flight.
//!
//! ```text
//! reader ─► decoder ─► filter ─► transformer ─► router ─► shards (N) ─► lane + writer per sink ─► acknowledger
//!   ▲                                                                                                │
//!   └──────────────────────────── confirmed position (watch) ◄───────────────────────────────────────┘
//! ```

pub mod ack;
pub mod change;
pub mod decoder;
pub mod filter;
pub mod flow;
pub mod lane;
pub mod predicate;
pub mod reader;
pub mod router;
pub mod shard;
pub mod slot;
pub mod stats;
pub mod status;
pub mod supervisor;
pub mod tables_watch;
pub mod template;
pub mod transform;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, SinkConfig, TransformConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::postgres::catalog;
use crate::postgres::conninfo::ConnInfo;
use filter::Operation;

use flow::FlowControl;
use router::TableRoute;
use supervisor::PipelineStats;

/// Everything the stages need, resolved from the configuration.
#[derive(Debug)]
pub struct PipelinePlan {
    pub name: String,
    pub conninfo: ConnInfo,
    pub slot: String,
    pub publication: String,
    pub data_dir: PathBuf,
    pub shards: usize,
    pub flow: FlowControl,
    /// Credits of backfill chunks: a budget of their own, so chunks waiting
    /// for their high watermark never hold the credits the reader needs to
    /// read that watermark.
    pub backfill_flow: FlowControl,
    pub batch_max_changes: usize,
    pub batch_max_bytes: u64,
    pub batch_max_age: Duration,
    pub status_interval: Duration,
    pub max_restart_backoff: Duration,
    pub drain_timeout: Duration,
    pub spool_max_bytes: u64,
    pub key_separator: String,
    pub operations: HashMap<String, Vec<Operation>>,
    /// Column predicates by table (`schema.table`); tables without are absent.
    pub predicates: HashMap<String, Vec<predicate::Predicate>>,
    pub transforms: HashMap<String, TransformConfig>,
    pub routes: HashMap<String, TableRoute>,
    pub sinks: Vec<SinkConfig>,
    /// The functions tables use; `None` when no table uses one.
    pub functions: Option<Arc<crate::functions::FunctionPlan>>,
    pub stats: PipelineStats,
    pub status: Arc<status::PipelineStatus>,
    /// The streamed tables' oids (`schema.table` → oid) when the pipeline
    /// was set up: changes of another table of the same name are of one
    /// dropped since, and one created since sets the pipeline up again.
    pub table_oids: Arc<BTreeMap<String, u32>>,
    /// The prefix of this deployment's backfill watermarks in the WAL.
    pub watermark_prefix: Arc<str>,
}

impl PipelinePlan {
    pub fn new(config: &Config) -> Result<PipelinePlan> {
        let url = config.database_url()?;
        let conninfo = ConnInfo::parse(
            &url,
            config.password().as_deref(),
            config.source.tls_ca_file.clone(),
        )?;
        let p = &config.pipeline;
        let mut operations = HashMap::new();
        let mut transforms = HashMap::new();
        let mut routes = HashMap::new();
        let mut table_functions = HashMap::new();
        let mut predicates = HashMap::new();
        for (table, name) in config.tables.iter().zip(config.table_names()) {
            let key = name.to_string();
            if !table.predicates.is_empty() {
                let parsed = table
                    .predicates
                    .iter()
                    .map(|p| predicate::Predicate::parse(p))
                    .collect::<std::result::Result<Vec<_>, String>>()
                    .map_err(|e| crate::error::Error::new(crate::error::ErrorKind::Config, e))?;
                predicates.insert(key.clone(), parsed);
            }
            if table.filter.is_some() || table.route.is_some() || table.transform.function.is_some()
            {
                table_functions.insert(
                    key.clone(),
                    crate::functions::TableFunctions {
                        filter: table.filter.clone(),
                        transform: table.transform.function.clone(),
                        route: table.route.clone(),
                    },
                );
            }
            operations.insert(key.clone(), table.operations.clone());
            transforms.insert(key.clone(), table.transform.clone());
            routes.insert(
                key,
                TableRoute {
                    index: config.index_for(table, &name),
                    key: table.key.clone(),
                    routing: table.routing.clone(),
                    // A route may send several tables to one index.
                    shared: table.shared_index || table.route.is_some(),
                },
            );
        }
        let routed: std::collections::BTreeSet<String> = table_functions
            .iter()
            .filter(|(_, f)| f.route.is_some())
            .map(|(table, _)| table.clone())
            .collect();
        let route_record = Arc::new(crate::functions::routes::RouteRecord::open(
            &p.data_dir,
            routed,
        )?);
        let functions = (!table_functions.is_empty()).then(|| {
            Arc::new(crate::functions::FunctionPlan {
                configs: config.functions.clone(),
                base_dir: config.base_dir.clone(),
                memory_bytes: config.function_memory_bytes(),
                max_parked: p.function_max_parked,
                tables: table_functions,
                database: conninfo.dbname(),
                sinks: config.sinks.iter().map(|s| s.name.clone()).collect(),
                data_dir: p.data_dir.clone(),
                routes: route_record.clone(),
            })
        });
        Ok(PipelinePlan {
            name: config.source.slot.clone(),
            conninfo,
            slot: config.source.slot.clone(),
            publication: config.source.publication.clone(),
            data_dir: p.data_dir.clone(),
            shards: p.shards,
            flow: FlowControl::new(p.max_bytes_in_flight),
            backfill_flow: FlowControl::new(p.max_bytes_in_flight),
            batch_max_changes: p.batch_max_changes,
            batch_max_bytes: p.batch_max_bytes,
            batch_max_age: Duration::from_millis(p.batch_max_age_ms),
            status_interval: Duration::from_millis(config.source.status_interval_ms),
            max_restart_backoff: Duration::from_millis(p.max_restart_backoff_ms),
            drain_timeout: Duration::from_millis(p.drain_timeout_ms),
            spool_max_bytes: p.spool_max_bytes,
            key_separator: p.key_separator.clone(),
            operations,
            predicates,
            transforms,
            routes,
            sinks: config.sinks.clone(),
            functions,
            stats: PipelineStats::default(),
            status: Arc::new(status::PipelineStatus::new(config.sinks.len())),
            table_oids: Arc::default(),
            // Until `run` reads the deployment's id from the data directory.
            watermark_prefix: crate::backfill::window::prefix(&config.source.slot, "").into(),
        })
    }
}

/// What `check` found: settings that do not fit the tables as the catalog
/// describes them, and what the source database lacks.
#[derive(Debug, Default)]
pub struct Checked {
    pub config: Vec<catalog::Problem>,
    pub source: Vec<catalog::Problem>,
}

impl Checked {
    pub fn len(&self) -> usize {
        self.config.len() + self.source.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &catalog::Problem> {
        self.config.iter().chain(&self.source)
    }

    /// The error for what was found (`None` when nothing), of `kind`.
    pub fn error(&self, what: &str) -> Option<Error> {
        if self.is_empty() {
            return None;
        }
        let list = self
            .iter()
            .map(|p| format!("  - {p}"))
            .collect::<Vec<_>>()
            .join("\n");
        Some(Error::new(
            self.kind(),
            format!("{what} ({} problem(s)):\n{list}", self.len()),
        ))
    }

    /// A configuration error (exit 2) when a setting is wrong, else a setup
    /// error (exit 3).
    pub fn kind(&self) -> ErrorKind {
        if self.config.is_empty() {
            ErrorKind::Setup
        } else {
            ErrorKind::Config
        }
    }
}

/// Checks the configuration against the source and the source itself, and
/// returns every problem found (empty when ready).
pub async fn check(config: &Config) -> Result<Checked> {
    let plan = PipelinePlan::new(config)?;
    // A database that does not answer at start is not ready (exit 3).
    let client = plan
        .conninfo
        .connect_sql()
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::Connection => e.as_kind(ErrorKind::Setup),
            _ => e,
        })?;
    let tables: Vec<_> = config
        .tables
        .iter()
        .zip(config.table_names())
        .map(|(t, name)| (name, t.key.clone()))
        .collect();
    let report = catalog::check_source(&client, &tables, &plan.slot, &plan.publication).await?;
    let mut checked = Checked {
        config: check_columns(config, &report.tables),
        source: Vec::new(),
    };
    let mut problems = report.problems;
    problems.extend(check_identity(config, &report.tables));
    if problems.is_empty() {
        problems.extend(check_routing(config, &client).await?);
    }
    // The replication connection itself (pg_hba.conf `replication` lines, TLS).
    match crate::postgres::replication::ReplicationConnection::connect(&plan.conninfo).await {
        Ok(conn) => conn.close().await,
        Err(e) => problems.push(catalog::Problem {
            what: format!("cannot open a replication connection: {}", e.message()),
            fix: e
                .hint_text()
                .unwrap_or("allow replication connections for this role in pg_hba.conf")
                .to_owned(),
        }),
    }
    checked.source = problems;
    Ok(checked)
}

/// Asks every sink's engine whether it answers and takes the credentials,
/// without writing (`sluice check` only: `run` waits out an engine that is
/// down). Refused credentials are configuration problems, an engine that
/// does not answer is not ready.
pub async fn check_sinks(config: &Config, checked: &mut Checked) {
    let names = config.table_names();
    let index = match (config.tables.first(), names.first()) {
        (Some(table), Some(name)) => config.index_for(table, name),
        _ => return,
    };
    for (i, sink) in config.sinks.iter().enumerate() {
        let Err(problem) = crate::sink::probe(sink, &index).await else {
            continue;
        };
        let credentials = problem.starts_with("refuses the credentials");
        let found = catalog::Problem {
            what: format!(
                "sinks[{i}] ({}, {}) {problem}",
                sink.name,
                sink.kind.type_name()
            ),
            fix: if credentials {
                "set the sink's api_key_env (or its user and password) to credentials the engine accepts"
            } else {
                "start the engine, or fix the sink's url"
            }
            .to_owned(),
        };
        if credentials {
            checked.config.push(found);
        } else {
            checked.source.push(found);
        }
    }
}

/// A table with a filter or route function needs its old rows in the
/// stream (`REPLICA IDENTITY FULL`): with only the key, a delete's record has
/// nothing to filter or route by (`record.active`, `record.tenant` are nil),
/// and an update the route sends elsewhere cannot find the index its
/// document was in.
fn check_identity(
    config: &Config,
    tables: &HashMap<crate::model::ident::TableName, catalog::TableMeta>,
) -> Vec<catalog::Problem> {
    let mut problems = Vec::new();
    for (table, name) in config.tables.iter().zip(config.table_names()) {
        let functions: Vec<&str> = [("filter", &table.filter), ("route", &table.route)]
            .into_iter()
            .filter(|(_, f)| f.is_some())
            .map(|(kind, _)| kind)
            .collect();
        let Some(meta) = tables.get(&name) else {
            continue;
        };
        if functions.is_empty() || meta.replica_identity == 'f' {
            continue;
        }
        problems.push(catalog::Problem {
            what: format!(
                "table {name} has a {} function but not REPLICA IDENTITY FULL: its deletes carry \
                 only the key, so the function cannot see the row a delete removes{}",
                functions.join(" and a "),
                if table.route.is_some() {
                    ", nor find the index an update's document leaves"
                } else {
                    ""
                }
            ),
            fix: format!("run `ALTER TABLE {} REPLICA IDENTITY FULL;`", name.quoted()),
        });
    }
    problems
}

/// Every column a table's settings name (`where`, `key`, `routing`, `keep`,
/// `drop`, `rename`, template fields, `path`) must be one of its columns: a
/// misspelled `drop` would index the column it means to hide, a misspelled
/// `where` every row.
fn check_columns(
    config: &Config,
    tables: &HashMap<crate::model::ident::TableName, catalog::TableMeta>,
) -> Vec<catalog::Problem> {
    let mut problems = Vec::new();
    for (i, (table, name)) in config.tables.iter().zip(config.table_names()).enumerate() {
        let Some(meta) = tables.get(&name) else {
            continue; // reported by the source check
        };
        for (field, column) in table.named_columns() {
            if meta.columns.iter().any(|c| c.name == column) {
                continue;
            }
            let columns: Vec<&str> = meta.columns.iter().map(|c| c.name.as_str()).collect();
            problems.push(catalog::Problem {
                what: format!(
                    "tables[{i}].{field}: table {name} has no column `{column}` (its columns: {})",
                    columns.join(", ")
                ),
                fix: "name one of the table's columns (names are case-sensitive)".to_owned(),
            });
        }
    }
    problems
}

/// A routing column must be one of its table's key columns (the configured
/// key, or else the primary key): a delete carries only the key.
async fn check_routing(
    config: &Config,
    client: &tokio_postgres::Client,
) -> Result<Vec<catalog::Problem>> {
    let routed: Vec<_> = config
        .tables
        .iter()
        .zip(config.table_names())
        .filter(|(t, _)| t.routing.is_some() && t.key.is_none())
        .collect();
    if routed.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<_> = routed.iter().map(|(_, name)| name.clone()).collect();
    let metas = catalog::load_tables(client, &names).await?;
    let mut problems = Vec::new();
    for (table, name) in routed {
        let routing = table.routing.as_deref().unwrap_or_default();
        let key = metas
            .get(&name)
            .map(|m| m.identity_columns.clone())
            .unwrap_or_default();
        if !key.iter().any(|column| column == routing) {
            problems.push(catalog::Problem {
                what: format!(
                    "the routing column `{routing}` of table {name} is not in its key ({})",
                    key.join(", ")
                ),
                fix: "route by a key column, or set the table's `key` to columns that include it"
                    .to_owned(),
            });
        }
    }
    Ok(problems)
}

impl PipelinePlan {
    /// Tables without a configured key are keyed by their primary key (or
    /// replica identity index), as the catalog says: with REPLICA IDENTITY FULL
    /// the stream flags every column as part of the identity.
    pub fn resolve_keys(
        &mut self,
        tables: &HashMap<crate::model::ident::TableName, catalog::TableMeta>,
    ) {
        for (name, meta) in tables {
            if let Some(route) = self.routes.get_mut(&name.to_string()) {
                if route.key.is_none() && !meta.identity_columns.is_empty() {
                    route.key = Some(meta.identity_columns.clone());
                }
            }
        }
    }
}

/// Checks the source, then creates the publication and slot when missing
/// (see `slot`). Nothing is created when a check fails. Returns the
/// streamed tables' metadata, and whether the slot was lost and replaced.
pub async fn prepare(
    config: &Config,
) -> Result<(
    HashMap<crate::model::ident::TableName, catalog::TableMeta>,
    slot::SlotOutcome,
)> {
    if let Some(e) = check(config)
        .await?
        .error("the configuration or the source database is not ready for sluice")
    {
        return Err(e);
    }
    let plan = PipelinePlan::new(config)?;
    let client = plan.conninfo.connect_sql().await?;
    catalog::ensure_publication(&client, &plan.publication, &config.table_names()).await?;
    std::fs::create_dir_all(&plan.data_dir).map_err(|e| {
        Error::io(
            format!("cannot create data directory {}", plan.data_dir.display()),
            e,
        )
    })?;
    let streamed_before = !crate::backfill::store::Store::open(&plan.data_dir)?
        .known_sinks()?
        .is_empty();
    let outcome = slot::ensure(
        &client,
        &plan.slot,
        config.source.on_slot_lost,
        &plan.data_dir,
        streamed_before,
    )
    .await?;
    let tables = catalog::load_tables(&client, &config.table_names()).await?;
    Ok((tables, outcome))
}

/// Runs the pipeline until `shutdown` resolves, then drains it. A streamed
/// table dropped and created again sets the pipeline up again (its old
/// documents removed, the new table backfilled), without a manual step.
pub async fn run(
    config: &Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Arc<PipelinePlan>> {
    tokio::pin!(shutdown);
    loop {
        match run_once(config, &mut shutdown).await {
            Err(e) if e.kind() == ErrorKind::TableRecreated => {
                tracing::warn!("{e}: setting the pipeline up again");
            }
            done => return done,
        }
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run_once(
    config: &Config,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Arc<PipelinePlan>> {
    std::fs::create_dir_all(&config.pipeline.data_dir).map_err(|e| {
        Error::io(
            format!(
                "cannot create data directory {}",
                config.pipeline.data_dir.display()
            ),
            e,
        )
    })?;
    let _lock = crate::data_dir::DataDirLock::acquire(&config.pipeline.data_dir)?;
    let mut plan = PipelinePlan::new(config)?;
    let deployment = crate::data_dir::deployment_id(&plan.data_dir)?;
    plan.watermark_prefix = crate::backfill::window::prefix(&plan.slot, &deployment).into();
    // A stop request during setup (slot creation waits for running
    // transactions) ends it cleanly too.
    let (tables, outcome) = tokio::select! {
        prepared = prepare(config) => prepared?,
        _ = shutdown.as_mut() => {
            tracing::info!("stopped before streaming started");
            return Ok(Arc::new(plan));
        }
    };
    plan.resolve_keys(&tables);
    let oids: BTreeMap<String, u32> = tables
        .iter()
        .map(|(name, meta)| (name.to_string(), meta.oid))
        .collect();
    plan.table_oids = Arc::new(oids.clone());
    let plan = Arc::new(plan);
    let backfills = crate::backfill::Manager::open(
        crate::backfill::store::Store::open(&plan.data_dir)?,
        config.backfill.settings(&config.queued_sinks()),
        plan.conninfo.clone(),
        config.sinks.iter().map(|s| s.name.clone()).collect(),
        config.table_names(),
        plan.watermark_prefix.clone(),
    )?;
    let state = crate::api::AppState {
        plan: plan.clone(),
        backfills: backfills.clone(),
    };
    // Served before the sinks are emptied: a sink paused by its parked
    // writes can be seen and retried meanwhile.
    let api = crate::api::serve(&config.api, &plan.data_dir, state).await?;
    let resync = match outcome {
        slot::SlotOutcome::Resync(at) => {
            let all: Vec<String> = oids.keys().cloned().collect();
            for sink in &config.sinks {
                let emptied = || empty_tables(&plan, sink, &all, at, at);
                if !retrying(emptied, shutdown).await? {
                    return Ok(plan);
                }
            }
            true
        }
        slot::SlotOutcome::Ready => {
            let recreated = backfills.recreated_tables(&oids)?;
            if !recreated.is_empty() {
                // Above every position a sink holds, so no sink takes the
                // truncate for one it already applied; the sinks' positions
                // stay where they are.
                let now = catalog::current_wal_lsn(&plan.conninfo.connect_sql().await?).await?;
                for (sink, tables) in recreated {
                    if let Some(sink) = config.sinks.iter().find(|s| s.name == sink) {
                        let zero = crate::lsn::Lsn::ZERO;
                        let emptied = || empty_tables(&plan, sink, &tables, now, zero);
                        if !retrying(emptied, shutdown).await? {
                            return Ok(plan);
                        }
                    }
                }
            }
            false
        }
    };
    backfills.set_up_sinks(config.backfill.initial, &oids, resync)?;
    let _wal_watch = AbortOnDrop(tokio::spawn(slot::watch_retained_wal(
        plan.conninfo.clone(),
        plan.slot.clone(),
        config.source.retained_wal_warn_bytes,
    )));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (supervisor, handle) = ractor::Actor::spawn(
        Some(format!("{}-supervisor", plan.name)),
        supervisor::Supervisor,
        supervisor::SupervisorArgs {
            plan: plan.clone(),
            backfills: Some(backfills),
            done: Some(done_tx),
            ledger: Some(slot::ConfirmLedger::open(&plan.data_dir)?),
        },
    )
    .await
    .map_err(|e| {
        Error::new(
            ErrorKind::Protocol,
            format!("cannot start the pipeline: {e}"),
        )
    })?;
    tokio::pin!(done_rx);
    let watch = tables_watch::recreated(plan.clone());
    tokio::pin!(watch);
    let fatal = tokio::select! {
        _ = shutdown.as_mut() => {
            let _ = supervisor.cast(supervisor::SupervisorMsg::Shutdown);
            (&mut done_rx).await.ok().flatten()
        }
        recreated = &mut watch => {
            // Drained first: everything read so far is confirmed.
            let _ = supervisor.cast(supervisor::SupervisorMsg::Shutdown);
            (&mut done_rx).await.ok().flatten().or(Some(recreated))
        }
        fatal = &mut done_rx => fatal.ok().flatten(),
    };
    let _ = handle.await;
    if let Some(api) = api {
        api.stop().await;
    }
    match fatal {
        Some(e) => Err(e),
        None => Ok(plan),
    }
}

/// Runs `attempt` until it succeeds, waiting out the errors a retry may fix
/// (an engine that is down) with a growing pause; `false` when a stop
/// request came first.
async fn retrying<F, Fut>(
    mut attempt: F,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut pause = Duration::from_secs(1);
    loop {
        match attempt().await {
            Ok(()) => return Ok(true),
            Err(e) if e.kind().is_retryable() => {
                tracing::error!(
                    retry_in_ms = pause.as_millis() as u64,
                    "setting the sinks up failed: {e}"
                );
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.as_mut() => return Ok(false),
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// Removes every document of `tables` from one sink, and the writes parked
/// for them: before a resync (rows deleted while the slot was lost must not
/// stay), and when a table was created again (the old rows are gone). The
/// backfill that follows writes the rest.
/// `at`: the truncates' position, above every position the sink holds;
/// `commit_at`: the position to commit (for a resync, the new slot's start).
async fn empty_tables(
    plan: &PipelinePlan,
    sink: &SinkConfig,
    tables: &[String],
    at: crate::lsn::Lsn,
    commit_at: crate::lsn::Lsn,
) -> Result<()> {
    use change::{WriteAction, WriteOp};
    let mut ops = Vec::new();
    for table in tables {
        let Some(route) = plan.routes.get(table) else {
            continue;
        };
        let truncate = WriteOp {
            index: route.index.as_str().into(),
            table: table.as_str().into(),
            id: String::new(),
            lsn: at,
            action: WriteAction::Truncate {
                barrier: 0,
                scoped: route.shared,
            },
            routing: None,
        };
        match &plan.functions {
            Some(functions) => ops.extend(functions.routes.truncates(&truncate)),
            None => ops.push(truncate),
        }
    }
    let mut target = crate::sink::build(sink, &plan.data_dir)?;
    if let Some(failed) = target.failed() {
        for table in tables {
            failed.discard_table(table, crate::lsn::Lsn(u64::MAX))?;
        }
    }
    target.write(&ops).await?;
    target.commit(commit_at).await?;
    tracing::warn!(sink = %sink.name, tables = %tables.join(", "), "emptied the tables' documents before backfilling them again");
    Ok(())
}
