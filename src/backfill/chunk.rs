//! Reading a table in chunks: keyset pagination in key order, each chunk in
//! a repeatable-read snapshot whose visibility the watermark window needs,
//! rows copied out as text (`COPY … TO STDOUT`) into the same tuples the
//! replication stream carries, so every later stage treats them alike.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio_postgres::{Client, Row, SimpleQueryMessage, Statement};

use super::BackfillError;
use crate::model::change::{ColumnInfo, RelationInfo};
use crate::model::ident::{quote_ident, TableName};
use crate::postgres::catalog;
use crate::postgres::pgoutput::{ColumnKind, ColumnValue, Oid, ReplicaIdentity, Tuple};
use crate::postgres::snapshot::Snapshot;
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
    /// SQL types of the columns in `rel.columns`' order, for literals.
    types: Vec<String>,
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
        values_of(row, &self.key_columns)
    }

    /// The positions of the columns `names`.
    pub fn positions(&self, names: &[String]) -> Result<Vec<usize>, BackfillError> {
        names
            .iter()
            .map(|name| {
                self.rel.column_index(name).ok_or_else(|| {
                    BackfillError::Invalid(format!("table {} has no column {name}", self.rel.name))
                })
            })
            .collect()
    }

    /// The value `text` as a literal of column `column`'s type.
    fn literal_of(&self, column: usize, text: &str) -> String {
        format!("{}::{}", literal(text), self.types[column])
    }

    /// A condition matching the rows whose `columns` hold one of `keys`.
    pub fn rows_condition(&self, columns: &[usize], keys: &[Vec<String>]) -> String {
        let row = |key: &Vec<String>| -> String {
            let values: Vec<String> = columns
                .iter()
                .zip(key)
                .map(|(&column, value)| self.literal_of(column, value))
                .collect();
            format!("({})", values.join(", "))
        };
        let names: Vec<String> = columns
            .iter()
            .map(|&i| quote_ident(&self.rel.columns[i].name))
            .collect();
        let rows: Vec<String> = keys.iter().map(row).collect();
        format!("({}) IN ({})", names.join(", "), rows.join(", "))
    }

    /// A row of the table holding only `values` in `columns`, NULL in the
    /// others: a row that is gone, as a delete carries its key.
    pub fn key_row(&self, columns: &[usize], values: &[String]) -> Tuple {
        let mut data = BytesMut::new();
        let mut cells = vec![column(true, 0, 0); self.rel.columns.len()];
        for (&at, value) in columns.iter().zip(values) {
            cells[at] = column(false, data.len(), value.len());
            data.extend_from_slice(value.as_bytes());
        }
        Tuple {
            data: data.freeze(),
            columns: cells,
        }
    }
}

/// The values of `columns` of `row` as text.
pub fn values_of(row: &Tuple, columns: &[usize]) -> Vec<String> {
    columns
        .iter()
        .map(|&i| String::from_utf8_lossy(row.value(i).unwrap_or_default()).into_owned())
        .collect()
}

/// The table's OID and replica identity, its columns (name, type OID and
/// SQL type) in order, and its key columns in key order, in one query.
const DESCRIBE: &str = "\
SELECT c.oid, c.relreplident::text, \
       coalesce(cols.names, '{}'), coalesce(cols.types, '{}'), coalesce(cols.type_names, '{}'), \
       ARRAY(SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = c.oid AND (i.indisreplident OR (i.indisprimary AND NOT EXISTS \
               (SELECT 1 FROM pg_index j WHERE j.indrelid = c.oid AND j.indisreplident))) \
             ORDER BY array_position(i.indkey::int2[], a.attnum)) \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
CROSS JOIN LATERAL ( \
    SELECT array_agg(a.attname::text ORDER BY a.attnum) AS names, \
           array_agg(a.atttypid ORDER BY a.attnum) AS types, \
           array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) AS type_names \
    FROM pg_attribute a \
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '') cols \
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

/// Describes `table` for reading: its columns and its key.
pub async fn describe(client: &Client, table: &TableName) -> Result<TableShape, BackfillError> {
    let row = client
        .query_opt(DESCRIBE, &[&table.schema, &table.table])
        .await
        .map_err(BackfillError::sql)?;
    shape_of(client, table, row).await
}

/// The shape of `table` from its `DESCRIBE` row.
async fn shape_of(
    client: &Client,
    table: &TableName,
    row: Option<Row>,
) -> Result<TableShape, BackfillError> {
    let row =
        row.ok_or_else(|| BackfillError::NotFound(format!("table {table} does not exist")))?;
    let oid: Oid = row.get(0);
    let identity: String = row.get(1);
    let names: Vec<String> = row.get(2);
    let oids: Vec<Oid> = row.get(3);
    let type_names: Vec<String> = row.get(4);
    let key: Vec<String> = row.get(5);
    if key.is_empty() {
        return Err(BackfillError::Invalid(format!(
            "table {table} has neither a primary key nor a replica identity index: \
             a backfill reads rows in key order"
        )));
    }
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
    let mut infos = Vec::with_capacity(names.len());
    let mut key_columns = Vec::new();
    for name in &key {
        let Some(at) = names.iter().position(|n| n == name) else {
            return Err(BackfillError::Invalid(format!(
                "the key column {name} of table {table} is generated: it cannot be read"
            )));
        };
        key_columns.push(at);
    }
    for (i, (name, type_oid)) in names.into_iter().zip(oids).enumerate() {
        infos.push(ColumnInfo {
            name,
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
        types: type_names,
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
            .zip(&shape.key_columns)
            .map(|(value, &column)| shape.literal_of(column, value))
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
    /// The rows as `COPY … TO STDOUT` writes them (split by `parse_copy`).
    pub copy: Bytes,
    /// How many rows `copy` holds.
    pub rows: usize,
    /// The key of the last row, to resume after it; `None` without rows.
    pub last: Option<Vec<String>>,
    pub snapshot: Snapshot,
}

/// The connection a backfill reads its chunks through, with the statements
/// every chunk runs prepared once: a chunk costs the same few round trips
/// whatever its size, and Postgres spends the time between them copying.
pub struct ChunkReader {
    client: Client,
    describe: Statement,
    emit: Statement,
}

impl ChunkReader {
    pub async fn new(client: Client) -> Result<ChunkReader, BackfillError> {
        let (describe, emit) = futures_util::future::try_join(
            client.prepare(DESCRIBE),
            client.prepare("SELECT pg_logical_emit_message(true, $1::text, $2::text)"),
        )
        .await
        .map_err(BackfillError::sql)?;
        Ok(ChunkReader {
            client,
            describe,
            emit,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Describes `table` for reading: its columns and its key.
    pub async fn describe(&self, table: &TableName) -> Result<TableShape, BackfillError> {
        let row = self
            .client
            .query_opt(&self.describe, &[&table.schema, &table.table])
            .await
            .map_err(BackfillError::sql)?;
        shape_of(&self.client, table, row).await
    }

    /// Writes a logical decoding message (transactional, in a transaction of
    /// its own) into the WAL.
    pub async fn emit(&self, prefix: &str, content: &str) -> Result<(), BackfillError> {
        self.client
            .execute(&self.emit, &[&prefix, &content])
            .await
            .map_err(BackfillError::sql)?;
        Ok(())
    }

    /// Reads the chunk of `table` after `cursor` in its own repeatable-read
    /// snapshot. The table is described in the same transaction, under a
    /// lock that holds off schema changes until the chunk is read: the rows
    /// have the table's columns of that moment, even when a column was added
    /// or dropped since the last chunk.
    pub async fn read(
        &self,
        table: &TableName,
        cursor: Option<&[String]>,
        condition: Option<&str>,
        limit: usize,
    ) -> Result<ReadChunk, BackfillError> {
        // The snapshot is taken by the first statement after the lock.
        let begin = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
             LOCK TABLE {} IN ACCESS SHARE MODE; \
             SELECT pg_current_snapshot()::text",
            table.quoted()
        );
        let result = async {
            // One round trip for both: they are sent together.
            let (opened, described) = futures_util::future::join(
                self.client.simple_query(&begin),
                self.client
                    .query_opt(&self.describe, &[&table.schema, &table.table]),
            )
            .await;
            let opened = opened.map_err(BackfillError::sql)?;
            let text = opened
                .iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => row.get(0),
                    _ => None,
                })
                .unwrap_or_default();
            let snapshot = Snapshot::parse(text)
                .ok_or_else(|| BackfillError::Database(format!("unexpected snapshot `{text}`")))?;
            let shape =
                shape_of(&self.client, table, described.map_err(BackfillError::sql)?).await?;
            let query = format!(
                "COPY ({}) TO STDOUT",
                select(&shape, cursor, condition, limit)
            );
            let stream = self
                .client
                .copy_out(&query)
                .await
                .map_err(BackfillError::sql)?;
            futures_util::pin_mut!(stream);
            let mut raw = BytesMut::new();
            while let Some(piece) = stream.next().await {
                raw.extend_from_slice(&piece.map_err(BackfillError::sql)?);
            }
            Ok((shape, raw.freeze(), snapshot))
        }
        .await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        // The transaction ends while the last row is found. A failed end
        // leaves the connection unusable; the caller reconnects.
        let (ended, counted) = futures_util::future::join(self.client.batch_execute(end), async {
            let (shape, copy, snapshot) = result?;
            let (rows, last) = last_row(&copy, shape.rel.columns.len())?;
            let last = last.map(|row| shape.cursor_of(&row));
            Ok::<_, BackfillError>(ReadChunk {
                shape,
                copy,
                rows,
                last,
                snapshot,
            })
        })
        .await;
        ended.map_err(BackfillError::sql)?;
        counted
    }
}

impl ChunkReader {
    /// Whether the table's column types refuse `condition` (a key value
    /// that is not of its column's type: `'abc'` for a bigint): no row can
    /// match it. Planned, not run.
    pub async fn refuses(&self, table: &TableName, condition: &str) -> Result<bool, BackfillError> {
        let explain = format!(
            "EXPLAIN SELECT 1 FROM {} WHERE ({condition})",
            table.quoted()
        );
        match self
            .client
            .batch_execute(&explain)
            .await
            .map_err(BackfillError::sql)
        {
            Ok(()) => Ok(false),
            Err(BackfillError::Invalid(_)) => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// The number of rows of `COPY … TO STDOUT` text output, and its last row.
/// Every row ends with a newline, and a newline in a value is escaped.
fn last_row(raw: &Bytes, columns: usize) -> Result<(usize, Option<Tuple>), BackfillError> {
    let rows = memchr::memchr_iter(b'\n', raw).count();
    if rows == 0 {
        return Ok((0, parse_copy(raw, columns)?.pop()));
    }
    let start = memchr::memrchr(b'\n', &raw[..raw.len() - 1]).map_or(0, |i| i + 1);
    Ok((rows, parse_copy(&raw.slice(start..), columns)?.pop()))
}

/// Splits `COPY … TO STDOUT` text output into tuples of `columns` columns:
/// rows end with `\n`, columns are separated by tabs, `\N` is NULL, and
/// backslash escapes are undone, giving each type's text output as the
/// replication stream sends it. A row without escapes is its own slice of
/// `raw`, as a streamed tuple is of its message; the rows with escapes are
/// written out unescaped, each to its own slice of one more buffer.
pub fn parse_copy(raw: &Bytes, columns: usize) -> Result<Vec<Tuple>, BackfillError> {
    let mut tuples = Vec::new();
    // Rows with escapes: their tuples, and where their data is in `unescaped`.
    let mut unescaped = BytesMut::new();
    let mut escaped_rows: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    let mut row = Vec::with_capacity(columns);
    let mut row_start = 0;
    let mut field_start = 0;
    let mut null = false;
    let mut i = 0;
    while let Some(found) = memchr::memchr3(b'\t', b'\n', b'\\', &raw[i..]) {
        let at = i + found;
        match raw[at] {
            b'\\'
                if at == field_start
                    && raw.get(at + 1) == Some(&b'N')
                    && matches!(raw.get(at + 2), Some(b'\t' | b'\n')) =>
            {
                null = true;
                i = at + 2;
            }
            b'\\' => {
                // The whole row again, undoing its escapes.
                let end = memchr::memchr(b'\n', &raw[at..])
                    .map(|n| at + n)
                    .ok_or_else(|| bad_copy("a row without its end of line"))?;
                let from = unescaped.len();
                let values = unescape_row(&raw[row_start..end], columns, &mut unescaped)?;
                escaped_rows.push((tuples.len(), from..unescaped.len()));
                tuples.push(Tuple {
                    data: Bytes::new(),
                    columns: values,
                });
                row.clear();
                null = false;
                row_start = end + 1;
                field_start = row_start;
                i = row_start;
            }
            delimiter => {
                row.push(column(null, field_start - row_start, at - field_start));
                null = false;
                field_start = at + 1;
                i = at + 1;
                if delimiter == b'\n' {
                    if row.len() != columns {
                        return Err(wrong_width(row.len(), columns));
                    }
                    tuples.push(Tuple {
                        data: raw.slice(row_start..at),
                        columns: std::mem::replace(&mut row, Vec::with_capacity(columns)),
                    });
                    row_start = at + 1;
                }
            }
        }
    }
    if row_start != raw.len() {
        return Err(bad_copy("a row without its end of line"));
    }
    let unescaped = unescaped.freeze();
    for (at, range) in escaped_rows {
        tuples[at].data = unescaped.slice(range);
    }
    Ok(tuples)
}

/// A column's value: NULL, or `len` bytes of text at `start` in its row.
fn column(null: bool, start: usize, len: usize) -> ColumnValue {
    if null {
        ColumnValue {
            kind: ColumnKind::Null,
            start: 0,
            len: 0,
        }
    } else {
        ColumnValue {
            kind: ColumnKind::Text,
            start: start as u32,
            len: len as u32,
        }
    }
}

fn bad_copy(what: &str) -> BackfillError {
    BackfillError::Database(format!("unexpected COPY output: {what}"))
}

fn wrong_width(found: usize, columns: usize) -> BackfillError {
    bad_copy(&format!("a row of {found} columns, {columns} expected"))
}

/// Appends the values of `row` (one row without its newline) to `out` with
/// their escapes undone; the values' positions count from where it started.
fn unescape_row(
    row: &[u8],
    columns: usize,
    out: &mut BytesMut,
) -> Result<Vec<ColumnValue>, BackfillError> {
    let base = out.len();
    let mut values = Vec::with_capacity(columns);
    let mut field_start = base;
    let mut null = false;
    let mut i = 0;
    loop {
        // Copy the run of plain bytes at once.
        let run = memchr::memchr2(b'\t', b'\\', &row[i..]).unwrap_or(row.len() - i);
        out.extend_from_slice(&row[i..i + run]);
        i += run;
        match row.get(i) {
            None | Some(b'\t') => {
                values.push(column(null, field_start - base, out.len() - field_start));
                if i == row.len() {
                    break;
                }
                null = false;
                field_start = out.len();
                i += 1;
            }
            Some(_) => {
                let Some(&next) = row.get(i + 1) else {
                    return Err(bad_copy("a trailing backslash"));
                };
                i += 2;
                let byte = match next {
                    b'N' if out.len() == field_start => {
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
                            match row.get(i) {
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
                            match row.get(i).and_then(|d| (*d as char).to_digit(16)) {
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
                out.extend_from_slice(&[byte]);
            }
        }
    }
    if values.len() != columns {
        return Err(wrong_width(values.len(), columns));
    }
    Ok(values)
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
        let rows = parse_copy(&Bytes::from_static(raw), 3).unwrap();
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
        let parse = |raw: &'static [u8], columns| parse_copy(&Bytes::from_static(raw), columns);
        assert!(parse(b"", 2).unwrap().is_empty());
        assert!(parse(b"1\t2\n", 3).is_err());
        assert!(parse(b"1\t2\t3\n", 2).is_err());
        assert!(parse(b"1\t\\x\t3\n", 2).is_err());
        assert!(parse(b"1\t2", 2).is_err());
        assert!(parse(b"1\\", 1).is_err());
        assert!(parse(b"1\\\n", 1).is_err());
        // A row without escapes is a slice of the output as it came.
        let raw = Bytes::from_static(b"1\tplain\n2\t\\N\n");
        let rows = parse_copy(&raw, 2).unwrap();
        assert_eq!(rows[0].data.as_ptr(), raw.as_ptr());
        assert_eq!(rows[1].kind(1), ColumnKind::Null);
    }

    /// Rows of random values (NULLs, tabs, newlines, backslashes, `\N` as
    /// text) written as COPY writes them come back as they were.
    #[test]
    fn random_rows_come_back_as_written() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = ["a", "b", "\t", "\n", "\\", "\r", "N", "é", " "];
        for _ in 0..300 {
            let columns = rng.random_range(1..5);
            let rows: Vec<Vec<Option<String>>> = (0..rng.random_range(0..20))
                .map(|_| {
                    (0..columns)
                        .map(|_| {
                            if rng.random_bool(0.2) {
                                return None;
                            }
                            let len = rng.random_range(0..6);
                            Some(
                                (0..len)
                                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                                    .collect(),
                            )
                        })
                        .collect()
                })
                .collect();
            let mut raw = Vec::new();
            for row in &rows {
                for (i, value) in row.iter().enumerate() {
                    if i > 0 {
                        raw.push(b'\t');
                    }
                    match value {
                        None => raw.extend_from_slice(b"\\N"),
                        Some(text) => {
                            for b in text.bytes() {
                                match b {
                                    b'\\' => raw.extend_from_slice(b"\\\\"),
                                    b'\t' => raw.extend_from_slice(b"\\t"),
                                    b'\n' => raw.extend_from_slice(b"\\n"),
                                    b'\r' => raw.extend_from_slice(b"\\r"),
                                    b => raw.push(b),
                                }
                            }
                        }
                    }
                }
                raw.push(b'\n');
            }
            let parsed = parse_copy(&Bytes::from(raw), columns).unwrap();
            let texts: Vec<_> = parsed.iter().map(texts).collect();
            assert_eq!(texts, rows);
        }
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
            types: vec!["text".into(), "bigint".into(), "text".into()],
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
        let keys = [vec!["a".into(), "7".into()], vec!["o'k".into(), "8".into()]];
        assert_eq!(
            shape.rows_condition(&[0, 1], &keys),
            r#"("tenant", "id") IN (('a'::text, '7'::bigint), ('o''k'::text, '8'::bigint))"#
        );
        let gone = shape.key_row(&[1, 0], &keys[1]);
        assert_eq!(values_of(&gone, &[1, 0]), keys[1]);
        assert_eq!(gone.kind(2), ColumnKind::Null);
    }
}
