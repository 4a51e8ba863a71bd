//! Back-filling past months into Waldur: the logic of `load-historical-usage`.
//!
//! Sites load years of DWDI usage once per offering. The Python loader makes several
//! Waldur calls per user and month, one after another; over years of data that takes
//! hours. Here each month costs one component call for all resources, one paginated
//! listing of what Waldur already holds, and then only the writes that change
//! something — one `set_usage` per resource, one bulk `set_user_usages` per component
//! usage — running concurrently up to a bound. Because unchanged values are never
//! written, a second run over loaded months writes nothing: an interrupted run is
//! simply started again.
//!
//! The same code path can run one resource and one user at a time
//! ([`Strategy::OneByOne`]: a component call and listings per resource, `set_user_usage`
//! per user, nothing concurrent), which is what the Python tool does; the benchmark uses
//! it as its baseline.
//!
//! What it deliberately does not do: it never lowers a stored value to zero unless
//! asked (`reconcile_stale`), and it never writes into a month after the current one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use jiff::ToSpan as _;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use tokio::sync::Semaphore;

use crate::amount::Cents;
use crate::backends::{Backends, prepare_offering};
use crate::config::{AgentConfig, Secret};
use crate::period::Month;
use crate::report::StopFlag;
use crate::run_errors::RunErrors;
use crate::runtime::{OfferingBackend, wit};
use crate::waldur::{ComponentUsage, ComponentUserUsage, Resource, UserUsageInput, WaldurClient, WaldurError};

/// The longest range one run may cover, in calendar years.
pub const MAX_RANGE_YEARS: i16 = 5;

/// How the work of a month is cut into requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// One component call and one listing per month for all resources; bulk per-user
    /// writes; writes concurrent up to the bound.
    #[default]
    Batched,
    /// One resource and one user at a time, as the Python tool does: a component call and
    /// listings per resource and month, `set_user_usage` per user, one request in flight.
    OneByOne,
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct HistoricalOptions {
    /// The months to load, oldest first.
    pub months: Vec<Month>,
    /// Submit per-user usage as well as totals.
    pub user_usage: bool,
    /// Print what would be submitted, submit nothing.
    pub dry_run: bool,
    /// Also write zeros: totals of resources absent from DWDI (or measured zero) and
    /// per-user records of users absent from DWDI, where Waldur holds a non-zero value.
    pub reconcile_stale: bool,
    /// Only these resource backend ids (empty: every resource with a backend id).
    pub resources: Vec<String>,
    /// Waldur writes in flight ([`Strategy::OneByOne`] always uses 1).
    pub concurrency: usize,
    pub strategy: Strategy,
    /// The configured time zone: submission dates are the first of the month at
    /// midnight there.
    pub time_zone: TimeZone,
}

/// The months from the one containing `start` to the one containing `end`, oldest
/// first, after checking the range: `start` not after `end`, at most
/// [`MAX_RANGE_YEARS`] calendar years, and no month after `current`.
pub fn months_between(start: Date, end: Date, current: Month) -> Result<Vec<Month>> {
    if start > end {
        bail!("--start-date {start} is after --end-date {end}");
    }
    let limit =
        start.checked_add(i64::from(MAX_RANGE_YEARS).years()).map_err(|e| anyhow!("--start-date {start}: {e}"))?;
    if end > limit {
        bail!(
            "--start-date {start} to --end-date {end} is longer than {MAX_RANGE_YEARS} years (the last allowed end date is {limit}); split the load into several runs"
        );
    }
    let first = Month::new(start.year(), start.month()).map_err(|e| anyhow!("--start-date {start}: {e}"))?;
    let last = Month::new(end.year(), end.month()).map_err(|e| anyhow!("--end-date {end}: {e}"))?;
    if last > current {
        bail!(
            "--end-date {end} is in a future month (the current month is {current}); Waldur refuses usage for future months"
        );
    }
    let mut months = vec![first];
    while let Some(&month) = months.last()
        && month < last
    {
        months.push(month.next());
    }
    Ok(months)
}

/// True when a backend can report a given past month: it lists `usage-report`, which
/// takes the period explicitly.
pub fn supports_historical(info: &wit::BackendInfo) -> bool {
    info.operations.iter().any(|op| matches!(op, wit::Operation::UsageReport))
}

/// An offering ready to back-fill: its component binding and a Waldur client with the
/// token of the run.
pub struct HistoricalTarget {
    pub index: usize,
    pub name: String,
    pub offering_uuid: String,
    pub backend_type: String,
    pub backend: OfferingBackend,
    pub waldur: WaldurClient,
    /// Component types configured for the offering, in config order.
    pub components: Vec<String>,
}

/// UUIDs compare without dashes and case, as Django reads them.
fn same_uuid(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().chars().filter(|c| *c != '-').collect::<String>().to_ascii_lowercase();
    norm(a) == norm(b)
}

/// Finds the offering `offering_uuid` in `config`, loads and validates its backend, and
/// checks that the backend supports historical periods. Makes no network request.
/// `token` (the `--user-token`) replaces the config's `waldur_api_token`.
pub async fn prepare(
    config: &AgentConfig,
    offering_uuid: &str,
    token: Option<Secret>,
    backends: &Backends,
) -> Result<HistoricalTarget> {
    let (index, offering) = config
        .offerings()
        .find(|(_, o)| o.waldur_offering_uuid.as_deref().is_some_and(|u| same_uuid(u, offering_uuid)))
        .ok_or_else(|| {
            let known: Vec<String> = config
                .offerings()
                .map(|(i, o)| {
                    format!(
                        "{} = {}",
                        o.display_name(i),
                        o.waldur_offering_uuid.as_deref().unwrap_or("(no waldur_offering_uuid)")
                    )
                })
                .collect();
            anyhow!(
                "--offering-uuid {offering_uuid}: no offering with this waldur_offering_uuid in the config ({})",
                known.join("; ")
            )
        })?;
    let name = offering.display_name(index);
    let url = offering
        .waldur_api_url
        .as_deref()
        .ok_or_else(|| anyhow!("offerings[{index}].waldur_api_url: missing (needed to load usage into Waldur)"))?;
    let token = match token.or_else(|| offering.waldur_api_token.clone()) {
        Some(token) => token,
        None => bail!("offerings[{index}].waldur_api_token: missing; pass --user-token"),
    };
    let mut waldur = WaldurClient::new(url, token, offering.verify_ssl)
        .map_err(|e| anyhow!("offerings[{index}].waldur_api_url: {e:#}"))?;
    waldur.set_timeout(config.waldur_timeout());
    backends.load_builtin(index, offering).await?;
    let backend = prepare_offering(backends, index, offering).await?;
    let info = &backend.backend().info;
    if !supports_historical(info) {
        bail!(
            "offerings[{index}] ({name}): backend {} {} does not support historical periods (it does not offer usage-report)",
            info.name,
            info.version
        );
    }
    Ok(HistoricalTarget {
        index,
        name,
        offering_uuid: offering_uuid.trim().to_owned(),
        backend_type: offering.usage_backend().unwrap_or_default().to_owned(),
        backend,
        waldur,
        components: offering.backend_components.keys().cloned().collect(),
    })
}

/// Refuses a token whose owner is not staff: only staff may back-fill usage-billed
/// components in past months.
pub async fn check_staff(waldur: &WaldurClient) -> Result<()> {
    let me = waldur.me().await.map_err(|e| anyhow!("cannot check the token's user: {e}"))?;
    if !me.is_staff {
        bail!(
            "the Waldur token belongs to {:?}, who is not staff; loading past months needs a staff token (with a service-provider token, pass --no-staff-check)",
            me.username
        );
    }
    tracing::info!(user = %me.username, "staff token confirmed");
    Ok(())
}

/// A submission a dry run would make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// `set_usage` of a resource in a month.
    Totals { month: Month, backend_id: String, amounts: Vec<(String, Cents)> },
    /// Per-user usage of one component of a resource in a month.
    Users { month: Month, backend_id: String, component: String, users: Vec<(String, Cents)> },
}

impl fmt::Display for Planned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Planned::Totals { month, backend_id, amounts } => {
                write!(f, "{month} {backend_id} totals")?;
                for (component, amount) in amounts {
                    write!(f, " {component}={amount}")?;
                }
                Ok(())
            }
            Planned::Users { month, backend_id, component, users } => {
                write!(f, "{month} {backend_id} users {component}")?;
                for (username, amount) in users {
                    write!(f, " {username}={amount}")?;
                }
                Ok(())
            }
        }
    }
}

/// Watches a run: progress, and what a dry run would submit. Called from the run's own
/// task, possibly from several of its futures at once.
pub trait Observer: Send + Sync {
    /// The run knows its size: months and resources per month.
    fn started(&self, _months: usize, _resources: usize) {}
    /// One resource is done for one month (whatever its outcome).
    fn resource_done(&self) {}
    /// A month is done.
    fn month_done(&self, _month: Month) {}
    /// A dry run would submit this.
    fn planned(&self, _planned: &Planned) {}
}

/// An observer that watches nothing.
pub struct NoObserver;

impl Observer for NoObserver {}

/// What a run did. Resource counts are per resource and month.
#[derive(Debug, Default, Clone)]
pub struct HistoricalSummary {
    pub offering: String,
    /// The range asked for.
    pub range: Option<(Month, Month)>,
    /// Months completed.
    pub months: usize,
    /// Resources loaded each month.
    pub resources: usize,
    /// `set_usage` writes accepted (planned, in a dry run).
    pub totals_submitted: usize,
    /// Per-user values written (planned, in a dry run).
    pub user_usages_submitted: usize,
    /// Resources and months where Waldur already held every value.
    pub unchanged: usize,
    /// Resources and months DWDI did not mention, so nothing was written.
    pub absent: usize,
    /// Resources and months not written for a reason that is no failure (an Erred
    /// resource, a stop request).
    pub skipped: usize,
    pub failed: usize,
    pub dwdi_calls: u64,
    pub waldur_calls: u64,
    pub duration: Duration,
    pub dry_run: bool,
    /// Stopped by a signal before the end.
    pub interrupted: bool,
    /// One line per failure, for the operator.
    pub errors: Vec<String>,
}

impl fmt::Display for HistoricalSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            f.write_str("dry run, nothing submitted: ")?;
        }
        write!(f, "{}", self.offering)?;
        if let Some((first, last)) = self.range {
            write!(f, " {first}..{last}")?;
        }
        let verb = if self.dry_run { "to submit" } else { "submitted" };
        write!(
            f,
            ": {} months, {} resources; {} totals {verb}, {} user usages {verb}, {} unchanged, {} absent, {} skipped, {} failed; {} DWDI calls, {} Waldur calls, {:.2?}",
            self.months,
            self.resources,
            self.totals_submitted,
            self.user_usages_submitted,
            self.unchanged,
            self.absent,
            self.skipped,
            self.failed,
            self.dwdi_calls,
            self.waldur_calls,
            self.duration
        )?;
        if self.interrupted {
            f.write_str("; interrupted")?;
        }
        Ok(())
    }
}

/// Outcome of one resource in one month; a later, worse outcome wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Unchanged,
    Absent,
    Submitted,
    Skipped,
    Failed,
}

/// Counters of a run, shared by its concurrent writes.
#[derive(Default)]
struct Tally {
    totals: AtomicU64,
    user_usages: AtomicU64,
    unchanged: AtomicU64,
    absent: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    errors: RunErrors,
}

impl Tally {
    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Submitted => return,
            Outcome::Unchanged => &self.unchanged,
            Outcome::Absent => &self.absent,
            Outcome::Skipped => &self.skipped,
            Outcome::Failed => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the run learns from Waldur before the first month.
struct Setup {
    /// Component types the Waldur offering has.
    offered: HashSet<String>,
    /// The resources to load, by backend id.
    resources: Vec<Resource>,
    /// Offering users: username → URL, to link per-user usage.
    users_by_name: HashMap<String, String>,
}

/// Reads the offering, its resources (with the filter applied) and, for per-user usage,
/// its users.
async fn setup(target: &HistoricalTarget, options: &HistoricalOptions) -> Result<Setup> {
    let offering = target.waldur.offering(&target.offering_uuid).await?;
    let offered: HashSet<String> = offering.components.iter().map(|c| c.component_type.clone()).collect();
    for name in &target.components {
        if !offered.contains(name) {
            tracing::warn!(offering = %target.name, "component {name:?} is configured but the Waldur offering has no such component; it is not submitted");
        }
    }
    let mut resources: Vec<Resource> = target
        .waldur
        .resources(&target.offering_uuid)
        .await?
        .into_iter()
        .filter(|r| r.backend_id.as_deref().is_some_and(|id| !id.trim().is_empty()))
        .collect();
    resources.sort_by(|a, b| a.backend_id.cmp(&b.backend_id));
    if !options.resources.is_empty() {
        let unknown: Vec<&str> = options
            .resources
            .iter()
            .filter(|id| !resources.iter().any(|r| r.backend_id.as_deref() == Some(id.as_str())))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            bail!(
                "--resource-backend-id {}: no resource of offering {} in state OK or Erred has this backend_id",
                unknown.join(", "),
                target.offering_uuid
            );
        }
        resources.retain(|r| r.backend_id.as_ref().is_some_and(|id| options.resources.contains(id)));
    }
    let users_by_name = if options.user_usage && !resources.is_empty() {
        target
            .waldur
            .offering_users(&target.offering_uuid)
            .await?
            .into_iter()
            .filter_map(|u| Some((u.username?, u.url)))
            .collect()
    } else {
        HashMap::new()
    };
    Ok(Setup { offered, resources, users_by_name })
}

/// Loads `options.months` of the offering into Waldur, oldest first.
///
/// Fails as a whole only when nothing can start (the offering, its resources or its
/// users cannot be read, or the resource filter names an unknown resource); from then
/// on every failure is counted and described in the summary, and the run goes on.
pub async fn load(
    target: &HistoricalTarget,
    options: &HistoricalOptions,
    stop: &StopFlag,
    observer: &dyn Observer,
) -> Result<HistoricalSummary> {
    // Every log line of the run carries the offering and its backend type.
    let span = tracing::info_span!("load", offering = %target.name, backend_type = %target.backend_type);
    tracing::Instrument::instrument(load_offering(target, options, stop, observer), span).await
}

async fn load_offering(
    target: &HistoricalTarget,
    options: &HistoricalOptions,
    stop: &StopFlag,
    observer: &dyn Observer,
) -> Result<HistoricalSummary> {
    let started = Instant::now();
    let waldur_before = target.waldur.request_count();
    let dwdi_before = target.backend.egress().stats().requests.load(Ordering::Relaxed);
    let Setup { offered, resources, users_by_name } = setup(target, options).await?;
    let concurrency = match options.strategy {
        Strategy::Batched => options.concurrency.max(1),
        Strategy::OneByOne => 1,
    };
    let run = Run {
        target,
        options,
        stop,
        observer,
        tally: Tally::default(),
        offered,
        users_by_name,
        semaphore: Semaphore::new(concurrency),
        warned: Mutex::new(HashSet::new()),
        cut_short: AtomicBool::new(false),
    };
    let mut summary = HistoricalSummary {
        offering: target.name.clone(),
        range: options.months.first().zip(options.months.last()).map(|(a, b)| (*a, *b)),
        resources: resources.len(),
        dry_run: options.dry_run,
        ..HistoricalSummary::default()
    };
    observer.started(options.months.len(), resources.len());
    if resources.is_empty() {
        tracing::warn!(offering = %target.name, "the offering has no resource with a backend_id in state OK or Erred; nothing to load");
        summary.months = options.months.len();
        run.fill(&mut summary, started, waldur_before, dwdi_before);
        return Ok(summary);
    }
    for &month in &options.months {
        if stop.is_stopped() {
            break;
        }
        let complete =
            tracing::Instrument::instrument(run.month(month, &resources), tracing::info_span!("month", %month)).await;
        if !complete {
            break;
        }
        summary.months += 1;
        observer.month_done(month);
    }
    run.fill(&mut summary, started, waldur_before, dwdi_before);
    summary.interrupted = summary.months < options.months.len();
    Ok(summary)
}

/// One run over one offering.
struct Run<'a> {
    target: &'a HistoricalTarget,
    options: &'a HistoricalOptions,
    stop: &'a StopFlag,
    observer: &'a dyn Observer,
    tally: Tally,
    offered: HashSet<String>,
    users_by_name: HashMap<String, String>,
    semaphore: Semaphore,
    /// Warnings already given, so each is given once per run.
    warned: Mutex<HashSet<String>>,
    /// A write was left out because the run was asked to stop.
    cut_short: AtomicBool,
}

/// Where a listing looks: the whole offering, or one resource.
#[derive(Clone, Copy)]
enum Scope<'r> {
    Offering,
    Resource(&'r Resource),
}

/// `(resource uuid, component type)` → stored usage.
type StoredTotals = HashMap<(String, String), ComponentUsage>;
/// Component usage uuid → username → stored per-user usage.
type StoredUsers = HashMap<String, HashMap<String, ComponentUserUsage>>;

/// One resource through one month.
struct Slot<'r> {
    resource: &'r Resource,
    backend_id: &'r str,
    usage: Option<&'r wit::ResourceUsage>,
    /// Totals to write.
    send: Vec<(String, Cents)>,
    /// Writing them creates component usages Waldur does not have yet.
    creates: bool,
    outcome: Outcome,
    /// Totals are stored (written now or already there), so per-user usage may follow.
    totals_in_place: bool,
}

impl Slot<'_> {
    fn worsen(&mut self, outcome: Outcome) {
        self.outcome = self.outcome.max(outcome);
    }
}

/// Per-user values of one component usage to write.
struct UserJob {
    slot: usize,
    component_usage: String,
    usages: Vec<UserUsageInput>,
}

/// A write that did not happen.
enum WriteError {
    /// Left out because the run was asked to stop.
    Stopped,
    Waldur(WaldurError),
}

/// The submission date of a past month: its first day at midnight in the configured
/// zone, with the offset, so Waldur files it under the month we mean.
fn month_start(month: Month, tz: &TimeZone) -> Result<String> {
    let zoned = month
        .first_day()
        .to_zoned(tz.clone())
        .map_err(|e| anyhow!("{month}: no midnight on its first day in the time zone: {e}"))?;
    Ok(zoned.timestamp().display_with_offset(zoned.offset()).to_string())
}

impl Run<'_> {
    fn fill(&self, summary: &mut HistoricalSummary, started: Instant, waldur_before: u64, dwdi_before: u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as usize;
        summary.totals_submitted = get(&self.tally.totals);
        summary.user_usages_submitted = get(&self.tally.user_usages);
        summary.unchanged = get(&self.tally.unchanged);
        summary.absent = get(&self.tally.absent);
        summary.skipped = get(&self.tally.skipped);
        summary.failed = get(&self.tally.failed);
        summary.errors = self.tally.errors.lines();
        summary.waldur_calls = self.target.waldur.request_count() - waldur_before;
        summary.dwdi_calls = self.target.backend.egress().stats().requests.load(Ordering::Relaxed) - dwdi_before;
        summary.duration = started.elapsed();
    }

    /// True the first time `key` is seen in this run.
    fn first_time(&self, key: String) -> bool {
        self.warned.lock().map(|mut seen| seen.insert(key)).unwrap_or(true)
    }

    /// One month, all resources; false when a stop request cut it short.
    async fn month(&self, month: Month, resources: &[Resource]) -> bool {
        match self.options.strategy {
            Strategy::Batched => {
                let all: Vec<&Resource> = resources.iter().collect();
                self.chunk(month, &all, Scope::Offering).await;
            }
            Strategy::OneByOne => {
                for resource in resources {
                    if self.stop.is_stopped() {
                        return false;
                    }
                    self.chunk(month, &[resource], Scope::Resource(resource)).await;
                }
            }
        }
        !self.cut_short.load(Ordering::SeqCst)
    }

    /// Counts each resource of a chunk failed, with one error line.
    fn fail_all(&self, chunk: &[&Resource], message: String) {
        self.tally.errors.push(message);
        for _ in chunk {
            self.tally.count(Outcome::Failed);
            self.observer.resource_done();
        }
    }

    /// One month of the resources of `chunk`: one component call, the listings of
    /// `scope`, then the writes that change something.
    async fn chunk(&self, month: Month, chunk: &[&Resource], scope: Scope<'_>) {
        let name = &self.target.name;
        let date = match month_start(month, &self.options.time_zone) {
            Ok(date) => date,
            Err(error) => return self.fail_all(chunk, format!("offering {name}: {error:#}")),
        };
        // The seed's historical loader passes no Waldur clusters: the backend applies
        // `cscs_dwdi_cluster` when it is set, else no cluster filter.
        let requested = chunk
            .iter()
            .map(|r| wit::WaldurResource { backend_id: r.backend_id.clone().unwrap_or_default(), cluster: None })
            .collect();
        let period = month.billing_period();
        let report = match self.target.backend.usage_report(requested, period).await {
            Ok(report) => report,
            Err(error) => {
                return self.fail_all(
                    chunk,
                    format!("offering {name} {month}: DWDI usage failed, nothing submitted: {error}"),
                );
            }
        };
        let billing_period = month.first_day().to_string();
        let stored = match self.list_totals(scope, &billing_period).await {
            Ok(stored) => stored,
            Err(error) => {
                return self.fail_all(chunk, format!("offering {name} {month}: cannot read Waldur's usages: {error}"));
            }
        };
        let by_id: HashMap<&str, &wit::ResourceUsage> =
            report.resources.iter().map(|r| (r.backend_id.as_str(), r)).collect();
        let mut slots: Vec<Slot<'_>> = chunk
            .iter()
            .map(|resource| {
                let backend_id = resource.backend_id.as_deref().unwrap_or_default();
                let usage = by_id.get(backend_id).copied();
                let mut slot = Slot {
                    resource,
                    backend_id,
                    usage,
                    send: Vec::new(),
                    creates: false,
                    outcome: Outcome::Unchanged,
                    totals_in_place: false,
                };
                match usage {
                    None => {
                        self.tally.errors.push_resource(
                            backend_id,
                            format!("offering {name} {month}: resource {backend_id}: the backend did not report it"),
                        );
                        slot.outcome = Outcome::Failed;
                    }
                    Some(usage) => {
                        if !usage.found {
                            slot.outcome = Outcome::Absent;
                        }
                        (slot.send, slot.creates) = self.plan_totals(resource, usage, &stored);
                    }
                }
                slot
            })
            .collect();
        self.write_totals(month, &mut slots, &date).await;
        if self.options.user_usage {
            if self.stop.is_stopped() {
                // Totals without their per-user usage: the month is not done.
                self.cut_short.store(true, Ordering::SeqCst);
            } else {
                self.user_usages(month, scope, &mut slots, &stored, &billing_period, &date).await;
            }
        }
        for slot in &slots {
            if slot.outcome == Outcome::Absent {
                tracing::debug!(offering = %name, resource = %slot.backend_id, %month, "absent from DWDI; nothing written");
            }
            self.tally.count(slot.outcome);
            self.observer.resource_done();
        }
    }

    async fn list_totals(&self, scope: Scope<'_>, billing_period: &str) -> Result<StoredTotals, WaldurError> {
        let waldur = &self.target.waldur;
        let list = match scope {
            Scope::Offering => waldur.component_usages(&self.target.offering_uuid, billing_period).await?,
            Scope::Resource(resource) => waldur.resource_component_usages(&resource.uuid, billing_period).await?,
        };
        Ok(list.into_iter().map(|u| ((u.resource_uuid.clone(), u.component_type.clone()), u)).collect())
    }

    async fn list_users(&self, scope: Scope<'_>, billing_period: &str) -> Result<StoredUsers, WaldurError> {
        let waldur = &self.target.waldur;
        let list = match scope {
            Scope::Offering => waldur.component_user_usages(&self.target.offering_uuid, billing_period).await?,
            Scope::Resource(resource) => waldur.resource_user_usages(&resource.uuid, billing_period).await?,
        };
        let mut stored = StoredUsers::new();
        for usage in list {
            stored.entry(usage.component_usage_uuid().to_owned()).or_default().insert(usage.username.clone(), usage);
        }
        Ok(stored)
    }

    /// Which totals of a resource to write: values that differ from what Waldur holds;
    /// a zero only with `reconcile_stale`, and only over a stored non-zero value.
    fn plan_totals(
        &self,
        resource: &Resource,
        usage: &wit::ResourceUsage,
        stored: &StoredTotals,
    ) -> (Vec<(String, Cents)>, bool) {
        let mut send = Vec::new();
        let mut creates = false;
        for amount in &usage.totals {
            if !self.offered.contains(&amount.component) {
                continue;
            }
            let Some(new) = Cents::round(amount.value) else {
                if self.first_time(format!("nan:{}:{}", resource.uuid, amount.component)) {
                    tracing::warn!(
                        offering = %self.target.name,
                        "resource {}: {} = {} is not an amount; not submitted",
                        resource.backend_id.as_deref().unwrap_or_default(), amount.component, amount.value
                    );
                }
                continue;
            };
            let stored = stored.get(&(resource.uuid.clone(), amount.component.clone()));
            if new.is_zero() {
                if self.options.reconcile_stale && stored.is_some_and(|s| !s.amount.is_zero()) {
                    send.push((amount.component.clone(), new));
                }
                continue;
            }
            match stored {
                Some(stored) if stored.amount == new => {}
                Some(_) => send.push((amount.component.clone(), new)),
                None => {
                    creates = true;
                    send.push((amount.component.clone(), new));
                }
            }
        }
        (send, creates)
    }

    /// `set_usage` for every slot with totals to send (a dry run reports them instead).
    async fn write_totals(&self, month: Month, slots: &mut [Slot<'_>], date: &str) {
        let writes = slots.iter().enumerate().filter(|(_, s)| s.outcome != Outcome::Failed && !s.send.is_empty()).map(
            |(index, slot)| async move {
                if self.options.dry_run {
                    self.observer.planned(&Planned::Totals {
                        month,
                        backend_id: slot.backend_id.to_owned(),
                        amounts: slot.send.clone(),
                    });
                    return (index, Ok(()));
                }
                let result = self.guarded(|| self.target.waldur.set_usage(&slot.resource.uuid, &slot.send, date)).await;
                (index, result)
            },
        );
        let results = futures::future::join_all(writes).await;
        for slot in slots.iter_mut() {
            if slot.outcome != Outcome::Failed && slot.send.is_empty() {
                slot.totals_in_place = true;
            }
        }
        for (index, result) in results {
            let slot = &mut slots[index];
            match result {
                Ok(()) => {
                    self.tally.totals.fetch_add(1, Ordering::Relaxed);
                    slot.worsen(Outcome::Submitted);
                    slot.totals_in_place = true;
                }
                Err(error) => {
                    let outcome = self.write_failed(slot.resource, month, "totals", error);
                    slot.worsen(outcome);
                }
            }
        }
    }

    /// Runs one write under the concurrency bound, unless the run was asked to stop.
    async fn guarded<F, Fut>(&self, write: F) -> Result<(), WriteError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), WaldurError>>,
    {
        let _permit = self.semaphore.acquire().await;
        if self.stop.is_stopped() {
            self.cut_short.store(true, Ordering::SeqCst);
            return Err(WriteError::Stopped);
        }
        write().await.map_err(WriteError::Waldur)
    }

    /// What a refused write means for its resource. Waldur's refusal to back-fill is
    /// reported once per resource, with the way out.
    fn write_failed(&self, resource: &Resource, month: Month, what: &str, error: WriteError) -> Outcome {
        let error = match error {
            WriteError::Stopped => return Outcome::Skipped,
            WriteError::Waldur(error) => error,
        };
        let backend_id = resource.backend_id.as_deref().unwrap_or_default();
        let name = &self.target.name;
        if error.is_backfill_refusal() {
            if self.first_time(format!("backfill:{}", resource.uuid)) {
                self.tally.errors.push_resource(backend_id, format!(
                    "offering {name}: resource {backend_id}: Waldur refuses to back-fill past billing periods with this token; use a staff token ({error})"
                ));
            }
            return Outcome::Failed;
        }
        if resource.state == "Erred" {
            if self.first_time(format!("erred:{}", resource.uuid)) {
                tracing::warn!(offering = %name, resource = backend_id, "resource {backend_id} is Erred and Waldur refuses its usage; skipped: {error}");
            }
            return Outcome::Skipped;
        }
        self.tally
            .errors
            .push_resource(backend_id, format!("offering {name} {month}: resource {backend_id}: {what}: {error}"));
        Outcome::Failed
    }

    /// Per-user usage of the slots whose totals are in place: the values that differ
    /// from what Waldur holds, in one bulk write per component usage (one write per user
    /// one by one).
    async fn user_usages(
        &self,
        month: Month,
        scope: Scope<'_>,
        slots: &mut [Slot<'_>],
        stored: &StoredTotals,
        billing_period: &str,
        date: &str,
    ) {
        let name = &self.target.name;
        let eligible: Vec<usize> =
            (0..slots.len()).filter(|&i| slots[i].totals_in_place && slots[i].outcome != Outcome::Failed).collect();
        if eligible.is_empty() {
            return;
        }
        let fail = |slots: &mut [Slot<'_>], message: String| {
            self.tally.errors.push(message);
            for &i in &eligible {
                slots[i].worsen(Outcome::Failed);
            }
        };
        // New component usages have UUIDs only Waldur knows: one more listing finds them.
        let created = !self.options.dry_run
            && eligible.iter().any(|&i| slots[i].creates && slots[i].outcome == Outcome::Submitted);
        let relisted;
        let usages = if created {
            match self.list_totals(scope, billing_period).await {
                Ok(list) => {
                    relisted = list;
                    &relisted
                }
                Err(error) => {
                    return fail(
                        slots,
                        format!("offering {name} {month}: cannot list usages for per-user usage: {error}"),
                    );
                }
            }
        } else {
            stored
        };
        // Per-user records live under component usages: when none existed before this
        // run touched the month, there is nothing to read.
        let existed: HashSet<&str> = eligible.iter().map(|&i| slots[i].resource.uuid.as_str()).collect();
        let stored_users = if stored.keys().any(|(resource, _)| existed.contains(resource.as_str())) {
            match self.list_users(scope, billing_period).await {
                Ok(users) => users,
                Err(error) => {
                    return fail(slots, format!("offering {name} {month}: cannot list per-user usages: {error}"));
                }
            }
        } else {
            StoredUsers::new()
        };
        let mut jobs = Vec::new();
        let mut planned = Vec::new();
        for &index in &eligible {
            let slot = &slots[index];
            let Some(usage) = slot.usage else { continue };
            for component in self.target.components.iter().filter(|c| self.offered.contains(*c)) {
                let measured: Vec<(&str, f64)> = if usage.found {
                    usage
                        .users
                        .iter()
                        .filter_map(|u| {
                            u.amounts.iter().find(|a| &a.component == component).map(|a| (u.username.as_str(), a.value))
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let component_usage = usages.get(&(slot.resource.uuid.clone(), component.clone()));
                let held = component_usage.and_then(|cu| stored_users.get(&cu.uuid));
                let changed = self.plan_users(&measured, held);
                if changed.is_empty() {
                    continue;
                }
                if self.options.dry_run {
                    self.observer.planned(&Planned::Users {
                        month,
                        backend_id: slot.backend_id.to_owned(),
                        component: component.clone(),
                        users: changed.iter().map(|u| (u.username.clone(), u.usage)).collect(),
                    });
                    self.tally.user_usages.fetch_add(changed.len() as u64, Ordering::Relaxed);
                    planned.push(index);
                    continue;
                }
                match component_usage {
                    Some(cu) => jobs.push(UserJob { slot: index, component_usage: cu.uuid.clone(), usages: changed }),
                    None => {
                        // Only a zero total has no component usage, and its users round to zero too.
                        self.tally.errors.push_resource(slot.backend_id, format!(
                            "offering {name} {month}: resource {}: per-user usage of {component} has no component usage to go under",
                            slot.backend_id
                        ));
                    }
                }
            }
        }
        for &index in &planned {
            slots[index].worsen(Outcome::Submitted);
        }
        let writes = jobs.iter().map(|job| async move {
            let written = match self.options.strategy {
                Strategy::Batched => self
                    .guarded(|| self.target.waldur.set_user_usages(&job.component_usage, &job.usages, date))
                    .await
                    .map(|()| job.usages.len()),
                Strategy::OneByOne => {
                    let mut written = 0;
                    let mut outcome = Ok(());
                    for usage in &job.usages {
                        match self
                            .guarded(|| self.target.waldur.set_user_usage(&job.component_usage, usage, date))
                            .await
                        {
                            Ok(()) => written += 1,
                            Err(error) => {
                                outcome = Err(error);
                                break;
                            }
                        }
                    }
                    outcome.map(|()| written)
                }
            };
            (job.slot, written)
        });
        for (index, result) in futures::future::join_all(writes).await {
            let slot = &mut slots[index];
            match result {
                Ok(written) => {
                    self.tally.user_usages.fetch_add(written as u64, Ordering::Relaxed);
                    slot.worsen(Outcome::Submitted);
                }
                Err(error) => {
                    let outcome = self.write_failed(slot.resource, month, "per-user usage", error);
                    slot.worsen(outcome);
                }
            }
        }
    }

    /// Which per-user values of one component usage to write: those that differ from
    /// what Waldur holds (value or offering-user link); a zero only with
    /// `reconcile_stale`, over a stored non-zero value, including for users DWDI no
    /// longer mentions.
    fn plan_users(
        &self,
        measured: &[(&str, f64)],
        held: Option<&HashMap<String, ComponentUserUsage>>,
    ) -> Vec<UserUsageInput> {
        let reconcile = self.options.reconcile_stale;
        let held_nonzero = |username: &str| held.and_then(|h| h.get(username)).is_some_and(|s| !s.usage.is_zero());
        let mut changed = Vec::new();
        let mut seen = HashSet::new();
        for &(username, value) in measured {
            seen.insert(username);
            let Some(cents) = Cents::round(value) else { continue };
            let user = self.users_by_name.get(username).cloned();
            if cents.is_zero() {
                if reconcile && held_nonzero(username) {
                    changed.push(UserUsageInput { username: username.to_owned(), usage: cents, user });
                }
                continue;
            }
            let stored = held.and_then(|h| h.get(username));
            let same = stored.is_some_and(|s| s.usage == cents && (user.is_none() || s.user == user));
            if !same {
                changed.push(UserUsageInput { username: username.to_owned(), usage: cents, user });
            }
        }
        if reconcile && let Some(held) = held {
            let stale: BTreeMap<&str, &ComponentUserUsage> = held
                .iter()
                .filter(|(name, s)| !seen.contains(name.as_str()) && !s.usage.is_zero())
                .map(|(n, s)| (n.as_str(), s))
                .collect();
            for username in stale.keys() {
                let user = self.users_by_name.get(*username).cloned();
                changed.push(UserUsageInput { username: (*username).to_owned(), usage: Cents(0), user });
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> Result<Date> {
        crate::period::parse_date(text)
    }

    #[test]
    fn months_of_a_range_oldest_first() -> Result<()> {
        let months = months_between(date("2023-11-20")?, date("2024-02-03")?, Month::new(2024, 6)?)?;
        let shown: Vec<String> = months.iter().map(Month::to_string).collect();
        assert_eq!(shown, ["2023-11", "2023-12", "2024-01", "2024-02"]);
        let one = months_between(date("2024-03-05")?, date("2024-03-05")?, Month::new(2024, 3)?)?;
        assert_eq!(one, vec![Month::new(2024, 3)?]);
        Ok(())
    }

    #[test]
    fn five_calendar_years_at_most() -> Result<()> {
        let current = Month::new(2025, 6)?;
        // Five full calendar years, leap days included, are allowed …
        assert_eq!(months_between(date("2020-01-01")?, date("2024-12-31")?, current)?.len(), 60);
        assert_eq!(months_between(date("2020-01-01")?, date("2025-01-01")?, current)?.len(), 61);
        // … a day more is not.
        let error =
            months_between(date("2020-01-01")?, date("2025-01-02")?, current).map(|_| ()).err().map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("longer than 5 years") && e.contains("2025-01-01")),
            "{error:?}"
        );
        Ok(())
    }

    #[test]
    fn reversed_and_future_ranges_are_refused() -> Result<()> {
        let current = Month::new(2024, 6)?;
        let reversed =
            months_between(date("2024-03-01")?, date("2024-02-29")?, current).map(|_| ()).err().map(|e| e.to_string());
        assert_eq!(reversed.as_deref(), Some("--start-date 2024-03-01 is after --end-date 2024-02-29"));
        let future =
            months_between(date("2024-05-01")?, date("2024-07-01")?, current).map(|_| ()).err().map(|e| e.to_string());
        assert!(future.as_deref().is_some_and(|e| e.contains("future month")), "{future:?}");
        assert!(months_between(date("1969-12-01")?, date("1970-01-31")?, current).is_err());
        Ok(())
    }

    #[test]
    fn historical_support_is_the_usage_report_operation() {
        let mut info = wit::BackendInfo {
            name: "x".into(),
            version: "1.0.0".into(),
            backend_types: vec!["x".into()],
            operations: vec![wit::Operation::Ping, wit::Operation::DailyReport],
        };
        assert!(!supports_historical(&info));
        info.operations.push(wit::Operation::UsageReport);
        assert!(supports_historical(&info));
    }

    #[test]
    fn uuids_compare_as_django_reads_them() {
        assert!(same_uuid("12345678-1234-1234-1234-123456789ABC", "12345678123412341234123456789abc"));
        assert!(!same_uuid("12345678123412341234123456789abc", "12345678123412341234123456789abd"));
    }

    #[test]
    fn planned_lines_and_summary_read_well() -> Result<()> {
        let month = Month::new(2024, 2)?;
        let totals = Planned::Totals {
            month,
            backend_id: "p1".into(),
            amounts: vec![("nodeHours".into(), Cents(1234)), ("cpuHours".into(), Cents(5))],
        };
        assert_eq!(totals.to_string(), "2024-02 p1 totals nodeHours=12.34 cpuHours=0.05");
        let users = Planned::Users {
            month,
            backend_id: "p1".into(),
            component: "nodeHours".into(),
            users: vec![("u1".into(), Cents(100))],
        };
        assert_eq!(users.to_string(), "2024-02 p1 users nodeHours u1=1.00");
        let summary = HistoricalSummary {
            offering: "compute".into(),
            range: Some((Month::new(2024, 1)?, month)),
            months: 1,
            resources: 2,
            totals_submitted: 2,
            dry_run: true,
            interrupted: true,
            ..HistoricalSummary::default()
        };
        let text = summary.to_string();
        assert!(
            text.starts_with(
                "dry run, nothing submitted: compute 2024-01..2024-02: 1 months, 2 resources; 2 totals to submit,"
            ),
            "{text}"
        );
        assert!(text.ends_with("; interrupted"), "{text}");
        Ok(())
    }
}
