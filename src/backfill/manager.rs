//! The backfills of a pipeline: created on request or for a new sink,
//! checked before anything changes, stored, and run by one runner each
//! while the pipeline streams.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use super::progress::Progress;
use super::store::Store;
use super::{
    chunk, condition, now_ms, Backfill, BackfillError, ExactRows, Settings, State, TableProgress,
};
use crate::error::Result;
use crate::lsn::Lsn;
use crate::model::flow::FlowControl;
use crate::model::ident::TableName;
use crate::postgres::conninfo::ConnInfo;

/// How often a running backfill logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What runners need of one pipeline generation; gone when it stops.
#[derive(Clone)]
pub struct RunContext {
    pub generation: u64,
    /// Where chunks enter the pipeline.
    pub chunks: super::ChunkInlet,
    /// The position each sink committed backfill rows below, by sink number.
    pub positions: watch::Receiver<Vec<Lsn>>,
    /// The backfills' own in-flight budget (not the reader's).
    pub flow: FlowControl,
}

/// Starts the task that runs backfill `id` in the pipeline generation
/// `context` (`runner::start`), and returns it.
pub(super) type Start = fn(Arc<Manager>, u64, RunContext) -> JoinHandle<()>;

pub struct Manager {
    store: Store,
    start: Start,
    /// The prefix of this deployment's watermarks (`window::prefix`).
    pub(super) watermark_prefix: Arc<str>,
    pub(super) settings: Settings,
    pub(super) conninfo: ConnInfo,
    /// Configured sinks, in order (a sink's number is its position).
    sinks: Vec<String>,
    /// Configured tables.
    tables: Vec<TableName>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    backfills: BTreeMap<u64, Backfill>,
    progress: HashMap<u64, Progress>,
    last_log: HashMap<u64, Instant>,
    context: Option<RunContext>,
    runners: HashMap<u64, (u64, AbortHandle)>,
}

impl Inner {
    /// Sets `sluice_backfills{state}`: how many backfills are in each state.
    fn report_states(&self) {
        let mut counts = [0u64; 5];
        for backfill in self.backfills.values() {
            counts[STATES
                .iter()
                .position(|s| *s == backfill.state)
                .unwrap_or(0)] += 1;
        }
        for (state, count) in STATES.iter().zip(counts) {
            metrics::gauge!("sluice_backfills", "state" => state_name(*state)).set(count as f64);
        }
    }
}

/// Every state a backfill can be in.
const STATES: [State; 5] = [
    State::Running,
    State::Paused,
    State::Completed,
    State::Cancelled,
    State::Failed,
];

/// A backfill with its rate, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    #[serde(flatten)]
    pub backfill: Backfill,
    pub rows_done: u64,
    pub rows_estimated: Option<u64>,
    pub percent: Option<f64>,
    /// Whole rows a second over the last seconds; `None` until the first
    /// chunk since the runner started (or resumed) is done.
    pub rows_per_second: Option<u64>,
    pub eta_seconds: Option<u64>,
    /// Paused or cancelled, but chunks read before that are still being
    /// written: `rows_done` is final once this is false.
    pub settling: bool,
}

impl Manager {
    /// The backfills stored in `store`; `start` starts a task that runs one.
    pub(super) fn open(
        store: Store,
        settings: Settings,
        conninfo: ConnInfo,
        sinks: Vec<String>,
        tables: Vec<TableName>,
        watermark_prefix: Arc<str>,
        start: Start,
    ) -> Result<Arc<Manager>> {
        let backfills = store.load()?;
        Ok(Arc::new(Manager {
            store,
            start,
            watermark_prefix,
            settings,
            conninfo,
            sinks,
            tables,
            inner: Mutex::new(Inner {
                backfills,
                ..Inner::default()
            }),
        }))
        .inspect(|manager| manager.lock().report_states())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the initial backfill (when `initial` is on) of every table a
    /// sink was not set up with: all of a new sink's, a table added to its
    /// configuration, a table dropped and created again (its OID changed).
    /// `resync`: the slot was lost and replaced, so every table of every
    /// sink is backfilled again and running backfills are cancelled.
    /// `oids`: the configured tables' OIDs (`schema.table`).
    /// Per sink, the tables it was set up with that were since dropped and
    /// created again (another oid): their documents are of rows that no
    /// longer exist, to be removed before the backfill.
    pub fn recreated_tables(
        &self,
        oids: &BTreeMap<String, u32>,
    ) -> Result<BTreeMap<String, Vec<String>>> {
        let setup = self.store.setup()?.unwrap_or_default();
        Ok(setup
            .into_iter()
            .filter(|(sink, _)| self.sinks.contains(sink))
            .map(|(sink, had)| {
                let tables = had
                    .iter()
                    .filter(|(table, oid)| oids.get(*table).is_some_and(|now| now != *oid))
                    .map(|(table, _)| table.clone())
                    .collect::<Vec<_>>();
                (sink, tables)
            })
            .filter(|(_, tables)| !tables.is_empty())
            .collect())
    }

    pub fn set_up_sinks(
        &self,
        initial: bool,
        oids: &BTreeMap<String, u32>,
        resync: bool,
    ) -> Result<()> {
        let mut known = self.store.known_sinks()?;
        let mut setup = match self.store.setup()? {
            Some(setup) => setup,
            // Kept by an earlier sluice: its known sinks had every table.
            None => known
                .iter()
                .map(|sink| (sink.clone(), oids.clone()))
                .collect(),
        };
        let mut inner = self.lock();
        if resync {
            setup.clear();
            let active: Vec<u64> = inner
                .backfills
                .values()
                .filter(|b| b.state.is_active())
                .map(|b| b.id)
                .collect();
            drop(inner);
            for id in active {
                self.finish(
                    id,
                    State::Cancelled,
                    Some("the slot was replaced: resyncing".into()),
                )?;
            }
            inner = self.lock();
        }
        for sink in &self.sinks {
            let had = setup.entry(sink.clone()).or_default();
            let wanted: Vec<(&String, &u32)> = oids
                .iter()
                .filter(|(table, oid)| had.get(*table) != Some(oid))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let why = if resync {
                "resync"
            } else if had.is_empty() {
                "new sink"
            } else {
                "tables new to the sink, or created again"
            };
            let names: Vec<&str> = wanted.iter().map(|(t, _)| t.as_str()).collect();
            if initial {
                let tables: Vec<TableProgress> = names
                    .iter()
                    .map(|t| TableProgress {
                        table: (*t).to_owned(),
                        condition: None,
                        rows_done: 0,
                        rows_estimated: None,
                        cursor: None,
                        rows: None,
                        done: false,
                    })
                    .collect();
                // A table a running backfill reads for the sink is read again
                // from its start: the earlier rows may be of the dropped table.
                let backfill = self.insert(&mut inner, sink, tables, true)?;
                tracing::info!(backfill = backfill.id, sink = %sink, tables = %names.join(", "), reason = why, "backfilling tables the sink was not set up with");
            } else {
                tracing::warn!(sink = %sink, tables = %names.join(", "), reason = why, "backfill.initial is off: tables the sink was not set up with get only new changes");
            }
            had.extend(wanted.into_iter().map(|(t, oid)| (t.clone(), *oid)));
        }
        drop(inner);
        self.store.save_setup(&setup)?;
        for sink in &self.sinks {
            if !known.contains(sink) {
                known.push(sink.clone());
            }
        }
        self.store.save_known_sinks(&known)
    }

    fn insert(
        &self,
        inner: &mut Inner,
        sink: &str,
        tables: Vec<TableProgress>,
        initial: bool,
    ) -> Result<Backfill> {
        let id = inner.backfills.keys().next_back().map_or(1, |id| id + 1);
        let now = now_ms();
        let backfill = Backfill {
            id,
            sink: sink.to_owned(),
            state: State::Running,
            reason: None,
            initial,
            tables,
            chunks: 0,
            created_at_ms: now,
            updated_at_ms: now,
            finished_at_ms: None,
        };
        self.store.save(&backfill)?;
        inner.backfills.insert(id, backfill.clone());
        inner.report_states();
        Ok(backfill)
    }

    /// Starts a backfill of `table` into `sink`, of the rows matching
    /// `condition`. Nothing changes unless every check passes.
    pub async fn create(
        self: &Arc<Self>,
        sink: &str,
        table: &str,
        condition: Option<&str>,
    ) -> Result<View, BackfillError> {
        self.start(sink, table, condition, None).await
    }

    /// Starts a backfill of exactly `rows` of `table` into `sink`: those in
    /// the table are written, those no longer in it are deleted.
    pub async fn create_rows(
        self: &Arc<Self>,
        sink: &str,
        table: &str,
        rows: ExactRows,
    ) -> Result<View, BackfillError> {
        self.start(sink, table, None, Some(rows)).await
    }

    async fn start(
        self: &Arc<Self>,
        sink: &str,
        table: &str,
        condition: Option<&str>,
        rows: Option<ExactRows>,
    ) -> Result<View, BackfillError> {
        if !self.sinks.iter().any(|s| s == sink) {
            return Err(BackfillError::NotFound(format!(
                "there is no sink named `{sink}` (sinks: {})",
                self.sinks.join(", ")
            )));
        }
        let name = TableName::parse(table).map_err(BackfillError::Invalid)?;
        if !self.tables.contains(&name) {
            let tables: Vec<String> = self.tables.iter().map(|t| t.to_string()).collect();
            return Err(BackfillError::NotFound(format!(
                "table {name} is not streamed by this pipeline (tables: {})",
                tables.join(", ")
            )));
        }
        let condition = condition.map(str::trim).filter(|c| !c.is_empty());
        self.conflict(sink, &name)?;
        let client = self
            .conninfo
            .connect_sql()
            .await
            .map_err(|e| BackfillError::Database(e.to_string()))?;
        let shape = chunk::describe(&client, &name).await?;
        // Only sluice's own rendering of the condition reaches Postgres; the
        // backfill keeps the text as the user wrote it.
        let sql = condition
            .map(|c| condition::for_table(c, &shape))
            .transpose()?;
        let estimate = match &rows {
            Some(rows) => {
                let columns = shape.positions(&rows.columns)?;
                if let Some(key) = rows.keys.iter().find(|k| k.len() != columns.len()) {
                    return Err(BackfillError::Invalid(format!(
                        "the key {key:?} of table {name} does not have a value for each of its columns ({})",
                        rows.columns.join(", ")
                    )));
                }
                rows.keys.len() as u64
            }
            None => estimate(&client, &name, sql.as_deref()).await?,
        };
        let mut inner = self.lock();
        // Checked again: another request may have taken the table meanwhile.
        self.conflict_in(&inner, sink, &name)?;
        let tables = vec![TableProgress {
            table: name.to_string(),
            condition: condition.map(str::to_owned),
            rows_done: 0,
            rows_estimated: Some(estimate),
            cursor: None,
            done: false,
            rows,
        }];
        let backfill = self
            .insert(&mut inner, sink, tables, false)
            .map_err(|e| BackfillError::Database(e.to_string()))?;
        tracing::info!(backfill = backfill.id, sink, table = %name, condition = condition.unwrap_or(""), "backfill started");
        self.spawn_runner(&mut inner, backfill.id);
        Ok(self.view(&inner, &backfill))
    }

    fn conflict(&self, sink: &str, table: &TableName) -> Result<(), BackfillError> {
        self.conflict_in(&self.lock(), sink, table)
    }

    fn conflict_in(
        &self,
        inner: &Inner,
        sink: &str,
        table: &TableName,
    ) -> Result<(), BackfillError> {
        let table = table.to_string();
        for backfill in inner.backfills.values() {
            let holds = backfill.state.is_active()
                && backfill.sink == sink
                && backfill.tables.iter().any(|t| !t.done && t.table == table);
            if holds {
                return Err(BackfillError::Conflict(format!(
                    "backfill {} ({}) is already reading {table} into sink {sink}; \
                     cancel it first or wait for it to complete",
                    backfill.id,
                    state_name(backfill.state)
                )));
            }
        }
        Ok(())
    }

    pub fn list(&self, sink: Option<&str>) -> Vec<View> {
        let inner = self.lock();
        inner
            .backfills
            .values()
            .filter(|b| sink.is_none_or(|s| b.sink == s))
            .map(|b| self.view(&inner, b))
            .collect()
    }

    pub fn get(&self, id: u64) -> Result<View, BackfillError> {
        let inner = self.lock();
        let backfill = inner.backfills.get(&id).ok_or_else(|| not_found(id))?;
        Ok(self.view(&inner, backfill))
    }

    fn view(&self, inner: &Inner, backfill: &Backfill) -> View {
        let rows_done = backfill.rows_done();
        // The planner's estimate, never below what is already done.
        let rows_estimated = backfill.rows_estimated().map(|e| e.max(rows_done));
        let running = backfill.state == State::Running;
        let progress = inner.progress.get(&backfill.id).filter(|_| running);
        let percent = match (backfill.state, rows_estimated) {
            (State::Completed, _) => Some(100.0),
            (_, Some(0)) => Some(0.0),
            (_, Some(total)) => Some((rows_done as f64 * 100.0 / total as f64).min(100.0)),
            (_, None) => None,
        };
        View {
            backfill: backfill.clone(),
            rows_done,
            rows_estimated,
            percent,
            rows_per_second: progress
                .and_then(Progress::rate)
                .map(|rate| rate.round() as u64),
            eta_seconds: progress
                .zip(rows_estimated)
                .and_then(|(p, total)| p.eta(total.saturating_sub(rows_done)))
                .map(|eta| eta.as_secs()),
            settling: !running
                && inner
                    .runners
                    .get(&backfill.id)
                    .is_some_and(|(_, runner)| !runner.is_finished()),
        }
    }

    pub fn pause(self: &Arc<Self>, id: u64) -> Result<View, BackfillError> {
        self.transition(id, State::Paused, &[State::Running])
    }

    pub fn resume(self: &Arc<Self>, id: u64) -> Result<View, BackfillError> {
        self.transition(id, State::Running, &[State::Paused, State::Running])
    }

    pub fn cancel(self: &Arc<Self>, id: u64) -> Result<View, BackfillError> {
        self.transition(id, State::Cancelled, &[State::Running, State::Paused])
    }

    fn transition(
        self: &Arc<Self>,
        id: u64,
        to: State,
        from: &[State],
    ) -> Result<View, BackfillError> {
        let mut inner = self.lock();
        let backfill = inner.backfills.get_mut(&id).ok_or_else(|| not_found(id))?;
        if !from.contains(&backfill.state) {
            return Err(BackfillError::Invalid(format!(
                "backfill {id} is {}: it cannot be {}",
                state_name(backfill.state),
                match to {
                    State::Paused => "paused",
                    State::Running => "resumed",
                    _ => "cancelled",
                }
            )));
        }
        let mut next = backfill.clone();
        next.state = to;
        next.updated_at_ms = now_ms();
        if to == State::Cancelled {
            next.finished_at_ms = Some(next.updated_at_ms);
        }
        self.store
            .save(&next)
            .map_err(|e| BackfillError::Database(e.to_string()))?;
        *backfill = next.clone();
        inner.report_states();
        tracing::info!(
            backfill = id,
            state = state_name(to),
            "backfill {}",
            state_name(to)
        );
        if to == State::Running {
            self.spawn_runner(&mut inner, id);
        }
        Ok(self.view(&inner, &next))
    }

    /// Runs every running backfill in the pipeline generation `context`.
    pub fn attach(self: &Arc<Self>, context: RunContext) {
        let mut inner = self.lock();
        inner.context = Some(context);
        let running: Vec<u64> = inner
            .backfills
            .values()
            .filter(|b| b.state == State::Running)
            .map(|b| b.id)
            .collect();
        for id in running {
            self.spawn_runner(&mut inner, id);
        }
    }

    /// Stops every runner: the pipeline generation ends. Each resumes from
    /// its stored cursor when the next one starts.
    pub fn detach(&self) {
        let mut inner = self.lock();
        inner.context = None;
        for (_, (_, runner)) in inner.runners.drain() {
            runner.abort();
        }
    }

    fn spawn_runner(self: &Arc<Self>, inner: &mut Inner, id: u64) {
        let Some(context) = inner.context.clone() else {
            return; // the next pipeline start runs it
        };
        let alive = inner.runners.get(&id).is_some_and(|(generation, runner)| {
            *generation == context.generation && !runner.is_finished()
        });
        if alive {
            return;
        }
        let generation = context.generation;
        if let Some(backfill) = inner.backfills.get(&id) {
            let start = Progress::starting(Instant::now(), backfill.rows_done());
            inner.progress.insert(id, start);
        }
        let runner = (self.start)(self.clone(), id, context);
        inner
            .runners
            .insert(id, (generation, runner.abort_handle()));
    }

    /// The sink number of a sink name.
    pub(super) fn sink_number(&self, sink: &str) -> Option<usize> {
        self.sinks.iter().position(|s| s == sink)
    }

    /// The backfill as it is now.
    pub(super) fn current(&self, id: u64) -> Option<Backfill> {
        self.lock().backfills.get(&id).cloned()
    }

    /// Applies `change` to a backfill and stores it.
    pub(super) fn update(&self, id: u64, change: impl FnOnce(&mut Backfill)) -> Result<Backfill> {
        let mut inner = self.lock();
        let Some(backfill) = inner.backfills.get(&id) else {
            return Err(crate::error::Error::new(
                crate::error::ErrorKind::Io,
                format!("backfill {id} is gone"),
            ));
        };
        let mut next = backfill.clone();
        change(&mut next);
        next.updated_at_ms = now_ms();
        self.store.save(&next)?;
        let moved = next.state != backfill.state;
        inner.backfills.insert(id, next.clone());
        if moved {
            inner.report_states();
        }
        Ok(next)
    }

    /// Records a chunk committed by the sink: its rows, and where the next
    /// one starts (`advance` moves the table's cursor past the chunk).
    pub(super) fn chunk_done(
        &self,
        id: u64,
        table: usize,
        rows: u64,
        advance: impl FnOnce(&mut TableProgress),
    ) -> Result<()> {
        let backfill = self.update(id, |b| {
            b.chunks += 1;
            let t = &mut b.tables[table];
            t.rows_done += rows;
            advance(t);
        })?;
        let rows_done = backfill.rows_done();
        let table_name = &backfill.tables[table].table;
        metrics::counter!("sluice_backfill_rows_total", "sink" => backfill.sink.clone(), "table" => table_name.clone())
            .increment(rows);
        let now = Instant::now();
        let mut inner = self.lock();
        inner.progress.entry(id).or_default().record(now, rows_done);
        let due = inner
            .last_log
            .get(&id)
            .is_none_or(|at| now.duration_since(*at) >= LOG_EVERY);
        if due {
            inner.last_log.insert(id, now);
            let view = self.view(&inner, &backfill);
            // Only what is known: the planner's estimate as one, and no
            // rate or ETA before there is one.
            let about =
                |n: Option<u64>| n.map_or_else(|| "unknown".to_owned(), |n| format!("~{n}"));
            let known = |n: Option<u64>| n.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
            tracing::info!(
                backfill = id,
                sink = %backfill.sink,
                table = %table_name,
                rows_done,
                rows_estimated = %about(view.rows_estimated),
                percent = %view.percent.map_or_else(|| "unknown".to_owned(), |p| format!("~{p:.0}")),
                rows_per_second = %known(view.rows_per_second),
                eta_seconds = %known(view.eta_seconds),
                "backfill progress"
            );
        }
        Ok(())
    }

    /// Ends a backfill as completed or failed.
    pub(super) fn finish(&self, id: u64, state: State, reason: Option<String>) -> Result<()> {
        let backfill = self.update(id, |b| {
            b.state = state;
            b.reason = reason.clone();
            b.finished_at_ms = Some(now_ms());
        })?;
        self.lock().progress.remove(&id);
        match state {
            State::Failed => tracing::error!(
                backfill = id,
                sink = %backfill.sink,
                reason = reason.as_deref().unwrap_or(""),
                "backfill failed"
            ),
            _ => tracing::info!(
                backfill = id,
                sink = %backfill.sink,
                rows = backfill.rows_done(),
                "backfill {}",
                state_name(state)
            ),
        }
        Ok(())
    }
}

/// The planner's estimate of the rows of `table` matching `condition`;
/// also proves the condition is a valid SQL expression on the table.
pub(super) async fn estimate(
    client: &tokio_postgres::Client,
    table: &TableName,
    condition: Option<&str>,
) -> Result<u64, BackfillError> {
    let filter = condition
        .map(|c| format!(" WHERE ({c})"))
        .unwrap_or_default();
    // One statement through the extended protocol, in a read-only
    // transaction of its own.
    let query = format!(
        "EXPLAIN (FORMAT JSON) SELECT 1 FROM {}{filter}",
        table.quoted()
    );
    client
        .batch_execute("BEGIN READ ONLY")
        .await
        .map_err(BackfillError::sql)?;
    let row = client.query_one(&query, &[]).await;
    let end = if row.is_ok() { "COMMIT" } else { "ROLLBACK" };
    client
        .batch_execute(end)
        .await
        .map_err(BackfillError::sql)?;
    let row = row.map_err(|e| match BackfillError::sql(e) {
        BackfillError::Invalid(text) => BackfillError::Invalid(format!(
            "the condition `{}` does not work on {table}: {text}",
            condition.unwrap_or("")
        )),
        other => other,
    })?;
    let plan: serde_json::Value = row.get(0);
    Ok(plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0) as u64)
}

fn not_found(id: u64) -> BackfillError {
    BackfillError::NotFound(format!("there is no backfill {id}"))
}

pub fn state_name(state: State) -> &'static str {
    match state {
        State::Running => "running",
        State::Paused => "paused",
        State::Completed => "completed",
        State::Cancelled => "cancelled",
        State::Failed => "failed",
    }
}
