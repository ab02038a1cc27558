//! `verify`: compares each table with its index in a sink. Both sides are
//! read whole, once, into bucket files by id hash (`buckets`): the table in
//! one `COPY`, each row made into the document sluice writes for it now
//! (`table`); the index in pages (`sink::read`). Each document is reduced
//! to a content hash equal for documents equal by value (`hash`).
//!
//! Both reads take time, and live changes go on meanwhile: a row changed
//! after the table was read but before the index was, looks different.
//! So every difference is looked at again, by id: its row read, then its
//! document once the sink's committed position passed the source's
//! position after that read, then its row again. Only a difference found
//! twice in a row, with a row that did not change meanwhile, is reported;
//! one whose row kept changing is counted apart (`changing`).
//!
//! With `repair`, the differences go through the running pipeline as a
//! backfill of exactly those rows (so they keep their order with live
//! changes; a row no longer in the table has its document deleted), and
//! are then looked at again.

pub mod buckets;
pub mod hash;
pub mod table;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backfill::{condition, now_ms, BackfillError, ExactRows, Manager, State};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::model::ident::TableName;
use crate::pipeline::document::TransformConfig;
use crate::pipeline::PipelinePlan;
use crate::postgres::catalog;
use crate::sink::read::IndexReader;
use crate::sink::settings::SinkKind;
use table::TableSide;

/// Differences whose ids are kept, to look at again and to repair; more
/// are counted only (a repair then leaves them to the next verify).
const MAX_KEPT: usize = 100_000;
/// Examples of each difference in a report.
const EXAMPLES: usize = 10;
/// Ids looked at again per query.
const RECHECK_BATCH: usize = 1_000;
/// Times a difference is looked at again before it counts as changing.
const RECHECKS: usize = 6;
/// How long the sink may take to commit what the source committed.
const CATCH_UP: Duration = Duration::from_secs(120);
/// Verifications kept to be read after they end.
const KEPT_VIEWS: usize = 100;

/// What to verify.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// One table (`schema.table`); every streamed table when `None`.
    #[serde(default)]
    pub table: Option<String>,
    /// Only rows matching this condition (SQL, as in a backfill); documents
    /// without a row are then not looked for.
    #[serde(default, rename = "where")]
    pub condition: Option<String>,
    /// Repair the differences found.
    #[serde(default)]
    pub repair: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyState {
    Running,
    /// Every table equals its index.
    Equal,
    /// Some documents differ from their rows (after a repair: still).
    Different,
    /// The verification could not be done (`reason`).
    Failed,
}

/// How many documents differ in one way, with a few of their ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub count: u64,
    pub examples: Vec<String>,
}

impl Difference {
    fn of(count: u64, ids: &[String]) -> Difference {
        let mut examples: Vec<String> = ids.iter().take(EXAMPLES).cloned().collect();
        examples.sort();
        Difference { count, examples }
    }
}

/// One table's comparison with its index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableReport {
    pub table: String,
    pub index: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Rows read.
    pub rows: u64,
    /// The planner's estimate of the table's rows.
    pub rows_estimated: u64,
    /// Documents of the table read from the index.
    pub documents: u64,
    /// Rows without a document.
    pub missing: Difference,
    /// Documents without a row; `None` when not looked for (`where`).
    pub extra: Option<Difference>,
    /// Documents that differ from what sluice writes for their row now.
    pub stale: Difference,
    /// Differences whose rows changed each time they were looked at: live
    /// changes, not counted as differences.
    pub changing: u64,
    /// Differences found beyond the first 100,000, counted in `missing`,
    /// `extra` and `stale` as first found but not looked at again nor
    /// repaired (verify again after a repair).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub beyond: u64,
    /// Differences sent through the pipeline again (`repair`), and how
    /// many of them still differ after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaired: Option<Repaired>,
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repaired {
    pub sent: u64,
    pub still_different: u64,
    /// The backfill that carried them.
    pub backfill: u64,
    /// Documents whose ids are not made of one value per key column, so
    /// that no row can have them and the pipeline cannot name them to
    /// delete them (among `still_different`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_keys: u64,
}

impl TableReport {
    /// Differences left.
    fn differences(&self) -> u64 {
        let extra = self.extra.as_ref().map_or(0, |e| e.count);
        match self.repaired {
            Some(r) => r.still_different + self.beyond,
            None => self.missing.count + extra + self.stale.count,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A verification, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub id: u64,
    pub sink: String,
    pub state: VerifyState,
    /// What it is doing now (`reading table public.items`), or did last.
    pub phase: String,
    pub repair: bool,
    pub tables: Vec<TableReport>,
    /// Streamed tables not compared: their documents are made by functions,
    /// which run only in the pipeline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
}

/// Starts verifications and keeps what they found.
pub struct Verifier {
    plan: Arc<PipelinePlan>,
    backfills: Arc<Manager>,
    views: Mutex<(u64, BTreeMap<u64, View>)>,
}

/// One table to compare.
struct Work {
    name: TableName,
    index: String,
    condition: Option<String>,
    condition_sql: Option<String>,
    side: TableSide,
}

impl Verifier {
    pub fn new(plan: Arc<PipelinePlan>, backfills: Arc<Manager>) -> Arc<Verifier> {
        Arc::new(Verifier {
            plan,
            backfills,
            views: Mutex::new((1, BTreeMap::new())),
        })
    }

    fn views(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, View>)> {
        self.views.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: u64) -> Option<View> {
        self.views().1.get(&id).cloned()
    }

    pub fn list(&self) -> Vec<View> {
        self.views().1.values().cloned().collect()
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut View)) {
        if let Some(view) = self.views().1.get_mut(&id) {
            change(view);
        }
    }

    /// Checks the request and starts verifying `sink`; nothing starts
    /// unless every check passes.
    pub async fn start(
        self: &Arc<Self>,
        sink: &str,
        request: Request,
    ) -> std::result::Result<View, BackfillError> {
        let plan = &self.plan;
        let Some(position) = plan.sinks.iter().position(|s| s.name == sink) else {
            let names: Vec<&str> = plan.sinks.iter().map(|s| s.name.as_str()).collect();
            return Err(BackfillError::NotFound(format!(
                "there is no sink named `{sink}` (sinks: {})",
                names.join(", ")
            )));
        };
        if matches!(plan.sinks[position].kind, SinkKind::Null) {
            return Err(BackfillError::Invalid(format!(
                "sink {sink} is a null sink: it keeps no documents to compare"
            )));
        }
        let mut tables: Vec<&String> = plan.routes.keys().collect();
        tables.sort();
        if let Some(wanted) = &request.table {
            let name = TableName::parse(wanted)
                .map_err(BackfillError::Invalid)?
                .to_string();
            let Some(found) = tables.iter().find(|t| ***t == name) else {
                let all: Vec<&str> = tables.iter().map(|t| t.as_str()).collect();
                return Err(BackfillError::NotFound(format!(
                    "table {name} is not streamed by this pipeline (tables: {})",
                    all.join(", ")
                )));
            };
            tables = vec![*found];
        }
        let condition = request
            .condition
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty());
        let client = plan
            .conninfo
            .connect_sql()
            .await
            .map_err(|e| BackfillError::Database(e.to_string()))?;
        let mut work = Vec::with_capacity(tables.len());
        let default = TransformConfig::default();
        let mut skipped = Vec::new();
        for table in tables {
            if plan
                .functions
                .as_ref()
                .is_some_and(|f| f.tables.contains_key(table))
            {
                if request.table.is_some() {
                    return Err(BackfillError::Invalid(format!(
                        "the documents of table {table} are made by its functions (filter, route \
                         or transform), which run only in the pipeline: it cannot be verified"
                    )));
                }
                skipped.push(table.clone());
                continue;
            }
            let route = &plan.routes[table];
            let name = TableName::parse(table).map_err(BackfillError::Invalid)?;
            let transform = plan.transforms.get(table).unwrap_or(&default);
            let side =
                TableSide::describe(&client, &name, transform, route, &plan.key_separator).await?;
            let condition_sql = condition
                .map(|c| condition::for_table(c, &side.shape))
                .transpose()?;
            if let Some(sql) = &condition_sql {
                // Refused now, not halfway through.
                client
                    .execute(
                        &format!("EXPLAIN SELECT 1 FROM {} WHERE ({sql})", name.quoted()),
                        &[],
                    )
                    .await
                    .map_err(BackfillError::sql)?;
            }
            work.push(Work {
                name,
                index: route.index.clone(),
                condition: condition.map(str::to_owned),
                condition_sql,
                side,
            });
        }
        let view = {
            let mut views = self.views();
            let id = views.0;
            views.0 += 1;
            let view = View {
                id,
                sink: sink.to_owned(),
                state: VerifyState::Running,
                phase: "starting".into(),
                repair: request.repair,
                tables: work
                    .iter()
                    .map(|w| TableReport {
                        table: w.name.to_string(),
                        index: w.index.clone(),
                        condition: w.condition.clone(),
                        rows: 0,
                        rows_estimated: 0,
                        documents: 0,
                        missing: Difference::default(),
                        extra: w.condition.is_none().then(Difference::default),
                        stale: Difference::default(),
                        changing: 0,
                        beyond: 0,
                        repaired: None,
                        done: false,
                    })
                    .collect(),
                skipped,
                reason: None,
                started_at_ms: now_ms(),
                finished_at_ms: None,
            };
            views.1.insert(id, view.clone());
            while views.1.len() > KEPT_VIEWS {
                let Some((&oldest, _)) = views
                    .1
                    .iter()
                    .find(|(_, v)| v.state != VerifyState::Running)
                else {
                    break;
                };
                views.1.remove(&oldest);
            }
            view
        };
        tracing::info!(
            verify = view.id,
            sink,
            tables = work.len(),
            repair = request.repair,
            "verify started"
        );
        let verifier = self.clone();
        let id = view.id;
        tokio::spawn(async move {
            let outcome = verifier
                .run(id, position, client, work, request.repair)
                .await;
            verifier.update(id, |view| {
                view.finished_at_ms = Some(now_ms());
                match outcome {
                    Ok(()) => {
                        let different = view.tables.iter().any(|t| t.differences() > 0);
                        view.state = if different {
                            VerifyState::Different
                        } else {
                            VerifyState::Equal
                        };
                        view.phase = "done".into();
                    }
                    Err(e) => {
                        view.state = VerifyState::Failed;
                        view.reason = Some(e.to_string());
                    }
                }
                tracing::info!(verify = view.id, sink = %view.sink, state = ?view.state, reason = view.reason.as_deref().unwrap_or(""), "verify ended");
            });
        });
        Ok(view)
    }

    async fn run(
        &self,
        id: u64,
        sink: usize,
        client: tokio_postgres::Client,
        work: Vec<Work>,
        repair: bool,
    ) -> Result<()> {
        for (n, table) in work.iter().enumerate() {
            let context = Compare {
                verifier: self,
                id,
                n,
                sink,
                client: &client,
                table,
            };
            context.table(repair).await?;
        }
        Ok(())
    }
}

/// One table's comparison, as it runs.
struct Compare<'a> {
    verifier: &'a Verifier,
    id: u64,
    /// The table's place in the view.
    n: usize,
    sink: usize,
    client: &'a tokio_postgres::Client,
    table: &'a Work,
}

fn database(e: BackfillError) -> Error {
    Error::new(crate::error::ErrorKind::Connection, e.to_string())
}

impl Compare<'_> {
    fn report(&self, change: impl FnOnce(&mut TableReport)) {
        self.verifier
            .update(self.id, |view| change(&mut view.tables[self.n]));
    }

    fn phase(&self, phase: String) {
        self.verifier.update(self.id, |view| view.phase = phase);
    }

    async fn reader(&self) -> Result<Box<dyn IndexReader>> {
        let plan = &self.verifier.plan;
        let mut reader =
            crate::sink::reader(&plan.sinks[self.sink], &plan.data_dir, &self.table.index).await?;
        let route = &plan.routes[&self.table.name.to_string()];
        if let Some(routing) = route
            .routing
            .as_deref()
            .and_then(|column| self.table.side.routing_of(column))
        {
            reader.route_by(routing);
        }
        Ok(reader)
    }

    async fn table(&self, repair: bool) -> Result<()> {
        let plan = &self.verifier.plan;
        let work = self.table;
        let estimate: f32 = self
            .client
            .query_one(
                "SELECT reltuples FROM pg_class WHERE oid = $1",
                &[&work.side.shape.rel.id],
            )
            .await
            .map(|row| row.get(0))
            .unwrap_or(0.0);
        let estimate = estimate.max(0.0) as u64;
        self.report(|r| r.rows_estimated = estimate);
        let dir = tempfile::Builder::new()
            .prefix(".verify-")
            .tempdir_in(&plan.data_dir)
            .map_err(|e| {
                Error::io(
                    format!("cannot create a directory in {}", plan.data_dir.display()),
                    e,
                )
            })?;
        let count = buckets::count_for(estimate);
        let mut reader = self.reader().await?;

        self.phase(format!("reading table {}", work.name));
        let mut rows = buckets::Side::create(dir.path(), "table", count)?;
        let mut read_rows = 0u64;
        let started = Instant::now();
        work.side
            .scan(self.client, work.condition_sql.as_deref(), |id, doc| {
                rows.push(id, hash::content_hash(&reader.as_stored(doc, id)))?;
                read_rows += 1;
                if read_rows.is_multiple_of(16_384) {
                    self.report(|r| r.rows = read_rows);
                }
                Ok(())
            })
            .await
            .map_err(database)?;
        self.report(|r| r.rows = read_rows);

        self.phase(format!(
            "reading index {} of sink {}",
            work.index, plan.sinks[self.sink].name
        ));
        let mut docs = buckets::Side::create(dir.path(), "index", count)?;
        let tag = self.tag();
        let mut documents = 0u64;
        while let Some(page) = reader.page().await? {
            for doc in page {
                if let Some(hash) = tag.hash(&doc.source) {
                    docs.push(&doc.id, hash)?;
                    documents += 1;
                }
            }
            self.report(|r| r.documents = documents);
        }
        tracing::debug!(verify = self.id, table = %work.name, rows = read_rows, documents, seconds = started.elapsed().as_secs_f64(), "both sides read");

        self.phase(format!(
            "comparing table {} with index {}",
            work.name, work.index
        ));
        let mut found = buckets::Found::keeping(MAX_KEPT);
        for (rows, docs) in rows.finish()?.iter().zip(docs.finish()?.iter()) {
            buckets::compare(rows, docs, work.condition.is_none(), &mut found)?;
        }
        drop(dir);
        // Counted beyond the kept ids: as found, not looked at again.
        let kept = [found.missing.len(), found.extra.len(), found.stale.len()];
        let beyond: Vec<u64> = (0..3).map(|k| found.counts[k] - kept[k] as u64).collect();
        let counts = found.counts;
        let candidates: Vec<String> = [found.missing, found.extra, found.stale].concat();
        self.phase(format!(
            "looking again at {} differences of table {}",
            candidates.len(),
            work.name
        ));
        let settled = self.settle(&mut *reader, candidates).await?;
        tracing::info!(
            verify = self.id,
            table = %work.name,
            rows = read_rows,
            documents,
            first_missing = counts[0],
            first_extra = counts[1],
            first_stale = counts[2],
            missing = settled.missing.len(),
            extra = settled.extra.len(),
            stale = settled.stale.len(),
            changing = settled.changing,
            "table compared; differences first found, then after looking again"
        );
        let count = |ids: &[String], k: usize| Difference::of(ids.len() as u64 + beyond[k], ids);
        self.report(|r| {
            r.missing = count(&settled.missing, 0);
            if r.extra.is_some() {
                r.extra = Some(count(&settled.extra, 1));
            }
            r.stale = count(&settled.stale, 2);
            r.changing = settled.changing;
            r.beyond = beyond.iter().sum();
        });
        let different: Vec<String> = [settled.missing, settled.extra, settled.stale].concat();
        if repair && !different.is_empty() {
            self.repair(&mut *reader, different).await?;
        }
        self.report(|r| r.done = true);
        Ok(())
    }

    /// How documents of the index count for this table: in an index other
    /// tables share, only those tagged with the table.
    fn tag(&self) -> Tag {
        let route = &self.verifier.plan.routes[&self.table.name.to_string()];
        Tag {
            table: route.shared.then(|| self.table.name.to_string()),
        }
    }

    /// The content hashes of the documents of `ids`, read now; `n` counts
    /// an id the index holds more than once.
    async fn documents(
        &self,
        reader: &mut dyn IndexReader,
        ids: &[String],
    ) -> Result<HashMap<String, (u64, u32)>> {
        let tag = self.tag();
        let mut held: HashMap<String, (u64, u32)> = HashMap::new();
        for doc in reader.fetch(ids).await? {
            if let Some(hash) = tag.hash(&doc.source) {
                held.entry(doc.id)
                    .and_modify(|(_, n)| *n += 1)
                    .or_insert((hash, 1));
            }
        }
        Ok(held)
    }

    /// The content hashes of the documents the rows of `ids` make now.
    async fn rows(&self, reader: &dyn IndexReader, ids: &[String]) -> Result<HashMap<String, u64>> {
        let keys = self.table.side.keys_of(ids);
        let mut rows = HashMap::new();
        if keys.is_empty() {
            return Ok(rows);
        }
        let read = |keys: &[Vec<String>]| {
            let condition = self.table.side.keys_condition(keys);
            async move {
                let mut found = Vec::new();
                let outcome = self
                    .table
                    .side
                    .scan(self.client, Some(&condition), |id, doc| {
                        found.push((
                            id.to_owned(),
                            hash::content_hash(&reader.as_stored(doc, id)),
                        ));
                        Ok(())
                    })
                    .await;
                outcome.map(|_| found)
            }
        };
        match read(&keys).await {
            Ok(found) => rows.extend(found),
            // A key value the key's type refuses: no row has it. One by one,
            // to find which.
            Err(BackfillError::Invalid(_)) if keys.len() > 1 => {
                for key in &keys {
                    match read(std::slice::from_ref(key)).await {
                        Ok(found) => rows.extend(found),
                        Err(BackfillError::Invalid(_)) => {}
                        Err(e) => return Err(database(e)),
                    }
                }
            }
            Err(BackfillError::Invalid(_)) => {}
            Err(e) => return Err(database(e)),
        }
        Ok(rows)
    }

    /// Waits until the sink committed everything the source committed
    /// before `lsn`.
    async fn caught_up(&self, lsn: Lsn) -> Result<()> {
        let plan = &self.verifier.plan;
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let committed = plan.status.sink_committed(self.sink);
            if committed >= lsn {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::new(
                    crate::error::ErrorKind::Sink,
                    format!(
                        "sink {} has not committed what the source had at {lsn} within {} s (it is at {committed}): is it failing? see `sluice status`",
                        plan.sinks[self.sink].name,
                        CATCH_UP.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Looks at each of `ids` again until its difference is found twice in
    /// a row with its row unchanged between, or it is gone.
    async fn settle(&self, reader: &mut dyn IndexReader, ids: Vec<String>) -> Result<Settled> {
        let mut settled = Settled::default();
        for batch in ids.chunks(RECHECK_BATCH) {
            let mut pending: Vec<String> = batch.to_vec();
            let mut seen: HashMap<String, Kind> = HashMap::new();
            for _ in 0..RECHECKS {
                if pending.is_empty() {
                    break;
                }
                let before = self.rows(reader, &pending).await?;
                let lsn = catalog::current_wal_lsn(self.client).await?;
                self.caught_up(lsn).await?;
                let held = self.documents(reader, &pending).await?;
                let after = self.rows(reader, &pending).await?;
                let mut next = Vec::new();
                for id in pending {
                    let row = before.get(&id);
                    if row != after.get(&id) {
                        next.push(id);
                        continue;
                    }
                    let kind = match (row, held.get(&id)) {
                        (None, None) => None,
                        (Some(row), Some(&(doc, 1))) if *row == doc => None,
                        (Some(_), None) => Some(Kind::Missing),
                        (None, Some(_)) => Some(Kind::Extra),
                        (Some(_), Some(_)) => Some(Kind::Stale),
                    };
                    match kind {
                        None => {}
                        Some(kind) if seen.get(&id) == Some(&kind) => settled.push(kind, id),
                        Some(kind) => {
                            seen.insert(id.clone(), kind);
                            next.push(id);
                        }
                    }
                }
                pending = next;
            }
            settled.changing += pending.len() as u64;
        }
        Ok(settled)
    }

    /// Sends the rows of `ids` through the pipeline again, waits for them,
    /// and looks at them again.
    async fn repair(&self, reader: &mut dyn IndexReader, ids: Vec<String>) -> Result<()> {
        let work = self.table;
        let sink = &self.verifier.plan.sinks[self.sink].name;
        self.phase(format!(
            "repairing {} documents of table {}",
            ids.len(),
            work.name
        ));
        let keys = work.side.keys_of(&ids);
        let not_keys = (ids.len() - keys.len()) as u64;
        if not_keys > 0 {
            tracing::warn!(verify = self.id, sink, table = %work.name, documents = not_keys, "documents whose ids are not one value per key column cannot be repaired: delete them from the index");
        }
        let rows = ExactRows {
            columns: work.side.key_names(),
            keys,
            done: 0,
        };
        let backfill = self
            .verifier
            .backfills
            .create_rows(sink, &work.name.to_string(), rows)
            .await
            .map_err(|e| {
                Error::new(
                    crate::error::ErrorKind::Sink,
                    format!("cannot start the repair: {e}"),
                )
            })?;
        tracing::info!(verify = self.id, backfill = backfill.backfill.id, sink, table = %work.name, rows = ids.len(), "repair started");
        loop {
            let view = self
                .verifier
                .backfills
                .get(backfill.backfill.id)
                .map_err(|e| Error::new(crate::error::ErrorKind::Sink, e.to_string()))?;
            match view.backfill.state {
                State::Completed => break,
                State::Failed | State::Cancelled => {
                    return Err(Error::new(
                        crate::error::ErrorKind::Sink,
                        format!(
                            "the repair (backfill {}) did not complete: {}",
                            view.backfill.id,
                            view.backfill.reason.as_deref().unwrap_or("cancelled")
                        ),
                    ))
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        self.phase(format!(
            "looking again at {} repaired documents of table {}",
            ids.len(),
            work.name
        ));
        let settled = self.settle(reader, ids.clone()).await?;
        let still = (settled.missing.len() + settled.extra.len() + settled.stale.len()) as u64;
        self.report(|r| {
            r.repaired = Some(Repaired {
                sent: ids.len() as u64,
                still_different: still,
                backfill: backfill.backfill.id,
                not_keys,
            })
        });
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Missing,
    Extra,
    Stale,
}

#[derive(Debug, Default)]
struct Settled {
    missing: Vec<String>,
    extra: Vec<String>,
    stale: Vec<String>,
    changing: u64,
}

impl Settled {
    fn push(&mut self, kind: Kind, id: String) {
        match kind {
            Kind::Missing => self.missing.push(id),
            Kind::Extra => self.extra.push(id),
            Kind::Stale => self.stale.push(id),
        }
    }
}

/// Which documents of an index belong to the table, and their hashes.
struct Tag {
    /// In a shared index: the table whose documents are compared.
    table: Option<String>,
}

impl Tag {
    fn hash(&self, source: &[u8]) -> Option<u64> {
        let Some(table) = &self.table else {
            return Some(hash::content_hash(source));
        };
        let value: serde_json::Value = serde_json::from_slice(source).ok()?;
        let tagged = value
            .get(crate::pipeline::document::TABLE_FIELD)
            .and_then(|t| t.as_str());
        (tagged == Some(table.as_str())).then(|| hash::value_hash(&value))
    }
}
