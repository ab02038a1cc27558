//! Runs sluice: prepares the source, serves the management API and
//! supervises the pipeline, until a stop request. The one place that puts
//! the layers together.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::backfill::store::Store;
use crate::backfill::{self, window};
use crate::config::{self, Config};
use crate::error::{Error, ErrorKind, Result};
use crate::model::ident::TableName;
use crate::pipeline::slot::{ConfirmLedger, SlotOutcome};
use crate::pipeline::supervisor::{Supervisor, SupervisorArgs, SupervisorMsg};
use crate::pipeline::{self, tables_watch, PipelinePlan};
use crate::postgres::catalog;
use crate::{api, data_dir};

/// Checks the source, then creates the publication and slot when missing
/// (see `slot`). Nothing is created when a check fails. Returns the
/// streamed tables' metadata, and whether the slot was lost and replaced.
pub async fn prepare(
    config: &Config,
) -> Result<(HashMap<TableName, catalog::TableMeta>, SlotOutcome)> {
    if let Some(e) = config::check::check(config)
        .await?
        .error("the configuration or the source database is not ready for sluice")
    {
        return Err(e);
    }
    let plan = config.pipeline_plan()?;
    let client = plan.conninfo.connect_sql().await?;
    catalog::ensure_publication(&client, &plan.publication, &config.table_names()).await?;
    data_dir::create(&plan.data_dir)?;
    let streamed_before = !Store::open(&plan.data_dir)?.known_sinks()?.is_empty();
    let outcome = pipeline::slot::ensure(
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
///
/// A failure while setting up that a restart may fix (the data directory's
/// disk full, the server refusing a request, an engine down) is waited out
/// with a growing pause, up to `pipeline.max_restart_backoff_ms`, as the
/// supervisor does once streaming: sluice is not left stopped by a fault
/// that passes. Failures no retry fixes (configuration, database setup)
/// end it.
pub async fn run(
    config: &Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Arc<PipelinePlan>> {
    tokio::pin!(shutdown);
    let max_pause = Duration::from_millis(config.pipeline.max_restart_backoff_ms);
    let mut pause = FIRST_SETUP_PAUSE.min(max_pause);
    loop {
        match run_once(config, &mut shutdown).await {
            Err(e) if e.kind() == ErrorKind::TableRecreated => {
                tracing::warn!("{e}: setting the pipeline up again");
            }
            Err(e) if e.kind().is_retryable() => {
                tracing::error!(
                    kind = ?e.kind(),
                    retry_in_ms = pause.as_millis() as u64,
                    "cannot start streaming: {e}"
                );
                if !paused(pause, &mut shutdown).await {
                    tracing::info!("stopped before streaming started");
                    return Ok(Arc::new(config.pipeline_plan()?));
                }
                pause = (pause * 2).min(max_pause);
            }
            done => return done,
        }
    }
}

/// Waits `pause`; `false` when a stop request came first.
async fn paused(
    pause: Duration,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => true,
        _ = shutdown.as_mut() => false,
    }
}

/// The first pause before setting the pipeline up again after a failure.
const FIRST_SETUP_PAUSE: Duration = Duration::from_millis(500);

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
    data_dir::create(&config.pipeline.data_dir)?;
    let _lock = data_dir::DataDirLock::acquire(&config.pipeline.data_dir)?;
    let mut plan = config.pipeline_plan()?;
    let deployment = data_dir::deployment_id(&plan.data_dir)?;
    plan.watermark_prefix = window::prefix(&plan.slot, &deployment).into();
    // A stop request during setup (slot creation waits for running
    // transactions) ends it cleanly too.
    // A database that does not answer yet (down, restarting, the network
    // cut) is waited for, as the pipeline waits for it once streaming.
    let mut pause = Duration::from_millis(500);
    let (tables, outcome) = loop {
        tokio::select! {
            prepared = prepare(config) => match prepared {
                Err(e) if e.kind() == ErrorKind::Connection => {
                    tracing::warn!(retry_in_ms = pause.as_millis() as u64, "the source database does not answer: {e}");
                }
                prepared => break prepared?,
            },
            _ = shutdown.as_mut() => {
                tracing::info!("stopped before streaming started");
                return Ok(Arc::new(plan));
            }
        }
        if !paused(pause, shutdown).await {
            tracing::info!("stopped before streaming started");
            return Ok(Arc::new(plan));
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    };
    plan.resolve_keys(&tables);
    let oids: BTreeMap<String, u32> = tables
        .iter()
        .map(|(name, meta)| (name.to_string(), meta.oid))
        .collect();
    plan.table_oids = Arc::new(oids.clone());
    let plan = Arc::new(plan);
    let backfills = backfill::open(
        Store::open(&plan.data_dir)?,
        config.backfill.settings(&config.queued_sinks()),
        plan.conninfo.clone(),
        config.sinks.iter().map(|s| s.name.clone()).collect(),
        config.table_names(),
        plan.watermark_prefix.clone(),
    )?;
    let state = api::AppState {
        plan: plan.clone(),
        backfills: backfills.clone(),
        verifier: crate::verify::Verifier::new(plan.clone(), backfills.clone()),
    };
    // Served before the sinks are emptied: a sink paused by its parked
    // writes can be seen and retried meanwhile.
    let api = api::serve(&config.api, &plan.data_dir, state).await?;
    let streamed = stream(config, &plan, backfills, outcome, &oids, shutdown).await;
    // Stopped and its address free before a retry serves it again.
    if let Some(api) = api {
        api.stop().await;
    }
    streamed.map(|()| plan)
}

/// Empties what must be emptied, then streams until a stop request, a
/// recreated table or a failure no restart fixes.
async fn stream(
    config: &Config,
    plan: &Arc<PipelinePlan>,
    backfills: Arc<backfill::Manager>,
    outcome: SlotOutcome,
    oids: &BTreeMap<String, u32>,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<()> {
    let resync = match outcome {
        SlotOutcome::Resync(at) => {
            let all: Vec<String> = oids.keys().cloned().collect();
            for sink in &config.sinks {
                let emptied = || pipeline::empty_tables(plan, sink, &all, at, at);
                if !retrying(emptied, shutdown).await? {
                    return Ok(());
                }
            }
            true
        }
        SlotOutcome::Ready => {
            let recreated = backfills.recreated_tables(oids)?;
            if !recreated.is_empty() {
                // Above every position a sink holds, so no sink takes the
                // truncate for one it already applied; the sinks' positions
                // stay where they are.
                let now = catalog::current_wal_lsn(&plan.conninfo.connect_sql().await?).await?;
                for (sink, tables) in recreated {
                    if let Some(sink) = config.sinks.iter().find(|s| s.name == sink) {
                        let zero = crate::lsn::Lsn::ZERO;
                        let emptied = || pipeline::empty_tables(plan, sink, &tables, now, zero);
                        if !retrying(emptied, shutdown).await? {
                            return Ok(());
                        }
                    }
                }
            }
            false
        }
    };
    backfills.set_up_sinks(config.backfill.initial, oids, resync)?;
    let _wal_watch = AbortOnDrop(tokio::spawn(pipeline::slot::watch_retained_wal(
        plan.conninfo.clone(),
        plan.slot.clone(),
        config.source.retained_wal_warn_bytes,
    )));
    let _lag = AbortOnDrop(tokio::spawn(pipeline::status::report_lag(
        plan.status.clone(),
        config.sinks.iter().map(|s| s.name.clone()).collect(),
    )));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (supervisor, handle) = ractor::Actor::spawn(
        Some(format!("{}-supervisor", plan.name)),
        Supervisor,
        SupervisorArgs {
            plan: plan.clone(),
            backfills: Some(backfills),
            done: Some(done_tx),
            ledger: Some(ConfirmLedger::open(&plan.data_dir)?),
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
            let _ = supervisor.cast(SupervisorMsg::Shutdown);
            (&mut done_rx).await.ok().flatten()
        }
        recreated = &mut watch => {
            // Drained first: everything read so far is confirmed.
            let _ = supervisor.cast(SupervisorMsg::Shutdown);
            (&mut done_rx).await.ok().flatten().or(Some(recreated))
        }
        fatal = &mut done_rx => fatal.ok().flatten(),
    };
    let _ = handle.await;
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
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
        if !paused(pause, shutdown).await {
            return Ok(false);
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}
