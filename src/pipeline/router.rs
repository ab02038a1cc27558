//! The router: names the index of every change, computes its document id from
//! the key columns, and sends it to the shard of that key (a stable hash, so the
//! same key always lands on the same shard, across restarts and builds).

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::change::{Change, Op, RelationInfo, RouteAction, Routed, ShardBatch, ShardItem};
use super::change::{Shaped, ShapedBatch};
use super::shard::ShardMsg;
use super::stats::StageStats;
use crate::postgres::pgoutput::{ColumnKind, ColumnValue, Oid, Tuple};
use crate::postgres::snapshot::Snapshot;

/// Routing rules of one table.
#[derive(Debug, Clone)]
pub struct TableRoute {
    pub index: String,
    /// Key columns; `None` means the replica identity (primary key).
    pub key: Option<Vec<String>>,
    /// The key column whose value is the document's routing.
    pub routing: Option<String>,
    /// The index holds other tables' documents too (`shared_index`).
    pub shared: bool,
}

pub enum RouterMsg {
    Batch(ShapedBatch),
}

pub struct RouterArgs {
    /// Reads columns the WAL leaves out (see `refetch_unchanged`).
    pub sql: std::sync::Arc<tokio_postgres::Client>,
    /// Per table (`schema.table`).
    pub tables: HashMap<String, TableRoute>,
    pub key_separator: String,
    pub shards: Vec<ActorRef<ShardMsg>>,
    pub stats: Arc<StageStats>,
}

struct Route {
    index: Arc<str>,
    key_columns: Vec<usize>,
    routing_column: Option<usize>,
    /// Other tables' documents share the index (see `TableRoute::shared`).
    shared: bool,
}

pub struct RouterState {
    args: RouterArgs,
    routes: HashMap<Oid, (Arc<RelationInfo>, Arc<Route>)>,
    next_barrier: u64,
    /// SQL type names by OID, for key lookups.
    type_names: HashMap<Oid, String>,
}

pub struct Router;

/// The shard of a document id: xxh3 is specified, so this never changes.
pub fn shard_of(id: &str, shards: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % shards as u64) as usize
}

/// The document id: the key values, joined by `separator` when there are several.
/// `None` when a key value is missing (NULL or not in the tuple).
pub fn document_id(tuple: &Tuple, columns: &[usize], separator: &str) -> Option<String> {
    let mut id = String::new();
    for (n, &column) in columns.iter().enumerate() {
        if n > 0 {
            id.push_str(separator);
        }
        if tuple.kind(column) != ColumnKind::Text {
            return None;
        }
        id.push_str(&String::from_utf8_lossy(tuple.value(column)?));
    }
    Some(id)
}

/// The key values a document id was made of (`document_id` undone): the id
/// itself for a one-column key, else its parts between `separator`s;
/// `None` when they are not one per key column.
pub fn key_values(id: &str, columns: usize, separator: &str) -> Option<Vec<String>> {
    let values: Vec<String> = if columns == 1 {
        vec![id.to_owned()]
    } else {
        id.split(separator).map(str::to_owned).collect()
    };
    (values.len() == columns).then_some(values)
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<RouterMsg>,
        args: RouterArgs,
    ) -> Result<RouterState, ActorProcessingErr> {
        Ok(RouterState {
            args,
            routes: HashMap::new(),
            next_barrier: 0,
            type_names: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        let RouterMsg::Batch(batch) = msg;
        let n = batch.items.len();
        let oldest = batch.items.first().map_or(0, |s| s.change.commit_time);
        let shards = state.args.shards.len();
        let mut out: Vec<ShardBatch> = (0..shards)
            .map(|_| ShardBatch {
                items: Vec::with_capacity(n / shards + 16),
                upto: batch.upto,
                credits: batch.credits.clone(),
                last: batch.last,
                scope: batch.scope,
            })
            .collect();
        let mut routed = 0;
        for Shaped { change, shape } in batch.items {
            let route = state.route(&change.rel);
            if change.op == Op::Truncate {
                let barrier = state.next_barrier;
                state.next_barrier += 1;
                for shard in &mut out {
                    shard.items.push(ShardItem::Truncate {
                        index: route.index.clone(),
                        table: change.rel.qualified.clone(),
                        scoped: route.shared,
                        lsn: change.commit_lsn,
                        barrier,
                    });
                }
                routed += 1;
                continue;
            }
            if route.key_columns.is_empty() {
                state.args.stats.bad_record(format!(
                    "table {} has no key columns: its changes cannot be given document ids",
                    change.rel.qualified
                ));
                continue;
            }
            let sep = &state.args.key_separator;
            let old_id = change
                .old
                .as_ref()
                .and_then(|t| document_id(t, &route.key_columns, sep));
            let new_id = change
                .new
                .as_ref()
                .and_then(|t| document_id(t, &route.key_columns, sep));
            // Unchanged TOAST columns the WAL does not carry, where the document
            // may have no earlier version to merge with: after a key change, or
            // while a backfill reads the table (it leaves a row changed during
            // its chunk to the change). Read them from the table.
            let mut change = change;
            let mut gone = false;
            let moved = old_id.is_some() && old_id != new_id;
            if change.op == Op::Update
                && (moved || change.fill_unchanged)
                && change.new.as_ref().is_some_and(Tuple::has_unchanged)
            {
                let filled = refetch_unchanged(
                    &state.args.sql,
                    &mut state.type_names,
                    &change,
                    &route.key_columns,
                )
                .await
                .map_err(|e| {
                    format!(
                        "reading unchanged columns of {} failed: {e}",
                        change.rel.qualified
                    )
                })?;
                match filled {
                    Some(tuple) => change.new = Some(tuple),
                    None => {
                        // A snapshot that sees this change has no row by the
                        // new key: a later transaction deleted it or moved it
                        // again, and its change follows in the stream. Writing
                        // the document now would write it without the
                        // columns; only the old document goes.
                        tracing::debug!(
                            table = %change.rel.qualified,
                            "row of a key change is gone before its unchanged columns were read"
                        );
                        gone = true;
                    }
                }
            }
            let mut push = |id: String, action: RouteAction, change: Change| {
                let shard = shard_of(&id, shards);
                let fresh = change.op == Op::Insert;
                let routing = route.routing_column.and_then(|column| {
                    let tuple = match action {
                        RouteAction::Delete => change.old.as_ref(),
                        RouteAction::Upsert => change.new.as_ref(),
                    }?;
                    let value = tuple.value(column)?;
                    Some(String::from_utf8_lossy(value).into())
                });
                out[shard].items.push(ShardItem::Change(Routed {
                    change,
                    action,
                    index: route.index.clone(),
                    shape: shape.clone(),
                    id,
                    routing,
                    fresh,
                }));
            };
            match (change.op, old_id, new_id) {
                (Op::Delete, Some(id), _) => push(id, RouteAction::Delete, change),
                (Op::Insert | Op::Update | Op::Read, old, Some(id)) => {
                    // A key change moves the document: remove the old one.
                    if let Some(old) = old.filter(|old| *old != id) {
                        if gone {
                            push(old, RouteAction::Delete, change);
                            routed += 1;
                            continue;
                        }
                        push(old, RouteAction::Delete, change.clone());
                    }
                    if !gone {
                        push(id, RouteAction::Upsert, change);
                    }
                }
                _ => {
                    state.args.stats.bad_record(format!(
                        "{:?} on {} without a value for every key column",
                        change.op, change.rel.qualified
                    ));
                    continue;
                }
            }
            routed += 1;
        }
        state.args.stats.batch(n, routed);
        state.args.stats.left(oldest);
        for (shard, sub) in state.args.shards.iter().zip(out) {
            shard.cast(ShardMsg::Batch(sub))?;
        }
        Ok(())
    }
}

/// Fills the unchanged columns of the change's new row with the row's
/// current values, read by its key. `None` when the row no longer exists.
///
/// The read sees the change's transaction: its commit reaches the stream
/// before it is visible to new snapshots (see `postgres::snapshot`), and a
/// read in between would find the row under its old key, or not at all.
/// So the snapshot of every read is checked, and the read repeated until
/// it sees the transaction. The current values may be newer than this
/// change; every later change follows it, so the document still ends equal
/// to the row.
async fn refetch_unchanged(
    sql: &tokio_postgres::Client,
    type_names: &mut HashMap<Oid, String>,
    change: &Change,
    key_columns: &[usize],
) -> Result<Option<Tuple>, tokio_postgres::Error> {
    use crate::model::ident::quote_ident;
    let (rel, new) = (
        &change.rel,
        change.new.as_ref().expect("an update has a new row"),
    );
    let unchanged: Vec<usize> = (0..new.len())
        .filter(|&i| new.kind(i) == ColumnKind::Unchanged)
        .collect();
    let mut conditions = Vec::new();
    let mut params: Vec<String> = Vec::new();
    for (n, &column) in key_columns.iter().enumerate() {
        let info = &rel.columns[column];
        if let std::collections::hash_map::Entry::Vacant(entry) = type_names.entry(info.type_oid) {
            let name: String = sql
                .query_one("SELECT format_type($1, NULL)", &[&info.type_oid])
                .await?
                .get(0);
            entry.insert(name);
        }
        conditions.push(format!(
            "{} = ${}::text::{}",
            quote_ident(&info.name),
            n + 1,
            type_names[&info.type_oid]
        ));
        params.push(String::from_utf8_lossy(new.value(column).unwrap_or_default()).into_owned());
    }
    let columns: Vec<String> = unchanged
        .iter()
        .map(|&i| format!("{}::text", quote_ident(&rel.columns[i].name)))
        .collect();
    // One statement, so the snapshot it reports is the one it read with.
    let query = format!(
        "SELECT pg_current_snapshot()::text, r.* FROM (SELECT) AS one \
         LEFT JOIN (SELECT true, {} FROM {} WHERE {}) AS r ON true",
        columns.join(", "),
        rel.name.quoted(),
        conditions.join(" AND ")
    );
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p as _).collect();
    let statement = sql.prepare(&query).await?;
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(200);
    let mut warned = std::time::Duration::ZERO;
    let row = loop {
        let row = sql.query_one(&statement, &refs).await?;
        let seen = row
            .get::<_, Option<&str>>(0)
            .and_then(Snapshot::parse)
            .is_some_and(|snapshot| change.xid == 0 || !snapshot.hides(change.xid));
        if seen {
            break row;
        }
        let waited = started.elapsed();
        if waited >= warned + std::time::Duration::from_secs(10) {
            warned = waited;
            tracing::warn!(
                table = %rel.qualified,
                xid = change.xid,
                waited_s = waited.as_secs(),
                "waiting for a streamed transaction to become visible \
                 (a synchronous standby may be holding its commit)"
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    };
    if row.get::<_, Option<bool>>(1).is_none() {
        return Ok(None);
    }
    let mut data = bytes::BytesMut::new();
    let mut values = Vec::with_capacity(new.len());
    let mut fetched = unchanged
        .iter()
        .enumerate()
        .map(|(n, &i)| (i, row.get::<_, Option<String>>(n + 2)))
        .peekable();
    for i in 0..new.len() {
        let start = data.len() as u32;
        let (kind, bytes): (ColumnKind, Vec<u8>) = match fetched.peek() {
            Some((at, _)) if *at == i => match fetched.next().expect("peeked").1 {
                Some(text) => (ColumnKind::Text, text.into_bytes()),
                None => (ColumnKind::Null, Vec::new()),
            },
            _ => (
                new.kind(i),
                new.value(i).map(<[u8]>::to_vec).unwrap_or_default(),
            ),
        };
        data.extend_from_slice(&bytes);
        values.push(ColumnValue {
            kind,
            start,
            len: bytes.len() as u32,
        });
    }
    Ok(Some(Tuple {
        data: data.freeze(),
        columns: values,
    }))
}

impl RouterState {
    fn route(&mut self, rel: &Arc<RelationInfo>) -> Arc<Route> {
        if let Some((cached, route)) = self.routes.get(&rel.id) {
            if Arc::ptr_eq(cached, rel) {
                return route.clone();
            }
        }
        let config = self.args.tables.get(&*rel.qualified);
        let index: Arc<str> = config
            .map(|c| c.index.clone())
            .unwrap_or_else(|| rel.name.table.clone())
            .into();
        let key_columns = match config.and_then(|c| c.key.as_ref()) {
            Some(names) => names.iter().filter_map(|n| rel.column_index(n)).collect(),
            None => rel
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_key)
                .map(|(i, _)| i)
                .collect(),
        };
        let routing_column = config
            .and_then(|c| c.routing.as_deref())
            .and_then(|name| rel.column_index(name));
        let route = Arc::new(Route {
            index,
            key_columns,
            routing_column,
            shared: config.is_some_and(|c| c.shared),
        });
        self.routes.insert(rel.id, (rel.clone(), route.clone()));
        route
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_assignment_is_stable() {
        // Pinned values: if these change, keys move between shards across versions.
        let pinned: Vec<usize> = ["1", "42", "abc", "1|2"]
            .iter()
            .map(|id| shard_of(id, 8))
            .collect();
        assert_eq!(pinned, PINNED);
        let spread: std::collections::HashSet<_> =
            (0..1000).map(|i| shard_of(&i.to_string(), 8)).collect();
        assert_eq!(spread.len(), 8);
    }

    const PINNED: [usize; 4] = [0, 1, 0, 5];
}
