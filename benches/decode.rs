//! Decoder throughput: pgoutput Insert messages for a realistic 6-column row,
//! decoded alone and decoded then rendered to a JSON document.

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sluice::postgres::pgoutput::{decode, Message};
use sluice::postgres::types::{write_json, TypeKind};

/// Column values of one row (~190 bytes of values, 222-byte message).
const ROW: [&str; 6] = [
    "1234567",
    "Stainless steel kettle, 1.7 l, brushed",
    "Fast-boil electric kettle with a concealed element, limescale filter, 360 degree base and auto shut-off.",
    "49.95",
    "t",
    "2024-05-01 10:20:30.123456+00",
];

/// int8, text, text, numeric, bool, timestamptz.
const TYPE_OIDS: [u32; 6] = [20, 25, 25, 1700, 16, 1184];
const NAMES: [&str; 6] = [
    "id",
    "name",
    "description",
    "price",
    "in_stock",
    "updated_at",
];

fn insert_message() -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(b'I');
    buf.put_u32(16_384);
    buf.put_u8(b'N');
    buf.put_u16(ROW.len() as u16);
    for value in ROW {
        buf.put_u8(b't');
        buf.put_i32(value.len() as i32);
        buf.put_slice(value.as_bytes());
    }
    // Like a payload sliced out of a received CopyData frame.
    let frame = buf.freeze();
    frame.slice(..)
}

fn bench_decode(c: &mut Criterion) {
    let payload = insert_message();
    assert!(matches!(decode(&payload), Ok(Message::Insert { .. })));
    let kinds: Vec<TypeKind> = TYPE_OIDS
        .iter()
        .map(|&oid| TypeKind::builtin_or_text(oid))
        .collect();
    let keys: Vec<Vec<u8>> = NAMES
        .iter()
        .map(|n| format!("\"{n}\":").into_bytes())
        .collect();

    let mut group = c.benchmark_group("pgoutput");
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("decode_insert_6col_{}B", payload.len()), |b| {
        b.iter(|| decode(black_box(&payload)).unwrap())
    });

    let mut out = Vec::with_capacity(1024);
    group.bench_function(
        format!("decode_insert_6col_{}B_to_json", payload.len()),
        |b| {
            b.iter(|| {
                let Ok(Message::Insert { new, .. }) = decode(black_box(&payload)) else {
                    unreachable!()
                };
                out.clear();
                out.push(b'{');
                for (i, kind) in kinds.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(&keys[i]);
                    match new.value(i) {
                        Some(text) => write_json(kind, text, &mut out),
                        None => out.extend_from_slice(b"null"),
                    }
                }
                out.push(b'}');
                black_box(&out);
            })
        },
    );
    group.finish();

    let mut out = Vec::new();
    let Ok(Message::Insert { new, .. }) = decode(&payload) else {
        unreachable!()
    };
    for (i, kind) in kinds.iter().enumerate() {
        write_json(kind, new.value(i).unwrap(), &mut out);
        out.push(b' ');
    }
    println!("row as JSON values: {}", String::from_utf8_lossy(&out));
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
