//! Commit timestamps (microseconds since the Postgres epoch) as RFC 3339 text.

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01 UTC).
pub const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Postgres epoch (2000-01-01) microseconds to an RFC 3339 UTC string with
/// microsecond precision, e.g. `2024-05-01T10:20:30.123456Z`.
///
/// Postgres' `infinity` and `-infinity` (`i64::MAX`, `i64::MIN`) come out as
/// those words; years past 9999 get more digits, years before 1 a minus sign.
pub fn format_commit_time(micros: i64) -> String {
    match micros {
        i64::MAX => return "infinity".to_owned(),
        i64::MIN => return "-infinity".to_owned(),
        _ => {}
    }
    let unix_micros = i128::from(micros) + i128::from(POSTGRES_EPOCH_UNIX_MICROS);
    let secs = unix_micros.div_euclid(1_000_000);
    let frac = unix_micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let year = if year < 0 {
        format!("-{:04}", -year)
    } else {
        format!("{year:04}")
    };
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Proleptic Gregorian date of a count of days since 1970-01-01
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_commit_time() {
        assert_eq!(format_commit_time(0), "2000-01-01T00:00:00.000000Z");
        // 2024-05-01T10:20:30.123456Z = Unix 1714558830.123456
        let micros = 1_714_558_830_123_456 - POSTGRES_EPOCH_UNIX_MICROS;
        assert_eq!(format_commit_time(micros), "2024-05-01T10:20:30.123456Z");
        assert_eq!(format_commit_time(-1), "1999-12-31T23:59:59.999999Z");
        assert_eq!(
            format_commit_time(-POSTGRES_EPOCH_UNIX_MICROS),
            "1970-01-01T00:00:00.000000Z"
        );
        // Leap day.
        let micros = 951_782_400_000_000 - POSTGRES_EPOCH_UNIX_MICROS;
        assert_eq!(format_commit_time(micros), "2000-02-29T00:00:00.000000Z");
        assert_eq!(format_commit_time(i64::MAX), "infinity");
        assert_eq!(format_commit_time(i64::MIN), "-infinity");
        assert_eq!(
            format_commit_time(i64::MAX - 1),
            "294277-01-09T04:00:54.775806Z"
        );
        assert_eq!(
            format_commit_time(i64::MIN + 1),
            "-290278-12-22T19:59:05.224193Z"
        );
    }
}
