//! Building Elasticsearch bulk bodies: bytes of NDJSON per second on one core.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::lsn::Lsn;
use sluice::model::write::{WriteAction, WriteOp};
use sluice::sink::elasticsearch::request::encode;

/// 1000 writes like a bulk request's: mostly upserts of ~220-byte documents, some deletes.
fn ops() -> Vec<WriteOp> {
    let index: Arc<str> = Arc::from("products");
    let table: Arc<str> = Arc::from("public.products");
    (0..1000u64)
        .map(|i| {
            let action = if i % 10 == 9 {
                WriteAction::Delete
            } else {
                let doc = format!(
                    r#"{{"id":{i},"name":"product number {i} with a fairly long name","description":"A sturdy product, made to last, number {i} of the catalogue","price":{}.99,"active":true,"updated_at":"2026-11-24T23:36:07.67276+00:00"}}"#,
                    i % 500
                );
                WriteAction::Upsert {
                    doc: doc.into_bytes(),
                    partial: false,
                    fresh: false,
                }
            };
            WriteOp {
                index: index.clone(),
                table: table.clone(),
                id: i.to_string(),
                lsn: Lsn(0x3_0000_0000 + i * 200),
                action,
                routing: None,
            }
        })
        .collect()
}

fn bulk(c: &mut Criterion) {
    let ops = ops();
    let mut body = Vec::with_capacity(1 << 20);
    for op in &ops {
        encode(op, &mut body);
    }
    let bytes = body.len() as u64;
    let mut group = c.benchmark_group("elasticsearch");
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("bulk_body_1000_ops", |b| {
        b.iter(|| {
            body.clear();
            for op in &ops {
                encode(op, &mut body);
            }
            std::hint::black_box(body.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bulk);
criterion_main!(benches);
