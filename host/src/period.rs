//! Billing periods: calendar months in the configured time zone.
//!
//! The host owns the clock; components receive the period explicitly. A month is
//! decided once per cycle, so a cycle that runs across midnight of the 1st still
//! reports one consistent month.

use std::fmt;

use anyhow::{Result, anyhow, bail};
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

/// A calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i16,
    pub month: i8,
}

impl Month {
    pub fn new(year: i16, month: i8) -> Result<Self> {
        if !(1..=12).contains(&month) || !(1970..=9999).contains(&year) {
            bail!("{year:04}-{month:02} is not a month between 1970-01 and 9999-12");
        }
        Ok(Self { year, month })
    }

    /// The month containing `now` in time zone `tz`.
    pub fn containing(now: Timestamp, tz: &TimeZone) -> Self {
        let date = now.to_zoned(tz.clone()).date();
        Self { year: date.year(), month: date.month() }
    }

    /// The month containing `date`.
    pub fn of_date(date: Date) -> Self {
        Self { year: date.year(), month: date.month() }
    }

    /// The month as the WIT contract passes it to a component.
    pub fn billing_period(self) -> crate::runtime::wit::BillingPeriod {
        crate::runtime::wit::BillingPeriod { year: self.year as u16, month: self.month as u8 }
    }

    /// Parses `YYYY-MM`.
    pub fn parse(text: &str) -> Result<Self> {
        let err = || anyhow!("{text:?} is not a month; expected YYYY-MM");
        let (year, month) = text.split_once('-').ok_or_else(err)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(err());
        }
        Self::new(year.parse().map_err(|_| err())?, month.parse().map_err(|_| err())?)
    }

    /// The month before.
    pub fn previous(self) -> Self {
        if self.month == 1 {
            Self { year: self.year - 1, month: 12 }
        } else {
            Self { year: self.year, month: self.month - 1 }
        }
    }

    /// The month after.
    pub fn next(self) -> Self {
        if self.month == 12 {
            Self { year: self.year + 1, month: 1 }
        } else {
            Self { year: self.year, month: self.month + 1 }
        }
    }

    /// The first day, Waldur's `billing_period`.
    pub fn first_day(self) -> Date {
        // Month::new guarantees a valid year and month.
        Date::new(self.year, self.month, 1).unwrap_or(Date::MIN)
    }

    /// The last `count` months up to and including `self`, oldest first.
    pub fn back(self, count: u32) -> Vec<Month> {
        let mut months = Vec::with_capacity(count as usize);
        let mut month = self;
        for _ in 0..count {
            months.push(month);
            month = month.previous();
        }
        months.reverse();
        months
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// The configured time zone, UTC when none is set.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone> {
    match name {
        None => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name).map_err(|e| anyhow!("timezone: unknown time zone {name:?}: {e}")),
    }
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(text: &str) -> Result<Date> {
    text.parse::<Date>().map_err(|e| anyhow!("{text:?} is not a date; expected YYYY-MM-DD ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_in_a_zone_east_of_utc() -> Result<()> {
        // 2024-02-29 23:30 UTC is already March 1st in Zurich.
        let now: Timestamp = "2024-02-29T23:30:00Z".parse()?;
        assert_eq!(Month::containing(now, &TimeZone::UTC), Month::new(2024, 2)?);
        assert_eq!(Month::containing(now, &time_zone(Some("Europe/Zurich"))?), Month::new(2024, 3)?);
        Ok(())
    }

    #[test]
    fn months_back_cross_the_year() -> Result<()> {
        let months = Month::new(2024, 2)?.back(3);
        assert_eq!(months, vec![Month::new(2023, 12)?, Month::new(2024, 1)?, Month::new(2024, 2)?]);
        assert_eq!(Month::new(2023, 12)?.next(), Month::new(2024, 1)?);
        Ok(())
    }

    #[test]
    fn parses_and_refuses() -> Result<()> {
        assert_eq!(Month::parse("2024-07")?, Month::new(2024, 7)?);
        for bad in ["2024-13", "2024-7", "24-07", "2024/07", "July"] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
        assert!(parse_date("2024-02-30").is_err());
        Ok(())
    }
}
