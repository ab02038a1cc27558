//! The pipeline's plan, built from the configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Config;
use crate::backfill::window;
use crate::error::{Error, ErrorKind, Result};
use crate::functions::routes::RouteRecord;
use crate::functions::{FunctionPlan, TableFunctions};
use crate::model::flow::FlowControl;
use crate::pipeline::predicate::Predicate;
use crate::pipeline::router::TableRoute;
use crate::pipeline::status::PipelineStatus;
use crate::pipeline::supervisor::PipelineStats;
use crate::pipeline::PipelinePlan;
use crate::postgres::conninfo::ConnInfo;

impl Config {
    /// The pipeline's plan: every stage's settings, resolved.
    pub fn pipeline_plan(&self) -> Result<PipelinePlan> {
        let config = self;
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
                    .map(|p| Predicate::parse(p))
                    .collect::<std::result::Result<Vec<_>, String>>()
                    .map_err(|e| Error::new(ErrorKind::Config, e))?;
                predicates.insert(key.clone(), parsed);
            }
            if table.filter.is_some() || table.route.is_some() || table.transform.function.is_some()
            {
                table_functions.insert(
                    key.clone(),
                    TableFunctions {
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
        let route_record = Arc::new(RouteRecord::open(&p.data_dir, routed)?);
        let functions = (!table_functions.is_empty()).then(|| {
            Arc::new(FunctionPlan {
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
            status: Arc::new(PipelineStatus::new(config.sinks.len())),
            table_oids: Arc::default(),
            // Until `run` reads the deployment's id from the data directory.
            watermark_prefix: window::prefix(&config.source.slot, "").into(),
        })
    }
}
