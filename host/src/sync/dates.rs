//! The `date` of a write, chosen so that Waldur files it under the month we mean.
//!
//! Waldur 8 files a usage under the month of its `date`, in the server's own time zone
//! (`TIME_ZONE`, UTC unless the site changed it); the agent computes months in the
//! configured `timezone`. The two may differ. A date at least [`EDGE`] away from both
//! ends of its month lands in the same month for any Waldur whose zone is within
//! `EDGE` of `timezone`: past months are dated the 1st at noon. The current month is
//! dated now, except near its edges, where no date is safe (the month has not begun
//! yet for a Waldur behind us) or the date is held back to `EDGE` before the end.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

use crate::period::Month;

/// How far a Waldur's time zone may be from `timezone` for writes to land right.
pub const EDGE: SignedDuration = SignedDuration::from_hours(12);

/// How to date a write into the current month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CurrentDate {
    /// Dated now: safe for any Waldur.
    Now(String),
    /// Dated earlier than now, `EDGE` before the month ends: right only where Waldur
    /// honours `date`.
    HeldBack(String),
    /// The month is younger than `EDGE`: no date in it is safe yet.
    TooEarly,
}

fn shown(zoned: &Zoned) -> String {
    zoned.timestamp().display_with_offset(zoned.offset()).to_string()
}

/// The start of `month` in `tz`. Months exist from 1970 to 9999, where every zone has
/// a start of day.
fn start(month: Month, tz: &TimeZone) -> Option<Zoned> {
    month.first_day().to_zoned(tz.clone()).ok()
}

/// The date of a write into a past month: its 1st at noon on the wall clock of `tz`
/// (not 12 hours after midnight: on a day when the clocks change those differ), with
/// the offset.
pub fn past_month(month: Month, tz: &TimeZone) -> Option<String> {
    let noon = month.first_day().at(12, 0, 0, 0).to_zoned(tz.clone()).ok()?;
    Some(shown(&noon))
}

/// The date of a write into `month`, the current month at `now`.
pub fn current_month(month: Month, now: Timestamp, tz: &TimeZone) -> CurrentDate {
    let (Some(begin), Some(end)) = (start(month, tz), start(month.next(), tz)) else {
        return CurrentDate::TooEarly;
    };
    let now = now.to_zoned(tz.clone());
    if now.timestamp() < begin.timestamp() + EDGE {
        return CurrentDate::TooEarly;
    }
    match end.checked_sub(EDGE) {
        Ok(latest) if now.timestamp() > latest.timestamp() => CurrentDate::HeldBack(shown(&latest)),
        _ => CurrentDate::Now(shown(&now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zurich() -> TimeZone {
        TimeZone::get("Europe/Zurich").unwrap_or(TimeZone::UTC)
    }

    #[test]
    fn past_months_are_dated_the_first_at_noon() -> anyhow::Result<()> {
        assert_eq!(past_month(Month::new(2026, 11)?, &zurich()).as_deref(), Some("2026-11-01T12:00:00+01:00"));
        assert_eq!(past_month(Month::new(2026, 7)?, &zurich()).as_deref(), Some("2026-07-01T12:00:00+02:00"));
        Ok(())
    }

    #[test]
    fn a_past_date_lands_in_its_month_in_any_zone_within_twelve_hours() -> anyhow::Result<()> {
        let month = Month::new(2026, 11)?;
        for agent in
            [TimeZone::UTC, zurich(), TimeZone::get("Pacific/Auckland")?, TimeZone::get("America/Los_Angeles")?]
        {
            let date: Timestamp = past_month(month, &agent).unwrap_or_default().parse()?;
            let agent_offset = date.to_zoned(agent.clone()).offset().seconds();
            for hours in -12..=12 {
                let waldur = TimeZone::fixed(jiff::tz::Offset::from_seconds(agent_offset + hours * 3600)?);
                assert_eq!(Month::containing(date, &waldur), month, "agent {agent:?}, Waldur {hours:+} h");
            }
        }
        Ok(())
    }

    #[test]
    fn the_current_month_is_dated_now_away_from_its_edges() -> anyhow::Result<()> {
        let month = Month::new(2026, 12)?;
        let mid: Timestamp = "2026-12-15T10:00:00Z".parse()?;
        assert_eq!(current_month(month, mid, &zurich()), CurrentDate::Now("2026-12-15T11:00:00+01:00".into()));
        let early: Timestamp = "2026-11-30T23:30:00Z".parse()?; // 00:30 on the 1st in Zurich
        assert_eq!(current_month(month, early, &zurich()), CurrentDate::TooEarly);
        let late: Timestamp = "2026-12-31T20:00:00Z".parse()?;
        assert_eq!(current_month(month, late, &zurich()), CurrentDate::HeldBack("2026-12-31T12:00:00+01:00".into()));
        Ok(())
    }
}
