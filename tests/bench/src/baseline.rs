//! The one-by-one baselines the benchmarks measure the sync engine against: how the
//! Python agent (`waldur-site-agent`, and its historical loader) moves usage, written
//! here against the host's public API only, so the product code carries no mode that
//! exists for benchmarks.
//!
//! One resource at a time, per month, one request in flight:
//!
//! 1. its own component call (`usage-report` for that one resource);
//! 2. its own listings: the component usages of the resource and month
//!    (`resource_component_usages`) and, with per-user usage, its per-user usages
//!    (`resource_user_usages`);
//! 3. `set_usage` if a rounded total changed (then the component usages listed again
//!    when the write created some, for their UUIDs);
//! 4. `set_user_usage` per user and component whose value or offering-user link changed.
//!
//! It follows the engine's rules where they decide what is stored in the benchmarks'
//! data (which values are written, rounding, zeros, an absent resource in the current
//! month, user links, dates) and none of the rest: no read-back, no question whether
//! Waldur honours `date`, no recovery from errors. Any failure ends the run with an
//! error: a baseline that does not finish is no baseline.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use usage_agent::amount::Cents;
use usage_agent::period::Month;
use usage_agent::runtime::{OfferingBackend, wit};
use usage_agent::sync::{Target, check_usage, dates};
use usage_agent::waldur::{ComponentUsage, ComponentUserUsage, Resource, UserUsageInput, WaldurClient};

/// Which command's rules the baseline follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// `report`: a measured zero is written like any value; a resource the upstream
    /// did not mention gets zeros in the current month where Waldur holds nothing; the
    /// component gets each resource's `offering_backend_id`.
    Report,
    /// `load-historical-usage` (without `--reconcile-stale`): zeros are never written;
    /// no `offering_backend_id` is passed.
    Historical,
}

/// What one baseline run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The months, oldest first.
    pub months: Vec<Month>,
    pub rules: Rules,
    /// Submit per-user usage as well as totals.
    pub user_usage: bool,
    /// The time of the run: decides the current month and its write date.
    pub now: Timestamp,
    /// The configured time zone: billing months and dates.
    pub time_zone: TimeZone,
}

/// What one baseline run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Resources per month.
    pub resources: usize,
    pub months: usize,
    /// Resource-months with at least one write.
    pub submitted: usize,
    /// `set_usage` requests.
    pub set_usage: usize,
    /// `set_user_usage` requests (one per user value).
    pub set_user_usage: usize,
    /// Component calls (one per resource and month).
    pub component_calls: usize,
    pub upstream_calls: u64,
    pub waldur_calls: u64,
    pub duration: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "baseline: {} resources × {} months: {} written; {} set_usage, {} set_user_usage; {} component calls, {} upstream calls, {} Waldur calls, {:.2?}",
            self.resources,
            self.months,
            self.submitted,
            self.set_usage,
            self.set_user_usage,
            self.component_calls,
            self.upstream_calls,
            self.waldur_calls,
            self.duration
        )
    }
}

/// Runs the baseline over `target`: every month of `options`, one resource at a time.
pub async fn run(target: &Target, options: &Options) -> Result<Summary> {
    let started = Instant::now();
    let waldur = &target.waldur;
    let waldur_before = waldur.request_count();
    let upstream_before = target.backend.egress().stats().requests.load(Ordering::Relaxed);
    let offering = waldur.offering(&target.offering_uuid).await?;
    let offered: HashSet<String> = offering.components.iter().map(|c| c.component_type.clone()).collect();
    let mut resources: Vec<Resource> = waldur
        .resources(&target.offering_uuid)
        .await?
        .into_iter()
        .filter(|r| r.backend_id.as_deref().is_some_and(|id| !id.trim().is_empty()))
        .collect();
    resources.sort_by(|a, b| a.backend_id.cmp(&b.backend_id));
    let links: HashMap<String, String> = if options.user_usage {
        let users = waldur.offering_users(&target.offering_uuid).await?;
        users.into_iter().filter_map(|u| Some((u.username?, u.url))).collect()
    } else {
        HashMap::new()
    };
    let user_components: Vec<&str> = target.components().filter(|c| offered.contains(*c)).map(String::as_str).collect();
    let one = OneByOne {
        waldur,
        backend: target.backend_now(),
        options,
        offered: &offered,
        user_components: &user_components,
        links: &links,
        current: Month::containing(options.now, &options.time_zone),
    };
    let mut summary = Summary { resources: resources.len(), ..Summary::default() };
    for &month in &options.months {
        let date = one.date(month)?;
        let billing_period = month.first_day().to_string();
        for resource in &resources {
            one.resource_month(resource, month, &billing_period, &date, &mut summary).await?;
        }
        summary.months += 1;
    }
    summary.waldur_calls = waldur.request_count() - waldur_before;
    summary.upstream_calls = target.backend.egress().stats().requests.load(Ordering::Relaxed) - upstream_before;
    summary.duration = started.elapsed();
    Ok(summary)
}

/// What every resource-month of a run reads.
struct OneByOne<'a> {
    waldur: &'a WaldurClient,
    backend: OfferingBackend,
    options: &'a Options,
    /// Component types the Waldur offering has.
    offered: &'a HashSet<String>,
    /// Configured components the offering has: those with per-user usage.
    user_components: &'a [&'a str],
    /// Offering users: username → URL.
    links: &'a HashMap<String, String>,
    current: Month,
}

impl OneByOne<'_> {
    /// The `date` of writes into `month`, as the engine chooses it.
    fn date(&self, month: Month) -> Result<String> {
        let tz = &self.options.time_zone;
        if month < self.current {
            return dates::past_month(month, tz).ok_or_else(|| anyhow!("{month}: no noon on its 1st"));
        }
        match dates::current_month(month, self.options.now, tz) {
            dates::CurrentDate::Now(date) | dates::CurrentDate::HeldBack(date) => Ok(date),
            dates::CurrentDate::TooEarly => bail!("{month} began less than 12 hours ago: no safe date"),
        }
    }

    async fn resource_month(
        &self,
        resource: &Resource,
        month: Month,
        billing_period: &str,
        date: &str,
        summary: &mut Summary,
    ) -> Result<()> {
        let backend_id = resource.backend_id.as_deref().unwrap_or_default();
        let offering_backend_id = match self.options.rules {
            Rules::Report => {
                resource.offering_backend_id.as_deref().map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned)
            }
            Rules::Historical => None,
        };
        let requested = vec![wit::WaldurResource { backend_id: backend_id.to_owned(), offering_backend_id }];
        summary.component_calls += 1;
        let report = self
            .backend
            .usage_report(requested, month.billing_period())
            .await
            .map_err(|e| anyhow!("{month} {backend_id}: usage call failed: {e}"))?;
        let usage = match report.resources.as_slice() {
            [usage] if usage.backend_id == backend_id => usage,
            other => bail!("{month} {backend_id}: the backend answered {} resources for one", other.len()),
        };
        check_usage(usage).map_err(|e| anyhow!("{month} {backend_id}: {e}"))?;

        let mut held = self.totals(resource, billing_period).await?;
        let held_users =
            if self.options.user_usage { self.users(resource, billing_period).await? } else { HashMap::new() };

        let send = self.plan_totals(usage, &held, month == self.current);
        let mut wrote = false;
        if !send.is_empty() {
            self.waldur.set_usage(&resource.uuid, &send, date).await?;
            summary.set_usage += 1;
            wrote = true;
            if send.iter().any(|(component, _)| !held.contains_key(component)) {
                // The new component usages' UUIDs, for their per-user usage.
                held = self.totals(resource, billing_period).await?;
            }
        }
        if self.options.user_usage && usage.found {
            for &component in self.user_components {
                let Some(component_usage) = held.get(component) else { continue };
                let stored = held_users.get(&component_usage.uuid);
                for user in &usage.users {
                    for amount in user.amounts.iter().filter(|a| a.component == component) {
                        let Some(cents) = Cents::round(amount.value) else { continue };
                        if cents.is_zero() && self.options.rules == Rules::Historical {
                            continue;
                        }
                        let link = self.links.get(&user.username).cloned();
                        let same = stored.and_then(|s| s.get(&user.username)).is_some_and(|s| {
                            s.usage == cents
                                && match (&link, &s.user) {
                                    (None, _) => true,
                                    (Some(want), Some(have)) => link_key(want) == link_key(have),
                                    (Some(_), None) => false,
                                }
                        });
                        if same {
                            continue;
                        }
                        let input = UserUsageInput { username: user.username.clone(), usage: cents, user: link };
                        self.waldur.set_user_usage(&component_usage.uuid, &input, date).await?;
                        summary.set_user_usage += 1;
                        wrote = true;
                    }
                }
            }
        }
        summary.submitted += usize::from(wrote);
        Ok(())
    }

    /// The totals to send: rounded values that differ from what Waldur holds.
    fn plan_totals(
        &self,
        usage: &wit::ResourceUsage,
        held: &HashMap<String, ComponentUsage>,
        is_current: bool,
    ) -> Vec<(String, Cents)> {
        let mut send = Vec::new();
        for amount in usage.totals.iter().filter(|a| self.offered.contains(&a.component)) {
            let Some(new) = Cents::round(amount.value) else { continue };
            let stored = held.get(&amount.component).map(|u| u.amount);
            if !usage.found {
                // Never lowers a stored value; a zero where nothing is held, in the
                // current month of a report.
                if stored.is_none() && is_current && self.options.rules == Rules::Report {
                    send.push((amount.component.clone(), Cents(0)));
                }
                continue;
            }
            if new.is_zero() && self.options.rules == Rules::Historical {
                continue;
            }
            if stored != Some(new) {
                send.push((amount.component.clone(), new));
            }
        }
        send
    }

    /// Component type → what Waldur holds for the resource in the month.
    async fn totals(&self, resource: &Resource, billing_period: &str) -> Result<HashMap<String, ComponentUsage>> {
        let list = self.waldur.resource_component_usages(&resource.uuid, billing_period).await?;
        Ok(list.into_iter().map(|u| (u.component_type.clone(), u)).collect())
    }

    /// Component usage UUID → username → per-user usage Waldur holds.
    async fn users(
        &self,
        resource: &Resource,
        billing_period: &str,
    ) -> Result<HashMap<String, HashMap<String, ComponentUserUsage>>> {
        let list = self.waldur.resource_user_usages(&resource.uuid, billing_period).await?;
        let mut stored: HashMap<String, HashMap<String, ComponentUserUsage>> = HashMap::new();
        for usage in list {
            stored.entry(usage.component_usage_uuid().to_owned()).or_default().insert(usage.username.clone(), usage);
        }
        Ok(stored)
    }
}

/// The offering user a link points at: the last segment of its URL.
fn link_key(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or_default()
}
