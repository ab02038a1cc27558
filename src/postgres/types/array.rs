//! Array literals (`{1,2,NULL}`, `[0:1]={…}`, nested dimensions) to JSON
//! arrays, each element mapped by its element type.

use super::{all_digits, write_json, write_json_string, TypeKind};

/// Postgres allows at most 6 array dimensions.
const MAX_ARRAY_DEPTH: usize = 6;

fn is_array_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

pub(super) fn write_array(element: &TypeKind, delimiter: u8, text: &[u8], out: &mut Vec<u8>) {
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
    use crate::postgres::types::tests::{int_array, parsed, text_array, to_json};
    use crate::postgres::types::TypeKind;
    use serde_json::json;

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
}
