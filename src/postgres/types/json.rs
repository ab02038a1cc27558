//! json and jsonb: the document is validated (RFC 8259) and embedded without
//! insignificant whitespace; an invalid or too deep one becomes a string.

use super::{hex_value, write_json_string};

/// End of the JSON number starting at `s[i]`, if there is one.
pub(super) fn json_number_end(s: &[u8], mut i: usize) -> Option<usize> {
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

/// Deepest JSON nesting embedded as JSON; deeper documents become strings.
const MAX_JSON_DEPTH: usize = 1024;

/// json/jsonb text, checked and copied without insignificant whitespace.
pub(super) fn write_embedded_json(text: &[u8], out: &mut Vec<u8>) {
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

#[cfg(test)]
mod tests {
    use crate::postgres::types::tests::{parsed, to_json};
    use crate::postgres::types::TypeKind;
    use serde_json::json;

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
}
