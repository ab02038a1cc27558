//! Integers, numeric and floats: numbers as Postgres prints them when they
//! are valid JSON, strings otherwise.

use super::json::json_number_end;
use super::write_json_string;

fn is_json_number(s: &[u8]) -> bool {
    json_number_end(s, 0) == Some(s.len())
}

/// Integers and numeric: the digits verbatim (lossless), anything else
/// (`NaN`, `Infinity`, `-Infinity`) as a string.
pub(super) fn write_number(text: &[u8], out: &mut Vec<u8>) {
    if is_json_number(text) {
        out.extend_from_slice(text);
    } else {
        write_json_string(text, out);
    }
}

pub(super) fn write_float(text: &[u8], out: &mut Vec<u8>) {
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

#[cfg(test)]
mod tests {
    use crate::postgres::types::tests::{parsed, to_json};
    use crate::postgres::types::TypeKind;

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
}
