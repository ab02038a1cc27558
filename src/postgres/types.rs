//! Postgres column values (text output format) to JSON.
//!
//! The replication session runs with `DateStyle=ISO, IntervalStyle=iso_8601,
//! TimeZone=UTC, extra_float_digits=3, bytea_output=hex`; the mapping assumes
//! text in those formats. [`write_json`] never fails: a value it cannot map
//! faithfully is written as a JSON string of its original text, so the output
//! is always exactly one valid JSON value, and it never contains a raw newline
//! (safe inside NDJSON bulk bodies).

use base64::Engine as _;

use crate::postgres::pgoutput::Oid;

/// How a column's text value becomes JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    /// `t`/`f` → `true`/`false`.
    Bool,
    /// int2, int4, int8, oid, xid, cid, xid8 → number as is.
    Integer,
    /// float4, float8 → number; `NaN`, `Infinity`, `-Infinity` → strings.
    Float,
    /// numeric → number with every digit kept; `NaN`, `±Infinity` → strings.
    Numeric,
    /// Anything shown as its text: text, varchar, uuid, enums, inet, money …
    Text,
    /// json, jsonb → embedded JSON (whitespace removed).
    Json,
    Date,
    Time,
    /// `03:04:05+02` → `"03:04:05+02:00"`.
    TimeTz,
    /// `2024-01-02 03:04:05` → `"2024-01-02T03:04:05"`.
    Timestamp,
    /// `2024-01-02 03:04:05+00` → `"2024-01-02T03:04:05+00:00"` (RFC 3339).
    TimestampTz,
    /// ISO 8601 duration text, e.g. `"P1Y2M3DT4H5M6S"`.
    Interval,
    /// `\x0102ff` → base64 `"AQL/"`.
    Bytea,
    /// An array literal → JSON array (nested for several dimensions).
    Array {
        element: Box<TypeKind>,
        delimiter: u8,
    },
}

impl TypeKind {
    /// The mapping of a built-in type OID, including the built-in array
    /// types; `None` when unknown (enums, domains, extension types: look them
    /// up in the catalog, or use [`TypeKind::builtin_or_text`]).
    pub fn builtin(oid: Oid) -> Option<TypeKind> {
        if let Some(kind) = builtin_scalar(oid) {
            return Some(kind);
        }
        let element = builtin_array_element(oid)?;
        Some(TypeKind::array_of(
            builtin_scalar(element)?,
            if element == BOX_OID { b';' } else { b',' },
        ))
    }

    /// [`TypeKind::builtin`], or `Text` for any other type.
    pub fn builtin_or_text(oid: Oid) -> TypeKind {
        Self::builtin(oid).unwrap_or(TypeKind::Text)
    }

    /// An array of `element` values separated by `delimiter` (`,` for every
    /// type but `box`, whose arrays use `;`).
    pub fn array_of(element: TypeKind, delimiter: u8) -> TypeKind {
        TypeKind::Array {
            element: Box::new(element),
            delimiter,
        }
    }
}

const BOX_OID: Oid = 603;

fn builtin_scalar(oid: Oid) -> Option<TypeKind> {
    Some(match oid {
        16 => TypeKind::Bool,
        20 | 21 | 23 | 26 | 28 | 29 | 5069 => TypeKind::Integer,
        700 | 701 => TypeKind::Float,
        1700 => TypeKind::Numeric,
        114 | 3802 => TypeKind::Json,
        1082 => TypeKind::Date,
        1083 => TypeKind::Time,
        1266 => TypeKind::TimeTz,
        1114 => TypeKind::Timestamp,
        1184 => TypeKind::TimestampTz,
        1186 => TypeKind::Interval,
        17 => TypeKind::Bytea,
        // char, name, text, bpchar, varchar, uuid, money, network addresses,
        // xml, bit strings, pg_lsn, text search, jsonpath, geometry, vectors,
        // tid, reg* aliases, refcursor, snapshots, ranges and multiranges,
        // aclitem, unknown, pg_node_tree.
        18
        | 19
        | 25
        | 1042
        | 1043
        | 2950
        | 790
        | 869
        | 650
        | 829
        | 774
        | 142
        | 1560
        | 1562
        | 3220
        | 3614
        | 3642
        | 3615
        | 4072
        | 600
        | 601
        | 602
        | 603
        | 604
        | 628
        | 718
        | 22
        | 30
        | 27
        | 24
        | 2202..=2206
        | 4191
        | 4096
        | 4089
        | 3734
        | 3769
        | 1790
        | 2970
        | 5038
        | 3904
        | 3906
        | 3908
        | 3910
        | 3912
        | 3926
        | 4451
        | 4532..=4536
        | 1033
        | 705
        | 194 => TypeKind::Text,
        _ => return None,
    })
}

/// Element type of a built-in array type.
fn builtin_array_element(oid: Oid) -> Option<Oid> {
    Some(match oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1005 => 21,
        1006 => 22,
        1007 => 23,
        1008 => 24,
        1009 => 25,
        1010 => 27,
        1011 => 28,
        1012 => 29,
        1013 => 30,
        1014 => 1042,
        1015 => 1043,
        1016 => 20,
        1017 => 600,
        1018 => 601,
        1019 => 602,
        1020 => 603,
        1021 => 700,
        1022 => 701,
        1027 => 604,
        1028 => 26,
        1034 => 1033,
        1040 => 829,
        1041 => 869,
        651 => 650,
        775 => 774,
        1115 => 1114,
        1182 => 1082,
        1183 => 1083,
        1185 => 1184,
        1187 => 1186,
        1231 => 1700,
        1270 => 1266,
        1561 => 1560,
        1563 => 1562,
        2201 => 1790,
        2207 => 2202,
        2208 => 2203,
        2209 => 2204,
        2210 => 2205,
        2211 => 2206,
        4192 => 4191,
        4097 => 4096,
        4090 => 4089,
        2951 => 2950,
        3221 => 3220,
        3643 => 3614,
        3644 => 3642,
        3645 => 3615,
        3735 => 3734,
        3770 => 3769,
        3807 => 3802,
        199 => 114,
        143 => 142,
        4073 => 4072,
        2949 => 2970,
        5039 => 5038,
        3905 => 3904,
        3907 => 3906,
        3909 => 3908,
        3911 => 3910,
        3913 => 3912,
        3927 => 3926,
        6150 => 4451,
        6151 => 4532,
        6152 => 4533,
        6153 => 4534,
        6155 => 4535,
        6157 => 4536,
        719 => 718,
        791 => 790,
        629 => 628,
        271 => 5069,
        _ => return None,
    })
}

/// Append `text` (a column value in Postgres text output format) as one JSON
/// value to `out`.
pub fn write_json(kind: &TypeKind, text: &[u8], out: &mut Vec<u8>) {
    match kind {
        TypeKind::Bool => match text {
            b"t" => out.extend_from_slice(b"true"),
            b"f" => out.extend_from_slice(b"false"),
            _ => write_json_string(text, out),
        },
        TypeKind::Integer | TypeKind::Numeric => write_number(text, out),
        TypeKind::Float => write_float(text, out),
        TypeKind::Text | TypeKind::Date | TypeKind::Time | TypeKind::Interval => {
            write_json_string(text, out)
        }
        TypeKind::Json => write_embedded_json(text, out),
        TypeKind::TimeTz => write_timetz(text, out),
        TypeKind::Timestamp => write_timestamp(text, false, out),
        TypeKind::TimestampTz => write_timestamp(text, true, out),
        TypeKind::Bytea => write_bytea(text, out),
        TypeKind::Array { element, delimiter } => write_array(element, *delimiter, text, out),
    }
}

/// Append a JSON string literal of `text`, escaped as JSON requires. Invalid
/// UTF-8 is replaced by U+FFFD.
pub fn write_json_string(text: &[u8], out: &mut Vec<u8>) {
    match std::str::from_utf8(text) {
        Ok(_) => write_escaped(text, out),
        Err(_) => write_escaped(String::from_utf8_lossy(text).as_bytes(), out),
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

/// `s` is valid UTF-8.
fn write_escaped(s: &[u8], out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut run = 0;
    let mut i = 0;
    while i < s.len() {
        if let Some(word) = s.get(i..i + 8) {
            let mut w = [0; 8];
            w.copy_from_slice(word);
            if !word_needs_escape(u64::from_le_bytes(w)) {
                i += 8;
                continue;
            }
        }
        let b = s[i];
        if NEEDS_ESCAPE[usize::from(b)] {
            out.extend_from_slice(&s[run..i]);
            write_escape(b, out);
            run = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&s[run..]);
    out.push(b'"');
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

/// End of the JSON number starting at `s[i]`, if there is one.
fn json_number_end(s: &[u8], mut i: usize) -> Option<usize> {
    let digits = |s: &[u8], mut i: usize| -> Option<usize> {
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    };
    if s.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match s.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(s, i)?,
        _ => return None,
    };
    if s.get(i) == Some(&b'.') {
        i = digits(s, i + 1)?;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(s, i)?;
    }
    Some(i)
}

fn is_json_number(s: &[u8]) -> bool {
    json_number_end(s, 0) == Some(s.len())
}

/// Integers and numeric: the digits verbatim (lossless), anything else
/// (`NaN`, `Infinity`, `-Infinity`) as a string.
fn write_number(text: &[u8], out: &mut Vec<u8>) {
    if is_json_number(text) {
        out.extend_from_slice(text);
    } else {
        write_json_string(text, out);
    }
}

fn write_float(text: &[u8], out: &mut Vec<u8>) {
    if text == b"-0" {
        // Keep the sign: many JSON readers take `-0` for the integer 0.
        out.extend_from_slice(b"-0.0");
    } else if is_json_number(text) {
        out.extend_from_slice(text);
    } else {
        // Not Postgres' own output (which is always valid JSON when finite):
        // re-format a finite value, keep anything else as text.
        match std::str::from_utf8(text)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
        {
            Some(v) if v.is_finite() => out.extend_from_slice(format!("{v:?}").as_bytes()),
            _ => write_json_string(text, out),
        }
    }
}

fn all_digits(s: &[u8]) -> bool {
    s.iter().all(u8::is_ascii_digit)
}

/// `HH:MM:SS` with an optional fraction; returns its length.
fn time_len(s: &[u8]) -> Option<usize> {
    let hms = s.get(..8)?;
    let ok = all_digits(&hms[0..2])
        && hms[2] == b':'
        && all_digits(&hms[3..5])
        && hms[5] == b':'
        && all_digits(&hms[6..8]);
    if !ok {
        return None;
    }
    let mut i = 8;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    Some(i)
}

/// A UTC offset as Postgres prints it (`+HH`, `+HH:MM`, `+HH:MM:SS`),
/// appended as `+HH:MM` or `+HH:MM:SS`.
fn write_offset(off: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let ok = match off.len() {
        3 | 6 | 9 => {
            matches!(off[0], b'+' | b'-')
                && all_digits(&off[1..3])
                && off[3..]
                    .chunks(3)
                    .all(|c| c[0] == b':' && all_digits(&c[1..]))
        }
        _ => false,
    };
    if !ok {
        return None;
    }
    out.extend_from_slice(off);
    if off.len() == 3 {
        out.extend_from_slice(b":00");
    }
    Some(())
}

fn write_timetz(text: &[u8], out: &mut Vec<u8>) {
    let mark = out.len();
    let written = time_len(text).and_then(|n| {
        out.push(b'"');
        out.extend_from_slice(&text[..n]);
        write_offset(&text[n..], out)?;
        out.push(b'"');
        Some(())
    });
    if written.is_none() {
        out.truncate(mark);
        write_json_string(text, out);
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][offset]` → `"YYYY-MM-DDTHH:MM:SS[.ffffff][±HH:MM]"`.
/// Infinities, BC dates and years past 9999 are not RFC 3339: kept as text.
fn write_timestamp(text: &[u8], with_zone: bool, out: &mut Vec<u8>) {
    let mark = out.len();
    let written = (|| {
        let date = text.get(..10)?;
        let date_ok = all_digits(&date[0..4])
            && date[4] == b'-'
            && all_digits(&date[5..7])
            && date[7] == b'-'
            && all_digits(&date[8..10]);
        if !date_ok || text.get(10) != Some(&b' ') {
            return None;
        }
        let rest = &text[11..];
        let n = time_len(rest)?;
        out.push(b'"');
        out.extend_from_slice(date);
        out.push(b'T');
        out.extend_from_slice(&rest[..n]);
        match (with_zone, &rest[n..]) {
            (true, offset) => write_offset(offset, out)?,
            (false, []) => {}
            (false, _) => return None,
        }
        out.push(b'"');
        Some(())
    })();
    if written.is_none() {
        out.truncate(mark);
        write_json_string(text, out);
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Hex-format bytea to a base64 string (standard alphabet, padded).
fn write_bytea(text: &[u8], out: &mut Vec<u8>) {
    let mark = out.len();
    let written = (|| {
        let hex = text.strip_prefix(b"\\x")?;
        if hex.len() % 2 != 0 {
            return None;
        }
        out.push(b'"');
        // Decode and encode in chunks of a multiple of 3 bytes so that only
        // the last chunk is padded.
        let mut raw = [0u8; 768];
        for chunk in hex.chunks(raw.len() * 2) {
            let n = chunk.len() / 2;
            for (dst, pair) in raw.iter_mut().zip(chunk.chunks_exact(2)) {
                *dst = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
            }
            let start = out.len();
            out.resize(start + base64::encoded_len(n, true)?, 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(&raw[..n], &mut out[start..])
                .ok()?;
            out.truncate(start + written);
        }
        out.push(b'"');
        Some(())
    })();
    if written.is_none() {
        out.truncate(mark);
        write_json_string(text, out);
    }
}

/// Deepest JSON nesting embedded as JSON; deeper documents become strings.
const MAX_JSON_DEPTH: usize = 1024;

/// json/jsonb text, checked and copied without insignificant whitespace.
fn write_embedded_json(text: &[u8], out: &mut Vec<u8>) {
    let mark = out.len();
    if std::str::from_utf8(text).is_err() || copy_json(text, out).is_none() {
        out.truncate(mark);
        write_json_string(text, out);
    }
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while matches!(s.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Validates one JSON document (RFC 8259; `s` is valid UTF-8) and appends it
/// without whitespace between tokens.
fn copy_json(s: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut open: Vec<u8> = Vec::new();
    let mut i = 0;
    loop {
        // A value starts at `i`.
        i = skip_ws(s, i);
        match *s.get(i)? {
            c @ (b'{' | b'[') => {
                let close = if c == b'{' { b'}' } else { b']' };
                out.push(c);
                i = skip_ws(s, i + 1);
                if s.get(i) == Some(&close) {
                    out.push(close);
                    i += 1;
                } else {
                    if open.len() >= MAX_JSON_DEPTH {
                        return None;
                    }
                    open.push(c);
                    if c == b'{' {
                        i = copy_key(s, i, out)?;
                    }
                    continue;
                }
            }
            b'"' => i = copy_json_string(s, i, out)?,
            b't' => i = copy_literal(s, i, b"true", out)?,
            b'f' => i = copy_literal(s, i, b"false", out)?,
            b'n' => i = copy_literal(s, i, b"null", out)?,
            _ => {
                let end = json_number_end(s, i)?;
                out.extend_from_slice(&s[i..end]);
                i = end;
            }
        }
        // After a value: close containers until a comma or the end.
        loop {
            i = skip_ws(s, i);
            let Some(&container) = open.last() else {
                return (i == s.len()).then_some(());
            };
            match (container, s.get(i)) {
                (_, Some(b',')) => {
                    out.push(b',');
                    i += 1;
                    if container == b'{' {
                        i = copy_key(s, skip_ws(s, i), out)?;
                    }
                    break;
                }
                (b'{', Some(b'}')) | (b'[', Some(b']')) => {
                    out.push(s[i]);
                    open.pop();
                    i += 1;
                }
                _ => return None,
            }
        }
    }
}

/// `"key"` then `:` at `s[i]`; returns the index after the colon.
fn copy_key(s: &[u8], i: usize, out: &mut Vec<u8>) -> Option<usize> {
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let i = skip_ws(s, copy_json_string(s, i, out)?);
    if s.get(i) != Some(&b':') {
        return None;
    }
    out.push(b':');
    Some(i + 1)
}

fn copy_literal(s: &[u8], i: usize, word: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let end = i + word.len();
    if s.get(i..end)? != word {
        return None;
    }
    out.extend_from_slice(word);
    Some(end)
}

fn hex4(s: &[u8], i: usize) -> Option<u16> {
    let h = s.get(i..i + 4)?;
    h.iter()
        .try_fold(0u16, |acc, &b| Some((acc << 4) | u16::from(hex_value(b)?)))
}

/// The JSON string starting at `s[i]` (`"`), copied verbatim; returns the
/// index after the closing quote. Unpaired surrogate escapes are rejected
/// (many JSON readers refuse them).
fn copy_json_string(s: &[u8], i: usize, out: &mut Vec<u8>) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match *s.get(j)? {
            b'"' => {
                out.extend_from_slice(&s[i..=j]);
                return Some(j + 1);
            }
            b'\\' => match *s.get(j + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                b'u' => {
                    let unit = hex4(s, j + 2)?;
                    j += 6;
                    if (0xD800..0xDC00).contains(&unit) {
                        if s.get(j..j + 2)? != b"\\u" {
                            return None;
                        }
                        if !(0xDC00..0xE000).contains(&hex4(s, j + 2)?) {
                            return None;
                        }
                        j += 6;
                    } else if (0xDC00..0xE000).contains(&unit) {
                        return None;
                    }
                }
                _ => return None,
            },
            0..=0x1f => return None,
            _ => j += 1,
        }
    }
}

/// Postgres allows at most 6 array dimensions.
const MAX_ARRAY_DEPTH: usize = 6;

fn is_array_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn write_array(element: &TypeKind, delimiter: u8, text: &[u8], out: &mut Vec<u8>) {
    let mark = out.len();
    let written = strip_dimensions(text).and_then(|body| {
        let mut p = ArrayParser {
            s: body,
            i: 0,
            element,
            delimiter,
            scratch: Vec::new(),
        };
        p.skip_space();
        p.array(out, 1)?;
        p.skip_space();
        (p.i == body.len()).then_some(())
    });
    if written.is_none() {
        out.truncate(mark);
        write_json_string(text, out);
    }
}

/// Drops a dimension decoration (`[0:1][1:2]=`) before the braces.
fn strip_dimensions(text: &[u8]) -> Option<&[u8]> {
    if text.first() != Some(&b'[') {
        return Some(text);
    }
    let mut i = 0;
    while text.get(i) == Some(&b'[') {
        let close = i + memchr::memchr(b']', &text[i..])?;
        let bounds = &text[i + 1..close];
        let ok = bounds.split(|&b| b == b':').count() <= 2
            && bounds.split(|&b| b == b':').all(|n| {
                let n = n.strip_prefix(b"-").unwrap_or(n);
                !n.is_empty() && all_digits(n)
            });
        if !ok {
            return None;
        }
        i = close + 1;
    }
    text.get(i..)?.strip_prefix(b"=")
}

struct ArrayParser<'a> {
    s: &'a [u8],
    i: usize,
    element: &'a TypeKind,
    delimiter: u8,
    /// Unescaped element text, when it had backslashes.
    scratch: Vec<u8>,
}

impl ArrayParser<'_> {
    fn skip_space(&mut self) {
        while self.s.get(self.i).is_some_and(|&b| is_array_space(b)) {
            self.i += 1;
        }
    }

    /// `{…}` at `self.i`, with elements or sub-arrays (not both).
    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > MAX_ARRAY_DEPTH || self.s.get(self.i) != Some(&b'{') {
            return None;
        }
        self.i += 1;
        out.push(b'[');
        self.skip_space();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            out.push(b']');
            return Some(());
        }
        let nested = self.s.get(self.i) == Some(&b'{');
        loop {
            self.skip_space();
            if nested {
                self.array(out, depth + 1)?;
            } else {
                self.element(out)?;
            }
            self.skip_space();
            match *self.s.get(self.i)? {
                b'}' => {
                    self.i += 1;
                    out.push(b']');
                    return Some(());
                }
                b if b == self.delimiter => {
                    self.i += 1;
                    out.push(b',');
                }
                _ => return None,
            }
        }
    }

    fn element(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let s = self.s;
        let start = self.i;
        let mut escaped = false;
        let (value, end) = if s.get(start) == Some(&b'"') {
            let mut j = start + 1;
            loop {
                match *s.get(j)? {
                    b'"' => break,
                    b'\\' => {
                        s.get(j + 1)?;
                        escaped = true;
                        j += 2;
                    }
                    _ => j += 1,
                }
            }
            (&s[start + 1..j], j + 1)
        } else {
            let mut j = start;
            let mut last_escaped = start;
            loop {
                match *s.get(j)? {
                    b'{' | b'"' => return None,
                    b'}' => break,
                    b if b == self.delimiter => break,
                    b'\\' => {
                        s.get(j + 1)?;
                        escaped = true;
                        j += 2;
                        last_escaped = j;
                    }
                    _ => j += 1,
                }
            }
            // Unquoted: trailing white space that is not escaped is dropped.
            let mut k = j;
            while k > last_escaped && is_array_space(s[k - 1]) {
                k -= 1;
            }
            let raw = &s[start..k];
            if raw.is_empty() {
                return None;
            }
            if !escaped && raw.eq_ignore_ascii_case(b"NULL") {
                self.i = j;
                out.extend_from_slice(b"null");
                return Some(());
            }
            (raw, j)
        };
        self.i = end;
        if escaped {
            let mut buf = std::mem::take(&mut self.scratch);
            buf.clear();
            let mut bytes = value.iter();
            while let Some(&b) = bytes.next() {
                buf.push(if b == b'\\' { *bytes.next()? } else { b });
            }
            write_json(self.element, &buf, out);
            self.scratch = buf;
        } else {
            write_json(self.element, value, out);
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn to_json(kind: &TypeKind, text: &str) -> String {
        let mut out = Vec::new();
        write_json(kind, text.as_bytes(), &mut out);
        String::from_utf8(out).expect("output is UTF-8")
    }

    /// Output, checked to be exactly one valid JSON value without newlines.
    fn parsed(kind: &TypeKind, text: &str) -> Value {
        let out = to_json(kind, text);
        assert!(!out.contains('\n'), "raw newline in {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{text:?} -> {out}: {e}"))
    }

    fn int_array() -> TypeKind {
        TypeKind::builtin(1007).unwrap()
    }

    fn text_array() -> TypeKind {
        TypeKind::builtin(1009).unwrap()
    }

    #[test]
    fn builtin_oids() {
        assert_eq!(TypeKind::builtin(16), Some(TypeKind::Bool));
        assert_eq!(TypeKind::builtin(20), Some(TypeKind::Integer));
        assert_eq!(TypeKind::builtin(701), Some(TypeKind::Float));
        assert_eq!(TypeKind::builtin(1700), Some(TypeKind::Numeric));
        assert_eq!(TypeKind::builtin(3802), Some(TypeKind::Json));
        assert_eq!(TypeKind::builtin(2950), Some(TypeKind::Text));
        assert_eq!(TypeKind::builtin(1184), Some(TypeKind::TimestampTz));
        assert_eq!(int_array(), TypeKind::array_of(TypeKind::Integer, b','));
        assert_eq!(text_array(), TypeKind::array_of(TypeKind::Text, b','));
        assert_eq!(
            TypeKind::builtin(3807),
            Some(TypeKind::array_of(TypeKind::Json, b','))
        );
        assert_eq!(
            TypeKind::builtin(1115),
            Some(TypeKind::array_of(TypeKind::Timestamp, b','))
        );
        assert_eq!(
            TypeKind::builtin(1020),
            Some(TypeKind::array_of(TypeKind::Text, b';'))
        );
        assert_eq!(TypeKind::builtin(99_999), None);
        assert_eq!(TypeKind::builtin_or_text(99_999), TypeKind::Text);
        for oid in 0..10_000 {
            if let Some(element) = builtin_array_element(oid) {
                assert!(builtin_scalar(element).is_some(), "{oid}");
                assert!(builtin_scalar(oid).is_none(), "{oid}");
            }
        }
    }

    #[test]
    fn bools_and_integers() {
        assert_eq!(to_json(&TypeKind::Bool, "t"), "true");
        assert_eq!(to_json(&TypeKind::Bool, "f"), "false");
        assert_eq!(to_json(&TypeKind::Bool, "x"), r#""x""#);
        assert_eq!(
            to_json(&TypeKind::Integer, "-9223372036854775808"),
            "-9223372036854775808"
        );
        assert_eq!(to_json(&TypeKind::Integer, "0"), "0");
        assert_eq!(
            to_json(&TypeKind::Integer, "18446744073709551615"),
            "18446744073709551615"
        );
        assert_eq!(to_json(&TypeKind::Integer, "+1"), r#""+1""#);
        assert_eq!(to_json(&TypeKind::Integer, "01"), r#""01""#);
        assert_eq!(to_json(&TypeKind::Integer, ""), r#""""#);
    }

    #[test]
    fn floats() {
        let f = TypeKind::Float;
        assert_eq!(to_json(&f, "1.5"), "1.5");
        assert_eq!(to_json(&f, "1e+100"), "1e+100");
        assert_eq!(to_json(&f, "1.5e-07"), "1.5e-07");
        assert_eq!(
            to_json(&f, "-1.2345678901234567e+300"),
            "-1.2345678901234567e+300"
        );
        assert_eq!(to_json(&f, "0"), "0");
        assert_eq!(to_json(&f, "-0"), "-0.0");
        assert_eq!(
            parsed(&f, "-0").as_f64().map(f64::is_sign_negative),
            Some(true)
        );
        assert_eq!(to_json(&f, "NaN"), r#""NaN""#);
        assert_eq!(to_json(&f, "Infinity"), r#""Infinity""#);
        assert_eq!(to_json(&f, "-Infinity"), r#""-Infinity""#);
        // Not Postgres output, but still valid JSON.
        assert_eq!(to_json(&f, "+1.5"), "1.5");
        assert_eq!(to_json(&f, ".5"), "0.5");
        assert_eq!(to_json(&f, "inf"), r#""inf""#);
        assert_eq!(to_json(&f, "nan"), r#""nan""#);
        for text in [
            "1e+100",
            "1.5e-07",
            "-0",
            "3.4028235e+38",
            "1e-45",
            "+2",
            "5.",
        ] {
            assert!(parsed(&f, text).is_number(), "{text}");
        }
    }

    #[test]
    fn numeric_is_lossless() {
        let n = TypeKind::Numeric;
        let big = format!("{}.{}", "9".repeat(200), "1".repeat(100));
        assert_eq!(to_json(&n, &big), big);
        assert_eq!(parsed(&n, &big).to_string(), big);
        assert_eq!(to_json(&n, "-0.000100"), "-0.000100");
        assert_eq!(to_json(&n, "NaN"), r#""NaN""#);
        assert_eq!(to_json(&n, "Infinity"), r#""Infinity""#);
        assert_eq!(to_json(&n, "-Infinity"), r#""-Infinity""#);
    }

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
    fn json_is_embedded() {
        let j = TypeKind::Json;
        assert_eq!(
            to_json(
                &j,
                r#"{"a": [1, 2.5e3, true, false, null], "b": {"c": "d\"e"}}"#
            ),
            r#"{"a":[1,2.5e3,true,false,null],"b":{"c":"d\"e"}}"#
        );
        assert_eq!(to_json(&j, "\n{ \"a\" :\r\n 1 }\t"), r#"{"a":1}"#);
        assert_eq!(to_json(&j, "[]"), "[]");
        assert_eq!(to_json(&j, "{ }"), "{}");
        assert_eq!(to_json(&j, r#""str""#), r#""str""#);
        assert_eq!(
            to_json(&j, "12345678901234567890.5"),
            "12345678901234567890.5"
        );
        assert_eq!(
            to_json(&j, r#"{"e":"\ud83d\ude00 \u00e9"}"#),
            r#"{"e":"\ud83d\ude00 \u00e9"}"#
        );
        assert_eq!(to_json(&j, r#"[[[{"k":[]}]]]"#), r#"[[[{"k":[]}]]]"#);
        // Invalid or unsafe documents are kept as strings.
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "[1 2]",
            "01",
            "tru",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\x\"",
            "\"a\tb\"",
            "{} {}",
            "{1:2}",
            "[}",
        ] {
            assert_eq!(parsed(&j, bad), json!(bad), "{bad}");
        }
        let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
        assert_eq!(parsed(&j, &deep), json!(deep));
        let ok_deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(to_json(&j, &ok_deep), ok_deep);
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(to_json(&TypeKind::Date, "2024-01-02"), r#""2024-01-02""#);
        assert_eq!(to_json(&TypeKind::Date, "infinity"), r#""infinity""#);
        assert_eq!(
            to_json(&TypeKind::Date, "0044-03-15 BC"),
            r#""0044-03-15 BC""#
        );
        assert_eq!(
            to_json(&TypeKind::Time, "03:04:05.123"),
            r#""03:04:05.123""#
        );
        let tz = TypeKind::TimeTz;
        assert_eq!(to_json(&tz, "03:04:05+02"), r#""03:04:05+02:00""#);
        assert_eq!(to_json(&tz, "03:04:05.5-05:30"), r#""03:04:05.5-05:30""#);
        assert_eq!(to_json(&tz, "03:04:05+00:53:28"), r#""03:04:05+00:53:28""#);
        assert_eq!(to_json(&tz, "03:04:05"), r#""03:04:05""#);
        let ts = TypeKind::Timestamp;
        assert_eq!(
            to_json(&ts, "2024-01-02 03:04:05.123456"),
            r#""2024-01-02T03:04:05.123456""#
        );
        assert_eq!(
            to_json(&ts, "2024-01-02 03:04:05"),
            r#""2024-01-02T03:04:05""#
        );
        assert_eq!(to_json(&ts, "infinity"), r#""infinity""#);
        assert_eq!(to_json(&ts, "-infinity"), r#""-infinity""#);
        assert_eq!(
            to_json(&ts, "0044-03-15 12:00:00 BC"),
            r#""0044-03-15 12:00:00 BC""#
        );
        assert_eq!(
            to_json(&ts, "2024-01-02 03:04:05+00"),
            r#""2024-01-02 03:04:05+00""#
        );
        assert_eq!(
            to_json(&ts, "12024-01-02 03:04:05"),
            r#""12024-01-02 03:04:05""#
        );
        let tstz = TypeKind::TimestampTz;
        assert_eq!(
            to_json(&tstz, "2024-01-02 03:04:05.123456+00"),
            r#""2024-01-02T03:04:05.123456+00:00""#
        );
        assert_eq!(
            to_json(&tstz, "2024-01-02 03:04:05+05:30"),
            r#""2024-01-02T03:04:05+05:30""#
        );
        assert_eq!(
            to_json(&tstz, "2024-01-02 03:04:05-08"),
            r#""2024-01-02T03:04:05-08:00""#
        );
        assert_eq!(
            to_json(&tstz, "1850-01-01 00:00:00+00:53:28"),
            r#""1850-01-01T00:00:00+00:53:28""#
        );
        assert_eq!(to_json(&tstz, "infinity"), r#""infinity""#);
        assert_eq!(
            to_json(&tstz, "0044-03-15 12:00:00+00 BC"),
            r#""0044-03-15 12:00:00+00 BC""#
        );
        assert_eq!(
            to_json(&tstz, "2024-01-02 03:04:05"),
            r#""2024-01-02 03:04:05""#
        );
        assert_eq!(
            to_json(&tstz, "2024-01-02 03:04:05+0"),
            r#""2024-01-02 03:04:05+0""#
        );
        assert_eq!(to_json(&tstz, "2024-01-02"), r#""2024-01-02""#);
        let interval = TypeKind::Interval;
        assert_eq!(to_json(&interval, "P1Y2M3DT4H5M6S"), r#""P1Y2M3DT4H5M6S""#);
        assert_eq!(to_json(&interval, "PT-0.5S"), r#""PT-0.5S""#);
    }

    #[test]
    fn bytea_is_base64() {
        let b = TypeKind::Bytea;
        assert_eq!(to_json(&b, "\\x0102ff"), r#""AQL/""#);
        assert_eq!(to_json(&b, "\\x"), r#""""#);
        assert_eq!(to_json(&b, "\\xDEADbeef"), r#""3q2+7w==""#);
        let raw: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let expected = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert_eq!(parsed(&b, &format!("\\x{hex}")), json!(expected));
        // Not hex format: the text.
        assert_eq!(to_json(&b, "\\x0"), r#""\\x0""#);
        assert_eq!(to_json(&b, "\\xzz"), r#""\\xzz""#);
        assert_eq!(to_json(&b, "abc"), r#""abc""#);
    }

    #[test]
    fn arrays() {
        assert_eq!(to_json(&int_array(), "{1,2,NULL}"), "[1,2,null]");
        assert_eq!(to_json(&int_array(), "{}"), "[]");
        assert_eq!(to_json(&int_array(), "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(to_json(&int_array(), "[0:1]={1,2}"), "[1,2]");
        assert_eq!(
            to_json(&int_array(), "[1:2][-1:0]={{1,2},{3,4}}"),
            "[[1,2],[3,4]]"
        );
        assert_eq!(to_json(&int_array(), " { 1 , 2 } "), "[1,2]");
        assert_eq!(to_json(&int_array(), "{{{{{{1}}}}}}"), "[[[[[[1]]]]]]");
        assert_eq!(
            parsed(&text_array(), r#"{"a b","c\"d",NULL,"NULL",null,plain}"#),
            json!(["a b", "c\"d", null, "NULL", null, "plain"])
        );
        assert_eq!(
            parsed(
                &text_array(),
                r#"{"with,comma","{braces}","back\\slash","",  x y  }"#
            ),
            json!(["with,comma", "{braces}", "back\\slash", "", "x y"])
        );
        assert_eq!(parsed(&text_array(), r#"{a\,b,c\ }"#), json!(["a,b", "c "]));
        assert_eq!(parsed(&text_array(), r#"{\NULL}"#), json!(["NULL"]));
        assert_eq!(
            parsed(
                &TypeKind::builtin(3807).unwrap(),
                r#"{"{\"a\": 1}","[1, 2]",NULL}"#
            ),
            json!([{"a": 1}, [1, 2], null])
        );
        assert_eq!(
            parsed(
                &TypeKind::builtin(1185).unwrap(),
                r#"{"2024-01-02 03:04:05+00",infinity}"#
            ),
            json!(["2024-01-02T03:04:05+00:00", "infinity"])
        );
        assert_eq!(
            parsed(&TypeKind::builtin(1001).unwrap(), r#"{"\\x0102ff",NULL}"#),
            json!(["AQL/", null])
        );
        assert_eq!(
            parsed(&TypeKind::builtin(1022).unwrap(), "{1.5,NaN,-Infinity,-0}"),
            json!([1.5, "NaN", "-Infinity", -0.0])
        );
        assert_eq!(
            parsed(
                &TypeKind::builtin(1020).unwrap(),
                "{(1,1),(0,0);(2,2),(1,1)}"
            ),
            json!(["(1,1),(0,0)", "(2,2),(1,1)"])
        );
        assert_eq!(
            parsed(&TypeKind::builtin(1000).unwrap(), "{t,f,NULL}"),
            json!([true, false, null])
        );
        // Malformed literals are kept as text.
        for bad in [
            "",
            "{",
            "{1,2",
            "{1,,2}",
            "{1,{2}}",
            "{{1},2}",
            "{\"a}",
            "{a\"b}",
            "{1}x",
            "1,2",
            "[0:1]{1,2}",
            "[a:1]={1}",
            "[0:1",
            "{{{{{{{1}}}}}}}",
            "{a\\",
        ] {
            assert_eq!(parsed(&text_array(), bad), json!(bad), "{bad}");
        }
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
}
