//! `sluice check`: the configuration against the source database as its
//! catalog describes it, and the sinks' engines.

use std::collections::HashMap;

use super::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::model::ident::TableName;
use crate::postgres::catalog;
use crate::postgres::replication::ReplicationConnection;

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
    let plan = config.pipeline_plan()?;
    // A database that does not answer is a `Connection` error: `sluice run`
    // waits it out, `sluice check` reports it as not ready (exit 3).
    let client = plan.conninfo.connect_sql().await?;
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
    match ReplicationConnection::connect(&plan.conninfo).await {
        Ok(conn) => conn.close().await,
        Err(e) if e.kind() == ErrorKind::Connection => return Err(e),
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
    tables: &HashMap<TableName, catalog::TableMeta>,
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
    tables: &HashMap<TableName, catalog::TableMeta>,
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
