//! Test helpers shared by the mapping's unit tests, and the property test of
//! [`write_json`] as a whole.

use super::*;
use serde_json::Value;

pub(super) fn to_json(kind: &TypeKind, text: &str) -> String {
    let mut out = Vec::new();
    write_json(kind, text.as_bytes(), &mut out);
    String::from_utf8(out).expect("output is UTF-8")
}

/// Output, checked to be exactly one valid JSON value without newlines.
pub(super) fn parsed(kind: &TypeKind, text: &str) -> Value {
    let out = to_json(kind, text);
    assert!(!out.contains('\n'), "raw newline in {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{text:?} -> {out}: {e}"))
}

pub(super) fn int_array() -> TypeKind {
    TypeKind::builtin(1007).unwrap()
}

pub(super) fn text_array() -> TypeKind {
    TypeKind::builtin(1009).unwrap()
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[test]
fn always_one_valid_json_value() {
    let seed = 0xC0FF_EE00_1234_5678;
    println!("seed {seed:#x}");
    let mut rng = XorShift(seed);
    let kinds = [
        TypeKind::Bool,
        TypeKind::Integer,
        TypeKind::Float,
        TypeKind::Numeric,
        TypeKind::Text,
        TypeKind::Json,
        TypeKind::TimeTz,
        TypeKind::Timestamp,
        TypeKind::TimestampTz,
        TypeKind::Bytea,
        int_array(),
        text_array(),
        TypeKind::builtin(3807).unwrap(),
        TypeKind::builtin(1001).unwrap(),
        TypeKind::array_of(text_array(), b','),
    ];
    let alphabet = b"{}[]\",\\:;01-+.eE tfnulNULLx\n\xff\x00abc";
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let len = (rng.next() % 24) as usize;
        let text: Vec<u8> = (0..len)
            .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
            .collect();
        let kind = &kinds[(rng.next() % kinds.len() as u64) as usize];
        out.clear();
        write_json(kind, &text, &mut out);
        if let Err(e) = serde_json::from_slice::<Value>(&out) {
            panic!(
                "{kind:?} {text:?} -> {:?}: {e}",
                String::from_utf8_lossy(&out)
            );
        }
        assert!(!out.contains(&b'\n'));
    }
}
