//! Reading a table in chunks: keyset pagination in key order, each chunk in
//! a repeatable-read snapshot whose visibility the watermark window needs,
//! rows copied out as text (`COPY … TO STDOUT`) into the same tuples the
//! replication stream carries, so every later stage treats them alike.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio_postgres::Client;

use super::window::Snapshot;
use super::BackfillError;
use crate::config::{quote_ident, TableName};
use crate::pipeline::change::{ColumnInfo, RelationInfo};
use crate::postgres::catalog;
use crate::postgres::pgoutput::{ColumnKind, ColumnValue, Oid, ReplicaIdentity, Tuple};
use crate::postgres::types::TypeKind;

/// What reading a table needs to know of it.
#[derive(Debug, Clone)]
pub struct TableShape {
    /// The columns in the order the stream sends them (generated columns
    /// are not sent, so not read either).
    pub rel: Arc<RelationInfo>,
    /// Positions of the key columns (primary key or replica identity index)
    /// in `rel.columns`: the pagination order.
    pub key_columns: Vec<usize>,
    /// SQL types of the key columns, for the cursor's literals.
    key_types: Vec<String>,
}

impl TableShape {
    pub fn key_names(&self) -> Vec<String> {
        self.key_columns
            .iter()
            .map(|&i| self.rel.columns[i].name.clone())
            .collect()
    }

    /// The key values of `row` as text, to resume after it.
    pub fn cursor_of(&self, row: &Tuple) -> Vec<String> {
        self.key_columns
            .iter()
            .map(|&i| String::from_utf8_lossy(row.value(i).unwrap_or_default()).into_owned())
            .collect()
    }
}

/// Describes `table` for reading: its columns and its key.
pub async fn describe(client: &Client, table: &TableName) -> Result<TableShape, BackfillError> {
    let row = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.table],
        )
        .await
        .map_err(BackfillError::sql)?
        .ok_or_else(|| BackfillError::NotFound(format!("table {table} does not exist")))?;
    let oid: Oid = row.get(0);
    let identity: String = row.get(1);
    let columns = client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(BackfillError::sql)?;
    let key: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1 AND ((i.indisreplident) OR (i.indisprimary AND NOT EXISTS \
               (SELECT 1 FROM pg_index j WHERE j.indrelid = $1 AND j.indisreplident))) \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&oid],
        )
        .await
        .map_err(BackfillError::sql)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if key.is_empty() {
        return Err(BackfillError::Invalid(format!(
            "table {table} has neither a primary key nor a replica identity index: \
             a backfill reads rows in key order"
        )));
    }
    let oids: Vec<Oid> = columns.iter().map(|r| r.get(1)).collect();
    let unknown: Vec<Oid> = oids
        .iter()
        .copied()
        .filter(|oid| TypeKind::builtin(*oid).is_none())
        .collect();
    let resolved = if unknown.is_empty() {
        Default::default()
    } else {
        catalog::resolve_types(client, &unknown)
            .await
            .map_err(|e| BackfillError::Database(e.to_string()))?
    };
    let mut infos = Vec::with_capacity(columns.len());
    let mut key_columns = Vec::new();
    let mut key_types = Vec::new();
    for name in &key {
        let Some(at) = columns.iter().position(|r| r.get::<_, String>(0) == *name) else {
            return Err(BackfillError::Invalid(format!(
                "the key column {name} of table {table} is generated: it cannot be read"
            )));
        };
        key_columns.push(at);
        key_types.push(columns[at].get(2));
    }
    for (i, row) in columns.iter().enumerate() {
        let type_oid: Oid = row.get(1);
        infos.push(ColumnInfo {
            name: row.get(0),
            type_oid,
            kind: TypeKind::builtin(type_oid)
                .or_else(|| resolved.get(&type_oid).cloned())
                .unwrap_or(TypeKind::Text),
            is_key: key_columns.contains(&i),
        });
    }
    let replica_identity = match identity.as_str() {
        "n" => ReplicaIdentity::Nothing,
        "f" => ReplicaIdentity::Full,
        "i" => ReplicaIdentity::Index,
        _ => ReplicaIdentity::Default,
    };
    Ok(TableShape {
        rel: Arc::new(RelationInfo {
            id: oid,
            qualified: table.to_string().into(),
            name: table.clone(),
            columns: infos,
            replica_identity,
        }),
        key_columns,
        key_types,
    })
}

/// A SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The `SELECT` of the chunk after `cursor` (the last key read; `None`
/// from the start) of at most `limit` rows matching `condition`.
pub fn select(
    shape: &TableShape,
    cursor: Option<&[String]>,
    condition: Option<&str>,
    limit: usize,
) -> String {
    let columns: Vec<String> = shape
        .rel
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let keys: Vec<String> = shape
        .key_columns
        .iter()
        .map(|&i| quote_ident(&shape.rel.columns[i].name))
        .collect();
    let mut conditions = Vec::new();
    if let Some(cursor) = cursor {
        let values: Vec<String> = cursor
            .iter()
            .zip(&shape.key_types)
            .map(|(value, ty)| format!("{}::{ty}", literal(value)))
            .collect();
        conditions.push(format!("({}) > ({})", keys.join(", "), values.join(", ")));
    }
    if let Some(condition) = condition {
        conditions.push(format!("({condition})"));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    format!(
        "SELECT {} FROM {}{filter} ORDER BY {} LIMIT {limit}",
        columns.join(", "),
        shape.rel.name.quoted(),
        keys.join(", "),
    )
}

/// A chunk as read.
#[derive(Debug)]
pub struct ReadChunk {
    /// The table as it was when the chunk was read.
    pub shape: TableShape,
    pub rows: Vec<Tuple>,
    pub snapshot: Snapshot,
    /// Bytes copied out.
    pub bytes: u64,
}

/// Reads one chunk in its own repeatable-read snapshot. The table is
/// described in the same transaction, under a lock that holds off schema
/// changes until the chunk is read: the rows have the table's columns of
/// that moment, even when a column was added or dropped since the last chunk.
pub async fn read(
    client: &Client,
    table: &TableName,
    cursor: Option<&[String]>,
    condition: Option<&str>,
    limit: usize,
) -> Result<ReadChunk, BackfillError> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; LOCK TABLE {} IN ACCESS SHARE MODE",
            table.quoted()
        ))
        .await
        .map_err(BackfillError::sql)?;
    let result = async {
        let shape = describe(client, table).await?;
        read_in_transaction(client, shape, cursor, condition, limit).await
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    // A failed end leaves the connection unusable; the caller reconnects.
    client
        .batch_execute(end)
        .await
        .map_err(BackfillError::sql)?;
    result
}

async fn read_in_transaction(
    client: &Client,
    shape: TableShape,
    cursor: Option<&[String]>,
    condition: Option<&str>,
    limit: usize,
) -> Result<ReadChunk, BackfillError> {
    let text: String = client
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .map_err(BackfillError::sql)?
        .get(0);
    let snapshot = Snapshot::parse(&text)
        .ok_or_else(|| BackfillError::Database(format!("unexpected snapshot `{text}`")))?;
    let query = format!(
        "COPY ({}) TO STDOUT",
        select(&shape, cursor, condition, limit)
    );
    let stream = client.copy_out(&query).await.map_err(BackfillError::sql)?;
    futures_util::pin_mut!(stream);
    let mut raw = BytesMut::new();
    while let Some(piece) = stream.next().await {
        raw.extend_from_slice(&piece.map_err(BackfillError::sql)?);
    }
    let bytes = raw.len() as u64;
    let rows = parse_copy(&raw, shape.rel.columns.len())?;
    Ok(ReadChunk {
        shape,
        rows,
        snapshot,
        bytes,
    })
}

/// Splits `COPY … TO STDOUT` text output into tuples of `columns` columns:
/// rows end with `\n`, columns are separated by tabs, `\N` is NULL, and
/// backslash escapes are undone, giving each type's text output as the
/// replication stream sends it. Each tuple's data is its own row's slice of
/// one shared buffer, as a streamed tuple's is its own message.
pub fn parse_copy(raw: &[u8], columns: usize) -> Result<Vec<Tuple>, BackfillError> {
    let mut data = BytesMut::with_capacity(raw.len());
    // Each row's columns and where its data starts.
    let mut rows: Vec<(Vec<ColumnValue>, usize)> = Vec::new();
    let mut row = Vec::with_capacity(columns);
    let mut row_start = 0usize;
    let mut field_start = 0u32;
    let mut null = false;
    let mut i = 0;
    let bad = |what: &str| BackfillError::Database(format!("unexpected COPY output: {what}"));
    let end_field =
        |data: &BytesMut, row: &mut Vec<ColumnValue>, null: bool, row_start: usize, start: u32| {
            row.push(if null {
                ColumnValue {
                    kind: ColumnKind::Null,
                    start: 0,
                    len: 0,
                }
            } else {
                ColumnValue {
                    kind: ColumnKind::Text,
                    start: start - row_start as u32,
                    len: data.len() as u32 - start,
                }
            });
        };
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'\t' | b'\n' => {
                end_field(&data, &mut row, null, row_start, field_start);
                null = false;
                field_start = data.len() as u32;
                if b == b'\n' {
                    if row.len() != columns {
                        return Err(bad(&format!(
                            "a row of {} columns, {columns} expected",
                            row.len()
                        )));
                    }
                    let columns = std::mem::replace(&mut row, Vec::with_capacity(columns));
                    rows.push((columns, row_start));
                    row_start = data.len();
                }
                i += 1;
            }
            b'\\' => {
                let Some(&next) = raw.get(i + 1) else {
                    return Err(bad("a trailing backslash"));
                };
                i += 2;
                let byte = match next {
                    b'N' if data.len() as u32 == field_start => {
                        null = true;
                        continue;
                    }
                    b'b' => 8,
                    b'f' => 12,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'v' => 11,
                    b'0'..=b'7' => {
                        let mut value = u32::from(next - b'0');
                        for _ in 0..2 {
                            match raw.get(i) {
                                Some(&d @ b'0'..=b'7') => {
                                    value = value * 8 + u32::from(d - b'0');
                                    i += 1;
                                }
                                _ => break,
                            }
                        }
                        value as u8
                    }
                    b'x' => {
                        let mut value = 0u8;
                        let mut digits = 0;
                        while digits < 2 {
                            match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                                Some(d) => {
                                    value = value * 16 + d as u8;
                                    i += 1;
                                    digits += 1;
                                }
                                None => break,
                            }
                        }
                        if digits == 0 {
                            b'x'
                        } else {
                            value
                        }
                    }
                    other => other,
                };
                data.extend_from_slice(&[byte]);
            }
            _ => {
                // Copy the run of plain bytes at once.
                let run = raw[i..]
                    .iter()
                    .position(|&c| c == b'\t' || c == b'\n' || c == b'\\')
                    .unwrap_or(raw.len() - i);
                data.extend_from_slice(&raw[i..i + run]);
                i += run;
            }
        }
    }
    if !row.is_empty() || data.len() as u32 != field_start {
        return Err(bad("a row without its end of line"));
    }
    let data: Bytes = data.freeze();
    let mut tuples = Vec::with_capacity(rows.len());
    let mut rows = rows.into_iter().peekable();
    while let Some((columns, start)) = rows.next() {
        let end = rows.peek().map_or(data.len(), |(_, next)| *next);
        tuples.push(Tuple {
            data: data.slice(start..end),
            columns,
        });
    }
    Ok(tuples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(tuple: &Tuple) -> Vec<Option<String>> {
        (0..tuple.len())
            .map(|i| {
                tuple
                    .value(i)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .collect()
    }

    #[test]
    fn copy_text_is_unescaped_into_stream_tuples() {
        let raw = b"1\thello\\tworld\t\\N\n2\tline\\nbreak \\\\x41\t\\101\\x42\n3\t\t\\\\N\n";
        let rows = parse_copy(raw, 3).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            texts(&rows[0]),
            [Some("1".into()), Some("hello\tworld".into()), None]
        );
        assert_eq!(rows[0].kind(2), ColumnKind::Null);
        assert_eq!(
            texts(&rows[1]),
            [
                Some("2".into()),
                Some("line\nbreak \\x41".into()),
                Some("AB".into())
            ]
        );
        // An empty string is not NULL; an escaped backslash before N is text.
        assert_eq!(
            texts(&rows[2]),
            [Some("3".into()), Some(String::new()), Some("\\N".into())]
        );
        // Each tuple holds its own row's bytes only.
        assert_eq!(&rows[2].data[..], b"3\\N");
        assert!(parse_copy(b"", 2).unwrap().is_empty());
        assert!(parse_copy(b"1\t2\n", 3).is_err());
        assert!(parse_copy(b"1\t2", 2).is_err());
        assert!(parse_copy(b"1\\", 1).is_err());
    }

    #[test]
    fn chunk_queries_page_by_key_with_typed_literals() {
        let column = |name: &str, is_key| ColumnInfo {
            name: name.into(),
            type_oid: 25,
            kind: TypeKind::Text,
            is_key,
        };
        let shape = TableShape {
            rel: Arc::new(RelationInfo {
                id: 1,
                name: TableName {
                    schema: "public".into(),
                    table: "Order Lines".into(),
                },
                qualified: "public.Order Lines".into(),
                columns: vec![
                    column("tenant", true),
                    column("id", true),
                    column("note", false),
                ],
                replica_identity: ReplicaIdentity::Default,
            }),
            key_columns: vec![0, 1],
            key_types: vec!["text".into(), "bigint".into()],
        };
        assert_eq!(
            select(&shape, None, None, 10),
            r#"SELECT "tenant", "id", "note" FROM "public"."Order Lines" ORDER BY "tenant", "id" LIMIT 10"#
        );
        assert_eq!(
            select(
                &shape,
                Some(&["o'k".into(), "7".into()]),
                Some("note <> ''"),
                5
            ),
            r#"SELECT "tenant", "id", "note" FROM "public"."Order Lines" WHERE ("tenant", "id") > ('o''k'::text, '7'::bigint) AND (note <> '') ORDER BY "tenant", "id" LIMIT 5"#
        );
    }
}
