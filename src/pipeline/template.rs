//! Templated document fields (`transform.fields`): `"{name} ({sku})"` is
//! the text with each `{column}` replaced by that column's value; `{{` and
//! `}}` stand for braces. Checked when the configuration loads and parsed
//! again into each relation's shape; the shards render them straight from
//! the WAL's text (see `document::DocShape`).

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text written as it is.
    Text(String),
    /// The value of the named column.
    Column(String),
}

/// Parses `template` into its pieces, or says what is wrong with it.
pub fn parse(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let rest = &template[at + 1..];
                let Some(end) = rest.find('}') else {
                    return Err(format!(
                        "`{{` at byte {at} is not closed; write `{{{{` for a brace"
                    ));
                };
                let column = rest[..end].trim();
                if column.is_empty() || column.contains('{') {
                    return Err(format!(
                        "`{{{}}}` at byte {at} does not name a column",
                        &rest[..end]
                    ));
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Column(column.to_owned()));
                // Skip to the closing brace.
                for (i, _) in chars.by_ref() {
                    if i == at + 1 + end {
                        break;
                    }
                }
            }
            '}' => {
                return Err(format!(
                    "`}}` at byte {at} closes nothing; write `}}}}` for a brace"
                ))
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Piece {
        Piece::Text(s.to_owned())
    }

    fn column(s: &str) -> Piece {
        Piece::Column(s.to_owned())
    }

    #[test]
    fn columns_text_and_braces() {
        assert_eq!(
            parse("{name} ({sku})").unwrap(),
            [column("name"), text(" ("), column("sku"), text(")")]
        );
        assert_eq!(parse("product").unwrap(), [text("product")]);
        assert_eq!(parse("").unwrap(), []);
        assert_eq!(
            parse("{{literal}} { name }").unwrap(),
            [text("{literal} "), column("name")]
        );
        assert_eq!(
            parse("é{a}{b}ü").unwrap(),
            [text("é"), column("a"), column("b"), text("ü")]
        );
    }

    #[test]
    fn malformed_templates_say_where() {
        assert_eq!(
            parse("a {name").unwrap_err(),
            "`{` at byte 2 is not closed; write `{{` for a brace"
        );
        assert_eq!(
            parse("a } b").unwrap_err(),
            "`}` at byte 2 closes nothing; write `}}` for a brace"
        );
        assert_eq!(
            parse("{}").unwrap_err(),
            "`{}` at byte 0 does not name a column"
        );
        assert_eq!(
            parse("{a{b}").unwrap_err(),
            "`{a{b}` at byte 0 does not name a column"
        );
    }
}
