//! The pipeline supervisor: spawns every stage linked to itself, and when any
//! stage fails, stops them all and starts the pipeline again after a capped
//! exponential backoff. Postgres resends everything after the slot's confirmed
//! position, which only moves once every sink committed, so nothing is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{oneshot, watch};

use super::ack::{AckArgs, AckState, Acknowledger};
use super::decoder::{Decoder, DecoderArgs};
use super::filter::{Filter, FilterArgs};
use super::lane::{Lane, SpillPolicy};
use super::reader::{Reader, ReaderArgs, ReaderMsg};
use super::router::{Router, RouterArgs};
use super::shard::{Shard, ShardArgs};
use super::slot::ConfirmLedger;
use super::stats::StageStats;
use super::transform::{TransformArgs, Transformer};
use super::writer::{Writer, WriterArgs, WriterMsg};
use super::PipelinePlan;
use crate::backfill::{Manager, RunContext};
use crate::error::{Error, ErrorKind, Policy};
use crate::lsn::Lsn;

/// The first restart waits this long; each failure in a row doubles it.
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// A lost connection (`Policy::Reconnect`) is tried again at least this often,
/// however many attempts failed before: an attempt costs one refused
/// connection, and streaming resumes within this long of Postgres being back.
const RECONNECT_EVERY: Duration = Duration::from_millis(1000);
/// With several sinks, a sink whose oldest waiting write waited this long
/// is spooled, so the others go on.
const SPILL_AFTER: Duration = Duration::from_secs(5);
/// A pipeline that ran this long without failing resets the backoff: a
/// fault hours after the last one is retried at once.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// A stage gets this long to stop when its generation ends; then it is
/// killed, and the next generation starts only once it is gone, so no
/// write of an old generation can land after one of the new.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown the drain is over (`pipeline.drain_timeout_ms` bounds it) and
/// what the stages still hold is unacknowledged, read again at the next
/// start: together they get this long to stop before they are killed, so a
/// stop takes no longer than the drain timeout and this.
const SHUTDOWN_STOP_TIMEOUT: Duration = Duration::from_secs(1);

pub enum SupervisorMsg {
    Start,
    /// Drain and stop; the sender learns when it is done.
    Shutdown,
}

pub struct SupervisorArgs {
    pub plan: Arc<PipelinePlan>,
    /// Backfills run while the pipeline streams.
    pub backfills: Option<Arc<Manager>>,
    /// Told when the supervisor is done (after shutdown), with the error
    /// that stopped it when restarting could not have fixed it.
    pub done: Option<oneshot::Sender<Option<Error>>>,
    /// Where confirmed positions are recorded before they are sent.
    pub ledger: Option<ConfirmLedger>,
}

pub struct SupervisorState {
    plan: Arc<PipelinePlan>,
    backfills: Option<Arc<Manager>>,
    children: Vec<ActorCell>,
    reader: Option<ActorRef<ReaderMsg>>,
    backoff: Duration,
    started_at: Instant,
    shutting_down: bool,
    restart_pending: bool,
    done: Option<oneshot::Sender<Option<Error>>>,
    generation: u64,
    /// The error of a kind no restart fixes (configuration, setup).
    fatal: Option<Error>,
    ledger: Option<ConfirmLedger>,
}

pub struct Supervisor;

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        myself.cast(SupervisorMsg::Start)?;
        Ok(SupervisorState {
            plan: args.plan,
            backfills: args.backfills,
            children: Vec::new(),
            reader: None,
            backoff: INITIAL_BACKOFF,
            started_at: Instant::now(),
            shutting_down: false,
            restart_pending: false,
            done: args.done,
            generation: 0,
            fatal: None,
            ledger: args.ledger,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_children().await;
        if let Some(done) = state.done.take() {
            let _ = done.send(state.fatal.take());
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Start => {
                state.restart_pending = false;
                if state.shutting_down {
                    myself.stop(None);
                    return Ok(());
                }
                state.generation += 1;
                match state.start(&myself).await {
                    Ok(()) => {
                        state.started_at = Instant::now();
                        state.plan.status.set_streaming(true);
                        metrics::gauge!("sluice_pipeline_up").set(1.0);
                    }
                    Err(e) => {
                        let text = e.to_string();
                        let kind = typed_error(e.as_ref()).map(Error::kind);
                        state.stop_children().await;
                        if !state.stop_if_fatal(&myself, e.as_ref()) {
                            state.schedule_restart(&myself, &text, kind);
                        }
                    }
                }
            }
            SupervisorMsg::Shutdown => {
                state.shutting_down = true;
                match &state.reader {
                    Some(reader) if !state.restart_pending => {
                        tracing::info!("shutting down: flushing what is in flight");
                        reader.cast(ReaderMsg::Drain)?;
                        // If draining hangs, stop anyway: nothing unconfirmed is lost.
                        // (The reader gives up at the timeout; this is for a
                        // reader that cannot even do that.)
                        let deadline = state.plan.drain_timeout + Duration::from_secs(2);
                        myself.send_after(deadline, || SupervisorMsg::Start);
                    }
                    _ => myself.stop(None),
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(who, error) => {
                if !state.children.iter().any(|c| c.get_id() == who.get_id()) {
                    return Ok(()); // a child of an earlier generation
                }
                let stage = who.get_name().unwrap_or_default();
                let text = format!("stage {stage} failed: {error}");
                state.stop_children().await;
                if state.shutting_down {
                    myself.stop(None);
                } else if !state.stop_if_fatal(&myself, error.as_ref()) {
                    let kind = typed_error(error.as_ref()).map(Error::kind);
                    state.schedule_restart(&myself, &text, kind);
                }
            }
            SupervisionEvent::ActorTerminated(who, _, reason) => {
                let is_reader = state
                    .reader
                    .as_ref()
                    .is_some_and(|r| r.get_id() == who.get_id());
                if is_reader && state.shutting_down {
                    tracing::info!(reason = reason.as_deref().unwrap_or(""), "pipeline drained");
                    myself.stop(None);
                } else if state.children.iter().any(|c| c.get_id() == who.get_id())
                    && !state.shutting_down
                {
                    let text = format!(
                        "stage {} stopped unexpectedly",
                        who.get_name().unwrap_or_default()
                    );
                    state.stop_children().await;
                    state.schedule_restart(&myself, &text, None);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl SupervisorState {
    /// Stops the supervisor when the policy of `error`'s kind is not a
    /// restart (`ErrorKind::policy`): sluice then exits with the kind's
    /// code, or `service::run` sets the pipeline up again.
    fn stop_if_fatal(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        error: &(dyn std::error::Error + 'static),
    ) -> bool {
        let Some(e) = typed_error(error).filter(|e| !e.kind().is_retryable()) else {
            return false;
        };
        if let Policy::Stop { exit_code } = e.kind().policy() {
            tracing::error!(kind = ?e.kind(), exit_code, "pipeline stopped: restarting cannot fix this: {e}");
        }
        metrics::gauge!("sluice_pipeline_up").set(0.0);
        self.plan.status.set_streaming(false);
        self.fatal = Some(e.clone());
        self.shutting_down = true;
        myself.stop(None);
        true
    }

    fn schedule_restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        error: &str,
        kind: Option<ErrorKind>,
    ) {
        metrics::gauge!("sluice_pipeline_up").set(0.0);
        let cause = kind
            .filter(|k| k.is_retryable())
            .map_or("other", ErrorKind::name);
        metrics::counter!("sluice_pipeline_restarts_total", "cause" => cause).increment(1);
        self.plan.status.set_streaming(false);
        self.plan.status.restarted();
        if self.started_at.elapsed() >= HEALTHY_AFTER {
            self.backoff = INITIAL_BACKOFF;
        }
        let wait = match kind.map(ErrorKind::policy) {
            Some(Policy::Reconnect) => self.backoff.min(RECONNECT_EVERY),
            _ => self.backoff,
        };
        tracing::error!(
            retry_in_ms = wait.as_millis() as u64,
            "pipeline failed, restarting from the last confirmed position: {error}"
        );
        self.backoff = (self.backoff * 2).min(self.plan.max_restart_backoff);
        self.restart_pending = true;
        myself.send_after(wait, || SupervisorMsg::Start);
    }

    async fn stop_children(&mut self) {
        if let Some(backfills) = &self.backfills {
            backfills.detach();
        }
        self.reader = None;
        let grace = if self.shutting_down {
            SHUTDOWN_STOP_TIMEOUT
        } else {
            STOP_TIMEOUT
        };
        let deadline = Instant::now() + grace;
        for child in self.children.drain(..).rev() {
            child.unlink(child.clone());
            if child.get_status() == ractor::ActorStatus::Stopped {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if child.stop_and_wait(None, Some(left)).await.is_err() {
                let stage = child.get_name().unwrap_or_default();
                tracing::warn!(stage, "a stage did not stop within {grace:?}: killing it");
                // Without a timeout: the next generation waits until it is gone.
                if let Err(e) = child.kill_and_wait(None).await {
                    tracing::warn!(stage, error = %e, "a stage could not be killed");
                }
            }
        }
    }

    /// Spawns one stage linked to the supervisor.
    async fn spawn<A: Actor>(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        stage: &str,
        actor: A,
        args: A::Arguments,
    ) -> Result<ActorRef<A::Msg>, ActorProcessingErr> {
        let name = format!("{}-{stage}-{}", self.plan.name, self.generation);
        let (actor, _) = Actor::spawn_linked(Some(name), actor, args, myself.get_cell()).await?;
        self.children.push(actor.get_cell());
        Ok(actor)
    }

    /// Spawns every stage, from the last to the first.
    async fn start(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        let plan = self.plan.clone();
        let stats = &plan.stats;
        let (ack_tx, ack_rx) = watch::channel(AckState::default());
        let (positions_tx, positions_rx) = watch::channel(vec![Lsn::ZERO; plan.sinks.len()]);
        let sql = Arc::new(plan.conninfo.connect_sql().await?);

        let ack = self
            .spawn(
                myself,
                "acknowledger",
                Acknowledger,
                AckArgs {
                    sinks: plan.sinks.len(),
                    publish: ack_tx,
                    positions: positions_tx,
                    status: plan.status.clone(),
                },
            )
            .await?;

        let policy = if plan.sinks.len() > 1 {
            SpillPolicy {
                memory_bytes: plan.flow.max_bytes() / 2,
                max_wait: SPILL_AFTER,
                spool_max_bytes: plan.spool_max_bytes,
            }
        } else {
            SpillPolicy::never()
        };
        let mut lanes = Vec::new();
        for (i, sink_config) in plan.sinks.iter().enumerate() {
            let dir = plan.data_dir.join("spool").join(&sink_config.name);
            let lane = Lane::new(&sink_config.name, dir, policy);
            let sink =
                tokio::task::block_in_place(|| crate::sink::build(sink_config, &plan.data_dir))?;
            let commit_interval = sink_config.kind.commit_interval();
            let args = WriterArgs {
                sink_index: i,
                sink,
                lane: lane.clone(),
                shards: plan.shards,
                ack: ack.clone(),
                commit_interval,
                commit_bytes: plan.flow.max_bytes() / 2,
                stats: stats.writer.clone(),
                routes: plan.functions.as_ref().map(|f| f.routes.clone()),
            };
            let writer = self
                .spawn(
                    myself,
                    &format!("writer-{}", sink_config.name),
                    Writer,
                    args,
                )
                .await?;
            lane.attach(Box::new(move || {
                let _ = writer.cast(WriterMsg::Ready);
            }));
            lanes.push(lane);
        }

        let mut shards = Vec::new();
        for shard in 0..plan.shards {
            let args = ShardArgs {
                shard,
                lanes: lanes.clone(),
                stats: stats.shard.clone(),
                functions: plan.functions.clone(),
            };
            shards.push(
                self.spawn(myself, &format!("shard-{shard}"), Shard, args)
                    .await?,
            );
        }

        let args = RouterArgs {
            sql: sql.clone(),
            tables: plan.routes.clone(),
            key_separator: plan.key_separator.clone(),
            shards,
            stats: stats.router.clone(),
        };
        let router = self.spawn(myself, "router", Router, args).await?;
        let args = TransformArgs {
            transforms: plan.transforms.clone(),
            tagged: plan
                .routes
                .iter()
                .filter(|(_, route)| route.shared)
                .map(|(table, _)| table.clone())
                .collect(),
            downstream: router,
            stats: stats.transformer.clone(),
        };
        let transformer = self.spawn(myself, "transformer", Transformer, args).await?;
        let args = FilterArgs {
            tables: plan.operations.clone(),
            predicates: plan.predicates.clone(),
            downstream: transformer,
            stats: stats.filter.clone(),
        };
        let filter = self.spawn(myself, "filter", Filter, args).await?;
        let args = DecoderArgs {
            sql,
            downstream: filter,
            stats: stats.decoder.clone(),
            watermark_prefix: plan.watermark_prefix.clone(),
            table_oids: plan.table_oids.clone(),
            status: plan.status.clone(),
        };
        let decoder = self.spawn(myself, "decoder", Decoder, args).await?;
        if let Some(backfills) = &self.backfills {
            backfills.attach(RunContext {
                generation: self.generation,
                chunks: {
                    let decoder = decoder.clone();
                    Arc::new(move |chunk| {
                        decoder
                            .cast(super::decoder::DecoderMsg::Chunk(chunk))
                            .is_ok()
                    })
                },
                positions: positions_rx,
                flow: plan.backfill_flow.clone(),
            });
        }
        let args = ReaderArgs {
            drain_timeout: plan.drain_timeout,
            conninfo: plan.conninfo.clone(),
            slot: plan.slot.clone(),
            publication: plan.publication.clone(),
            flow: plan.flow.clone(),
            downstream: decoder,
            acks: ack_rx,
            batch_max_changes: plan.batch_max_changes,
            batch_max_bytes: plan.batch_max_bytes,
            linger: plan.batch_max_age,
            status_interval: plan.status_interval,
            stats: stats.reader.clone(),
            ledger: self.ledger.clone(),
        };
        self.reader = Some(self.spawn(myself, "reader", Reader, args).await?);
        Ok(())
    }
}

/// The counters of every stage.
#[derive(Debug)]
pub struct PipelineStats {
    pub reader: Arc<StageStats>,
    pub decoder: Arc<StageStats>,
    pub filter: Arc<StageStats>,
    pub transformer: Arc<StageStats>,
    pub router: Arc<StageStats>,
    pub shard: Arc<StageStats>,
    pub writer: Arc<StageStats>,
}

impl Default for PipelineStats {
    fn default() -> Self {
        PipelineStats {
            reader: StageStats::new("reader"),
            decoder: StageStats::new("decoder"),
            filter: StageStats::new("filter"),
            transformer: StageStats::new("transformer"),
            router: StageStats::new("router"),
            shard: StageStats::new("shard"),
            writer: StageStats::new("writer"),
        }
    }
}

/// sluice's own error inside a stage's failure, when there is one: the
/// failure itself, or the start-up failure a spawn reports.
fn typed_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(ours) = e.downcast_ref::<Error>() {
            return Some(ours);
        }
        if let Some(ractor::SpawnErr::StartupFailed(inner)) = e.downcast_ref::<ractor::SpawnErr>() {
            if let Some(ours) = typed_error(inner.as_ref()) {
                return Some(ours);
            }
        }
        next = e.source();
    }
    None
}
