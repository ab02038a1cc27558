//! Functions at work in a key shard: each shard holds a runtime of its own,
//! so functions run on every core at once while the changes to one key stay
//! in order (they all go to one shard).

use std::sync::Arc;

use super::message::{ChangeInput, MessageBuilder};
use super::{compile, FunctionError, FunctionPlan, Runtime, TableFunctions, FAILED_STORE};
use crate::error::{Error, ErrorKind, Result};
use crate::model::change::{Change, Op, RouteAction, Routed};
use crate::model::ident::check_index_name;
use crate::postgres::pgoutput::ReplicaIdentity;
use crate::sink::failed::{FailedMessage, FailedStore, WAITING_BEHIND};

/// What became of a change (returned, never stored: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Outcome<S> {
    /// Write it (its index or action may have changed), with the document a
    /// transform function made, if any; `left` is the index the route sent
    /// the row's document to before this update, when it is another one.
    Write {
        routed: Routed<S>,
        doc: Option<Vec<u8>>,
        left: Option<Arc<str>>,
    },
    /// A filter left it out.
    Filtered,
    /// A function failed; the change is in the failed-message store.
    Failed,
}

pub struct ShardFunctions {
    plan: Arc<FunctionPlan>,
    runtime: Runtime,
    builder: MessageBuilder,
    failed: FailedStore,
}

impl ShardFunctions {
    pub fn new(plan: Arc<FunctionPlan>) -> Result<ShardFunctions> {
        let runtime =
            compile(&plan.configs, &plan.base_dir, plan.memory_bytes).map_err(|errors| {
                let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                Error::new(ErrorKind::Config, text.join("; "))
            })?;
        Ok(ShardFunctions {
            builder: MessageBuilder::new(&plan.database),
            failed: FailedStore::new(&plan.data_dir, FAILED_STORE),
            runtime,
            plan,
        })
    }

    /// The functions of `table`, if it has any.
    pub fn of(&self, table: &str) -> Option<&TableFunctions> {
        self.plan.tables.get(table)
    }

    /// The name of sink number `sink`.
    pub fn sink_name(&self, sink: usize) -> Option<&str> {
        self.plan.sinks.get(sink).map(String::as_str)
    }

    /// The indexes the route of `table` sent its documents to; `None` when
    /// the table has no route (its documents are in its own index).
    pub fn routed_indexes(&self, table: &str) -> Option<Vec<String>> {
        self.plan
            .routes
            .is_routed(table)
            .then(|| self.plan.routes.indexes(table))
    }

    /// How many sinks there are.
    pub fn sinks(&self) -> usize {
        self.plan.sinks.len()
    }

    /// Logs the calls parked since the last time, in one line.
    pub fn log_parked(&mut self) {
        self.failed.log_parked();
    }

    /// While `pipeline.function_max_parked` calls are parked, waits (holding
    /// back the pipeline, so Postgres keeps the WAL) until some are retried
    /// or discarded.
    pub async fn wait_below_max_parked(&mut self) {
        self.failed
            .wait_below(FAILED_STORE, self.plan.max_parked)
            .await;
    }

    /// Runs the functions of `routed`'s table on it, on its way to `sink`:
    /// the filter, then the route, then the transform.
    ///
    /// A filter that turns down an update removes the document (the row may
    /// have passed before), as a `where` does. With the old row at hand
    /// (`REPLICA IDENTITY FULL`, which `sluice check` requires of a table with
    /// a filter or route), a delete is routed by the row it removes, and an
    /// update the route sends elsewhere removes the document from the index
    /// the old row was routed to.
    pub fn apply<S>(&mut self, mut routed: Routed<S>, sink: Option<&str>) -> Result<Outcome<S>> {
        // The plan, not the table's function names, is copied: a reference
        // count, where the names would be three strings per change.
        let plan = self.plan.clone();
        let Some(functions) = plan.tables.get(&*routed.change.rel.qualified) else {
            return Ok(Outcome::Write {
                routed,
                doc: None,
                left: None,
            });
        };
        // The index the row's calls are parked under, whatever a route says.
        let parked_as = routed.index.clone();
        if self.failed.is_blocked(&parked_as, &routed.id) && {
            // A retry may just have taken the row's calls out.
            self.failed.refresh();
            self.failed.is_blocked(&parked_as, &routed.id)
        } {
            // A call for the row is parked: this later change waits behind
            // it, so the row's changes stay in order.
            return self.park(&routed, &parked_as, sink, None);
        }
        let mut leaving = false;
        if let Some(filter) = &functions.filter {
            match self.runtime.filter(
                filter,
                input(&mut self.builder, &self.runtime, &routed.change, sink),
            ) {
                Ok(true) => {}
                Ok(false) if routed.change.op == Op::Update => {
                    leaving = true;
                    routed.action = RouteAction::Delete;
                }
                Ok(false) => return Ok(Outcome::Filtered),
                Err(e) => return self.park(&routed, &parked_as, sink, Some(&e)),
            }
        }
        let mut left = None;
        if let Some(route) = &functions.route {
            // The row as it was, to route where its document is.
            let before = old_row(&routed.change);
            let change = match (&before, leaving) {
                (Some(before), true) => before,
                _ => &routed.change,
            };
            let decision = match self.decide(route, change, sink) {
                Ok(decision) => decision,
                Err(e) => return self.park(&routed, &parked_as, sink, Some(&e)),
            };
            if *routed.index != *decision.index {
                routed.index = Arc::from(decision.index);
            }
            match decision.action {
                Some(RouteAction::Delete) => routed.action = RouteAction::Delete,
                Some(RouteAction::Upsert) if routed.change.op == Op::Delete => {
                    let error = FunctionError {
                        function: route.clone(),
                        failure: super::Failure::Shape,
                        message:
                            "returned action \"index\" for a delete, which has no row to index"
                                .to_owned(),
                    };
                    return self.park(&routed, &parked_as, sink, Some(&error));
                }
                _ => {}
            }
            if let (Some(before), false) = (&before, leaving) {
                let was = match self.decide(route, before, sink) {
                    Ok(was) => was,
                    Err(e) => return self.park(&routed, &parked_as, sink, Some(&e)),
                };
                if *was.index != *routed.index {
                    left = Some(Arc::from(was.index));
                }
            }
        }
        if functions.route.is_some() && routed.action == RouteAction::Upsert {
            // On disk before the write goes: a truncate must find the index.
            plan.routes
                .note(&routed.change.rel.qualified, &routed.index)?;
        }
        let mut doc = None;
        if routed.action == RouteAction::Upsert {
            if let Some(transform) = &functions.transform {
                match self.runtime.transform(
                    transform,
                    input(&mut self.builder, &self.runtime, &routed.change, sink),
                ) {
                    Ok(made) => doc = Some(made),
                    Err(e) => return self.park(&routed, &parked_as, sink, Some(&e)),
                }
            }
        }
        Ok(Outcome::Write { routed, doc, left })
    }

    /// Runs the route function on `change`; an index name that cannot be
    /// one is the function's failure.
    fn decide(
        &mut self,
        route: &str,
        change: &Change,
        sink: Option<&str>,
    ) -> std::result::Result<super::RouteDecision, FunctionError> {
        let decision = self
            .runtime
            .route(route, input(&mut self.builder, &self.runtime, change, sink))?;
        if let Err(message) = check_index_name(&decision.index) {
            return Err(FunctionError {
                function: route.to_owned(),
                failure: super::Failure::Shape,
                message: format!("returned the index {:?}: {message}", decision.index),
            });
        }
        Ok(decision)
    }

    /// Keeps a change whose function failed, with the error and the message
    /// the function got (as `sluice fn test` takes it).
    /// `error`: `None` for a change parked behind an earlier failed call
    /// of its row.
    fn park<S>(
        &mut self,
        routed: &Routed<S>,
        index: &str,
        sink: Option<&str>,
        error: Option<&FunctionError>,
    ) -> Result<Outcome<S>> {
        let args = self
            .builder
            .args(self.runtime.lua(), &routed.change, sink)
            .ok();
        let document = args.as_ref().map(|(action, record, changes, metadata)| {
            let mut out = Vec::with_capacity(256);
            let part = |key: &str, value: &mlua::Value, out: &mut Vec<u8>| {
                out.extend_from_slice(if out.is_empty() { b"{\"" } else { b",\"" });
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\":");
                if super::json::write_value(value, out).is_err() {
                    out.extend_from_slice(b"null");
                }
            };
            part("action", action, &mut out);
            part("record", record, &mut out);
            part("changes", changes, &mut out);
            part("metadata", metadata, &mut out);
            out.push(b'}');
            String::from_utf8_lossy(&out).into_owned()
        });
        let message = FailedMessage {
            key: String::new(),
            sink: FAILED_STORE.to_owned(),
            index: index.to_owned(),
            table: routed.change.rel.qualified.to_string(),
            id: routed.id.clone(),
            routing: routed.routing.as_deref().map(str::to_owned),
            lsn: routed.change.commit_lsn.to_string(),
            action: "function".to_owned(),
            document,
            error: error.map_or_else(|| WAITING_BEHIND.to_owned(), ToString::to_string),
            attempts: u32::from(error.is_some()),
            failed_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default(),
        };
        if let Some(error) = error {
            metrics::counter!("sluice_function_failures_total", "function" => error.function.clone())
                .increment(1);
        }
        self.failed.park(&message)?;
        Ok(Outcome::Failed)
    }
}

/// The input of a call for `change`, built with this shard's runtime.
fn input<'a>(
    builder: &'a mut MessageBuilder,
    runtime: &'a Runtime,
    change: &'a Change,
    sink: Option<&'a str>,
) -> ChangeInput<'a> {
    ChangeInput {
        builder,
        lua: runtime.lua(),
        change,
        sink,
    }
}

/// An update's row as it was before, as a delete of it, when the stream
/// carries the whole old row (`REPLICA IDENTITY FULL`).
fn old_row(change: &Change) -> Option<Change> {
    if change.op != Op::Update || change.rel.replica_identity != ReplicaIdentity::Full {
        return None;
    }
    Some(Change {
        op: Op::Delete,
        rel: change.rel.clone(),
        new: None,
        old: Some(change.old.clone()?),
        commit_lsn: change.commit_lsn,
        commit_time: change.commit_time,
        seq: change.seq,
        xid: change.xid,
        fill_unchanged: false,
        retry: change.retry,
        annotations: change.annotations.clone(),
    })
}
