//! Names of database objects, and how they are quoted for SQL.

use std::fmt;

/// A table name split into schema and table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// Parses `schema.table` (or a bare `table` in schema `public`).
    pub fn parse(text: &str) -> Result<TableName, String> {
        let valid = |part: &str| !part.is_empty() && !part.contains(['"', '.', ' ']);
        let (schema, table) = match text.split_once('.') {
            Some((schema, table)) => (schema, table),
            None => ("public", text),
        };
        if !valid(schema) || !valid(table) {
            return Err(format!(
                "`{text}` is not a table name; expected SCHEMA.TABLE such as public.products"
            ));
        }
        Ok(TableName {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }

    /// The name quoted for SQL: `"schema"."table"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Index names are used as directory names: keep them portable.
pub fn check_index_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with(['.', '-', '_'])
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid index name: use lowercase letters, digits, `_`, `-` or `.`, not starting with `.`, `-` or `_`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert_eq!(
            TableName::parse("products").unwrap(),
            TableName {
                schema: "public".into(),
                table: "products".into()
            }
        );
        assert!(TableName::parse("").is_err());
        assert!(TableName::parse("a.").is_err());
        assert_eq!(TableName::parse("s.t").unwrap().quoted(), "\"s\".\"t\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
