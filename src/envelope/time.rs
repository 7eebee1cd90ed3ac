//! RFC 3339 timestamps as the wire contract wants them: always with an offset.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

/// Formats a time as RFC 3339 in UTC with a `Z` offset and microseconds.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses an RFC 3339 time. A time without offset (MicroDCS writes naive
/// times) is read as UTC rather than rejected, so such clients keep working.
///
/// # Errors
/// The text is neither RFC 3339 nor an ISO 8601 date-time without offset.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(n.and_utc());
        }
    }
    Err(format!("'{s}' is not an RFC 3339 time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_time_carries_an_offset() {
        let t = parse_time("2026-11-24T10:00:00+02:00").unwrap();
        assert_eq!(format_time(&t), "2026-11-24T08:00:00.000000Z");
    }

    #[test]
    fn any_number_of_fractional_digits_is_accepted() {
        for (text, want) in [
            ("2026-11-24T10:00:00Z", "2026-11-24T10:00:00.000000Z"),
            ("2026-11-24T10:00:00.1Z", "2026-11-24T10:00:00.100000Z"),
            (
                "2026-11-24T10:00:00.123456789Z",
                "2026-11-24T10:00:00.123456Z",
            ),
            (
                "2026-11-24T10:00:00.1234567891234+00:00",
                "2026-11-24T10:00:00.123456Z",
            ),
            (
                "2026-11-24T10:00:00.1234567891234",
                "2026-11-24T10:00:00.123456Z",
            ),
            ("2026-11-24T10:00:00", "2026-11-24T10:00:00.000000Z"),
        ] {
            let t = parse_time(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(format_time(&t), want, "{text}");
        }
    }

    #[test]
    fn naive_time_is_read_as_utc() {
        let t = parse_time("2026-11-24T10:00:00.5").unwrap();
        assert_eq!(format_time(&t), "2026-11-24T10:00:00.500000Z");
        assert!(parse_time("yesterday").is_err());
    }
}
