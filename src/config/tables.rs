//! `[[tables]]`: the tables to stream, with their filters, transforms and
//! routing, and the indexes their documents go to.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::Config;
use crate::functions::FunctionKind;
use crate::model::ident::{check_index_name, TableName};
use crate::model::problem::ConfigProblem;
use crate::pipeline::document::TransformConfig;
use crate::pipeline::filter::Operation;
use crate::pipeline::predicate::Predicate;

/// One streamed table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `schema.table`; a bare name means schema `public`.
    pub name: String,
    /// Operations to stream. Default: all four.
    #[serde(default = "default_operations")]
    pub operations: Vec<Operation>,
    /// Index (collection, namespace) to write to. Default: `pipeline.index_template`.
    #[serde(default)]
    pub index: Option<String>,
    /// Columns whose values identify a document and group its changes in order.
    /// Default: the primary key (or replica identity index).
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Column whose value routes the document to a shard of the index
    /// (Elasticsearch/OpenSearch `routing`). Must be one of the key columns:
    /// a delete carries only the key.
    #[serde(default)]
    pub routing: Option<String>,
    /// Declarative transform of rows into documents, or a transform function.
    #[serde(default)]
    pub transform: TransformConfig,
    /// A filter function (see `functions`): changes it returns false for are
    /// left out.
    #[serde(default)]
    pub filter: Option<String>,
    /// A route function (see `functions`): names the index of each change,
    /// and can turn it into a delete.
    #[serde(default)]
    pub route: Option<String>,
    /// Column predicates that must all hold for a row to be in the index
    /// (`["active = true", "price > 10", "status in ('a', 'b')"]`): rows
    /// that do not match are left out, and an update that stops matching
    /// removes the document.
    #[serde(default, rename = "where")]
    pub predicates: Vec<String>,
    /// This table's index holds other tables' documents too (they name the
    /// same `index`, or the template gives them the same one). Off by
    /// default: sharing an index is refused without it. On, every document
    /// carries its table in the `sluice_table` field and a TRUNCATE removes
    /// only this table's documents. The tables' ids must not collide.
    #[serde(default)]
    pub shared_index: bool,
}

impl TableConfig {
    /// Every column the table's settings name, with the setting that names
    /// it (`where[0]`, `transform.drop[1]`, …): each must be a column of the
    /// table, or the setting would quietly do something else.
    pub fn named_columns(&self) -> Vec<(String, String)> {
        let mut named = Vec::new();
        for (j, text) in self.predicates.iter().enumerate() {
            if let Ok(predicate) = Predicate::parse(text) {
                named.push((format!("where[{j}]"), predicate.column));
            }
        }
        for (j, column) in self.key.iter().flatten().enumerate() {
            named.push((format!("key[{j}]"), column.clone()));
        }
        if let Some(routing) = &self.routing {
            named.push(("routing".into(), routing.clone()));
        }
        named.extend(self.transform.named_columns());
        named
    }
}

pub(super) fn default_operations() -> Vec<Operation> {
    Operation::ALL.to_vec()
}

impl Config {
    pub(super) fn validate_tables(&self, problems: &mut Vec<ConfigProblem>) {
        let mut problem =
            |field: String, message: String| problems.push(ConfigProblem { field, message });
        if self.tables.is_empty() {
            problem("tables".into(), "at least one table is required".into());
        }
        let mut seen = HashSet::new();
        for (i, table) in self.tables.iter().enumerate() {
            let path = |field: &str| format!("tables[{i}].{field}");
            match TableName::parse(&table.name) {
                Ok(name) => {
                    if !seen.insert(name.clone()) {
                        problem(path("name"), format!("table {name} is listed twice"));
                    }
                }
                Err(message) => problem(path("name"), message),
            }
            if table.operations.is_empty() {
                problem(
                    path("operations"),
                    "must list at least one operation".into(),
                );
            }
            if let Some(index) = &table.index {
                if let Err(message) = check_index_name(index) {
                    problem(path("index"), message);
                }
            }
            if let Some(key) = &table.key {
                if key.is_empty() {
                    problem(path("key"), "must list at least one column".into());
                }
            }
            if let (Some(routing), Some(key)) = (&table.routing, &table.key) {
                if !key.contains(routing) {
                    problem(
                        path("routing"),
                        format!("`{routing}` must be one of the key columns ({}): a delete carries only the key", key.join(", ")),
                    );
                }
            }
            for (j, text) in table.predicates.iter().enumerate() {
                if let Err(message) = Predicate::parse(text) {
                    problem(path(&format!("where[{j}]")), message);
                }
            }
            let transform = &table.transform;
            for (field, name, kind) in [
                ("filter", &table.filter, FunctionKind::Filter),
                ("route", &table.route, FunctionKind::Route),
                (
                    "transform.function",
                    &transform.function,
                    FunctionKind::Transform,
                ),
            ] {
                let Some(name) = name else { continue };
                match self.functions.get(name) {
                    None => problem(
                        path(field),
                        format!(
                            "no function `{name}` is defined (add [functions.{name}] with kind = \"{kind}\")"
                        ),
                    ),
                    Some(f) if f.kind != kind => problem(
                        path(field),
                        format!("function `{name}` is a {} function, not a {kind} function", f.kind),
                    ),
                    Some(_) => {}
                }
            }
            let mut found = Vec::new();
            transform.validate(&path("transform"), &mut found);
            for p in found {
                problem(p.field, p.message);
            }
        }
        for (field, message) in self.shared_indexes() {
            problem(field, message);
        }
    }

    /// Tables that write to one index without saying so (`shared_index`):
    /// a truncate of one would empty the others' documents. A table with a
    /// route function names its indexes as it goes, so it is not compared.
    fn shared_indexes(&self) -> Vec<(String, String)> {
        let mut by_index: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, table) in self.tables.iter().enumerate() {
            let Ok(name) = TableName::parse(&table.name) else {
                continue; // reported with its field
            };
            if table.route.is_none() {
                by_index
                    .entry(self.index_for(table, &name))
                    .or_default()
                    .push(i);
            }
        }
        let mut problems = Vec::new();
        for (index, tables) in by_index {
            if tables.len() < 2 {
                continue;
            }
            let names: Vec<&str> = tables
                .iter()
                .map(|&i| self.tables[i].name.as_str())
                .collect();
            for &i in &tables {
                if !self.tables[i].shared_index {
                    problems.push((
                        format!("tables[{i}].index"),
                        format!(
                            "tables {} all write to index `{index}`: a TRUNCATE of one would remove the \
                             others' documents, and rows with the same key would overwrite each other; \
                             give each table its own `index`, or set `shared_index = true` on each of them",
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
        problems
    }

    /// The index a table's documents go to.
    pub fn index_for(&self, table: &TableConfig, name: &TableName) -> String {
        match &table.index {
            Some(index) => index.clone(),
            None => self
                .pipeline
                .index_template
                .replace("{schema}", &name.schema)
                .replace("{table}", &name.table),
        }
    }
}
