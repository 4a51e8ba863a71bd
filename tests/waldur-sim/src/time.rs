//! Calendar arithmetic and the ISO 8601 forms DRF accepts, without a date crate.
//!
//! Waldur stores timestamps in UTC and renders them in its configured time zone; the
//! simulator models that zone as a fixed UTC offset. Only what the endpoints need is
//! here: civil dates, month starts, parsing DRF `DateTimeField` / `DateField` input and
//! rendering timestamps the way DRF does (`Z` for UTC, microseconds only when non-zero).

use std::time::{SystemTime, UNIX_EPOCH};

/// A civil (proleptic Gregorian) date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Date {
    pub(crate) year: i32,
    pub(crate) month: u32,
    pub(crate) day: u32,
}

impl Date {
    /// A date, or `None` when it does not exist (month 13, 30 February, ...).
    pub(crate) fn new(year: i32, month: u32, day: u32) -> Option<Date> {
        if !(1..=9999).contains(&year) || !(1..=12).contains(&month) {
            return None;
        }
        if day == 0 || day > days_in_month(year, month) {
            return None;
        }
        Some(Date { year, month, day })
    }

    /// The first day of this date's month: the Waldur billing period.
    pub(crate) fn month_start(self) -> Date {
        Date { day: 1, ..self }
    }

    /// Days since 1970-01-01 (negative before).
    pub(crate) fn days_since_epoch(self) -> i64 {
        // Howard Hinnant's days_from_civil.
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The inverse of [`Date::days_since_epoch`].
    pub(crate) fn from_days_since_epoch(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Date { year, month, day }
    }

    /// Parses what Django's `DateField` accepts by default (`%Y-%m-%d`, where month and
    /// day may have one digit).
    pub(crate) fn parse(text: &str) -> Option<Date> {
        let text = text.trim();
        let mut parts = text.split('-');
        let year = parse_digits(parts.next()?, 4, 4)?;
        let month = parse_digits(parts.next()?, 1, 2)?;
        let day = parse_digits(parts.next()?, 1, 2)?;
        if parts.next().is_some() {
            return None;
        }
        Date::new(year as i32, month, day)
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// ASCII digits only, between `min` and `max` of them.
fn parse_digits(text: &str, min: usize, max: usize) -> Option<u32> {
    if text.len() < min || text.len() > max || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// An instant, as seconds and microseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timestamp {
    pub(crate) secs: i64,
    pub(crate) micros: u32,
}

impl Timestamp {
    /// The wall clock.
    pub(crate) fn now() -> Timestamp {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp { secs: since.as_secs() as i64, micros: since.subsec_micros() }
    }

    /// Local midnight plus `seconds_of_day` of `date`, in a zone `offset_secs` east of UTC.
    pub(crate) fn from_local(date: Date, seconds_of_day: i64, offset_secs: i64) -> Timestamp {
        Timestamp { secs: date.days_since_epoch() * 86_400 + seconds_of_day - offset_secs, micros: 0 }
    }

    /// The civil date of this instant in a zone `offset_secs` east of UTC.
    pub(crate) fn local_date(self, offset_secs: i64) -> Date {
        Date::from_days_since_epoch((self.secs + offset_secs).div_euclid(86_400))
    }

    /// Renders like DRF's `DateTimeField` in a zone `offset_secs` east of UTC:
    /// `2024-01-15T10:00:00Z`, `2024-01-15T11:00:00.500000+01:00`.
    pub(crate) fn format(self, offset_secs: i64) -> String {
        let local = self.secs + offset_secs;
        let date = Date::from_days_since_epoch(local.div_euclid(86_400));
        let sod = local.rem_euclid(86_400);
        let mut out = format!("{date}T{:02}:{:02}:{:02}", sod / 3600, (sod / 60) % 60, sod % 60);
        if self.micros != 0 {
            out.push_str(&format!(".{:06}", self.micros));
        }
        if offset_secs == 0 {
            out.push('Z');
        } else {
            let sign = if offset_secs < 0 { '-' } else { '+' };
            let abs = offset_secs.abs();
            out.push_str(&format!("{sign}{:02}:{:02}", abs / 3600, (abs / 60) % 60));
        }
        out
    }

    /// Parses what DRF's `DateTimeField` accepts in its default `iso-8601` mode
    /// (Django's `parse_datetime`): `YYYY-MM-DD[( |T)hh:mm[:ss[.ffffff]]][Z|±hh[[:]mm]]`.
    /// A value without a time is midnight; one without a zone is in the server's zone,
    /// `default_offset_secs` east of UTC, as Django does with `USE_TZ`.
    pub(crate) fn parse(text: &str, default_offset_secs: i64) -> Option<Timestamp> {
        let text = text.trim();
        let date_len = text.find(['T', 't', ' ']).unwrap_or(text.len());
        let date = Date::parse(&text[..date_len])?;
        let rest = &text[date_len..];
        if rest.is_empty() {
            return Some(Timestamp::from_local(date, 0, default_offset_secs));
        }
        let rest = &rest[1..];
        // Split the zone designator off the time.
        let zone_at = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
        let (time, zone) = rest.split_at(zone_at);
        let time = time.trim_end();
        let (clock, fraction) = match time.split_once(['.', ',']) {
            Some((clock, fraction)) => (clock, Some(fraction)),
            None => (time, None),
        };
        let mut fields = clock.split(':');
        let hour = parse_digits(fields.next()?, 1, 2)?;
        let minute = parse_digits(fields.next()?, 1, 2)?;
        let second = match fields.next() {
            Some(s) => parse_digits(s, 1, 2)?,
            None if fraction.is_some() => return None,
            None => 0,
        };
        if fields.next().is_some() || hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        let micros = match fraction {
            None => 0,
            Some(f) => {
                if f.is_empty() || f.len() > 12 || !f.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                // Django keeps the first six digits and ignores up to six more.
                let kept = &f[..f.len().min(6)];
                let value: u32 = kept.parse().ok()?;
                value * 10u32.pow(6 - kept.len() as u32)
            }
        };
        let offset = match zone {
            "" => default_offset_secs,
            "Z" | "z" => 0,
            _ => parse_offset(zone)?,
        };
        let sod = i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
        let mut ts = Timestamp::from_local(date, sod, offset);
        ts.micros = micros;
        Some(ts)
    }
}

/// `±hh`, `±hhmm` or `±hh:mm`, in seconds east of UTC.
fn parse_offset(zone: &str) -> Option<i64> {
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let body = &zone[1..];
    let (hours, minutes) = match body.len() {
        2 => (body, "00"),
        4 => body.split_at(2),
        5 if body.as_bytes()[2] == b':' => (&body[..2], &body[3..]),
        _ => return None,
    };
    let hours = parse_digits(hours, 2, 2)?;
    let minutes = parse_digits(minutes, 2, 2)?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * (i64::from(hours) * 3600 + i64::from(minutes) * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> Date {
        Date::new(y, m, d).expect("valid date")
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000, -1, 0, 1, 19_000, 20_089, 2_932_896] {
            assert_eq!(Date::from_days_since_epoch(days).days_since_epoch(), days);
        }
        assert_eq!(date(1970, 1, 1).days_since_epoch(), 0);
        assert_eq!(date(2024, 3, 1).days_since_epoch() - date(2024, 2, 1).days_since_epoch(), 29);
    }

    #[test]
    fn rejects_impossible_dates() {
        assert!(Date::new(2023, 2, 29).is_none());
        assert!(Date::new(2024, 13, 1).is_none());
        assert_eq!(Date::parse("2024-2-5"), Some(date(2024, 2, 5)));
        assert!(Date::parse("2024-02").is_none());
        assert!(Date::parse("24-02-01").is_none());
    }

    #[test]
    fn parses_drf_datetimes() {
        let utc = |s| Timestamp::parse(s, 0).map(|t| t.format(0));
        assert_eq!(utc("2024-01-15T00:00:00Z").as_deref(), Some("2024-01-15T00:00:00Z"));
        assert_eq!(utc("2024-01-15").as_deref(), Some("2024-01-15T00:00:00Z"));
        assert_eq!(utc("2024-01-15 10:30").as_deref(), Some("2024-01-15T10:30:00Z"));
        assert_eq!(utc("2024-02-01T00:00:00+01:00").as_deref(), Some("2024-01-31T23:00:00Z"));
        assert_eq!(utc("2024-01-15T10:00:00.5-0130").as_deref(), Some("2024-01-15T11:30:00.500000Z"));
        assert_eq!(utc("2024-01-15T10:00:00.123456789Z").as_deref(), Some("2024-01-15T10:00:00.123456Z"));
        for bad in ["", "yesterday", "2024-01-15T25:00", "2024-01-15T10", "2024-01-15T10:00+1", "2024-01-32"] {
            assert_eq!(utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn naive_values_are_in_the_server_zone() {
        let ts = Timestamp::parse("2024-02-01T00:30:00", 3600).expect("parses");
        assert_eq!(ts.local_date(3600), date(2024, 2, 1));
        assert_eq!(ts.local_date(0), date(2024, 1, 31));
        assert_eq!(ts.format(3600), "2024-02-01T00:30:00+01:00");
    }
}
