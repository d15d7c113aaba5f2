//! The time of an imported record, from whatever its source wrote: an
//! RFC 3339 timestamp, a date-time without a zone (MySQL `DATETIME`,
//! Python's `asctime`), or a Unix time.

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::Timestamp;
use serde_json::Value;

/// `--timezone`: an IANA name (`Asia/Shanghai`), `UTC`, `local` (this
/// host's zone) or a fixed offset (`+08:00`).
pub fn parse_zone(name: &str) -> Result<TimeZone, String> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("utc") || name == "Z" {
        return Ok(TimeZone::UTC);
    }
    if name.eq_ignore_ascii_case("local") {
        return Ok(TimeZone::system());
    }
    if let Some(sign) = name.chars().next().filter(|c| *c == '+' || *c == '-') {
        let (hours, minutes) = name[1..].split_once(':').unwrap_or((&name[1..], "0"));
        let (Ok(hours), Ok(minutes)) = (hours.parse::<i32>(), minutes.parse::<i32>()) else {
            return Err(format!("{name:?} is not an offset like +08:00"));
        };
        let seconds = (hours * 3600 + minutes * 60) * if sign == '-' { -1 } else { 1 };
        return Offset::from_seconds(seconds)
            .map(TimeZone::fixed)
            .map_err(|e| format!("{name:?}: {e}"));
    }
    TimeZone::get(name).map_err(|e| {
        format!("{name:?} is not a time zone (an IANA name like Asia/Shanghai, UTC, local or +08:00): {e}")
    })
}

/// Nanoseconds since the Unix epoch of `value`:
/// - a string with a zone or offset (RFC 3339, `2024-05-01T12:00:00.5Z`):
///   that instant;
/// - a string without one (`2024-05-01 12:00:00`, `2024-05-01T12:00:00,123`):
///   that wall-clock time in `zone` (of a time a DST change makes
///   ambiguous, the earlier; of one it skips, the later);
/// - a number, or a string of one: a Unix time, in seconds, milliseconds,
///   microseconds or nanoseconds, told apart by size (each unit covers the
///   years 1973 to 5138 in a range of its own).
pub fn unix_nanos(value: &Value, zone: &TimeZone) -> Result<u64, String> {
    match value {
        // Its shortest decimal form: read exactly, where an f64 would round
        // the nanoseconds of a float Unix time.
        Value::Number(n) => parse_text(&n.to_string(), zone),
        Value::String(s) => parse_text(s.trim(), zone),
        other => Err(format!("{other} is not a time")),
    }
}

fn parse_text(text: &str, zone: &TimeZone) -> Result<u64, String> {
    if let Some(nanos) = unix_decimal(text) {
        return nanos;
    }
    let timestamp = match text.parse::<Timestamp>() {
        Ok(timestamp) => timestamp,
        Err(_) => {
            let civil: DateTime = text.parse().map_err(|_| {
                format!("{text:?} is not a time (RFC 3339, a date-time like 2024-05-01 12:00:00, or a Unix time)")
            })?;
            zone.to_timestamp(civil)
                .map_err(|e| format!("{text:?}: {e}"))?
        }
    };
    u64::try_from(timestamp.as_nanosecond()).map_err(|_| format!("{text:?} is before 1970"))
}

/// Where a unit's range of plausible values ends: a Unix time below 1e11 is
/// in seconds (up to the year 5138), below 1e14 in milliseconds, and so on;
/// and the nanoseconds in one of that unit.
const UNITS: [(u64, u64); 4] = [
    (100_000_000_000, 1_000_000_000),
    (100_000_000_000_000, 1_000_000),
    (100_000_000_000_000_000, 1_000),
    (u64::MAX, 1),
];

/// A Unix time written as a decimal number (`1714564800`, `1714564800.25`,
/// `-3`): `None` when the text is not a number at all.
fn unix_decimal(text: &str) -> Option<Result<u64, String>> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    if text.starts_with('-') {
        return Some(Err(format!("{text} is before 1970")));
    }
    let Ok(whole) = whole.parse::<u64>() else {
        return Some(Err(format!("{text} is too far in the future")));
    };
    let (_, scale) = UNITS.iter().find(|(below, _)| whole < *below)?;
    // The fraction's digits, as many as the unit has nanoseconds to hold.
    let places = scale.ilog10() as usize;
    let fraction: String = fraction
        .chars()
        .chain(std::iter::repeat('0'))
        .take(places)
        .collect();
    let fraction: u64 = if places == 0 {
        0
    } else {
        fraction.parse().expect("digits")
    };
    Some(
        whole
            .checked_mul(*scale)
            .and_then(|n| n.checked_add(fraction))
            .ok_or_else(|| format!("{text} is too far in the future")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOON: u64 = 1_714_564_800_000_000_000; // 2024-05-01T12:00:00Z

    fn at(value: Value, zone: &str) -> Result<u64, String> {
        unix_nanos(&value, &parse_zone(zone).unwrap())
    }

    #[test]
    fn a_time_with_an_offset_is_that_instant_whatever_the_zone() {
        assert_eq!(at(json!("2024-05-01T12:00:00Z"), "Asia/Shanghai"), Ok(NOON));
        assert_eq!(at(json!("2024-05-01T20:00:00+08:00"), "UTC"), Ok(NOON));
        assert_eq!(
            at(json!("2024-05-01T12:00:00.123456789Z"), "UTC"),
            Ok(NOON + 123_456_789)
        );
    }

    #[test]
    fn a_time_without_a_zone_is_read_in_the_given_one() {
        assert_eq!(at(json!("2024-05-01 12:00:00"), "UTC"), Ok(NOON));
        assert_eq!(
            at(json!("2024-05-01 20:00:00.5"), "Asia/Shanghai"),
            Ok(NOON + 500_000_000)
        );
        assert_eq!(at(json!("2024-05-01T20:00:00"), "+08:00"), Ok(NOON));
        assert_eq!(at(json!("2024-05-01T05:00:00"), "-07:00"), Ok(NOON));
        // Python logging's asctime.
        assert_eq!(
            at(json!("2024-05-01 12:00:00,250"), "UTC"),
            Ok(NOON + 250_000_000)
        );
    }

    #[test]
    fn unix_times_in_any_unit() {
        let s = NOON / 1_000_000_000;
        assert_eq!(at(json!(s), "UTC"), Ok(NOON));
        assert_eq!(at(json!(s * 1000 + 7), "UTC"), Ok(NOON + 7_000_000));
        assert_eq!(at(json!(s * 1_000_000), "UTC"), Ok(NOON));
        assert_eq!(at(json!(NOON + 1), "UTC"), Ok(NOON + 1));
        assert_eq!(at(json!(s as f64 + 0.25), "UTC"), Ok(NOON + 250_000_000));
        assert_eq!(at(json!(s.to_string()), "UTC"), Ok(NOON));
    }

    #[test]
    fn what_is_not_a_time_says_so() {
        assert!(at(json!("yesterday"), "UTC")
            .unwrap_err()
            .contains("\"yesterday\" is not a time"));
        assert!(at(json!(true), "UTC").is_err());
        assert!(at(json!(-5), "UTC").is_err());
        assert!(at(json!("1969-12-31T23:59:59Z"), "UTC")
            .unwrap_err()
            .contains("before 1970"));
        assert!(parse_zone("Mars/Olympus").is_err());
        assert!(parse_zone("+8h").is_err());
    }
}
