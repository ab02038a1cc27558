//! Functions, per call on one core: a Lua transform of a 10-column row
//! (the message built from the row, the function run, the document written
//! as JSON), and the declarative path (`where` predicates and the table's
//! document shape) without an interpreter.
//!
//! cargo bench --bench functions

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sluice::functions::message::{ChangeInput, MessageBuilder};
use sluice::functions::{FunctionKind, Limits, Runtime};
use sluice::lsn::Lsn;
use sluice::model::change::{Change, ColumnInfo, Op, RelationInfo};
use sluice::model::ident::TableName;
use sluice::model::row::TypeKind;
use sluice::model::row::{ColumnKind, ColumnValue, ReplicaIdentity, Tuple};
use sluice::pipeline::document::DocShape;
use sluice::pipeline::document::TransformConfig;
use sluice::pipeline::predicate::{Predicate, Verdict};

/// name, type OID, value.
const COLUMNS: [(&str, u32, &str); 10] = [
    ("id", 20, "1234567"),
    ("name", 25, "Stainless steel kettle, 1.7 l, brushed"),
    (
        "description",
        25,
        "Fast-boil electric kettle with a concealed element and auto shut-off.",
    ),
    ("price", 1700, "49.95"),
    ("active", 16, "t"),
    ("stock", 23, "120"),
    ("category", 25, "kitchen"),
    ("brand", 25, "Acme"),
    ("rating", 701, "4.5"),
    ("updated_at", 1184, "2024-05-01 10:20:30.123456+00"),
];

const TRANSFORM: &str = r#"
function transform(action, record, changes, metadata)
  return {
    id = record.id,
    title = record.name,
    description = record.description,
    price = record.price,
    active = record.active,
    in_stock = record.stock > 0,
    category = record.category,
    brand = record.brand,
    rating = record.rating,
    updated_at = record.updated_at,
  }
end
"#;

/// A table `public.<table>` of (name, type OID, value) columns, and that row.
fn table_row(id: u32, table: &str, columns: &[(&str, u32, &str)]) -> (RelationInfo, Tuple) {
    let rel = RelationInfo {
        id,
        name: TableName {
            schema: "public".into(),
            table: table.into(),
        },
        qualified: Arc::from(format!("public.{table}")),
        columns: columns
            .iter()
            .map(|&(name, oid, _)| ColumnInfo {
                name: name.into(),
                type_oid: oid,
                kind: TypeKind::builtin_or_text(oid),
                is_key: name == "id",
            })
            .collect(),
        replica_identity: ReplicaIdentity::Default,
    };
    let mut data = BytesMut::new();
    let mut values = Vec::new();
    for (_, _, value) in columns {
        values.push(ColumnValue {
            kind: ColumnKind::Text,
            start: data.len() as u32,
            len: value.len() as u32,
        });
        data.put_slice(value.as_bytes());
    }
    let tuple = Tuple {
        data: data.freeze(),
        columns: values,
    };
    (rel, tuple)
}

fn change() -> Change {
    let (rel, row) = table_row(16_384, "products", &COLUMNS);
    Change {
        op: Op::Insert,
        rel: Arc::new(rel),
        new: Some(row),
        old: None,
        commit_lsn: Lsn(0x16B_3748),
        commit_time: 780_000_000_000_000,
        seq: 3,
        xid: 0,
        fill_unchanged: false,
        retry: false,
        annotations: None,
    }
}

/// A table of (id, payload jsonb) and a row of it.
fn path_change() -> (RelationInfo, Tuple) {
    table_row(
        16_385,
        "events",
        &[("id", 20, "42"), ("payload", 3802, PAYLOAD)],
    )
}

/// A jsonb value as Postgres writes it.
const PAYLOAD: &str = r#"{"source": "shop", "product": {"id": 42, "name": "Stainless steel kettle", "tags": ["kitchen", "steel"], "price": 49.95, "active": true}, "received_at": "2024-05-01T10:20:30Z"}"#;

fn bench_functions(c: &mut Criterion) {
    let change = change();
    let mut runtime = Runtime::new(Limits {
        memory_bytes: 64 * 1024 * 1024,
    })
    .unwrap();
    runtime
        .load(
            "to_doc",
            FunctionKind::Transform,
            TRANSFORM,
            "to_doc.lua",
            Duration::from_millis(100),
        )
        .unwrap();
    let mut builder = MessageBuilder::new("shop");
    let input = ChangeInput {
        builder: &mut builder,
        lua: runtime.lua(),
        change: &change,
        sink: Some("search"),
    };
    let doc = runtime.transform("to_doc", input).unwrap();
    println!("document: {}", String::from_utf8_lossy(&doc));

    let mut group = c.benchmark_group("functions");
    group.throughput(Throughput::Elements(1));
    group.bench_function("lua_transform_10_fields", |b| {
        b.iter(|| {
            let input = ChangeInput {
                builder: &mut builder,
                lua: runtime.lua(),
                change: black_box(&change),
                sink: Some("search"),
            };
            black_box(runtime.transform("to_doc", input).unwrap())
        })
    });
    // The declarative path: three column predicates and the document in the
    // table's shape (one column dropped, two renamed, a constant and a
    // templated field added).
    let predicates: Vec<(usize, Predicate)> = [
        "active = true",
        "price > 10",
        "category in ('kitchen', 'garden')",
    ]
    .iter()
    .map(|text| {
        let p = Predicate::parse(text).unwrap();
        (change.rel.column_index(&p.column).unwrap(), p)
    })
    .collect();
    let transform = TransformConfig {
        drop: vec!["brand".into()],
        rename: [
            ("name".to_owned(), "title".to_owned()),
            ("stock".to_owned(), "in_stock".to_owned()),
        ]
        .into_iter()
        .collect(),
        fields: [
            ("kind".to_owned(), toml::Value::String("product".into())),
            (
                "label".to_owned(),
                toml::Value::String("{name} by {brand} ({category})".into()),
            ),
        ]
        .into_iter()
        .collect(),
        ..TransformConfig::default()
    };
    let shape = DocShape::new(&change.rel, &transform);
    let mut doc = Vec::new();
    shape.encode(change.new.as_ref().unwrap(), &mut doc);
    println!("declarative document: {}", String::from_utf8_lossy(&doc));
    let row = change.new.as_ref().unwrap();
    doc.reserve(512);
    group.bench_function("declarative_where_and_shape", |b| {
        b.iter(|| {
            let row = black_box(row);
            let keep = predicates
                .iter()
                .all(|(i, p)| p.check(row, *i) != Verdict::Fails);
            doc.clear();
            if keep {
                shape.encode(row, &mut doc);
            }
            black_box(doc.len())
        })
    });
    // A path transform: the document is an object inside a jsonb column.
    let (events, event) = path_change();
    let transform = TransformConfig {
        path: Some("record.payload.product".into()),
        ..TransformConfig::default()
    };
    let shape = DocShape::new(&events, &transform);
    doc.clear();
    shape.encode(&event, &mut doc);
    println!("path document: {}", String::from_utf8_lossy(&doc));
    group.bench_function("declarative_path", |b| {
        b.iter(|| {
            doc.clear();
            shape.encode(black_box(&event), &mut doc);
            black_box(doc.len())
        })
    });
    let transform = TransformConfig {
        path: Some("record.payload".into()),
        ..TransformConfig::default()
    };
    let shape = DocShape::new(&events, &transform);
    group.bench_function("declarative_path_whole_column", |b| {
        b.iter(|| {
            doc.clear();
            shape.encode(black_box(&event), &mut doc);
            black_box(doc.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_functions);
criterion_main!(benches);
