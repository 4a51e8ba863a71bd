//! One report cycle: DWDI usage of every resource of an offering into Waldur.
//!
//! Per offering and billing month the cycle makes one component call for all
//! resources, one paginated listing of what Waldur already holds, and then only the
//! writes that change something: `set_usage` for a resource whose totals differ, and
//! one `set_user_usages` per component usage whose per-user values differ. Writes run
//! concurrently up to a bound. A failure touches only what it concerns: a failed DWDI
//! call submits nothing for its month, a refused write fails only its resource.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::Semaphore;

use crate::amount::Cents;
use crate::backends::Backends;
use crate::config::{AgentConfig, OfferingConfig};
use crate::period::Month;
use crate::run_errors::RunErrors;
use crate::runtime::{OfferingBackend, wit};
use crate::waldur::{ComponentUsage, Resource, UserUsageInput, WaldurClient, WaldurError};

/// Default bound on concurrent Waldur writes per offering.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// How one cycle runs.
#[derive(Debug, Clone)]
pub struct CycleOptions {
    /// Months to report, 1 = current only.
    pub reporting_periods: u32,
    /// Concurrent Waldur writes.
    pub concurrency: usize,
    /// Submit per-user usage.
    pub user_usage: bool,
    /// The configured time zone for billing months and submission dates.
    pub time_zone: TimeZone,
    /// Baseline mode for benchmarks: one resource at a time, each with its own component
    /// call and its own listings, as the Python agent works. Never faster.
    pub sequential: bool,
}

impl CycleOptions {
    pub fn from_config(config: &AgentConfig) -> Result<Self> {
        Ok(Self {
            reporting_periods: config.reporting_periods,
            concurrency: config.waldur_max_concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1),
            user_usage: true,
            time_zone: crate::period::time_zone(config.timezone.as_deref())?,
            sequential: false,
        })
    }
}

/// The clock, injectable so tests can stand on the 1st of a month.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that always says the same time.
pub struct FixedClock(pub Timestamp);

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
    }
}

/// What one offering's cycle did. Counts are per resource and month.
#[derive(Debug, Default, Clone)]
pub struct OfferingSummary {
    pub offering: String,
    pub backend_type: String,
    pub resources: usize,
    pub submitted: usize,
    pub unchanged: usize,
    pub skipped: usize,
    pub failed: usize,
    pub user_usage_writes: usize,
    pub dwdi_calls: u64,
    pub waldur_calls: u64,
    pub duration: Duration,
    /// The component that served this cycle: `name version`.
    pub backend: String,
    /// One line per failure, for the operator.
    pub errors: Vec<String>,
}

impl std::fmt::Display for OfferingSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} resources, {} submitted, {} unchanged, {} skipped, {} failed; {} DWDI calls, {} Waldur calls, {:.2?}; {}",
            self.offering,
            self.resources,
            self.submitted,
            self.unchanged,
            self.skipped,
            self.failed,
            self.dwdi_calls,
            self.waldur_calls,
            self.duration,
            self.backend
        )
    }
}

/// Counts one offering's cycle in the process metrics.
pub fn record_metrics(summary: &OfferingSummary) {
    let metrics = crate::metrics::global();
    let offering = summary.offering.as_str();
    metrics.inc("usage_agent_cycles_total", "Report cycles run, per offering.", &[("offering", offering)]);
    // Added even when zero, so the series exists from the first cycle on.
    let failed = if summary.failed > 0 { 1.0 } else { 0.0 };
    metrics.add(
        "usage_agent_cycles_failed_total",
        "Report cycles with at least one failure.",
        &[("offering", offering)],
        failed,
    );
    if summary.failed == 0 {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        metrics.set(
            "usage_agent_last_success_timestamp_seconds",
            "End of the last cycle without failures.",
            &[("offering", offering)],
            now,
        );
    }
    for (outcome, count) in [
        ("submitted", summary.submitted),
        ("unchanged", summary.unchanged),
        ("skipped", summary.skipped),
        ("failed", summary.failed),
    ] {
        metrics.add(
            "usage_agent_resources_total",
            "Resource-months handled, by outcome.",
            &[("offering", offering), ("outcome", outcome)],
            count as f64,
        );
    }
}

/// An offering ready to report: its component binding and its Waldur client.
pub struct ReportTarget {
    pub index: usize,
    pub name: String,
    pub offering_uuid: String,
    pub config: OfferingConfig,
    pub backend: OfferingBackend,
    pub waldur: WaldurClient,
    /// Where the component in service for the offering's backend type is looked up at
    /// the start of each cycle; `None`: always `backend`.
    serving: Option<Backends>,
    /// Warnings already given, so each is logged once per process.
    warned: Mutex<HashSet<String>>,
}

impl ReportTarget {
    /// Binds an offering to Waldur; errors name the missing key.
    pub fn new(index: usize, config: &OfferingConfig, backend: OfferingBackend) -> Result<Self> {
        let at = |key: &str| anyhow!("offerings[{index}].{key}: missing (needed to report to Waldur)");
        let url = config.waldur_api_url.as_deref().ok_or_else(|| at("waldur_api_url"))?;
        let token = config.waldur_api_token.clone().ok_or_else(|| at("waldur_api_token"))?;
        let offering_uuid = config.waldur_offering_uuid.clone().ok_or_else(|| at("waldur_offering_uuid"))?;
        let waldur = WaldurClient::new(url, token, config.verify_ssl)
            .map_err(|e| anyhow!("offerings[{index}].waldur_api_url: {e:#}"))?;
        Ok(Self {
            index,
            name: config.display_name(index),
            offering_uuid,
            config: config.clone(),
            backend,
            waldur,
            serving: None,
            warned: Mutex::new(HashSet::new()),
        })
    }

    /// Makes each cycle use the component `backends` has in service for the offering's
    /// backend type at that moment, so a hot swap takes effect at the next cycle.
    pub fn follow(mut self, backends: &Backends) -> Self {
        self.serving = Some(backends.clone());
        self
    }

    /// The binding for a cycle starting now: the component in service, with the
    /// offering's egress (token cache, counters) and config. A swap while the cycle
    /// runs does not affect it.
    pub fn backend_now(&self) -> OfferingBackend {
        let current = self
            .serving
            .as_ref()
            .zip(self.config.usage_backend())
            .and_then(|(backends, backend_type)| backends.get(backend_type));
        match current {
            Some(current) if !Arc::ptr_eq(&current, self.backend.backend()) => self.backend.with_backend(current),
            _ => self.backend.clone(),
        }
    }

    /// Logs `message` the first time `key` is seen; `resource` is the backend id the
    /// line is about, if any.
    fn warn_once(&self, key: String, resource: Option<&str>, message: impl FnOnce() -> String) {
        let first = self.warned.lock().map(|mut seen| seen.insert(key)).unwrap_or(true);
        if first {
            tracing::warn!(offering = %self.name, resource, "{}", message());
        }
    }
}

/// Builds the report targets of every offering in the config: components loaded,
/// configs validated, Waldur settings present.
pub async fn prepare_targets(config: &AgentConfig, backends: &Backends) -> Result<Vec<ReportTarget>> {
    backends.load_builtins_for(config).await?;
    let mut targets = Vec::new();
    for (index, offering) in config.offerings() {
        let backend = crate::backends::prepare_offering(backends, index, offering).await?;
        let mut target = ReportTarget::new(index, offering, backend)?.follow(backends);
        target.waldur.set_timeout(config.waldur_timeout());
        targets.push(target);
    }
    Ok(targets)
}

/// Set when the process is asked to stop: the cycle finishes the resource in flight
/// and submits nothing new.
#[derive(Debug, Default, Clone)]
pub struct StopFlag(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    stopped: AtomicBool,
    woken: tokio::sync::Notify,
}

impl StopFlag {
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.woken.notify_waiters();
    }
    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }
    /// Returns once [`StopFlag::stop`] has been called.
    pub async fn stopped(&self) {
        loop {
            let woken = self.0.woken.notified();
            if self.is_stopped() {
                return;
            }
            woken.await;
        }
    }
}

/// Said when an upstream answer knows none of an offering's resources: usually a
/// setting that selects nothing rather than a month without usage.
pub(crate) fn none_found_hint(resources: usize) -> String {
    format!(
        "the backend found none of the {resources} resources upstream; if that is unexpected, check the resource ids and the settings that select them (the cluster; storage_filesystem, storage_data_type, storage_path_mapping)."
    )
}

/// Outcome of one resource in one month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Submitted,
    Unchanged,
    Skipped,
    Failed,
}

/// Shared counters of one offering's cycle.
#[derive(Default)]
struct Tally {
    submitted: AtomicU64,
    unchanged: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    user_writes: AtomicU64,
    errors: RunErrors,
}

impl Tally {
    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Submitted => &self.submitted,
            Outcome::Unchanged => &self.unchanged,
            Outcome::Skipped => &self.skipped,
            Outcome::Failed => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The submission date for `month`: now when it is the current month, else the first
/// day at midnight, both in the configured time zone with their offset, so Waldur files
/// them under the month we mean.
fn submission_date(month: Month, current: Month, now: Timestamp, tz: &TimeZone) -> String {
    let zoned = if month == current {
        now.to_zoned(tz.clone())
    } else {
        month.first_day().to_zoned(tz.clone()).unwrap_or_else(|_| now.to_zoned(tz.clone()))
    };
    zoned.timestamp().display_with_offset(zoned.offset()).to_string()
}

/// Runs one cycle over one offering.
pub async fn report_offering(
    target: &ReportTarget,
    options: &CycleOptions,
    clock: &dyn Clock,
    stop: &StopFlag,
) -> OfferingSummary {
    let started = Instant::now();
    let waldur_before = target.waldur.request_count();
    let dwdi_before = target.backend.egress().stats().requests.load(Ordering::Relaxed);
    // One component version for the whole cycle, even if another is swapped in meanwhile.
    let backend = target.backend_now();
    let info = &backend.backend().info;
    let backend_type = target.config.usage_backend().unwrap_or_default();
    let mut summary = OfferingSummary {
        offering: target.name.clone(),
        backend_type: backend_type.to_owned(),
        backend: format!("{} {}", info.name, info.version),
        ..Default::default()
    };
    // Every log line of the cycle carries the offering and its backend type.
    let span = tracing::info_span!("cycle", offering = %target.name, backend_type);
    let cycle = Cycle { target, backend: &backend, options, clock, stop, tally: Tally::default() };
    let tally = &cycle.tally;
    match tracing::Instrument::instrument(cycle.run(), span.clone()).await {
        Ok(resources) => summary.resources = resources,
        Err(error) => {
            tally.count(Outcome::Failed);
            span.in_scope(|| tally.errors.push(format!("offering {}: {error:#}", target.name)));
        }
    }
    summary.submitted = tally.submitted.load(Ordering::Relaxed) as usize;
    summary.unchanged = tally.unchanged.load(Ordering::Relaxed) as usize;
    summary.skipped = tally.skipped.load(Ordering::Relaxed) as usize;
    summary.failed = tally.failed.load(Ordering::Relaxed) as usize;
    summary.user_usage_writes = tally.user_writes.load(Ordering::Relaxed) as usize;
    summary.errors = tally.errors.lines();
    summary.waldur_calls = target.waldur.request_count() - waldur_before;
    summary.dwdi_calls = target.backend.egress().stats().requests.load(Ordering::Relaxed) - dwdi_before;
    summary.duration = started.elapsed();
    summary
}

/// The WIT resources for a component call, clusters from `offering_backend_id`.
fn wit_resources(resources: &[Resource]) -> Vec<wit::WaldurResource> {
    resources
        .iter()
        .map(|r| wit::WaldurResource {
            backend_id: r.backend_id.clone().unwrap_or_default(),
            cluster: r
                .offering_backend_id
                .as_deref()
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_ascii_lowercase),
        })
        .collect()
}

/// One offering's cycle: what every step of it reads, and its counters.
struct Cycle<'a> {
    target: &'a ReportTarget,
    /// The component for this cycle, fixed at its start.
    backend: &'a OfferingBackend,
    options: &'a CycleOptions,
    clock: &'a dyn Clock,
    stop: &'a StopFlag,
    tally: Tally,
}

impl Cycle<'_> {
    /// Every reported month of the offering; the number of resources with a backend id.
    async fn run(&self) -> Result<usize> {
        let Cycle { target, options, clock, stop, .. } = self;
        let current = Month::containing(clock.now(), &options.time_zone);
        let offering = target.waldur.offering(&target.offering_uuid).await?;
        let offered: HashSet<String> = offering.components.iter().map(|c| c.component_type.clone()).collect();
        for name in target.config.backend_components.keys() {
            if !offered.contains(name) {
                target.warn_once(format!("component:{name}"), None, || {
                    format!("component {name:?} is configured but the Waldur offering has no such component; it is not submitted")
                });
            }
        }
        let resources: Vec<Resource> = target
            .waldur
            .resources(&target.offering_uuid)
            .await?
            .into_iter()
            .filter(|r| {
                let has_id = r.backend_id.as_deref().is_some_and(|id| !id.trim().is_empty());
                if !has_id {
                    tracing::debug!(offering = %target.name, resource_uuid = %r.uuid, "resource has no backend_id; skipped");
                }
                has_id
            })
            .collect();
        if resources.is_empty() {
            return Ok(0);
        }
        let mut offering_users: Option<HashMap<String, String>> = None;
        for month in current.back(options.reporting_periods) {
            if stop.is_stopped() {
                break;
            }
            let offering_users = &mut offering_users;
            let one_month = async {
                if options.sequential {
                    for resource in &resources {
                        if stop.is_stopped() {
                            break;
                        }
                        let one = std::slice::from_ref(resource);
                        self.report_month(one, &offered, month, current, offering_users).await;
                    }
                } else {
                    self.report_month(&resources, &offered, month, current, offering_users).await;
                }
            };
            tracing::Instrument::instrument(one_month, tracing::info_span!("month", %month)).await;
        }
        Ok(resources.len())
    }

    /// One month of `resources`: one component call, one listing, the writes that change
    /// something, then per-user usage.
    async fn report_month(
        &self,
        resources: &[Resource],
        offered: &HashSet<String>,
        month: Month,
        current: Month,
        offering_users: &mut Option<HashMap<String, String>>,
    ) {
        let Cycle { target, backend, options, clock, stop, tally } = self;
        let period = month.billing_period();
        let report = match backend.usage_report(wit_resources(resources), period).await {
            Ok(report) => report,
            Err(error) => {
                // Nothing is submitted from a failed answer.
                for _ in resources {
                    tally.count(Outcome::Failed);
                }
                tally
                    .errors
                    .push(format!("offering {} {month}: usage call failed, nothing submitted: {error}", target.name));
                return;
            }
        };
        if !options.sequential && resources.len() > 1 && report.resources.iter().all(|r| !r.found) {
            target.warn_once(format!("none-found:{month}"), None, || {
                format!(
                    "{month}: {} `usage-agent usage` shows what the backend answers.",
                    none_found_hint(resources.len())
                )
            });
        }
        // A backend id reported twice is ambiguous: neither answer is used.
        let mut by_id: HashMap<&str, Option<&wit::ResourceUsage>> = HashMap::new();
        for usage in &report.resources {
            by_id.entry(usage.backend_id.as_str()).and_modify(|seen| *seen = None).or_insert(Some(usage));
        }
        let billing_period = month.first_day().to_string();
        let existing = match list_usages(target, options, resources, &billing_period).await {
            Ok(list) => index_usages(list),
            Err(error) => {
                for _ in resources {
                    tally.count(Outcome::Failed);
                }
                tally.errors.push(format!("offering {} {month}: cannot read Waldur's usages: {error}", target.name));
                return;
            }
        };
        let date = submission_date(month, current, clock.now(), &options.time_zone);
        let semaphore = Arc::new(Semaphore::new(options.concurrency));

        // Totals, one set_usage per resource that changed.
        let mut accepted: Vec<(&Resource, &wit::ResourceUsage)> = Vec::new();
        let mut created_any = false;
        let mut tasks = Vec::new();
        for resource in resources {
            let backend_id = resource.backend_id.as_deref().unwrap_or_default();
            let usage = match by_id.get(backend_id) {
                Some(Some(usage)) => *usage,
                Some(None) => {
                    tally.count(Outcome::Failed);
                    tally.errors.push_resource(backend_id, format!("offering {} {month}: resource {backend_id}: the backend reported it more than once; nothing submitted for it", target.name));
                    continue;
                }
                None => {
                    tally.count(Outcome::Failed);
                    tally.errors.push_resource(
                        backend_id,
                        format!(
                            "offering {} {month}: resource {backend_id}: the backend did not report it",
                            target.name
                        ),
                    );
                    continue;
                }
            };
            if let Err(problem) = check_usage(usage) {
                tally.count(Outcome::Failed);
                tally.errors.push_resource(backend_id, format!("offering {} {month}: resource {backend_id}: unusable answer from the backend, nothing submitted for it: {problem}", target.name));
                continue;
            }
            let plan = plan_totals(target, resource, usage, offered, &existing, month == current);
            if plan.creates {
                created_any = true;
            }
            let semaphore = semaphore.clone();
            let date = date.clone();
            tasks.push(async move {
                let outcome = if plan.send.is_empty() {
                    Outcome::Unchanged
                } else {
                    let _permit = semaphore.acquire().await;
                    if stop.is_stopped() {
                        Outcome::Skipped
                    } else if month == current && Month::containing(clock.now(), &options.time_zone) != current {
                        // Fetched in one month, would land in the next: leave it to the next cycle.
                        tracing::info!(offering = %target.name, resource = %backend_id, "month changed during the cycle; skipped");
                        Outcome::Skipped
                    } else {
                        match target.waldur.set_usage(&resource.uuid, &plan.send, &date).await {
                            Ok(()) => {
                                tracing::debug!(resource = backend_id, usage = %describe_amounts(&plan.send), "usage submitted");
                                Outcome::Submitted
                            }
                            Err(error) => classify_write_error(target, tally, resource, month, &error),
                        }
                    }
                };
                (resource, usage, outcome)
            });
        }
        for (resource, usage, outcome) in futures::future::join_all(tasks).await {
            tally.count(outcome);
            if matches!(outcome, Outcome::Submitted | Outcome::Unchanged) {
                accepted.push((resource, usage));
            }
        }
        if !options.user_usage || stop.is_stopped() {
            return;
        }
        let wants_users = accepted.iter().any(|(_, usage)| usage.found && !usage.users.is_empty());
        if !wants_users {
            return;
        }
        self.submit_user_usages(
            &accepted,
            offered,
            month,
            &billing_period,
            &date,
            created_any,
            existing,
            offering_users,
            &semaphore,
        )
        .await;
    }

    /// Per-user usage of the resources whose totals Waldur accepted this month: one
    /// bulk write per component usage whose values changed.
    #[allow(clippy::too_many_arguments)]
    async fn submit_user_usages(
        &self,
        accepted: &[(&Resource, &wit::ResourceUsage)],
        offered: &HashSet<String>,
        month: Month,
        billing_period: &str,
        date: &str,
        created_any: bool,
        existing: HashMap<(String, String), ComponentUsage>,
        offering_users: &mut Option<HashMap<String, String>>,
        semaphore: &Arc<Semaphore>,
    ) {
        let Cycle { target, options, tally, .. } = self;
        // New component usages have UUIDs only Waldur knows: one more listing finds them.
        let usages = if created_any {
            match list_usages(target, options, accepted_resources(accepted).as_slice(), billing_period).await {
                Ok(list) => index_usages(list),
                Err(error) => {
                    tally.count(Outcome::Failed);
                    tally.errors.push(format!(
                        "offering {} {month}: cannot list usages for per-user usage: {error}",
                        target.name
                    ));
                    return;
                }
            }
        } else {
            existing
        };
        if offering_users.is_none() {
            match target.waldur.offering_users(&target.offering_uuid).await {
                Ok(list) => {
                    *offering_users = Some(list.into_iter().filter_map(|u| Some((u.username?, u.url))).collect());
                }
                Err(error) => {
                    tally.count(Outcome::Failed);
                    tally.errors.push(format!("offering {}: cannot list offering users: {error}", target.name));
                    return;
                }
            }
        }
        let no_users = HashMap::new();
        let users_by_name = offering_users.as_ref().unwrap_or(&no_users);
        let stored_users: HashMap<(String, String), crate::waldur::ComponentUserUsage> =
            match list_user_usages(target, options, accepted_resources(accepted).as_slice(), billing_period).await {
                Ok(list) => {
                    list.into_iter().map(|u| ((u.component_usage_uuid().to_owned(), u.username.clone()), u)).collect()
                }
                Err(error) => {
                    tally.count(Outcome::Failed);
                    tally
                        .errors
                        .push(format!("offering {} {month}: cannot list per-user usages: {error}", target.name));
                    return;
                }
            };
        let mut tasks = Vec::new();
        for (resource, usage) in accepted {
            if !usage.found {
                continue;
            }
            // component → username → amount, summed before rounding (the component already sums).
            let mut per_component: BTreeMap<&str, Vec<(&str, f64)>> = BTreeMap::new();
            for user in &usage.users {
                for amount in &user.amounts {
                    if offered.contains(&amount.component) {
                        per_component
                            .entry(amount.component.as_str())
                            .or_default()
                            .push((user.username.as_str(), amount.value));
                    }
                }
            }
            for (component, users) in per_component {
                let Some(component_usage) = usages.get(&(resource.uuid.clone(), component.to_owned())) else {
                    continue;
                };
                let changed: Vec<UserUsageInput> = users
                    .iter()
                    .filter_map(|(username, value)| {
                        let cents = usage_amount(*value)?;
                        let stored = stored_users.get(&(component_usage.uuid.clone(), (*username).to_owned()));
                        let url = users_by_name.get(*username).cloned();
                        let same = stored.is_some_and(|s| s.usage == cents && (url.is_none() || s.user == url));
                        (!same).then(|| UserUsageInput { username: (*username).to_owned(), usage: cents, user: url })
                    })
                    .collect();
                if changed.is_empty() {
                    continue;
                }
                let semaphore = semaphore.clone();
                let cu_uuid = component_usage.uuid.clone();
                let backend_id = resource.backend_id.clone().unwrap_or_default();
                tasks.push(async move {
                    let _permit = semaphore.acquire().await;
                    match target.waldur.set_user_usages(&cu_uuid, &changed, date).await {
                        Ok(()) => {
                            tally.user_writes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            tally.count(Outcome::Failed);
                            tally.errors.push_resource(&backend_id, format!(
                                "offering {} {month}: resource {backend_id}: per-user usage of {component}: {error}",
                                target.name
                            ));
                        }
                    }
                });
            }
        }
        futures::future::join_all(tasks).await;
    }
}

/// What Waldur holds for the month: one offering-wide listing, or in the sequential
/// baseline one listing for the single resource.
async fn list_usages(
    target: &ReportTarget,
    options: &CycleOptions,
    resources: &[Resource],
    billing_period: &str,
) -> Result<Vec<ComponentUsage>, WaldurError> {
    match resources {
        [one] if options.sequential => target.waldur.resource_component_usages(&one.uuid, billing_period).await,
        _ => target.waldur.component_usages(&target.offering_uuid, billing_period).await,
    }
}

/// Per-user usages held for the month, scoped like [`list_usages`].
async fn list_user_usages(
    target: &ReportTarget,
    options: &CycleOptions,
    resources: &[Resource],
    billing_period: &str,
) -> Result<Vec<crate::waldur::ComponentUserUsage>, WaldurError> {
    match resources {
        [one] if options.sequential => target.waldur.resource_user_usages(&one.uuid, billing_period).await,
        _ => target.waldur.component_user_usages(&target.offering_uuid, billing_period).await,
    }
}

fn accepted_resources(accepted: &[(&Resource, &wit::ResourceUsage)]) -> Vec<Resource> {
    accepted.iter().map(|(r, _)| (*r).clone()).collect()
}

/// A component's value as a Waldur amount: finite, not negative, within Waldur's range.
fn usage_amount(value: f64) -> Option<Cents> {
    if value >= 0.0 { Cents::round(value) } else { None }
}

/// `nodeHours=12.5 cpuHours=300` for a log line.
fn describe_amounts(amounts: &[(String, Cents)]) -> String {
    amounts.iter().map(|(component, amount)| format!("{component}={amount}")).collect::<Vec<_>>().join(" ")
}

/// A value for a message: `1e300`, not three hundred digits.
fn show(value: f64) -> String {
    if value.is_finite() && value.abs() >= 1e15 { format!("{value:e}") } else { format!("{value}") }
}

/// Checks what a component said about one resource before anything of it is used:
/// every value an amount, no component or user twice. A component is untrusted code;
/// one bad value makes the whole resource's answer suspect.
fn check_usage(usage: &wit::ResourceUsage) -> Result<(), String> {
    let mut seen = HashSet::new();
    for amount in &usage.totals {
        if usage_amount(amount.value).is_none() {
            return Err(format!("{} = {} is not a usage amount", amount.component, show(amount.value)));
        }
        if !seen.insert(amount.component.as_str()) {
            return Err(format!("{} reported twice", amount.component));
        }
    }
    let mut seen = HashSet::new();
    for user in &usage.users {
        if user.username.trim().is_empty() {
            return Err("a user without a name".to_owned());
        }
        for amount in &user.amounts {
            if usage_amount(amount.value).is_none() {
                return Err(format!(
                    "user {}: {} = {} is not a usage amount",
                    user.username,
                    amount.component,
                    show(amount.value)
                ));
            }
            if !seen.insert((user.username.as_str(), amount.component.as_str())) {
                return Err(format!("user {}: {} reported twice", user.username, amount.component));
            }
        }
    }
    Ok(())
}

/// `(resource uuid, component type)` → stored usage.
fn index_usages(list: Vec<ComponentUsage>) -> HashMap<(String, String), ComponentUsage> {
    list.into_iter().map(|u| ((u.resource_uuid.clone(), u.component_type.clone()), u)).collect()
}

struct TotalsPlan {
    send: Vec<(String, Cents)>,
    creates: bool,
}

/// Which totals of a resource to send: changed ones, never lowering a stored non-zero
/// value on absence alone, and zero for an absent resource only in the current month.
fn plan_totals(
    target: &ReportTarget,
    resource: &Resource,
    usage: &wit::ResourceUsage,
    offered: &HashSet<String>,
    existing: &HashMap<(String, String), ComponentUsage>,
    is_current: bool,
) -> TotalsPlan {
    let mut plan = TotalsPlan { send: Vec::new(), creates: false };
    for amount in &usage.totals {
        if !offered.contains(&amount.component) {
            continue;
        }
        // Checked by `check_usage` before planning.
        let Some(new) = usage_amount(amount.value) else { continue };
        let stored = existing.get(&(resource.uuid.clone(), amount.component.clone()));
        if !usage.found {
            match stored {
                Some(stored) if !stored.amount.is_zero() => {
                    tracing::warn!(
                        offering = %target.name, resource = %resource.backend_id.as_deref().unwrap_or_default(),
                        component = %amount.component, stored = %stored.amount,
                        "absent from DWDI; keeping the stored value"
                    );
                    continue;
                }
                Some(_) => continue,
                None if !is_current => continue,
                None => {}
            }
        }
        match stored {
            Some(stored) if stored.amount == new => {}
            Some(_) => plan.send.push((amount.component.clone(), new)),
            None => {
                plan.creates = true;
                plan.send.push((amount.component.clone(), new));
            }
        }
    }
    plan
}

fn classify_write_error(
    target: &ReportTarget,
    tally: &Tally,
    resource: &Resource,
    month: Month,
    error: &WaldurError,
) -> Outcome {
    let backend_id = resource.backend_id.as_deref().unwrap_or_default();
    if error.is_backfill_refusal() {
        target.warn_once(format!("backfill:{}:{month}", resource.uuid), Some(backend_id), || {
            format!("resource {backend_id} {month}: Waldur refuses to back-fill a past billing period with this token; use a staff token or reporting_periods: 1 ({error})")
        });
        return Outcome::Skipped;
    }
    if resource.state == "Erred" {
        target.warn_once(format!("erred:{}", resource.uuid), Some(backend_id), || {
            format!("resource {backend_id} is Erred and Waldur refuses its usage: {error}")
        });
        return Outcome::Skipped;
    }
    tally.errors.push_resource(backend_id, format!("offering {} {month}: resource {backend_id}: {error}", target.name));
    Outcome::Failed
}
