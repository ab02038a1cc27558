//! The content hash of a document: equal for documents equal by value.
//! Members of an object in any order, numbers by their value (`1`, `1.0`
//! and `10e-1` alike, at any precision), and timestamps by the instant
//! they name (`2024-05-01 10:00:00+02` and `2024-05-01T08:00:00Z` alike).

use serde_json::Value;
use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3};

/// The hash of a document's JSON; a document that is not JSON hashes as
/// its bytes, so it equals only itself.
pub fn content_hash(json: &[u8]) -> u64 {
    match serde_json::from_slice::<Value>(json) {
        Ok(value) => value_hash(&value),
        Err(_) => xxh3_64_with_seed(json, 7),
    }
}

pub fn value_hash(value: &Value) -> u64 {
    match value {
        Value::Null => xxh3_64_with_seed(b"", 0),
        Value::Bool(b) => xxh3_64_with_seed(&[*b as u8], 1),
        Value::Number(n) => xxh3_64_with_seed(normal_number(n.as_str()).as_bytes(), 2),
        Value::String(s) => match timestamp_nanos(s) {
            Some(nanos) => xxh3_64_with_seed(&nanos.to_le_bytes(), 3),
            None => xxh3_64_with_seed(s.as_bytes(), 4),
        },
        Value::Array(items) => {
            let mut hasher = Xxh3::with_seed(5);
            for item in items {
                hasher.update(&value_hash(item).to_le_bytes());
            }
            hasher.digest()
        }
        Value::Object(members) => {
            // A sum of the members' hashes does not depend on their order.
            let sum = members.iter().fold(0u64, |sum, (key, value)| {
                sum.wrapping_add(xxh3_64_with_seed(key.as_bytes(), value_hash(value)))
            });
            xxh3_64_with_seed(&sum.to_le_bytes(), 6 ^ (members.len() as u64) << 8)
        }
    }
}

/// A JSON number's value written one way: sign, significant digits without
/// leading or trailing zeros, and the exponent of the last digit (`-15e-1`
/// for `-1.50`); `0` for every zero. Text that is not a number stays as it is.
pub fn normal_number(text: &str) -> String {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => match rest[at + 1..].trim_start_matches('+').parse::<i64>() {
            Ok(exponent) => (&rest[..at], exponent),
            Err(_) => return text.to_owned(),
        },
        None => (rest, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return text.to_owned();
    }
    let digits = format!("{whole}{fraction}");
    let significant = digits.trim_start_matches('0');
    let kept = significant.trim_end_matches('0');
    if kept.is_empty() {
        return "0".to_owned();
    }
    let shift = (significant.len() - kept.len()) as i64 - fraction.len() as i64;
    let Some(exponent) = exponent.checked_add(shift) else {
        return text.to_owned();
    };
    format!("{}{kept}e{exponent}", if negative { "-" } else { "" })
}

/// Nanoseconds since the Unix epoch of a timestamp with a time of day
/// (`YYYY-MM-DD`, `T` or a space, `HH:MM:SS`, a fraction, and `Z` or an
/// offset; without one, UTC), as Postgres and the engines write them.
pub fn timestamp_nanos(text: &str) -> Option<i128> {
    let b = text.as_bytes();
    if b.len() < 19 || !b[..19].is_ascii() {
        return None;
    }
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = &text[range];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 24
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut nanos: i128 = 0;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        let fraction = &text[start..at.min(start + 9)];
        nanos = fraction.parse::<i128>().ok()? * 10i128.pow(9 - fraction.len() as u32);
    }
    let offset_seconds: i64 = match &text[at..] {
        "" | "Z" | "z" => 0,
        zone => {
            let sign = match zone.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
            if !digits.bytes().all(|c| c.is_ascii_digit()) || ![2, 4, 6].contains(&digits.len()) {
                return None;
            }
            let part = |r: std::ops::Range<usize>| {
                digits.get(r).map_or(Some(0), |p| p.parse::<i64>().ok())
            };
            sign * (part(0..2)? * 3600 + part(2..4)? * 60 + part(4..6)?)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(seconds as i128 * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = of_era * 365 + of_era / 4 - of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) -> bool {
        content_hash(a.as_bytes()) == content_hash(b.as_bytes())
    }

    #[test]
    fn equal_values_hash_alike() {
        assert!(same(r#"{"a":1,"b":"x"}"#, r#"{ "b": "x", "a": 1.0 }"#));
        assert!(same(r#"{"n":120}"#, r#"{"n":1.2e2}"#));
        assert!(same(r#"{"n":-0.50}"#, r#"{"n":-5E-1}"#));
        assert!(same(r#"{"n":0}"#, r#"{"n":-0.0}"#));
        assert!(same(
            r#"{"t":"2024-05-01 10:00:00+02"}"#,
            r#"{"t":"2024-05-01T08:00:00Z"}"#
        ));
        assert!(same(
            r#"{"t":"2024-05-01T08:00:00.120+00:00"}"#,
            r#"{"t":"2024-05-01T08:00:00.12Z"}"#
        ));
        assert!(same(
            r#"{"o":{"x":[1,2],"y":null}}"#,
            r#"{"o":{"y":null,"x":[1,2.0]}}"#
        ));
        assert!(same(
            r#"{"big":123456789012345678901234567890}"#,
            r#"{"big":1.2345678901234567890123456789e29}"#
        ));
    }

    #[test]
    fn different_values_hash_apart() {
        assert!(!same(r#"{"a":1}"#, r#"{"a":"1"}"#));
        assert!(!same(r#"{"a":1}"#, r#"{"a":1,"b":null}"#));
        assert!(!same(r#"{"a":[1,2]}"#, r#"{"a":[2,1]}"#));
        assert!(!same(r#"{"a":1,"b":2}"#, r#"{"a":2,"b":1}"#));
        assert!(!same(r#"{"a":{"b":1}}"#, r#"{"b":{"a":1}}"#));
        assert!(!same(
            r#"{"big":123456789012345678901234567890}"#,
            r#"{"big":123456789012345678901234567891}"#
        ));
        assert!(!same(
            r#"{"t":"2024-05-01T08:00:00Z"}"#,
            r#"{"t":"2024-05-01T08:00:01Z"}"#
        ));
        assert!(!same(r#"{"a":true}"#, r#"{"a":1}"#));
        assert!(!same("not json", "not json either"));
        assert!(same("not json", "not json"));
    }

    #[test]
    fn numbers_are_written_one_way() {
        assert_eq!(normal_number("1.50"), "15e-1");
        assert_eq!(normal_number("150"), "15e1");
        assert_eq!(normal_number("0.000"), "0");
        assert_eq!(normal_number("-2e+3"), "-2e3");
        assert_eq!(normal_number("007"), "7e0");
    }

    #[test]
    fn timestamps_are_read_by_their_instant() {
        assert_eq!(timestamp_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            timestamp_nanos("1970-01-02 00:00:00+01:00"),
            Some(82_800 * 1_000_000_000)
        );
        assert_eq!(
            timestamp_nanos("2000-03-01T00:00:00.5Z"),
            Some(951_868_800_500_000_000)
        );
        assert_eq!(
            timestamp_nanos("1969-12-31T23:59:59Z"),
            Some(-1_000_000_000)
        );
        assert_eq!(timestamp_nanos("2024-05-01"), None);
        assert_eq!(timestamp_nanos("a tall shoe, size 2024-05-01"), None);
        assert_eq!(timestamp_nanos("2024-05-01T10:00:00 and more"), None);
        assert_eq!(timestamp_nanos("2024-05-01T10:00:0é"), None);
        assert_eq!(
            normal_number("1e9223372036854775807"),
            "1e9223372036854775807"
        );
        assert_eq!(
            normal_number("10e9223372036854775807"),
            "10e9223372036854775807"
        );
    }
}
