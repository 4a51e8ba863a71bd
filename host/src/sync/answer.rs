//! The checks on a component's answer before anything of it is used. A component is
//! untrusted code: one bad value makes its whole answer for that resource suspect, and
//! every command (`report`, `load-historical-usage`, `usage`) applies the same checks.

use std::collections::{HashMap, HashSet};

use crate::amount::Cents;
use crate::runtime::{is_plain, shown_safe, wit};

/// Longest username Waldur stores (`ComponentUserUsage.username`, 100 characters).
const MAX_USERNAME_CHARS: usize = 100;
/// Longest rendering of a component-supplied name in a message.
const SHOWN_NAME_BYTES: usize = 120;

/// What a component said about each requested resource.
pub struct CheckedReport<'r> {
    /// Backend id → its usage, or why it cannot be used.
    by_id: HashMap<&'r str, Result<&'r wit::ResourceUsage, String>>,
    /// Backend ids in the answer that nobody asked for.
    pub unrequested: Vec<String>,
}

impl<'r> CheckedReport<'r> {
    /// Checks `report`, the answer to a call for `requested`.
    pub fn new<'a>(requested: impl IntoIterator<Item = &'a str>, report: &'r wit::Report) -> Self {
        let requested: HashSet<&str> = requested.into_iter().collect();
        let mut by_id: HashMap<&'r str, Result<&'r wit::ResourceUsage, String>> = HashMap::new();
        let mut unrequested = Vec::new();
        for usage in &report.resources {
            let id = usage.backend_id.as_str();
            if !requested.contains(id) {
                unrequested.push(id.to_owned());
                continue;
            }
            by_id
                .entry(id)
                .and_modify(|seen| {
                    *seen = Err("the backend reported it more than once; nothing submitted for it".to_owned())
                })
                .or_insert_with(|| {
                    check_usage(usage).map(|()| usage).map_err(|problem| {
                        format!("unusable answer from the backend, nothing submitted for it: {problem}")
                    })
                });
        }
        unrequested.sort();
        unrequested.dedup();
        Self { by_id, unrequested }
    }

    /// The usable answer for `backend_id`, or why there is none.
    pub fn usage(&self, backend_id: &str) -> Result<&'r wit::ResourceUsage, String> {
        match self.by_id.get(backend_id) {
            Some(Ok(usage)) => Ok(usage),
            Some(Err(reason)) => Err(reason.clone()),
            None => Err("the backend did not report it; nothing submitted for it".to_owned()),
        }
    }
}

/// A component's value as a Waldur amount: finite, not negative, within Waldur's range.
pub(crate) fn usage_amount(value: f64) -> Option<Cents> {
    if value >= 0.0 { Cents::round(value) } else { None }
}

/// A value for a message: `1e300`, not three hundred digits.
fn show(value: f64) -> String {
    if value.is_finite() && value.abs() >= 1e15 { format!("{value:e}") } else { format!("{value}") }
}

/// Every value an amount, no component or user twice, no user without a name, and a
/// resource reported as not found carries no usage.
pub fn check_usage(usage: &wit::ResourceUsage) -> Result<(), String> {
    let mut seen = HashSet::new();
    for amount in &usage.totals {
        if usage_amount(amount.value).is_none() {
            return Err(format!("{} = {} is not a usage amount", amount.component, show(amount.value)));
        }
        if !seen.insert(amount.component.as_str()) {
            return Err(format!("{} reported twice", amount.component));
        }
    }
    if !usage.found && (usage.totals.iter().any(|a| a.value != 0.0) || !usage.users.is_empty()) {
        return Err("reported as not found upstream, yet with usage".to_owned());
    }
    let mut seen = HashSet::new();
    for user in &usage.users {
        let name = || shown_safe(&user.username, SHOWN_NAME_BYTES);
        if user.username.trim().is_empty() {
            return Err("a user without a name".to_owned());
        }
        if !is_plain(&user.username) {
            return Err(format!("user {}: a username with control or invisible characters", name()));
        }
        if user.username.chars().count() > MAX_USERNAME_CHARS {
            return Err(format!("user {}: longer than Waldur's {MAX_USERNAME_CHARS} characters", name()));
        }
        for amount in &user.amounts {
            if usage_amount(amount.value).is_none() {
                return Err(format!(
                    "user {}: {} = {} is not a usage amount",
                    name(),
                    amount.component,
                    show(amount.value)
                ));
            }
            if !seen.insert((user.username.as_str(), amount.component.as_str())) {
                return Err(format!("user {}: {} reported twice", name(), amount.component));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(id: &str, found: bool, node: f64, users: &[(&str, f64)]) -> wit::ResourceUsage {
        let amount = |v: f64| vec![wit::Amount { component: "nodeHours".into(), value: v }];
        wit::ResourceUsage {
            backend_id: id.into(),
            found,
            totals: amount(node),
            users: users.iter().map(|(u, v)| wit::UserUsage { username: (*u).into(), amounts: amount(*v) }).collect(),
        }
    }

    #[test]
    fn bad_values_and_contradictions_are_refused() {
        assert!(check_usage(&usage("a", true, 1.0, &[("u", 1.0)])).is_ok());
        for (bad, why) in [
            (usage("a", true, f64::NAN, &[]), "not a usage amount"),
            (usage("a", true, -1.0, &[]), "not a usage amount"),
            (usage("a", true, 1.0, &[("u", 1.0), ("u", 2.0)]), "reported twice"),
            (usage("a", true, 1.0, &[(" ", 1.0)]), "without a name"),
            (usage("a", true, 1.0, &[("u\nFORGED", 1.0)]), "user u\\nFORGED: a username with control"),
            (usage("a", true, 1.0, &[("u\u{202e}", 1.0)]), "control or invisible"),
            (usage("a", true, 1.0, &[(&"u".repeat(101), 1.0)]), "longer than Waldur's 100 characters"),
            (usage("a", false, 5.0, &[]), "not found upstream, yet with usage"),
            (usage("a", false, 0.0, &[("u", 0.0)]), "not found upstream, yet with usage"),
        ] {
            let error = check_usage(&bad).err().unwrap_or_default();
            assert!(error.contains(why), "{error}");
        }
    }

    #[test]
    fn duplicates_missing_and_unrequested_resources() {
        let report = wit::Report {
            resources: vec![
                usage("a", true, 1.0, &[]),
                usage("b", true, 1.0, &[]),
                usage("b", true, 2.0, &[]),
                usage("x", true, 9.0, &[]),
            ],
            upstream_requests: 1,
        };
        let checked = CheckedReport::new(["a", "b", "c"], &report);
        assert!(checked.usage("a").is_ok());
        assert!(checked.usage("b").err().unwrap_or_default().contains("more than once"));
        assert!(checked.usage("c").err().unwrap_or_default().contains("did not report it"));
        assert_eq!(checked.unrequested, ["x"]);
    }
}
