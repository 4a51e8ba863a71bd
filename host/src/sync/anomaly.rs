//! The anomaly rule of waldur-site-agent 1.0.7's report mode: a total lower than the one
//! Waldur holds for the month is refused, unless the backend says its values may go
//! down (`usage-traits`, 3.1.0; the DWDI backends do).
//!
//! As the Python agent has it (`OfferingReportProcessor._submit_total_usage_for_resource`):
//! only a value that differs from Waldur's is looked at; a stored component usage that
//! has per-user usages under it takes no part (the agent compares "aggregate records"
//! only); one decrease refuses the resource's whole month — its other totals and its
//! per-user usage too — unless the offering sets `omit_anomalous_usage_components`, which
//! leaves out only the components that went down, and refuses the month all the same
//! when every component measured went down. `load-historical-usage` writes what the
//! backend says, as the Python loader does.

use crate::amount::Cents;

/// A total lower than the one Waldur holds for the month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decrease {
    pub component: String,
    pub held: Cents,
    pub new: Cents,
}

/// What the rule leaves of one resource's month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing went down: written as planned.
    Clean,
    /// Only these totals are left out (and their per-user usage); the rest is written.
    Omitted(Vec<Decrease>),
    /// Nothing of the resource's month is written.
    Refused(Vec<Decrease>),
}

/// The totals of `send` lower than Waldur's, where `held` gives what Waldur holds for a
/// component and `checked` whether that record takes part in the rule (it has no
/// per-user usages).
pub(crate) fn decreases(
    send: &[(String, Cents)],
    held: impl Fn(&str) -> Option<Cents>,
    checked: impl Fn(&str) -> bool,
) -> Vec<Decrease> {
    send.iter()
        .filter_map(|(component, new)| {
            let held = held(component)?;
            (*new < held && checked(component)).then(|| Decrease { component: component.clone(), held, new: *new })
        })
        .collect()
}

/// Applies the rule to the totals about to be `send` for one resource: `measured` is how
/// many of the offering's components the backend measured for it (sent or unchanged);
/// `omit` is `omit_anomalous_usage_components`. Leaves in `send` what may be written.
pub(crate) fn judge(send: &mut Vec<(String, Cents)>, found: Vec<Decrease>, measured: usize, omit: bool) -> Verdict {
    if found.is_empty() {
        return Verdict::Clean;
    }
    if !omit || found.len() >= measured {
        send.clear();
        return Verdict::Refused(found);
    }
    send.retain(|(component, _)| !found.iter().any(|d| &d.component == component));
    Verdict::Omitted(found)
}

/// The decreases on one line: `nodeHours 12.50 (Waldur holds 14.00), cpuHours …`.
pub(crate) fn describe(found: &[Decrease]) -> String {
    found.iter().map(|d| format!("{} {} (Waldur holds {})", d.component, d.new, d.held)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(values: &[(&str, i64)]) -> Vec<(String, Cents)> {
        values.iter().map(|(c, v)| ((*c).to_owned(), Cents(*v))).collect()
    }

    fn held<'a>(values: &'a [(&'a str, i64)]) -> impl Fn(&str) -> Option<Cents> + 'a {
        move |c| values.iter().find(|(name, _)| *name == c).map(|(_, v)| Cents(*v))
    }

    #[test]
    fn only_a_value_below_a_checked_record_is_a_decrease() {
        let planned = send(&[("node", 100), ("cpu", 300), ("gpu", 50)]);
        let stored = [("node", 150), ("cpu", 200), ("gpu", 80)];
        let found = decreases(&planned, held(&stored), |c| c != "gpu");
        assert_eq!(found, vec![Decrease { component: "node".into(), held: Cents(150), new: Cents(100) }]);
        // New components (nothing held) and increases are never decreases.
        assert!(decreases(&send(&[("node", 1)]), held(&[]), |_| true).is_empty());
        assert!(decreases(&send(&[("node", 200)]), held(&stored), |_| true).is_empty());
    }

    #[test]
    fn one_decrease_refuses_the_month_unless_omitted() {
        let decrease = || vec![Decrease { component: "node".into(), held: Cents(150), new: Cents(100) }];
        let mut planned = send(&[("node", 100), ("cpu", 300)]);
        assert_eq!(judge(&mut planned, decrease(), 2, false), Verdict::Refused(decrease()));
        assert!(planned.is_empty());
        let mut planned = send(&[("node", 100), ("cpu", 300)]);
        assert_eq!(judge(&mut planned, decrease(), 2, true), Verdict::Omitted(decrease()));
        assert_eq!(planned, send(&[("cpu", 300)]));
        // Omitting leaves nothing measured: refused all the same, as in the Python agent.
        let mut planned = send(&[("node", 100)]);
        assert_eq!(judge(&mut planned, decrease(), 1, true), Verdict::Refused(decrease()));
        // An unchanged component still counts as measured: node is left out, nothing
        // else needs writing, and that is no refusal.
        let mut planned = send(&[("node", 100)]);
        assert_eq!(judge(&mut planned, decrease(), 2, true), Verdict::Omitted(decrease()));
        assert!(planned.is_empty());
        let mut planned = send(&[("cpu", 300)]);
        assert_eq!(judge(&mut planned, Vec::new(), 2, false), Verdict::Clean);
        assert_eq!(planned, send(&[("cpu", 300)]));
    }

    #[test]
    fn decreases_read_in_one_line() {
        let found = [
            Decrease { component: "node".into(), held: Cents(1400), new: Cents(1250) },
            Decrease { component: "cpu".into(), held: Cents(5), new: Cents(0) },
        ];
        assert_eq!(describe(&found), "node 12.50 (Waldur holds 14.00), cpu 0.00 (Waldur holds 0.05)");
    }
}
