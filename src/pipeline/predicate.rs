//! Column predicates (`where = ["active = true", "price > 10"]`): which rows
//! of a table the index holds, decided on the WAL's text without an
//! interpreter.
//!
//! A table's index holds the rows for which every predicate holds, as
//! `SELECT ... WHERE` would return them: an insert (or a row a backfill read)
//! that does not match is left out, and an update that does not match
//! removes the document (the row may have matched before). Deletes always
//! pass. A comparison with NULL is false, as in SQL; a column whose value the
//! WAL left out (unchanged TOAST) passes.

use crate::postgres::pgoutput::{ColumnKind, Tuple};

/// One predicate on one column.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    pub column: String,
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Compare(Cmp, Literal),
    In(Vec<Literal>),
    IsNull,
    IsNotNull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// What a predicate says of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Holds,
    Fails,
    /// The WAL did not carry the column's value.
    Unknown,
}

impl Predicate {
    /// Parses `column OP value`: `=`, `!=` (or `<>`), `<`, `>`, `<=`, `>=`,
    /// `in (v1, v2, ...)`, `is null`, `is not null`. Values are numbers,
    /// `'text'` (`''` for a quote), `true` or `false`.
    pub fn parse(text: &str) -> Result<Predicate, String> {
        let mut p = Parser { text, at: 0 };
        let column = p.identifier()?;
        p.space();
        let rest = &text[p.at..];
        let lower = rest.to_ascii_lowercase();
        let test = if let Some(after) = lower.strip_prefix("is") {
            let after = after.trim_start();
            if after == "null" {
                Test::IsNull
            } else if after.split_whitespace().collect::<Vec<_>>() == ["not", "null"] {
                Test::IsNotNull
            } else {
                return Err(format!("`{text}`: after `is` comes `null` or `not null`"));
            }
        } else if lower.starts_with("in") && !lower[2..].starts_with(|c: char| c.is_alphanumeric())
        {
            p.at += 2;
            p.space();
            p.expect('(')?;
            let mut values = vec![p.literal()?];
            loop {
                p.space();
                if p.eat(',') {
                    values.push(p.literal()?);
                } else {
                    p.expect(')')?;
                    break;
                }
            }
            p.end()?;
            Test::In(values)
        } else {
            let (op, len) = [
                ("<=", Cmp::Le),
                (">=", Cmp::Ge),
                ("!=", Cmp::Ne),
                ("<>", Cmp::Ne),
                ("=", Cmp::Eq),
                ("<", Cmp::Lt),
                (">", Cmp::Gt),
            ]
            .iter()
            .find(|(sym, _)| rest.starts_with(sym))
            .map(|(sym, op)| (*op, sym.len()))
            .ok_or_else(|| {
                format!(
                    "`{text}`: expected an operator after `{column}` (=, !=, <, >, <=, >=, in, is null)"
                )
            })?;
            p.at += len;
            let value = p.literal()?;
            p.end()?;
            Test::Compare(op, value)
        };
        Ok(Predicate { column, test })
    }

    /// Whether column `i` of `tuple` satisfies the predicate.
    pub fn check(&self, tuple: &Tuple, i: usize) -> Verdict {
        let value = match tuple.kind(i) {
            ColumnKind::Unchanged => return Verdict::Unknown,
            ColumnKind::Null => None,
            _ => tuple.value(i),
        };
        let holds = match (&self.test, value) {
            (Test::IsNull, value) => value.is_none(),
            (Test::IsNotNull, value) => value.is_some(),
            (_, None) => false,
            (Test::Compare(op, literal), Some(text)) => compare(text, literal)
                .map(|ordering| match op {
                    Cmp::Eq => ordering.is_eq(),
                    Cmp::Ne => ordering.is_ne(),
                    Cmp::Lt => ordering.is_lt(),
                    Cmp::Gt => ordering.is_gt(),
                    Cmp::Le => ordering.is_le(),
                    Cmp::Ge => ordering.is_ge(),
                })
                .unwrap_or(*op == Cmp::Ne),
            (Test::In(values), Some(text)) => values
                .iter()
                .any(|v| compare(text, v).is_some_and(|o| o.is_eq())),
        };
        if holds {
            Verdict::Holds
        } else {
            Verdict::Fails
        }
    }
}

/// The column's text against a literal: numbers as numbers, booleans as
/// Postgres writes them (`t`/`f`), text byte by byte. `None` when they
/// cannot be compared (a number against text that is not one).
fn compare(text: &[u8], literal: &Literal) -> Option<std::cmp::Ordering> {
    match literal {
        Literal::Number(n) => {
            let value: f64 = std::str::from_utf8(text).ok()?.trim().parse().ok()?;
            value.partial_cmp(n)
        }
        Literal::Bool(b) => {
            let value = match text {
                b"t" | b"true" => true,
                b"f" | b"false" => false,
                _ => return None,
            };
            Some(value.cmp(b))
        }
        Literal::Text(s) => Some(text.cmp(s.as_bytes())),
    }
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn space(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, c: char) -> bool {
        if self.rest().starts_with(c) {
            self.at += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        self.space();
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("`{}`: expected `{c}`", self.text))
        }
    }

    fn end(&mut self) -> Result<(), String> {
        self.space();
        if self.rest().is_empty() {
            Ok(())
        } else {
            Err(format!(
                "`{}`: unexpected `{}` (one predicate per entry; entries must all hold)",
                self.text,
                self.rest()
            ))
        }
    }

    /// A column name, bare or `"quoted"`.
    fn identifier(&mut self) -> Result<String, String> {
        self.space();
        if self.eat('"') {
            let end = self
                .rest()
                .find('"')
                .ok_or_else(|| format!("`{}`: unterminated quoted column name", self.text))?;
            let name = self.rest()[..end].to_owned();
            self.at += end + 1;
            return Ok(name);
        }
        let len = self
            .rest()
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(format!("`{}`: expected a column name", self.text));
        }
        let name = self.rest()[..len].to_owned();
        self.at += len;
        Ok(name)
    }

    fn literal(&mut self) -> Result<Literal, String> {
        self.space();
        if self.eat('\'') {
            let mut value = String::new();
            loop {
                let Some(c) = self.rest().chars().next() else {
                    return Err(format!("`{}`: unterminated 'text'", self.text));
                };
                self.at += c.len_utf8();
                if c == '\'' {
                    if self.eat('\'') {
                        value.push('\'');
                    } else {
                        return Ok(Literal::Text(value));
                    }
                } else {
                    value.push(c);
                }
            }
        }
        let len = self
            .rest()
            .find(|c: char| c.is_whitespace() || c == ',' || c == ')')
            .unwrap_or(self.rest().len());
        let word = &self.rest()[..len];
        let literal = match word.to_ascii_lowercase().as_str() {
            "true" => Literal::Bool(true),
            "false" => Literal::Bool(false),
            _ => match word.parse::<f64>() {
                Ok(n) if n.is_finite() => Literal::Number(n),
                _ => {
                    return Err(format!(
                        "`{}`: `{word}` is not a value (numbers, 'text', true or false)",
                        self.text
                    ))
                }
            },
        };
        self.at += len;
        Ok(literal)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::postgres::pgoutput::ColumnValue;

    fn one(value: Option<&str>) -> Tuple {
        match value {
            Some(v) => Tuple {
                data: Bytes::copy_from_slice(v.as_bytes()),
                columns: vec![ColumnValue {
                    kind: ColumnKind::Text,
                    start: 0,
                    len: v.len() as u32,
                }],
            },
            None => Tuple {
                data: Bytes::new(),
                columns: vec![ColumnValue {
                    kind: ColumnKind::Null,
                    start: 0,
                    len: 0,
                }],
            },
        }
    }

    fn holds(predicate: &str, value: Option<&str>) -> bool {
        let p = Predicate::parse(predicate).unwrap();
        p.check(&one(value), 0) == Verdict::Holds
    }

    #[test]
    fn predicates_compare_like_sql() {
        assert!(holds("active = true", Some("t")));
        assert!(!holds("active = true", Some("f")));
        assert!(!holds("active = true", None));
        assert!(holds("price > 10", Some("10.50")));
        assert!(!holds("price > 10", Some("9.99")));
        assert!(holds("price <= 10", Some("10")));
        assert!(holds("stock != 0", Some("3")));
        assert!(holds("status = 'it''s'", Some("it's")));
        assert!(holds("status in ('a', 'b')", Some("b")));
        assert!(!holds("status IN ('a','b')", Some("c")));
        assert!(holds("deleted_at is null", None));
        assert!(holds("deleted_at IS NOT NULL", Some("2024-01-01")));
        assert!(!holds("name > 'm'", Some("apple")));
        assert!(holds("\"Odd Name\" = 1", Some("1")));
        assert_eq!(Predicate::parse("infinite = 1").unwrap().column, "infinite");
    }

    #[test]
    fn bad_predicates_say_what_is_wrong() {
        for (text, says) in [
            ("", "column name"),
            ("price", "operator"),
            ("price ~ 3", "operator"),
            ("price > ", "not a value"),
            ("price > abc", "not a value"),
            ("name = 'open", "unterminated"),
            ("x is maybe", "null"),
            ("a = 1 and b = 2", "one predicate"),
            ("s in ('a'", "`)`"),
        ] {
            let error = Predicate::parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn a_value_the_wal_left_out_is_unknown() {
        let p = Predicate::parse("body = 'x'").unwrap();
        let tuple = Tuple {
            data: Bytes::new(),
            columns: vec![ColumnValue {
                kind: ColumnKind::Unchanged,
                start: 0,
                len: 0,
            }],
        };
        assert_eq!(p.check(&tuple, 0), Verdict::Unknown);
    }
}
