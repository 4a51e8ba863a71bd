//! Which writes a month needs: pure functions of what the component measured, what
//! Waldur holds and the command's rules, so every rule is tested without a server.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::amount::Cents;
use crate::runtime::wit;
use crate::waldur::{ComponentUserUsage, UserUsageInput};

/// How a command treats zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeros {
    /// A measured zero is a value like any other: written when it differs (`report`).
    Write,
    /// A zero is written only over a stored non-zero value, and only with
    /// `reconcile_stale` (`load-historical-usage`: an empty past month stays empty).
    OnlyToReconcile,
}

/// The rules of a plan, taken from the command's policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub(crate) zeros: Zeros,
    /// A resource the upstream did not mention gets a zero in the current month when
    /// Waldur holds nothing for it yet (the Python agent's behaviour).
    pub absent_is_zero_in_current_month: bool,
    /// Lower stored values to zero where the upstream now says zero or nothing, per
    /// resource and per user.
    pub reconcile_stale: bool,
}

/// The totals of one resource to write.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TotalsPlan {
    pub send: Vec<(String, Cents)>,
    /// Writing creates component usages Waldur does not have yet (their UUIDs are only
    /// known from a listing afterwards).
    pub creates: bool,
    /// Stored non-zero values kept although the upstream did not mention the resource.
    pub kept: Vec<(String, Cents)>,
}

/// Which totals of a resource to send. `usage` has passed the answer checks, so every
/// value is an amount.
pub(crate) fn plan_totals(
    usage: &wit::ResourceUsage,
    offered: &HashSet<String>,
    stored: impl Fn(&str) -> Option<Cents>,
    rules: Rules,
    is_current: bool,
) -> TotalsPlan {
    let mut plan = TotalsPlan::default();
    for amount in usage.totals.iter().filter(|a| offered.contains(&a.component)) {
        let Some(new) = Cents::round(amount.value) else { continue };
        let held = stored(&amount.component);
        let component = amount.component.clone();
        if !usage.found {
            match held {
                Some(held) if !held.is_zero() => {
                    if rules.reconcile_stale {
                        plan.send.push((component, Cents(0)));
                    } else {
                        plan.kept.push((component, held));
                    }
                }
                Some(_) => {}
                None if rules.absent_is_zero_in_current_month && is_current => {
                    plan.creates = true;
                    plan.send.push((component, Cents(0)));
                }
                None => {}
            }
            continue;
        }
        if new.is_zero() && rules.zeros == Zeros::OnlyToReconcile {
            if rules.reconcile_stale && held.is_some_and(|h| !h.is_zero()) {
                plan.send.push((component, new));
            }
            continue;
        }
        match held {
            Some(held) if held == new => {}
            Some(_) => plan.send.push((component, new)),
            None => {
                plan.creates = true;
                plan.send.push((component, new));
            }
        }
    }
    plan
}

/// Per-user values of one resource, by component, as the component measured them.
pub(crate) fn measured_users<'u>(
    usage: &'u wit::ResourceUsage,
    offered: &HashSet<String>,
) -> BTreeMap<&'u str, Vec<(&'u str, Cents)>> {
    let mut per_component: BTreeMap<&str, Vec<(&str, Cents)>> = BTreeMap::new();
    if !usage.found {
        return per_component;
    }
    for user in &usage.users {
        for amount in user.amounts.iter().filter(|a| offered.contains(&a.component)) {
            if let Some(cents) = Cents::round(amount.value) {
                per_component.entry(amount.component.as_str()).or_default().push((user.username.as_str(), cents));
            }
        }
    }
    per_component
}

/// The per-user writes of one component usage.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct UsersPlan {
    pub send: Vec<UserUsageInput>,
    /// Users whose stored offering-user link is missing or wrong but whose value is
    /// right, where this Waldur cannot change a stored link.
    pub unfixable_links: Vec<String>,
}

/// The offering user a link points at: the last path segment of its URL, so that
/// `http://localhost/…/U/` and `http://127.0.0.1/…/U/` are one user.
fn link_key(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or_default()
}

/// Which per-user values of one component usage to write: those whose value or link
/// differs from what Waldur holds. `links` maps usernames to offering-user URLs;
/// `can_relink` says whether a write can change the link of a stored record.
pub(crate) fn plan_users(
    measured: &[(&str, Cents)],
    held: Option<&HashMap<String, ComponentUserUsage>>,
    links: &HashMap<String, String>,
    rules: Rules,
    can_relink: bool,
) -> UsersPlan {
    let mut plan = UsersPlan::default();
    let held_of = |username: &str| held.and_then(|h| h.get(username));
    let mut seen = HashSet::new();
    for &(username, cents) in measured {
        seen.insert(username);
        let user = links.get(username).cloned();
        let stored = held_of(username);
        let input = || UserUsageInput { username: username.to_owned(), usage: cents, user: user.clone() };
        if cents.is_zero() && rules.zeros == Zeros::OnlyToReconcile {
            if rules.reconcile_stale && stored.is_some_and(|s| !s.usage.is_zero()) {
                plan.send.push(input());
            }
            continue;
        }
        let Some(stored) = stored else {
            plan.send.push(input());
            continue;
        };
        let linked = match (&user, &stored.user) {
            (None, _) => true,
            (Some(want), Some(have)) => link_key(want) == link_key(have),
            (Some(_), None) => false,
        };
        if stored.usage != cents || (!linked && can_relink) {
            plan.send.push(input());
        } else if !linked {
            plan.unfixable_links.push(username.to_owned());
        }
    }
    if rules.reconcile_stale
        && let Some(held) = held
    {
        let stale: BTreeMap<&str, &ComponentUserUsage> = held
            .iter()
            .filter(|(name, s)| !seen.contains(name.as_str()) && !s.usage.is_zero())
            .map(|(name, s)| (name.as_str(), s))
            .collect();
        for username in stale.keys() {
            let user = links.get(*username).cloned();
            plan.send.push(UserUsageInput { username: (*username).to_owned(), usage: Cents(0), user });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: Rules = Rules { zeros: Zeros::Write, absent_is_zero_in_current_month: true, reconcile_stale: false };
    const BACKFILL: Rules =
        Rules { zeros: Zeros::OnlyToReconcile, absent_is_zero_in_current_month: false, reconcile_stale: false };

    fn usage(found: bool, totals: &[(&str, f64)]) -> wit::ResourceUsage {
        wit::ResourceUsage {
            backend_id: "p1".into(),
            found,
            totals: totals.iter().map(|(c, v)| wit::Amount { component: (*c).into(), value: *v }).collect(),
            users: Vec::new(),
        }
    }

    fn offered() -> HashSet<String> {
        ["nodeHours", "cpuHours"].iter().map(|s| (*s).to_owned()).collect()
    }

    fn stored<'a>(held: &'a [(&'a str, i64)]) -> impl Fn(&str) -> Option<Cents> + 'a {
        move |c| held.iter().find(|(name, _)| *name == c).map(|(_, v)| Cents(*v))
    }

    #[test]
    fn only_changed_totals_are_sent_and_new_ones_create() {
        let plan = plan_totals(
            &usage(true, &[("nodeHours", 1.5), ("cpuHours", 2.0)]),
            &offered(),
            stored(&[("cpuHours", 200)]),
            REPORT,
            true,
        );
        assert_eq!(plan.send, vec![("nodeHours".to_owned(), Cents(150))]);
        assert!(plan.creates);
        let unchanged =
            plan_totals(&usage(true, &[("cpuHours", 2.0)]), &offered(), stored(&[("cpuHours", 200)]), BACKFILL, false);
        assert_eq!(unchanged, TotalsPlan::default());
    }

    #[test]
    fn components_waldur_lacks_are_left_out() {
        let plan = plan_totals(&usage(true, &[("gpuHours", 3.0)]), &offered(), stored(&[]), REPORT, true);
        assert!(plan.send.is_empty());
    }

    #[test]
    fn absence_never_lowers_a_stored_value_unless_reconciling() {
        let absent = usage(false, &[("nodeHours", 0.0)]);
        let plan = plan_totals(&absent, &offered(), stored(&[("nodeHours", 700)]), REPORT, true);
        assert_eq!((plan.send.len(), plan.kept), (0, vec![("nodeHours".to_owned(), Cents(700))]));
        let reconcile = Rules { reconcile_stale: true, ..BACKFILL };
        let plan = plan_totals(&absent, &offered(), stored(&[("nodeHours", 700)]), reconcile, false);
        assert_eq!(plan.send, vec![("nodeHours".to_owned(), Cents(0))]);
    }

    #[test]
    fn an_absent_resource_gets_a_zero_only_in_the_current_month_of_a_report() {
        let absent = usage(false, &[("nodeHours", 0.0)]);
        assert_eq!(
            plan_totals(&absent, &offered(), stored(&[]), REPORT, true).send,
            vec![("nodeHours".to_owned(), Cents(0))]
        );
        assert!(plan_totals(&absent, &offered(), stored(&[]), REPORT, false).send.is_empty());
        assert!(plan_totals(&absent, &offered(), stored(&[]), BACKFILL, true).send.is_empty());
    }

    #[test]
    fn measured_zeros_follow_the_command() {
        let zero = usage(true, &[("nodeHours", 0.0)]);
        assert_eq!(plan_totals(&zero, &offered(), stored(&[("nodeHours", 5)]), REPORT, false).send.len(), 1);
        assert!(plan_totals(&zero, &offered(), stored(&[("nodeHours", 5)]), BACKFILL, false).send.is_empty());
        assert!(plan_totals(&zero, &offered(), stored(&[]), BACKFILL, false).send.is_empty());
    }

    fn held(entries: &[(&str, i64, Option<&str>)]) -> HashMap<String, ComponentUserUsage> {
        entries
            .iter()
            .map(|(name, cents, user)| {
                let record = ComponentUserUsage {
                    uuid: String::new(),
                    component_usage: "http://w/api/marketplace-component-usages/cu1/".into(),
                    username: (*name).into(),
                    usage: Cents(*cents),
                    user: user.map(str::to_owned),
                };
                ((*name).to_owned(), record)
            })
            .collect()
    }

    #[test]
    fn users_are_written_when_value_or_link_differs() {
        let links: HashMap<String, String> =
            [("alice".to_owned(), "http://127.0.0.1/api/marketplace-offering-users/A/".to_owned())].into();
        let measured = [("alice", Cents(100)), ("bob", Cents(200))];
        let stored =
            held(&[("alice", 100, Some("http://localhost/api/marketplace-offering-users/A/")), ("bob", 200, None)]);
        assert!(plan_users(&measured, Some(&stored), &links, REPORT, true).send.is_empty());
        let unlinked = held(&[("alice", 100, None), ("bob", 200, None)]);
        let plan = plan_users(&measured, Some(&unlinked), &links, REPORT, true);
        assert_eq!(plan.send.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(), ["alice"]);
        // A Waldur that cannot change a stored link is not asked to, every cycle.
        let plan = plan_users(&measured, Some(&unlinked), &links, REPORT, false);
        assert_eq!((plan.send.len(), plan.unfixable_links), (0, vec!["alice".to_owned()]));
    }

    #[test]
    fn stale_users_are_zeroed_only_when_reconciling() {
        let stored = held(&[("carol", 300, None)]);
        let none = HashMap::new();
        assert!(plan_users(&[], Some(&stored), &none, BACKFILL, true).send.is_empty());
        let reconcile = Rules { reconcile_stale: true, ..BACKFILL };
        let plan = plan_users(&[], Some(&stored), &none, reconcile, true);
        assert_eq!(plan.send.iter().map(|u| (u.username.as_str(), u.usage)).collect::<Vec<_>>(), [("carol", Cents(0))]);
    }
}
