//! Time with zone and timestamps: Postgres' ISO output made RFC 3339 when it
//! can be, kept as text otherwise.

use super::{all_digits, write_json_string};

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

pub(super) fn write_timetz(text: &[u8], out: &mut Vec<u8>) {
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
pub(super) fn write_timestamp(text: &[u8], with_zone: bool, out: &mut Vec<u8>) {
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

#[cfg(test)]
mod tests {
    use crate::postgres::types::tests::to_json;
    use crate::postgres::types::TypeKind;

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
}
