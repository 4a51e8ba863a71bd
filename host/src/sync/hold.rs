//! Past-month writes held after a read-back found a written value under another month.
//!
//! The verdict needs positive evidence: the value just written, found under another
//! billing period of the same resource and component, dated as it was sent (or, where
//! Waldur dates writes itself, during the run). Absence alone proves nothing: a listing
//! that concurrent writers reorder can skip rows, and someone may have deleted them.
//!
//! A hold is not for the life of the process. Every later run that covers past months
//! looks at the evidence again ([`recheck`]) before writing: it ends when Waldur now lists
//! the value where it was meant to go, or when the evidence is gone (usages deleted or
//! changed since); while it stands, the same value is written again with the same date,
//! which changes nothing where Waldur still files that date under the other month, and
//! shows where it lands now.

use jiff::{SignedDuration, Timestamp};

use crate::amount::Cents;
use crate::waldur::{ComponentUsage, WaldurClient, WaldurError};

/// A written value Waldur filed under another billing period.
#[derive(Debug, Clone)]
pub(crate) struct Misfiled {
    pub(crate) resource_uuid: String,
    pub(crate) backend_id: String,
    pub(crate) component: String,
    pub(crate) wrote: Cents,
    /// The billing period it was written for (`YYYY-MM-01`).
    pub(crate) meant: String,
    /// The billing period Waldur lists it under.
    pub(crate) found: String,
    /// The `date` it was sent with.
    pub(crate) date: String,
    /// When the read-back found it.
    pub(crate) since: Timestamp,
}

impl Misfiled {
    /// `a value written for 2024-02-01 is under 2024-01-01 (resource p1 nodeHours 12.00, dated …)`.
    pub(crate) fn describe(&self) -> String {
        format!(
            "a value written for billing period {} is under {} (resource {} {} {}, dated {})",
            self.meant, self.found, self.backend_id, self.component, self.wrote, self.date
        )
    }
}

/// How far a date Waldur set itself may be from the start of the run, for clocks that
/// differ a little.
const CLOCK_SLACK: SignedDuration = SignedDuration::from_hours(1);

/// Whether `row`, under another billing period than `meant`, is the value `wrote` just
/// written with `date` by a run that started at `started`: the same amount, and dated as
/// sent (Waldur 8) or during the run (a Waldur that dates writes itself).
pub(crate) fn is_evidence(row: &ComponentUsage, meant: &str, wrote: Cents, date: &str, started: Timestamp) -> bool {
    if row.billing_period == meant || row.amount != wrote {
        return false;
    }
    let Some(dated) = row.date.as_deref().and_then(|d| d.parse::<Timestamp>().ok()) else { return false };
    let as_sent =
        date.parse::<Timestamp>().is_ok_and(|sent| dated.duration_since(sent).abs() < SignedDuration::from_secs(1));
    as_sent || dated >= started.saturating_sub(CLOCK_SLACK).unwrap_or(started)
}

/// What a later look at a hold found.
#[derive(Debug)]
pub(crate) enum Recheck {
    /// The evidence stands and a write with the same date still lands elsewhere.
    Stands,
    /// Writes may go ahead again, for the reason given.
    Lifted(String),
}

/// Looks at the evidence of `held` again: see the module documentation.
pub(crate) async fn recheck(waldur: &WaldurClient, held: &Misfiled) -> Result<Recheck, WaldurError> {
    let holds = |rows: &[ComponentUsage], period: &str| {
        rows.iter().any(|u| u.component_type == held.component && u.billing_period == period && u.amount == held.wrote)
    };
    let rows = waldur.resource_usages(&held.resource_uuid).await?;
    if holds(&rows, &held.meant) {
        return Ok(Recheck::Lifted(format!("Waldur now lists the value under {}", held.meant)));
    }
    if !holds(&rows, &held.found) {
        return Ok(Recheck::Lifted(format!(
            "the value is no longer under {} (usages changed or deleted since)",
            held.found
        )));
    }
    waldur.set_usage(&held.resource_uuid, &[(held.component.clone(), held.wrote)], &held.date).await?;
    let rows = waldur.resource_usages(&held.resource_uuid).await?;
    if holds(&rows, &held.meant) {
        return Ok(Recheck::Lifted(format!(
            "the same value written again with date {} now lands under {}",
            held.date, held.meant
        )));
    }
    Ok(Recheck::Stands)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(period: &str, amount: i64, date: Option<&str>) -> ComponentUsage {
        ComponentUsage {
            uuid: "u".into(),
            resource_uuid: "r".into(),
            component_type: "nodeHours".into(),
            amount: Cents(amount),
            billing_period: period.into(),
            date: date.map(str::to_owned),
        }
    }

    #[test]
    fn only_the_value_as_sent_or_dated_during_the_run_is_evidence() -> Result<(), jiff::Error> {
        let started: Timestamp = "2024-03-15T12:00:00Z".parse()?;
        let sent = "2024-02-01T12:00:00+14:00";
        // Filed under January, dated as sent (the same instant in Waldur's zone).
        assert!(is_evidence(
            &row("2024-01-01", 1200, Some("2024-01-31T11:00:00-11:00")),
            "2024-02-01",
            Cents(1200),
            sent,
            started
        ));
        // Where it was meant to go: no evidence of anything.
        assert!(!is_evidence(&row("2024-02-01", 1200, Some(sent)), "2024-02-01", Cents(1200), sent, started));
        // Another amount, or an old row that happens to hold it: no evidence.
        assert!(!is_evidence(&row("2024-01-01", 1300, Some(sent)), "2024-02-01", Cents(1200), sent, started));
        assert!(!is_evidence(
            &row("2024-01-01", 1200, Some("2024-01-10T08:00:00Z")),
            "2024-02-01",
            Cents(1200),
            sent,
            started
        ));
        assert!(!is_evidence(&row("2024-01-01", 1200, None), "2024-02-01", Cents(1200), sent, started));
        // Dated by Waldur during the run (a Waldur that ignores `date`).
        assert!(is_evidence(
            &row("2024-03-01", 1200, Some("2024-03-15T12:00:05Z")),
            "2024-02-01",
            Cents(1200),
            sent,
            started
        ));
        Ok(())
    }
}
