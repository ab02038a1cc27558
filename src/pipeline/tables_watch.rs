//! Watches the streamed tables in the catalog while the pipeline runs. A
//! table dropped is logged and shown in the status (its documents stay until
//! it is created again: a migration may drop and create it in one go); a
//! table created again ends the watch, and `service::run` sets the pipeline
//! up again: its old documents removed, the new table backfilled.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind};
use crate::postgres::catalog;

use super::PipelinePlan;

/// How often the catalog is read.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Resolves with a `TableRecreated` error once a streamed table has another
/// oid than when the pipeline was set up; until then, keeps the status's
/// list of dropped tables current. A catalog it cannot read is tried again.
pub async fn recreated(plan: Arc<PipelinePlan>) -> Error {
    let mut client = None;
    let mut dropped: Vec<String> = Vec::new();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if client.is_none() {
            client = plan.conninfo.connect_sql().await.ok();
        }
        let Some(c) = &client else { continue };
        let now = match catalog::current_oids(c, plan.table_oids.keys().map(String::as_str)).await {
            Ok(now) => now,
            Err(_) => {
                client = None;
                continue;
            }
        };
        for (table, oid) in plan.table_oids.iter() {
            match now.get(table) {
                Some(current) if current != oid => {
                    return Error::new(
                        ErrorKind::TableRecreated,
                        format!("table {table} was dropped and created again"),
                    );
                }
                Some(_) => {}
                None if !dropped.contains(table) => {
                    tracing::error!(
                        table = %table,
                        "a streamed table was dropped: its documents stay in the indexes; \
                         created again, it is backfilled (remove it from the configuration \
                         if it is gone for good)"
                    );
                }
                None => {}
            }
        }
        let still: Vec<String> = plan
            .table_oids
            .keys()
            .filter(|t| !now.contains_key(*t))
            .cloned()
            .collect();
        if still != dropped {
            plan.status.set_dropped(still.clone());
            dropped = still;
        }
    }
}
