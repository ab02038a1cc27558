//! A backfill's `where`: a condition over the table's own columns, parsed and
//! written out again as SQL by sluice, so nothing of the request's text
//! reaches Postgres as it was typed.
//!
//! Accepted: column names (bare, folded to lower case as Postgres does, or
//! `"quoted"`), literals (numbers, `'text'`, `true`, `false`, `null`),
//! `interval '…'`, `now()`, `current_timestamp`, `current_date`, `+` and `-`
//! (interval arithmetic such as `now() - interval '1 day'`), comparisons
//! (`=`, `!=`, `<>`, `<`, `>`, `<=`, `>=`), `[not] in (…)`,
//! `[not] between … and …`, `is [not] null`, `and`, `or`, `not` and
//! parentheses. Everything else — other functions, subqueries, casts,
//! operators, a second statement — is refused before Postgres sees it.

use std::fmt::Write;

use super::chunk::TableShape;
use super::BackfillError;
use crate::model::ident::quote_ident;

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Column(String),
    /// The digits as written (checked to be a number).
    Number(String),
    Text(String),
    Bool(bool),
    Null,
    Now,
    CurrentDate,
    Interval(String),
    Negate(Box<Expr>),
    Arithmetic(Box<Expr>, char, Box<Expr>),
    Compare(Box<Expr>, &'static str, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
}

/// Parses `text` and checks that every column it names is one of
/// `columns`; returns the condition as SQL sluice wrote.
pub fn to_sql(text: &str, table: &str, columns: &[&str]) -> Result<String, String> {
    let expr = parse(text)?;
    let mut unknown = Vec::new();
    expr.columns(&mut |name| {
        if !columns.contains(&name) && !unknown.iter().any(|u| u == name) {
            unknown.push(name.to_owned());
        }
    });
    if !unknown.is_empty() {
        let names: Vec<String> = unknown.iter().map(|u| format!("`{u}`")).collect();
        return Err(format!(
            "the condition names {} {}, which {table} does not have (its columns: {})",
            if unknown.len() == 1 {
                "column"
            } else {
                "columns"
            },
            names.join(", "),
            columns.join(", ")
        ));
    }
    let mut sql = String::new();
    expr.write(&mut sql);
    Ok(sql)
}

/// [`to_sql`] for the table `shape` describes, as a backfill's error.
pub fn for_table(text: &str, shape: &TableShape) -> Result<String, BackfillError> {
    let columns: Vec<&str> = shape.rel.columns.iter().map(|c| c.name.as_str()).collect();
    to_sql(text, &shape.rel.name.to_string(), &columns)
        .map_err(|e| BackfillError::Invalid(format!("`where {text}`: {e}")))
}

/// Parses a condition.
pub fn parse(text: &str) -> Result<Expr, String> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, at: 0 };
    let expr = parser.or()?;
    match parser.peek() {
        None => Ok(expr),
        Some(token) => Err(format!(
            "unexpected {} after a complete condition",
            token.describe()
        )),
    }
}

impl Expr {
    fn columns(&self, seen: &mut impl FnMut(&str)) {
        match self {
            Expr::Column(name) => seen(name),
            Expr::Number(_)
            | Expr::Text(_)
            | Expr::Bool(_)
            | Expr::Null
            | Expr::Now
            | Expr::CurrentDate
            | Expr::Interval(_) => {}
            Expr::Negate(e) | Expr::Not(e) | Expr::IsNull { expr: e, .. } => e.columns(seen),
            Expr::Arithmetic(a, _, b)
            | Expr::Compare(a, _, b)
            | Expr::And(a, b)
            | Expr::Or(a, b) => {
                a.columns(seen);
                b.columns(seen);
            }
            Expr::In { expr, list, .. } => {
                expr.columns(seen);
                list.iter().for_each(|e| e.columns(seen));
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                expr.columns(seen);
                low.columns(seen);
                high.columns(seen);
            }
        }
    }

    /// Writes the expression as SQL, every operation parenthesized.
    fn write(&self, out: &mut String) {
        let not = |negated: bool| if negated { "NOT " } else { "" };
        match self {
            Expr::Column(name) => out.push_str(&quote_ident(name)),
            Expr::Number(digits) => out.push_str(digits),
            Expr::Text(text) => write_text(text, out),
            Expr::Bool(b) => out.push_str(if *b { "TRUE" } else { "FALSE" }),
            Expr::Null => out.push_str("NULL"),
            Expr::Now => out.push_str("now()"),
            Expr::CurrentDate => out.push_str("CURRENT_DATE"),
            Expr::Interval(text) => {
                out.push_str("INTERVAL ");
                write_text(text, out);
            }
            Expr::Negate(e) => {
                out.push_str("(- ");
                e.write(out);
                out.push(')');
            }
            Expr::Not(e) => {
                out.push_str("(NOT ");
                e.write(out);
                out.push(')');
            }
            Expr::Arithmetic(a, op, b) => binary(out, a, &op.to_string(), b),
            Expr::Compare(a, op, b) => binary(out, a, op, b),
            Expr::And(a, b) => binary(out, a, "AND", b),
            Expr::Or(a, b) => binary(out, a, "OR", b),
            Expr::IsNull { expr, negated } => {
                out.push('(');
                expr.write(out);
                let _ = write!(out, " IS {}NULL)", not(*negated));
            }
            Expr::In {
                expr,
                list,
                negated,
            } => {
                out.push('(');
                expr.write(out);
                let _ = write!(out, " {}IN (", not(*negated));
                for (i, item) in list.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out);
                }
                out.push_str("))");
            }
            Expr::Between {
                expr,
                low,
                high,
                negated,
            } => {
                out.push('(');
                expr.write(out);
                let _ = write!(out, " {}BETWEEN ", not(*negated));
                low.write(out);
                out.push_str(" AND ");
                high.write(out);
                out.push(')');
            }
        }
    }
}

fn binary(out: &mut String, a: &Expr, op: &str, b: &Expr) {
    out.push('(');
    a.write(out);
    let _ = write!(out, " {op} ");
    b.write(out);
    out.push(')');
}

/// A string literal that means the same whatever
/// `standard_conforming_strings` is: an escape string with both quotes and
/// backslashes doubled.
fn write_text(text: &str, out: &mut String) {
    out.push_str("E'");
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A bare word, folded to lower case.
    Word(String),
    /// A `"quoted"` identifier, as written.
    Quoted(String),
    Number(String),
    Text(String),
    Symbol(&'static str),
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Word(w) => format!("`{w}`"),
            Token::Quoted(q) => format!("`\"{q}\"`"),
            Token::Number(n) => format!("number {n}"),
            Token::Text(_) => "a string".into(),
            Token::Symbol(s) => format!("`{s}`"),
        }
    }
}

const SYMBOLS: [&str; 12] = [
    "<=", ">=", "<>", "!=", "=", "<", ">", "(", ")", ",", "+", "-",
];

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            tokens.push(Token::Word(word.to_ascii_lowercase()));
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len() && matches!(chars[i], 'e' | 'E') {
                i += 1;
                if i < chars.len() && matches!(chars[i], '+' | '-') {
                    i += 1;
                }
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let number: String = chars[start..i].iter().collect();
            if number.parse::<f64>().is_err() || number.matches('.').count() > 1 {
                return Err(format!("`{number}` is not a number"));
            }
            tokens.push(Token::Number(number));
        } else if c == '\'' || c == '"' {
            let (body, next) = quoted(&chars, i)?;
            tokens.push(if c == '\'' {
                Token::Text(body)
            } else {
                Token::Quoted(body)
            });
            i = next;
        } else if let Some(symbol) = SYMBOLS.iter().find(|s| {
            s.chars()
                .enumerate()
                .all(|(k, sc)| chars.get(i + k) == Some(&sc))
        }) {
            tokens.push(Token::Symbol(symbol));
            i += symbol.len();
        } else {
            return Err(format!(
                "`{c}` is not allowed in a condition (use columns, literals, comparisons, \
                 and/or/not, in, between, is null, now() and intervals)"
            ));
        }
    }
    Ok(tokens)
}

/// The text between the quote at `start` and its closing one (a doubled
/// quote stands for one), and the index after it.
fn quoted(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let quote = chars[start];
    let mut body = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => return Err(format!("a {quote} is not closed")),
            Some(&c) if c == quote => {
                if chars.get(i + 1) == Some(&quote) {
                    body.push(quote);
                    i += 2;
                } else {
                    return Ok((body, i + 1));
                }
            }
            Some(&c) => {
                body.push(c);
                i += 1;
            }
        }
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

/// Words that are not column names.
const KEYWORDS: [&str; 14] = [
    "and",
    "or",
    "not",
    "in",
    "between",
    "is",
    "null",
    "true",
    "false",
    "now",
    "interval",
    "current_timestamp",
    "current_date",
    "select",
];

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn word(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Word(w)) if w == word) {
            self.at += 1;
            return true;
        }
        false
    }

    fn symbol(&mut self, symbol: &str) -> bool {
        if matches!(self.peek(), Some(Token::Symbol(s)) if *s == symbol) {
            self.at += 1;
            return true;
        }
        false
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<(), String> {
        if self.symbol(symbol) {
            return Ok(());
        }
        Err(match self.peek() {
            Some(token) => format!("expected `{symbol}`, found {}", token.describe()),
            None => format!("expected `{symbol}` at the end"),
        })
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut expr = self.and()?;
        while self.word("or") {
            expr = Expr::Or(Box::new(expr), Box::new(self.and()?));
        }
        Ok(expr)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut expr = self.not()?;
        while self.word("and") {
            expr = Expr::And(Box::new(expr), Box::new(self.not()?));
        }
        Ok(expr)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.word("not") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr, String> {
        let expr = self.sum()?;
        if self.word("is") {
            let negated = self.word("not");
            if !self.word("null") {
                return Err("`is` must be followed by `null` or `not null`".into());
            }
            return Ok(Expr::IsNull {
                expr: Box::new(expr),
                negated,
            });
        }
        let negated = self.word("not");
        if self.word("in") {
            self.expect_symbol("(")?;
            let mut list = vec![self.sum()?];
            while self.symbol(",") {
                list.push(self.sum()?);
            }
            self.expect_symbol(")")?;
            return Ok(Expr::In {
                expr: Box::new(expr),
                list,
                negated,
            });
        }
        if self.word("between") {
            let low = self.sum()?;
            if !self.word("and") {
                return Err("`between` needs `and` between its bounds".into());
            }
            let high = self.sum()?;
            return Ok(Expr::Between {
                expr: Box::new(expr),
                low: Box::new(low),
                high: Box::new(high),
                negated,
            });
        }
        if negated {
            return Err("`not` here must be followed by `in` or `between`".into());
        }
        for op in ["=", "!=", "<>", "<", ">", "<=", ">="] {
            if self.symbol(op) {
                let op = if op == "!=" { "<>" } else { op };
                let op = SYMBOLS.iter().find(|s| **s == op).expect("a symbol");
                return Ok(Expr::Compare(Box::new(expr), op, Box::new(self.sum()?)));
            }
        }
        Ok(expr)
    }

    fn sum(&mut self) -> Result<Expr, String> {
        let mut expr = self.unary()?;
        loop {
            let op = if self.symbol("+") {
                '+'
            } else if self.symbol("-") {
                '-'
            } else {
                return Ok(expr);
            };
            expr = Expr::Arithmetic(Box::new(expr), op, Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.symbol("-") {
            return Ok(Expr::Negate(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let Some(token) = self.next() else {
            return Err("the condition ends too early".into());
        };
        match token {
            Token::Symbol("(") => {
                let expr = self.or()?;
                self.expect_symbol(")")?;
                Ok(expr)
            }
            Token::Number(n) => Ok(Expr::Number(n)),
            Token::Text(t) => Ok(Expr::Text(t)),
            Token::Quoted(name) => Ok(Expr::Column(name)),
            Token::Word(w) => match w.as_str() {
                "true" => Ok(Expr::Bool(true)),
                "false" => Ok(Expr::Bool(false)),
                "null" => Ok(Expr::Null),
                "current_timestamp" => Ok(Expr::Now),
                "current_date" => Ok(Expr::CurrentDate),
                "now" => {
                    self.expect_symbol("(")?;
                    self.expect_symbol(")")?;
                    Ok(Expr::Now)
                }
                "interval" => match self.next() {
                    Some(Token::Text(t)) => Ok(Expr::Interval(t)),
                    _ => Err("`interval` must be followed by a string such as '1 day'".into()),
                },
                w if KEYWORDS.contains(&w) => Err(format!("unexpected `{w}`")),
                _ if matches!(self.peek(), Some(Token::Symbol("("))) => Err(format!(
                    "`{w}(…)`: the only function a condition may call is now()"
                )),
                _ => Ok(Expr::Column(w)),
            },
            other => Err(format!("unexpected {}", other.describe())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: [&str; 4] = ["id", "updated_at", "status", "Name"];

    fn sql(text: &str) -> Result<String, String> {
        to_sql(text, "public.items", &COLUMNS)
    }

    #[test]
    fn conditions_over_the_columns_are_written_out_again() {
        assert_eq!(sql("id > 10").unwrap(), r#"("id" > 10)"#);
        assert_eq!(
            sql("updated_at > now() - interval '1 day' and status in ('a', 'b''c')").unwrap(),
            r#"(("updated_at" > (now() - INTERVAL E'1 day')) AND ("status" IN (E'a', E'b''c')))"#
        );
        assert_eq!(
            sql(r#"not "Name" is null or id not between -1 and 2.5e3"#).unwrap(),
            r#"((NOT ("Name" IS NULL)) OR ("id" NOT BETWEEN (- 1) AND 2.5e3))"#
        );
        assert_eq!(
            sql("ID != 3 AND status = 'x\\'").unwrap(),
            r#"(("id" <> 3) AND ("status" = E'x\\'))"#
        );
        assert_eq!(
            sql("updated_at >= current_date").unwrap(),
            r#"("updated_at" >= CURRENT_DATE)"#
        );
    }

    #[test]
    fn anything_else_is_refused_before_postgres_sees_it() {
        for (text, expected) in [
            (
                "(select string_agg(email, ',') from users)::int > 0",
                "`:` is not allowed",
            ),
            ("id in (select id from users)", "unexpected `select`"),
            ("pg_sleep(10) is null", "only function"),
            ("id > 1; drop table items", "`;` is not allowed"),
            ("id > 1 -- comment", "column `comment`"),
            ("id::text = '1'", "`:` is not allowed"),
            (
                "emial = 'x'",
                "column `emial`, which public.items does not have",
            ),
            ("name = 'x'", "column `name`"),
            ("status = 'open", "is not closed"),
            ("id > 1 id", "unexpected `id`"),
            ("id is 3", "`is` must be followed"),
            ("id not = 3", "`not` here"),
            ("id between 1", "needs `and`"),
            ("1.2.3 = id", "is not a number"),
        ] {
            let error = sql(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
