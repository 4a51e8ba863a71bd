//! What the Waldur simulator holds, for the benchmarks: the writes a run had to make
//! (the floor of a run is counted from them, not from what the run says it did) and
//! whether two runs stored the same.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Result, bail};
use waldur_sim::{RequestCounts, WaldurSim};

/// The values one simulator holds, by record UUID.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Component usage UUID → (resource UUID, billing period, amount).
    usages: HashMap<String, (String, String, String)>,
    /// Per-user usage UUID → (component usage UUID, usage, offering-user link).
    user_usages: HashMap<String, (String, String, Option<String>)>,
}

impl Snapshot {
    pub fn of(waldur: &WaldurSim) -> Self {
        let usages =
            waldur.usages().into_iter().map(|u| (u.uuid, (u.resource_uuid, u.billing_period, u.amount))).collect();
        let user_usages = waldur
            .user_usages()
            .into_iter()
            .map(|u| (u.uuid, (u.component_usage_uuid, u.usage, u.user.as_deref().map(link_key).map(str::to_owned))))
            .collect();
        Self { usages, user_usages }
    }
}

/// The writes Waldur cannot batch that took `before` to `after`: one `set_usage` per
/// resource-month with a new or changed total, one per-user write per component usage
/// with a new or changed per-user value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unbatchable {
    pub set_usage: usize,
    pub per_user: usize,
}

impl Unbatchable {
    pub fn between(before: &Snapshot, after: &Snapshot) -> Self {
        let resource_months: BTreeSet<(&str, &str)> = after
            .usages
            .iter()
            .filter(|(uuid, now)| before.usages.get(*uuid) != Some(*now))
            .map(|(_, (resource, period, _))| (resource.as_str(), period.as_str()))
            .collect();
        let component_usages: BTreeSet<&str> = after
            .user_usages
            .iter()
            .filter(|(uuid, now)| before.user_usages.get(*uuid) != Some(*now))
            .map(|(_, (component_usage, _, _))| component_usage.as_str())
            .collect();
        Self { set_usage: resource_months.len(), per_user: component_usages.len() }
    }

    pub fn total(self) -> usize {
        self.set_usage + self.per_user
    }

    /// These writes, `concurrency` at a time, each one round trip of `latency`.
    pub fn floor(self, latency: Duration, concurrency: usize) -> f64 {
        self.total() as f64 * latency.as_secs_f64() / concurrency.max(1) as f64
    }

    /// These writes, `concurrency` at a time, each taking what a write took the
    /// simulator to serve on average in `served` (its added latency, as the timer
    /// delivered it, and its work): the "time Waldur takes for each write".
    pub fn served_floor(self, served: &RequestCounts, concurrency: usize) -> Option<f64> {
        let mean = served.write_time.checked_div(u32::try_from(served.timed_writes).ok().filter(|n| *n > 0)?)?;
        Some(self.floor(mean, concurrency))
    }
}

/// (resource, component, billing period) → amount.
type Totals = BTreeMap<(String, String, String), String>;
/// (resource, component, billing period, username) → (usage, offering user).
type Users = BTreeMap<(String, String, String, String), (String, Option<String>)>;

/// What a simulator holds, keyed by what it means rather than by the UUIDs it chose.
fn contents(waldur: &WaldurSim) -> (Totals, Users) {
    let totals = waldur
        .usages()
        .into_iter()
        .map(|u| ((u.resource_uuid, u.component_type, u.billing_period), u.amount))
        .collect();
    let users = waldur
        .user_usages()
        .into_iter()
        .map(|u| {
            let link = u.user.as_deref().map(link_key).map(str::to_owned);
            ((u.resource_uuid, u.component_type, u.billing_period, u.username), (u.usage, link))
        })
        .collect();
    (totals, users)
}

/// Fails, naming the first few differences, unless `a` and `b` hold the same component
/// usages and per-user usages (amounts, billing periods, offering-user links); returns
/// how many of each they hold.
pub fn same_contents(what: &str, a: &WaldurSim, b: &WaldurSim) -> Result<(usize, usize)> {
    let (a_totals, a_users) = contents(a);
    let (b_totals, b_users) = contents(b);
    let mut differences = Vec::new();
    differ("total", &a_totals, &b_totals, &mut differences);
    differ("per-user usage", &a_users, &b_users, &mut differences);
    if !differences.is_empty() {
        bail!(
            "{what}: the engine and the baseline stored different values ({} differences; engine {}/{}, baseline {}/{} totals/per-user): {}",
            differences.len(),
            a_totals.len(),
            a_users.len(),
            b_totals.len(),
            b_users.len(),
            differences.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        );
    }
    Ok((a_totals.len(), a_users.len()))
}

fn differ<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    what: &str,
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
    out: &mut Vec<String>,
) {
    for (key, value) in a {
        match b.get(key) {
            Some(other) if other == value => {}
            Some(other) => out.push(format!("{what} {key:?}: engine {value:?}, baseline {other:?}")),
            None => out.push(format!("{what} {key:?}: engine {value:?}, baseline nothing")),
        }
    }
    for (key, value) in b.iter().filter(|(key, _)| !a.contains_key(*key)) {
        out.push(format!("{what} {key:?}: engine nothing, baseline {value:?}"));
    }
}

/// The offering user a link points at (simulators on other ports give other origins).
fn link_key(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or_default()
}
