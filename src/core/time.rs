//! Time: the `--now` override and RFC 3339 timestamps in the key manifest.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

/// Parse `--now`: RFC 3339 (`2026-11-23T12:00:00Z`) or a date (`2026-11-23`, midnight UTC).
pub fn parse_now(s: &str) -> Result<i64, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc().timestamp());
        }
    }
    Err(format!(
        "invalid time {s:?}: expected RFC 3339 (2026-11-23T12:00:00Z) or YYYY-MM-DD"
    ))
}

/// Parse a date (`YYYY-MM-DD`) to midnight UTC.
pub fn parse_date(s: &str) -> Result<i64, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp())
        .ok_or_else(|| format!("invalid date {s:?}: expected YYYY-MM-DD"))
}

/// The system clock, in Unix seconds.
pub fn system_now() -> i64 {
    Utc::now().timestamp()
}

pub fn format_rfc3339(unix: i64) -> String {
    DateTime::<Utc>::from_timestamp(unix, 0).map_or_else(|| unix.to_string(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// The calendar date of a Unix day number.
pub fn format_day(unix_day: i64) -> String {
    DateTime::<Utc>::from_timestamp(unix_day * 86_400, 0).map_or_else(|| unix_day.to_string(), |t| t.format("%Y-%m-%d").to_string())
}

/// serde: i64 Unix seconds as an RFC 3339 string.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_rfc3339(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = String::deserialize(d)?;
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.timestamp())
            .map_err(|e| serde::de::Error::custom(format!("bad time {s:?}: {e}")))
    }
}

/// serde: `Option<i64>` as an optional RFC 3339 string.
pub mod rfc3339_opt {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        super::rfc3339::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_now() {
        assert_eq!(parse_now("2026-11-23").unwrap(), 20_780 * 86_400);
        assert_eq!(parse_now("2026-11-23T01:00:00+01:00").unwrap(), 20_780 * 86_400);
        assert!(parse_now("2026-13-01").is_err());
        assert!(parse_now("yesterday").is_err());
        assert_eq!(format_day(20_780), "2026-11-23");
    }
}
