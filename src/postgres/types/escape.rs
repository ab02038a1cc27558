//! JSON string literals: escaping, with an 8-bytes-at-a-time fast path over
//! runs that need none.

/// Append a JSON string literal of `text`, escaped as JSON requires. Invalid
/// UTF-8 is replaced by U+FFFD.
pub fn write_json_string(text: &[u8], out: &mut Vec<u8>) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    write_json_string_content(text, out);
    out.push(b'"');
}

/// Writes `text` escaped as the inside of a JSON string, without the
/// quotes (invalid UTF-8 replaced), for strings made of several pieces.
pub fn write_json_string_content(text: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    if !write_escaped(text, out) {
        out.truncate(start);
        write_escaped(String::from_utf8_lossy(text).as_bytes(), out);
    }
}

/// Bytes that must be escaped inside a JSON string.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Whether any of the 8 bytes in `w` is below 0x20, `"` or `\`.
fn word_needs_escape(w: u64) -> bool {
    let has_zero = |v: u64| v.wrapping_sub(LO) & !v & HI;
    let below_space = w.wrapping_sub(LO * 0x20) & !w & HI;
    below_space | has_zero(w ^ (LO * u64::from(b'"'))) | has_zero(w ^ (LO * u64::from(b'\\'))) != 0
}

/// Writes `s` escaped; false, having written part of it, when `s` is not
/// UTF-8. Its ASCII prefix needs no check: the rest is checked once, at the
/// first byte above 0x7f, so ASCII text is read once.
fn write_escaped(s: &[u8], out: &mut Vec<u8>) -> bool {
    out.reserve(s.len());
    let mut run = 0;
    let mut i = 0;
    // Whether `s[i..]` is known to be UTF-8.
    let mut checked = false;
    while i < s.len() {
        if let Some(word) = s.get(i..i + 8) {
            let mut w = [0; 8];
            w.copy_from_slice(word);
            let w = u64::from_le_bytes(w);
            if !word_needs_escape(w) && (checked || w & HI == 0) {
                i += 8;
                continue;
            }
        }
        let b = s[i];
        if b > 0x7f && !checked {
            if std::str::from_utf8(&s[i..]).is_err() {
                return false;
            }
            checked = true;
        }
        if NEEDS_ESCAPE[usize::from(b)] {
            out.extend_from_slice(&s[run..i]);
            write_escape(b, out);
            run = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&s[run..]);
    true
}

fn write_escape(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::types::tests::{parsed, to_json};
    use crate::postgres::types::TypeKind;
    use serde_json::json;

    #[test]
    fn strings_are_escaped() {
        let t = TypeKind::Text;
        assert_eq!(to_json(&t, "plain"), r#""plain""#);
        let tricky =
            "quote\" back\\ nl\n tab\t cr\r bs\u{8} ff\u{c} nul\u{0} esc\u{1b} é 😀 \u{2028}";
        assert_eq!(parsed(&t, tricky), json!(tricky));
        assert!(to_json(&t, "a\u{1f}b").contains("\\u001f"));
        // Long input crosses the 8-byte fast path boundaries.
        let long = "abcdefgh\"ijklmnop\\qrstuvwx\nyz".repeat(7);
        assert_eq!(parsed(&t, &long), json!(long));
        let mut out = Vec::new();
        write_json_string(b"ok\xff\xfe end", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"ok\u{fffd}\u{fffd} end\""
        );
        assert_eq!(to_json(&t, ""), r#""""#);
        // Invalid bytes after a long ASCII run and after valid UTF-8.
        let mut out = Vec::new();
        write_json_string(b"abcdefghijklmnop\"q\xc3\xa9 \xc3", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"abcdefghijklmnop\\\"q\u{e9} \u{fffd}\""
        );
        for text in [
            "550e8400-e29b-41d4-a716-446655440000",
            "$1,000.00",
            "10.0.0.1/8",
            "happy",
        ] {
            assert_eq!(parsed(&t, text), json!(text));
        }
    }

    #[test]
    fn any_bytes_are_written_as_serde_json_writes_their_text() {
        // Random byte strings, mostly ASCII with escapes, multibyte
        // characters and stray bytes mixed in.
        let pieces: [&[u8]; 8] = [
            b"plain text",
            b"\"",
            b"\\",
            b"\n\x01\x1f",
            "é😀\u{2028}".as_bytes(),
            b"\xff",
            b"\xe2\x82",
            b"12345678",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut text = Vec::new();
            for _ in 0..(seed % 9) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.extend_from_slice(pieces[(seed % 8) as usize]);
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut out = Vec::new();
            write_json_string(&text, &mut out);
            let expected = serde_json::to_string(&String::from_utf8_lossy(&text)).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{text:?}");
        }
    }
}
