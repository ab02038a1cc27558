//! Postgres column values (text output format) to JSON.
//!
//! The replication session runs with `DateStyle=ISO, IntervalStyle=iso_8601,
//! TimeZone=UTC, extra_float_digits=3, bytea_output=hex`; the mapping assumes
//! text in those formats. [`write_json`] never fails: a value it cannot map
//! faithfully is written as a JSON string of its original text, so the output
//! is always exactly one valid JSON value, and it never contains a raw newline
//! (safe inside NDJSON bulk bodies).
//!
//! One file per job: [`write_json`] (here) dispatches on the [`TypeKind`] to
//! `number.rs` (integers, numeric, floats), `escape.rs` (JSON strings),
//! `datetime.rs` (dates, times, timestamps), `bytea.rs` (hex to base64),
//! `json.rs` (json/jsonb validation) and `array.rs` (array literals);
//! `oids.rs` holds the built-in type OID tables.

mod array;
mod bytea;
mod datetime;
mod escape;
mod json;
mod number;
mod oids;
#[cfg(test)]
mod tests;

use crate::model::row::Oid;
pub use crate::model::row::TypeKind;

use self::array::write_array;
use self::bytea::write_bytea;
use self::datetime::{write_timestamp, write_timetz};
pub use self::escape::{write_json_string, write_json_string_content};
use self::json::write_embedded_json;
use self::number::{write_float, write_number};
use self::oids::{builtin_array_element, builtin_scalar, BOX_OID};

/// The mapping from type OIDs, which only the source knows.
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

// Byte helpers shared by the parsers in the submodules.
fn all_digits(s: &[u8]) -> bool {
    s.iter().all(u8::is_ascii_digit)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
