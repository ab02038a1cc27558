//! Ordinary SQL against the source database: checks of its setup, the
//! publication and slot, table metadata and type resolution.

use std::collections::HashMap;
use std::fmt;

use tokio_postgres::Client;

use super::pgoutput::Oid;
use super::types::TypeKind;
use crate::error::{Error, ErrorKind, Result};
use crate::model::ident::{quote_ident, TableName};

/// A problem found in the source database, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n    fix: {}", self.what, self.fix)
    }
}

fn problem(what: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        what: what.into(),
        fix: fix.into(),
    }
}

fn sql_error(context: &str, e: tokio_postgres::Error) -> Error {
    let detail = e
        .as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_else(|| e.to_string());
    Error::new(ErrorKind::Connection, format!("{context}: {detail}"))
}

/// A column of a streamed table.
#[derive(Debug, Clone)]
pub struct ColumnMeta {
    pub name: String,
    pub type_oid: Oid,
    pub in_primary_key: bool,
}

/// What sluice needs to know of a streamed table before streaming.
#[derive(Debug, Clone)]
pub struct TableMeta {
    pub name: TableName,
    pub oid: Oid,
    pub columns: Vec<ColumnMeta>,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    /// Columns of the replica identity index (primary key by default).
    pub identity_columns: Vec<String>,
}

/// Reads table metadata; unknown tables are left out of the result.
pub async fn load_tables(
    client: &Client,
    names: &[TableName],
) -> Result<HashMap<TableName, TableMeta>> {
    let mut out = HashMap::new();
    for name in names {
        let rows = client
            .query(
                "SELECT c.oid, c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&name.schema, &name.table],
            )
            .await
            .map_err(|e| sql_error("reading the catalog failed", e))?;
        let Some(row) = rows.first() else { continue };
        let oid: Oid = row.get(0);
        let identity: String = row.get(1);
        let columns = client
            .query(
                "SELECT a.attname::text, a.atttypid, COALESCE(a.attnum = ANY(i.indkey), false) \
                 FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .map_err(|e| sql_error("reading the catalog failed", e))?
            .iter()
            .map(|r| ColumnMeta {
                name: r.get(0),
                type_oid: r.get(1),
                in_primary_key: r.get(2),
            })
            .collect::<Vec<_>>();
        let identity_columns = client
            .query(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1 AND ((i.indisreplident) OR (i.indisprimary AND NOT EXISTS \
                   (SELECT 1 FROM pg_index j WHERE j.indrelid = $1 AND j.indisreplident))) ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&oid],
            )
            .await
            .map_err(|e| sql_error("reading the catalog failed", e))?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        out.insert(
            name.clone(),
            TableMeta {
                name: name.clone(),
                oid,
                columns,
                replica_identity: identity.chars().next().unwrap_or('d'),
                identity_columns,
            },
        );
    }
    Ok(out)
}

/// What the check of a source found.
#[derive(Debug, Default)]
pub struct SourceReport {
    pub problems: Vec<Problem>,
    pub tables: HashMap<TableName, TableMeta>,
    pub slot_exists: bool,
    pub publication_exists: bool,
}

/// Checks everything sluice needs from the source database and reports every problem.
pub async fn check_source(
    client: &Client,
    tables: &[(TableName, Option<Vec<String>>)],
    slot: &str,
    publication: &str,
) -> Result<SourceReport> {
    let mut report = SourceReport::default();
    let q = |e| sql_error("checking the source failed", e);

    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(q)?
        .get(0);
    if wal_level != "logical" {
        report.problems.push(problem(
            format!("wal_level is `{wal_level}`, logical replication needs `logical`"),
            "run `ALTER SYSTEM SET wal_level = logical;` and restart Postgres",
        ));
    }
    let role = client
        .query_one(
            "SELECT current_user::text, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(q)?;
    let (user, superuser, replication): (String, bool, bool) =
        (role.get(0), role.get(1), role.get(2));
    if !superuser && !replication {
        report.problems.push(problem(
            format!("role {user} may not use replication"),
            format!(
                "run `ALTER ROLE {} REPLICATION;` as a superuser",
                quote_ident(&user)
            ),
        ));
    }

    let names: Vec<TableName> = tables.iter().map(|(n, _)| n.clone()).collect();
    report.tables = load_tables(client, &names).await?;
    for (name, key) in tables {
        let Some(meta) = report.tables.get(name) else {
            report.problems.push(problem(
                format!("table {name} does not exist"),
                "check the schema and table name in the config (`SCHEMA.TABLE`)",
            ));
            continue;
        };
        let readable: bool = client
            .query_one(
                "SELECT has_table_privilege($1::oid, 'SELECT')",
                &[&meta.oid],
            )
            .await
            .map_err(q)?
            .get(0);
        if !readable {
            report.problems.push(problem(
                format!("role {user} may not read table {name}"),
                format!(
                    "run `GRANT SELECT ON {} TO {};`",
                    name.quoted(),
                    quote_ident(&user)
                ),
            ));
        }
        match meta.replica_identity {
            'n' => report.problems.push(problem(
                format!("table {name} has REPLICA IDENTITY NOTHING: updates and deletes cannot be replicated"),
                format!("run `ALTER TABLE {} REPLICA IDENTITY DEFAULT;` (with a primary key) or `... FULL`", name.quoted()),
            )),
            'd' if meta.identity_columns.is_empty() => report.problems.push(problem(
                format!("table {name} has no primary key: its rows cannot be identified in the index"),
                format!(
                    "add a primary key (`ALTER TABLE {0} ADD PRIMARY KEY (...)`), or set `ALTER TABLE {0} REPLICA IDENTITY FULL` and list the key columns in the table's `key`",
                    name.quoted()
                ),
            )),
            'f' if meta.identity_columns.is_empty() && key.is_none() => report.problems.push(problem(
                format!("table {name} has no primary key: its rows cannot be identified in the index"),
                "add a primary key or list the identifying columns in the table's `key` setting",
            )),
            _ => {}
        }
    }

    let slot_row = client
        .query_opt(
            "SELECT plugin::text, slot_type::text, active, database::text = current_database() FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(q)?;
    if let Some(row) = slot_row {
        report.slot_exists = true;
        let plugin: Option<String> = row.get(0);
        let active: bool = row.get(2);
        let same_db: Option<bool> = row.get(3);
        if plugin.as_deref() != Some("pgoutput") {
            report.problems.push(problem(
                format!(
                    "replication slot {slot} exists but uses plugin {}",
                    plugin.unwrap_or_else(|| "none (physical)".into())
                ),
                "configure another source.slot, or drop this slot if nothing else uses it",
            ));
        } else if same_db == Some(false) {
            report.problems.push(problem(
                format!("replication slot {slot} belongs to another database"),
                "configure another source.slot",
            ));
        }
        if active {
            report.problems.push(problem(
                format!("replication slot {slot} is in use by another process"),
                "stop the other consumer (see pg_stat_replication) or configure another source.slot",
            ));
        }
    } else {
        let slots = client
            .query_one(
                "SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int",
                &[],
            )
            .await
            .map_err(q)?;
        let free: i32 = slots.get(0);
        if free <= 0 {
            report.problems.push(problem(
                "no free replication slot (max_replication_slots is reached)",
                "raise max_replication_slots and restart Postgres, or drop an unused slot",
            ));
        }
    }

    report.publication_exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(q)?
        .is_some();
    if !report.publication_exists && !superuser {
        let can_create: bool = client
            .query_one(
                "SELECT has_database_privilege(current_database(), 'CREATE')",
                &[],
            )
            .await
            .map_err(q)?
            .get(0);
        if !can_create {
            report.problems.push(problem(
                format!("publication {publication} does not exist and role {user} may not create it"),
                format!(
                    "create it as an owner of the tables: `CREATE PUBLICATION {} FOR TABLE ...;`, or grant CREATE on the database",
                    quote_ident(publication)
                ),
            ));
        }
    }
    Ok(report)
}

/// Creates the publication, or adds the tables it lacks. The publication
/// publishes partitions' changes as their root table's
/// (`publish_via_partition_root`): the stream then names the configured
/// table, not the leaf partition a row lives in, and a partition attached
/// later is streamed without a change to the publication.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[TableName],
) -> Result<()> {
    let q = |e| sql_error("setting up the publication failed", e);
    let exists = client
        .query_opt(
            "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(q)?;
    if exists.as_ref().is_some_and(|row| !row.get::<_, bool>(1)) {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                quote_ident(publication)
            ))
            .await
            .map_err(q)?;
        tracing::info!(
            publication,
            "publication now publishes partitions' changes as their root table's"
        );
    }
    let list = tables
        .iter()
        .map(TableName::quoted)
        .collect::<Vec<_>>()
        .join(", ");
    match exists {
        None => {
            client
                .batch_execute(&format!(
                    "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true)",
                    quote_ident(publication)
                ))
                .await
                .map_err(q)?;
            tracing::info!(publication, tables = %list, "created publication");
        }
        Some(row) if row.get::<_, bool>(0) => {}
        Some(_) => {
            let present: Vec<(String, String)> = client
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&publication],
                )
                .await
                .map_err(q)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let missing: Vec<String> = tables
                .iter()
                .filter(|t| !present.iter().any(|(s, n)| s == &t.schema && n == &t.table))
                .map(TableName::quoted)
                .collect();
            if !missing.is_empty() {
                client
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {} ADD TABLE {}",
                        quote_ident(publication),
                        missing.join(", ")
                    ))
                    .await
                    .map_err(q)?;
                tracing::info!(publication, tables = %missing.join(", "), "added tables to publication");
            }
        }
    }
    Ok(())
}

/// The replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// Postgres invalidated it (`wal_status = 'lost'`): the WAL it needed
    /// was removed, past `max_slot_wal_keep_size`.
    pub lost: bool,
    pub confirmed_flush: Option<crate::lsn::Lsn>,
    /// WAL the slot holds on the server, in bytes.
    pub retained_bytes: Option<i64>,
}

/// The slot named `slot`, when it exists.
pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>> {
    let row = client
        .query_opt(
            "SELECT COALESCE(wal_status = 'lost', false), confirmed_flush_lsn::text, \
             (pg_current_wal_lsn() - restart_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| sql_error("reading replication slots failed", e))?;
    Ok(row.map(|row| SlotInfo {
        lost: row.get(0),
        confirmed_flush: row.get::<_, Option<&str>>(1).and_then(|t| t.parse().ok()),
        retained_bytes: row.get(2),
    }))
}

/// The current oid of each table (`schema.table`); absent when dropped.
pub async fn current_oids(
    client: &Client,
    tables: impl Iterator<Item = &str>,
) -> Result<std::collections::BTreeMap<String, Oid>> {
    let names: Vec<&str> = tables.collect();
    let rows = client
        .query(
            "SELECT n.nspname || '.' || c.relname, c.oid FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname || '.' || c.relname = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| sql_error("reading the streamed tables' oids failed", e))?;
    Ok(rows
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, Oid>(1)))
        .collect())
}

/// The server's current WAL position.
pub async fn current_wal_lsn(client: &Client) -> Result<crate::lsn::Lsn> {
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| sql_error("reading the WAL position failed", e))?;
    row.get::<_, String>(0)
        .parse()
        .map_err(|_| Error::new(ErrorKind::Protocol, "the WAL position is not an LSN"))
}

/// The database system's identifier: it changes when the cluster is
/// replaced (a restore from a base backup keeps it; initdb does not).
pub async fn system_identifier(client: &Client) -> Result<String> {
    let row = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .map_err(|e| sql_error("reading the system identifier failed", e))?;
    Ok(row.get(0))
}

/// Creates the logical replication slot; returns the position it starts at.
pub async fn create_slot(client: &Client, slot: &str) -> Result<crate::lsn::Lsn> {
    let row = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(|e| sql_error("creating the replication slot failed", e))?;
    let lsn = row
        .get::<_, &str>(0)
        .parse()
        .map_err(|_| Error::protocol("the new slot's position cannot be read"))?;
    tracing::info!(slot, %lsn, "created replication slot");
    Ok(lsn)
}

/// Drops the slot (an invalidated one, before a resync).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<()> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(|e| sql_error("dropping the replication slot failed", e))?;
    tracing::warn!(slot, "dropped replication slot");
    Ok(())
}

/// Resolves type OIDs to their JSON mapping: built-ins directly, others
/// (domains, enums, arrays of them) through `pg_type`. Unknown types map to text.
pub async fn resolve_types(client: &Client, oids: &[Oid]) -> Result<HashMap<Oid, TypeKind>> {
    struct Row {
        typtype: i8,
        category: i8,
        elem: Oid,
        base: Oid,
        delim: i8,
    }
    let mut rows: HashMap<Oid, Row> = HashMap::new();
    let mut wanted: Vec<Oid> = oids
        .iter()
        .copied()
        .filter(|o| TypeKind::builtin(*o).is_none())
        .collect();
    while !wanted.is_empty() {
        let found = client
            .query(
                "SELECT oid, typtype, typcategory, typelem, typbasetype, typdelim FROM pg_type WHERE oid = ANY($1)",
                &[&wanted],
            )
            .await
            .map_err(|e| sql_error("reading pg_type failed", e))?;
        let mut next = Vec::new();
        for r in found {
            let row = Row {
                typtype: r.get(1),
                category: r.get(2),
                elem: r.get(3),
                base: r.get(4),
                delim: r.get(5),
            };
            for dep in [row.elem, row.base] {
                if dep != 0 && TypeKind::builtin(dep).is_none() && !rows.contains_key(&dep) {
                    next.push(dep);
                }
            }
            rows.insert(r.get(0), row);
        }
        next.retain(|o| !rows.contains_key(o));
        next.dedup();
        wanted = next;
    }
    fn kind(oid: Oid, rows: &HashMap<Oid, Row>, depth: u32) -> TypeKind {
        if let Some(kind) = TypeKind::builtin(oid) {
            return kind;
        }
        let Some(row) = rows.get(&oid) else {
            return TypeKind::Text;
        };
        if depth > 16 {
            return TypeKind::Text;
        }
        match (row.typtype as u8, row.category as u8) {
            (b'd', _) => kind(row.base, rows, depth + 1),
            (_, b'A') if row.elem != 0 => TypeKind::Array {
                element: Box::new(kind(row.elem, rows, depth + 1)),
                delimiter: row.delim as u8,
            },
            _ => TypeKind::Text,
        }
    }
    Ok(oids.iter().map(|&oid| (oid, kind(oid, &rows, 0))).collect())
}
