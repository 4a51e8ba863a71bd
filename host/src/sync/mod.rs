//! The sync engine: an offering's usage for a list of months, from its component into
//! Waldur. `report` and `load-historical-usage` both run it; a [`Policy`] holds what
//! differs between them.
//!
//! Per month: one component call for all resources, its answer checked
//! ([`answer`]), one paginated listing of what Waldur holds, the plan of writes
//! ([`plan`]), the writes, and a read-back: what Waldur then lists for the month must
//! be what was written. A listing is ordered by `date`, which every write changes, so
//! with another agent writing at the same time a row can move from a page not yet read
//! to one already read: every value the listing does not show as written is asked for
//! again, resource by resource, before any verdict. A value found under another month
//! stops past-month writes ([`hold`]); anything else wrong fails its resource for this
//! run only. Per-user usage follows the same way. Months overlap ([`MONTHS_IN_FLIGHT`]) and share one
//! bound on writes in flight, totals before per-user values and older months first
//! ([`WriteKind::priority`]): while a month waits for a read-back, the others' writes
//! keep the slots busy.
//! Component calls run one at a time, in month order, so the first writes wait for one
//! call, not for all of them.
//!
//! Writes land where they are meant or not at all: a past month is written only where
//! Waldur honours `date` (asked once per Waldur, see
//! [`WaldurClient::honours_date`]), every date keeps [`dates::EDGE`] away from the
//! edges of its month, and a read-back that finds a value filed elsewhere is an error.

mod anomaly;
mod answer;
pub mod dates;
mod hold;
mod plan;
mod summary;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use futures::StreamExt as _;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use priority_semaphore::PrioritySemaphore;
use tokio::sync::OnceCell;

pub use answer::{CheckedReport, check_usage};
pub use plan::Zeros;
pub use summary::{Summary, record_metrics};

use crate::amount::Cents;
use crate::backends::Backends;
use crate::config::OfferingConfig;
use crate::period::Month;
use crate::run_errors::RunErrors;
use crate::runtime::{OfferingBackend, wit};
use crate::waldur::{
    Capabilities, ComponentUsage, ComponentUserUsage, OfferingUser, Resource, UserUsageInput, WaldurClient, WaldurError,
};

/// Default bound on concurrent Waldur writes per offering.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// Months worked on at the same time. While one month waits for a read-back the next
/// writes. Not more: the months in flight are what can be written before a read-back
/// finds a value filed under another month and stops past-month writes.
pub const MONTHS_IN_FLIGHT: usize = 2;

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

/// Raised when the process is asked to stop: the writes in flight finish, no new one
/// starts.
#[derive(Debug, Default, Clone)]
pub struct StopFlag(tokio_util::sync::CancellationToken);

impl StopFlag {
    pub fn stop(&self) {
        self.0.cancel();
    }
    pub fn is_stopped(&self) -> bool {
        self.0.is_cancelled()
    }
    /// Returns once [`StopFlag::stop`] has been called.
    pub async fn stopped(&self) {
        self.0.cancelled().await;
    }
}

/// An offering ready to sync: its component binding and its Waldur client.
pub struct Target {
    pub index: usize,
    pub name: String,
    pub offering_uuid: String,
    pub backend_type: String,
    pub config: OfferingConfig,
    pub backend: OfferingBackend,
    pub waldur: WaldurClient,
    /// Where the component in service for the backend type is looked up at the start
    /// of each run; `None`: always `backend`.
    serving: Option<Backends>,
    /// Warnings already given, so each is logged once per process.
    warned: Mutex<HashSet<String>>,
    /// A read-back found a value under another billing period: past-month writes are
    /// held until a later run finds the evidence gone ([`hold`]).
    hold: Mutex<Option<hold::Misfiled>>,
}

impl Target {
    /// Binds offering `index` to `waldur` ([`WaldurClient::for_offering`]); errors name
    /// the missing key.
    pub fn new(index: usize, config: &OfferingConfig, backend: OfferingBackend, waldur: WaldurClient) -> Result<Self> {
        let offering_uuid = config.waldur_offering_uuid.clone().ok_or_else(|| {
            anyhow!("offerings[{index}].waldur_offering_uuid: missing (needed to write usage into Waldur)")
        })?;
        Ok(Self {
            index,
            name: config.display_name(index),
            offering_uuid: offering_uuid.trim().to_owned(),
            backend_type: config.usage_backend().unwrap_or_default().to_owned(),
            config: config.clone(),
            backend,
            waldur,
            serving: None,
            warned: Mutex::new(HashSet::new()),
            hold: Mutex::new(None),
        })
    }

    /// Makes each run use the component `backends` has in service for the offering's
    /// backend type at that moment, so a hot swap takes effect at the next cycle.
    pub fn follow(mut self, backends: &Backends) -> Self {
        self.serving = Some(backends.clone());
        self
    }

    /// The binding for a run starting now: the component in service, with the
    /// offering's egress and config. A swap while the run goes on does not affect it.
    pub fn backend_now(&self) -> OfferingBackend {
        let current = self.serving.as_ref().and_then(|backends| backends.get(&self.backend_type));
        match current {
            Some(current) if !Arc::ptr_eq(&current, self.backend.backend()) => self.backend.with_backend(current),
            _ => self.backend.clone(),
        }
    }

    /// Component types configured for the offering, in config order.
    pub fn components(&self) -> impl Iterator<Item = &String> {
        self.config.backend_components.keys()
    }

    /// The summary of a run of `policy` served by `backend`, before anything is counted.
    pub(crate) fn summary(&self, backend: &OfferingBackend, policy: &Policy) -> Summary {
        let info = &backend.backend().info;
        Summary {
            offering: self.name.clone(),
            backend_type: self.backend_type.clone(),
            backend: format!("{} {}", info.name, info.version),
            range: policy.months.first().zip(policy.months.last()).map(|(a, b)| (*a, *b)),
            dry_run: policy.dry_run,
            ..Summary::default()
        }
    }

    /// The hold on past-month writes, if one stands.
    fn held(&self) -> Option<hold::Misfiled> {
        self.hold.lock().ok().and_then(|held| held.clone())
    }

    /// Holds past-month writes on `evidence`, unless a hold stands already.
    fn hold_past_months(&self, evidence: hold::Misfiled) {
        if let Ok(mut held) = self.hold.lock() {
            held.get_or_insert(evidence);
        }
    }

    /// Logs `message` the first time `key` is seen; `resource` is the backend id the
    /// line is about, if any.
    fn warn_once(&self, key: String, resource: Option<&str>, message: impl FnOnce() -> String) {
        if self.first_time(key) {
            tracing::warn!(offering = %self.name, resource, "{}", message());
        }
    }

    fn first_time(&self, key: String) -> bool {
        self.warned.lock().map(|mut seen| seen.insert(key)).unwrap_or(true)
    }
}

/// What to do with past months where Waldur cannot be trusted to file them right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PastMonths {
    /// Leave them out, with one warning per offering (`report`).
    SkipUnlessDated,
    /// Refuse the run before any write (`load-historical-usage`).
    RefuseUnlessDated,
}

/// What differs between the commands that run the engine.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The months, oldest first.
    pub months: Vec<Month>,
    pub past_months: PastMonths,
    pub zeros: Zeros,
    /// An absent resource reports zero in the current month where Waldur holds nothing.
    pub absent_is_zero_in_current_month: bool,
    /// Lower stored values to zero where the upstream now says zero or nothing.
    pub reconcile_stale: bool,
    /// Refuse a total lower than Waldur's where the backend does not say its values
    /// may go down ([`anomaly`]; `report`, not `load-historical-usage`).
    pub refuse_decreases: bool,
    pub user_usage: bool,
    /// Pass each resource's `offering_backend_id` to the component (DWDI compute's
    /// cluster filter).
    pub send_offering_backend_ids: bool,
    /// Only these resource backend ids (empty: every resource with a backend id).
    pub resources: Vec<String>,
    /// Waldur writes in flight.
    pub concurrency: usize,
    /// Plan and tell the observer; write nothing.
    pub dry_run: bool,
    /// The configured time zone: billing months and dates.
    pub time_zone: TimeZone,
}

impl Policy {
    fn rules(&self) -> plan::Rules {
        plan::Rules {
            zeros: self.zeros,
            absent_is_zero_in_current_month: self.absent_is_zero_in_current_month,
            reconcile_stale: self.reconcile_stale,
        }
    }
}

/// A write a dry run would make.
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

/// Watches a run: progress, and what a dry run would write. Called from the run's own
/// task, possibly from several of its futures at once.
pub trait Observer: Send + Sync {
    /// The run knows its size: months and resources per month.
    fn started(&self, _months: usize, _resources: usize) {}
    /// One resource is done for one month (whatever its outcome).
    fn resource_done(&self) {}
    /// A month is done.
    fn month_done(&self, _month: Month) {}
    /// A dry run would write this.
    fn planned(&self, _planned: &Planned) {}
}

/// An observer that watches nothing.
pub struct NoObserver;

impl Observer for NoObserver {}

/// Said when an upstream answer knows none of an offering's resources: usually a
/// setting that selects nothing rather than a month without usage.
pub(crate) fn none_found_hint(resources: usize) -> String {
    format!(
        "the backend found none of the {resources} resources upstream; if that is unexpected, check the resource ids and the settings that select them (the cluster; storage_filesystem, storage_data_type, storage_path_mapping)."
    )
}

/// Runs `policy` over `target`. Fails as a whole only when nothing can start (the
/// offering or its resources cannot be read, a resource filter names an unknown
/// resource, past months are asked of a Waldur that cannot take them); from then on
/// every failure is counted and described in the summary.
pub async fn run(
    target: &Target,
    policy: &Policy,
    clock: &dyn Clock,
    stop: &StopFlag,
    observer: &dyn Observer,
) -> Result<Summary> {
    let started = Instant::now();
    let waldur_before = target.waldur.request_count();
    let upstream_before = target.backend.egress().stats().requests.load(Ordering::Relaxed);
    // One component version for the whole run, even if another is swapped in meanwhile.
    let backend = target.backend_now();
    let mut summary = target.summary(&backend, policy);
    // Every log line of the run carries the offering and its backend type.
    let span = tracing::info_span!("sync", offering = %target.name, backend_type = %target.backend_type);
    let run =
        tracing::Instrument::instrument(setup(target, backend, policy, clock, stop, observer), span.clone()).await;
    let run = run?;
    summary.resources = run.resources.len();
    observer.started(policy.months.len(), run.resources.len());
    if let Some(held) = run.held.as_ref() {
        run.tally.errors.push(format!(
            "offering {}: past-month writes are held since {}: {}. Past months are not written; the evidence is looked at again at the next run.",
            target.name,
            held.since.round(jiff::Unit::Second).unwrap_or(held.since),
            held.describe()
        ));
    }
    if !run.resources.is_empty() {
        summary.unfinished = tracing::Instrument::instrument(run.all_months(), span).await;
    }
    summary.months = policy.months.len() - summary.unfinished.len();
    if let Some(held) = target.held() {
        summary.held.push(format!("past-month writes held: {}", held.describe()));
    }
    if run.backfill_refused.load(Ordering::SeqCst) {
        summary.held.push("Waldur refuses past-month writes with this token".to_owned());
    }
    if let Some(line) = run.unanswered_line() {
        run.tally.errors.push(line);
    }
    if let Some(reason) = target.waldur.not_answering() {
        summary.held.push(format!("Waldur {} is not answering ({reason})", target.waldur.api_url()));
    }
    run.tally.fill(&mut summary);
    summary.waldur_calls = target.waldur.request_count() - waldur_before;
    summary.upstream_calls = target.backend.egress().stats().requests.load(Ordering::Relaxed) - upstream_before;
    summary.duration = started.elapsed();
    Ok(summary)
}

/// Reads what the run needs from Waldur before the first month.
async fn setup<'a>(
    target: &'a Target,
    backend: OfferingBackend,
    policy: &'a Policy,
    clock: &'a dyn Clock,
    stop: &'a StopFlag,
    observer: &'a dyn Observer,
) -> Result<Run<'a>> {
    let current = Month::containing(clock.now(), &policy.time_zone);
    if let Some(future) = policy.months.iter().find(|m| **m > current) {
        bail!("{future} is after the current month {current}; Waldur refuses usage for future months");
    }
    // A Waldur that stopped answering is asked once before anything else.
    target.waldur.check_answering().await?;
    // What every run needs first, asked together: the offering, its resources and, for
    // per-user usage, the offering users.
    let (offering, listed, links) = tokio::join!(
        target.waldur.offering(&target.offering_uuid),
        target.waldur.resources(&target.offering_uuid),
        async { if policy.user_usage { target.waldur.offering_users(&target.offering_uuid).await.ok() } else { None } },
    );
    let offering = offering?;
    let offered: HashSet<String> = offering.components.iter().map(|c| c.component_type.clone()).collect();
    for name in target.components().filter(|name| !offered.contains(*name)) {
        target.warn_once(format!("component:{name}"), None, || {
            format!(
                "component {name:?} is configured but the Waldur offering has no such component; it is not submitted"
            )
        });
    }
    let mut resources: Vec<Resource> = listed?
        .into_iter()
        .filter(|r| {
            let has_id = r.backend_id.as_deref().is_some_and(|id| !id.trim().is_empty());
            if !has_id {
                tracing::debug!(resource_uuid = %r.uuid, "resource has no backend_id; skipped");
            }
            has_id
        })
        .collect();
    resources.sort_by(|a, b| a.backend_id.cmp(&b.backend_id));
    if !policy.resources.is_empty() {
        let unknown: Vec<&str> = policy
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
        resources.retain(|r| r.backend_id.as_ref().is_some_and(|id| policy.resources.contains(id)));
    }
    if resources.is_empty() {
        tracing::warn!("the offering has no resource with a backend_id in state OK or Erred; nothing to write");
    }
    let capabilities = target.waldur.capabilities();
    let has_past_months = policy.months.iter().any(|m| *m < current);
    if has_past_months && !policy.dry_run && !resources.is_empty() {
        recheck_hold(target).await;
    }
    if policy.past_months == PastMonths::RefuseUnlessDated
        && !resources.is_empty()
        && policy.months.iter().any(|m| *m < current)
        && !target.waldur.honours_date().await?
    {
        bail!(
            "{}: this Waldur cannot back-fill past months: its set_usage ignores `date` and files every write under its current month (Waldur before 8.0); nothing was written. Load only the current month, or upgrade Waldur.",
            target.waldur.api_url()
        );
    }
    Ok(Run {
        target,
        backend,
        policy,
        clock,
        stop,
        observer,
        current,
        started: clock.now(),
        held: if has_past_months { target.held() } else { None },
        backfill_refused: AtomicBool::new(false),
        unanswered: Mutex::new(Unanswered::default()),
        offered,
        resources,
        // A failed listing here is asked again, and reported, where the links are used.
        links: OnceCell::new_with(links.map(link_map)),
        permits: Arc::new(PrioritySemaphore::new(policy.concurrency.max(1))),
        calls: tokio::sync::Mutex::new(()),
        tally: Tally::default(),
        capabilities,
    })
}

/// Looks at the evidence of a hold on past-month writes again, before a run that
/// covers past months writes anything; lifts the hold when it no longer stands.
async fn recheck_hold(target: &Target) {
    let Some(held) = target.held() else { return };
    match hold::recheck(&target.waldur, &held).await {
        Ok(hold::Recheck::Lifted(why)) => {
            if let Ok(mut hold) = target.hold.lock() {
                *hold = None;
            }
            tracing::warn!(
                "past-month writes resume: {why}. They were held because {}; every write is read back as always.",
                held.describe()
            );
        }
        Ok(hold::Recheck::Stands) => {}
        Err(error) => tracing::warn!("cannot look at the hold on past-month writes again: {error}"),
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
    submitted: AtomicU64,
    unchanged: AtomicU64,
    absent: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    totals: AtomicU64,
    user_writes: AtomicU64,
    user_values: AtomicU64,
    errors: RunErrors,
}

impl Tally {
    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Submitted => &self.submitted,
            Outcome::Unchanged => &self.unchanged,
            Outcome::Absent => &self.absent,
            Outcome::Skipped => &self.skipped,
            Outcome::Failed => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn fill(&self, summary: &mut Summary) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as usize;
        summary.submitted = get(&self.submitted);
        summary.unchanged = get(&self.unchanged);
        summary.absent = get(&self.absent);
        summary.skipped = get(&self.skipped);
        summary.failed = get(&self.failed);
        summary.totals_submitted = get(&self.totals);
        summary.user_usage_writes = get(&self.user_writes);
        summary.user_usages_submitted = get(&self.user_values);
        summary.errors = self.errors.lines();
    }
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
    /// Components left out by the anomaly rule: their per-user usage is left out too.
    omitted: Vec<String>,
}

impl Slot<'_> {
    fn worsen(&mut self, outcome: Outcome) {
        self.outcome = self.outcome.max(outcome);
    }
}

/// Per-user values of one component usage to write.
struct UserJob {
    slot: usize,
    resource_uuid: String,
    component: String,
    component_usage: String,
    usages: Vec<UserUsageInput>,
}

/// Resource-months a Waldur that did not answer left unwritten or unread, and the
/// first such error: one error line for the run instead of one per resource.
#[derive(Default)]
struct Unanswered {
    first: Option<String>,
    undone: std::collections::BTreeSet<(Month, String)>,
}

/// A write that did not happen.
enum WriteError {
    /// Left out: the run was asked to stop, or the month can no longer be written
    /// safely.
    Skipped,
    /// Kept out by what holds past-month writes (said in one line of its own).
    Held,
    Waldur(WaldurError),
}

/// The date for a month's writes, or why there is none.
enum Dated {
    At(String),
    /// Not written now, for a reason that is no failure (said once in a warning).
    Skip,
    /// Past-month writes are held (said in an error line of their own).
    Held,
}

/// One run over one offering.
struct Run<'a> {
    target: &'a Target,
    backend: OfferingBackend,
    policy: &'a Policy,
    clock: &'a dyn Clock,
    stop: &'a StopFlag,
    observer: &'a dyn Observer,
    /// The current month when the run started.
    current: Month,
    /// When the run started, by its clock.
    started: Timestamp,
    /// The hold on past-month writes when the run started, if it covers past months.
    held: Option<hold::Misfiled>,
    /// Waldur refused a past-month write with this token: no more past-month writes in
    /// this run (the next run asks again).
    backfill_refused: AtomicBool,
    /// What a Waldur that did not answer left undone, said in one line at the end.
    unanswered: Mutex<Unanswered>,
    /// Component types the Waldur offering has.
    offered: HashSet<String>,
    resources: Vec<Resource>,
    /// Offering users: username → URL, to link per-user usage; listed when first needed.
    links: OnceCell<HashMap<String, String>>,
    /// Waldur writes in flight, across months, in the order of [`WriteKind::priority`].
    permits: Arc<PrioritySemaphore>,
    /// Held through a component call: one at a time, in the order months start.
    calls: tokio::sync::Mutex<()>,
    tally: Tally,
    capabilities: Arc<Capabilities>,
}

impl Run<'_> {
    /// Every month, [`MONTHS_IN_FLIGHT`] at a time; the months a stop request left
    /// unfinished.
    async fn all_months(&self) -> Vec<Month> {
        // Collected first: a stream over a mapping closure is not provably `Send`.
        let months: Vec<_> =
            self.policy.months.iter().map(|&month| async move { (month, self.month_observed(month).await) }).collect();
        let mut results = futures::stream::iter(months).buffered(MONTHS_IN_FLIGHT);
        let mut unfinished = Vec::new();
        while let Some((month, done)) = results.next().await {
            if !done {
                unfinished.push(month);
            }
        }
        unfinished
    }

    async fn month_observed(&self, month: Month) -> bool {
        let done = tracing::Instrument::instrument(self.month(month), tracing::info_span!("month", %month)).await;
        if done {
            self.observer.month_done(month);
        }
        done
    }

    /// Counts each resource failed, with one error line.
    fn fail_all(&self, message: String) {
        self.tally.errors.push(message);
        for _ in &self.resources {
            self.tally.count(Outcome::Failed);
            self.observer.resource_done();
        }
    }

    /// [`Run::fail_all`] for a Waldur request that failed with `error`: where Waldur did
    /// not answer, the resources go into the run's one line about that instead.
    fn fail_all_on(&self, month: Month, error: &WaldurError, message: String) {
        let ids = self.resources.iter().map(|r| r.backend_id.as_deref().unwrap_or_default());
        if !self.no_answer(month, error, ids) {
            return self.fail_all(message);
        }
        for _ in &self.resources {
            self.tally.count(Outcome::Failed);
            self.observer.resource_done();
        }
    }

    /// Notes `resources` of `month` as left undone by a Waldur that did not answer, if
    /// `error` says so; false (nothing noted) for any other error.
    fn no_answer<'r>(&self, month: Month, error: &WaldurError, resources: impl IntoIterator<Item = &'r str>) -> bool {
        if !error.is_unanswered() {
            return false;
        }
        if let Ok(mut unanswered) = self.unanswered.lock() {
            unanswered.first.get_or_insert_with(|| error.to_string());
            unanswered.undone.extend(resources.into_iter().map(|id| (month, id.to_owned())));
        }
        true
    }

    /// The one error line about a Waldur that did not answer, if one did not.
    fn unanswered_line(&self) -> Option<String> {
        let unanswered = self.unanswered.lock().ok()?;
        let first = unanswered.first.as_ref()?;
        let months: std::collections::BTreeSet<String> = unanswered.undone.iter().map(|(m, _)| m.to_string()).collect();
        let shown: Vec<&str> = unanswered.undone.iter().take(5).map(|(_, id)| id.as_str()).collect();
        let more = if unanswered.undone.len() > shown.len() { ", …" } else { "" };
        Some(format!(
            "offering {}: Waldur {} did not answer ({first}): {} resource-month(s) of {} not written or not read back (first: {}{more}); the next cycle asks Waldur once before it writes",
            self.target.name,
            self.target.waldur.api_url(),
            unanswered.undone.len(),
            months.into_iter().collect::<Vec<_>>().join(", "),
            shown.join(", "),
        ))
    }

    /// The date for writes into `month`, or why there is none.
    async fn date_for(&self, month: Month) -> Result<Dated, WaldurError> {
        let name = &self.target.name;
        let tz = &self.policy.time_zone;
        let unsafe_month = |key: &str, message: String| {
            self.target.warn_once(format!("{key}:{month}"), None, || message);
            Ok(Dated::Skip)
        };
        if month < self.current {
            if self.target.held().is_some() || self.backfill_refused.load(Ordering::SeqCst) {
                return Ok(Dated::Held);
            }
            if !self.target.waldur.honours_date().await? {
                self.target.warn_once("undated".to_owned(), None, || {
                    format!(
                        "{}: this Waldur ignores `date` in set_usage and files every write under its current month (Waldur before 8.0): past months are not written, only the current month ({}); set reporting_periods: 1 to say so",
                        self.target.waldur.api_url(),
                        self.current
                    )
                });
                return Ok(Dated::Skip);
            }
            return Ok(dates::past_month(month, tz).map_or(Dated::Skip, Dated::At));
        }
        match dates::current_month(month, self.clock.now(), tz) {
            dates::CurrentDate::Now(date) => Ok(Dated::At(date)),
            dates::CurrentDate::HeldBack(date) if self.target.waldur.honours_date().await? => Ok(Dated::At(date)),
            dates::CurrentDate::HeldBack(_) => unsafe_month(
                "month-end",
                format!(
                    "offering {name} {month}: the month ends in less than 12 hours and this Waldur files writes by its own clock; not written until the next month (then as a past month where Waldur allows it)"
                ),
            ),
            dates::CurrentDate::TooEarly => unsafe_month(
                "month-start",
                format!(
                    "offering {name} {month}: the month began less than 12 hours ago, so a Waldur in another time zone may still be in the previous one; not written until then"
                ),
            ),
        }
    }

    /// One month, all resources; false when a stop request cut it short.
    async fn month(&self, month: Month) -> bool {
        if self.stop.is_stopped() {
            return false;
        }
        let name = &self.target.name;
        let requested = self
            .resources
            .iter()
            .map(|r| wit::WaldurResource {
                backend_id: r.backend_id.clone().unwrap_or_default(),
                offering_backend_id: if self.policy.send_offering_backend_ids { offering_backend_id(r) } else { None },
            })
            .collect();
        let billing_period = month.first_day().to_string();
        // The component call and the listing of what Waldur holds are independent.
        let call = async {
            let _turn = self.calls.lock().await;
            self.backend.usage_report(requested, month.billing_period()).await
        };
        // A past month's first write needs to know whether Waldur honours `date`: asked
        // beside the call, not after it. The question is one refused POST, asked once per
        // Waldur URL and process; a dry run writes nothing and does not ask it early.
        let probe = async {
            if month < self.current && !self.policy.dry_run {
                // Not needed here: a failure is asked again, and reported, before a write.
                let _ = self.target.waldur.honours_date().await;
            }
        };
        let (report, stored, ()) = tokio::join!(call, self.list_totals(&billing_period, 0), probe);
        let report = match report {
            Ok(report) => report,
            Err(error) => {
                self.fail_all(format!("offering {name} {month}: usage call failed, nothing submitted: {error}"));
                return true;
            }
        };
        let checked =
            CheckedReport::new(self.resources.iter().map(|r| r.backend_id.as_deref().unwrap_or_default()), &report);
        if !checked.unrequested.is_empty() {
            let shown: Vec<&str> = checked.unrequested.iter().take(5).map(String::as_str).collect();
            self.tally.errors.push(format!(
                "offering {name} {month}: the backend reported {} resource(s) nobody asked for ({}{}); ignored",
                checked.unrequested.len(),
                shown.join(", "),
                if checked.unrequested.len() > shown.len() { ", …" } else { "" }
            ));
        }
        if self.resources.len() > 1 && report.resources.iter().all(|r| !r.found) {
            self.target.warn_once(format!("none-found:{month}"), None, || {
                format!(
                    "{month}: {} `usage-agent usage` shows what the backend answers.",
                    none_found_hint(self.resources.len())
                )
            });
        }
        let stored = match stored {
            Ok(stored) => stored,
            Err(error) => {
                self.fail_all_on(
                    month,
                    &error,
                    format!("offering {name} {month}: cannot read Waldur's usages: {error}"),
                );
                return true;
            }
        };
        let rules = self.policy.rules();
        let mut slots: Vec<Slot<'_>> = Vec::with_capacity(self.resources.len());
        let mut pace = Pace::new();
        for resource in &self.resources {
            let backend_id = resource.backend_id.as_deref().unwrap_or_default();
            let mut slot = Slot {
                resource,
                backend_id,
                usage: None,
                send: Vec::new(),
                creates: false,
                outcome: Outcome::Unchanged,
                totals_in_place: false,
                omitted: Vec::new(),
            };
            match checked.usage(backend_id) {
                Err(reason) => {
                    self.tally
                        .errors
                        .push_resource(backend_id, format!("offering {name} {month}: resource {backend_id}: {reason}"));
                    slot.outcome = Outcome::Failed;
                }
                Ok(usage) => {
                    slot.usage = Some(usage);
                    if !usage.found {
                        slot.outcome = Outcome::Absent;
                    }
                    let held =
                        |component: &str| stored.get(&(resource.uuid.clone(), component.to_owned())).map(|u| u.amount);
                    let plan = plan::plan_totals(usage, &self.offered, held, rules, month == self.current);
                    for (component, kept) in &plan.kept {
                        tracing::warn!(resource = backend_id, component = %component, stored = %kept, "absent upstream; keeping the stored value");
                    }
                    (slot.send, slot.creates) = (plan.send, plan.creates);
                }
            }
            slots.push(slot);
            pace.tick().await;
        }
        let mut stored = stored;
        self.confirm_absence(month, &mut slots, &mut stored, &billing_period).await;
        if self.policy.refuse_decreases && !self.backend.backend().traits.usage_may_decrease {
            self.refuse_decreases(month, &mut slots, &stored, &billing_period).await;
        }
        let wants_writes = slots.iter().any(|s| s.outcome != Outcome::Failed && !s.send.is_empty())
            || (self.policy.user_usage
                && slots.iter().any(|s| s.usage.is_some_and(|u| u.found && !u.users.is_empty())));
        let dated = if wants_writes {
            match self.date_for(month).await {
                Ok(dated) => dated,
                Err(error) => {
                    self.fail_all_on(
                        month,
                        &error,
                        format!("offering {name} {month}: cannot tell whether this Waldur honours `date`: {error}"),
                    );
                    return true;
                }
            }
        } else {
            Dated::Skip
        };
        let complete = match &dated {
            Dated::At(date) => self.write_month(month, &mut slots, &stored, &billing_period, date).await,
            Dated::Skip | Dated::Held => {
                // Held: the writes are what the hold keeps out, so they count as failed
                // (the hold's error line says why).
                let outcome = if matches!(dated, Dated::Held) { Outcome::Failed } else { Outcome::Skipped };
                for slot in slots.iter_mut().filter(|s| s.outcome != Outcome::Failed && !s.send.is_empty()) {
                    slot.worsen(outcome);
                }
                true
            }
        };
        for slot in &slots {
            if slot.outcome == Outcome::Absent {
                tracing::debug!(resource = slot.backend_id, "absent upstream; nothing written");
            }
            self.tally.count(slot.outcome);
            self.observer.resource_done();
        }
        complete
    }

    /// The anomaly rule ([`anomaly`]) over the month's planned totals: a resource with a
    /// total lower than Waldur's is refused (an error line naming the values), or, with
    /// `omit_anomalous_usage_components`, loses only those totals (one warning each).
    async fn refuse_decreases(
        &self,
        month: Month,
        slots: &mut [Slot<'_>],
        stored: &StoredTotals,
        billing_period: &str,
    ) {
        let held = |slot: &Slot<'_>, component: &str| stored.get(&(slot.resource.uuid.clone(), component.to_owned()));
        let amount = |slot: &Slot<'_>, component: &str| held(slot, component).map(|u| u.amount);
        let lower = slots.iter().any(|slot| !anomaly::decreases(&slot.send, |c| amount(slot, c), |_| true).is_empty());
        if !lower {
            return;
        }
        // Records with per-user usages under them take no part, as in the Python agent:
        // which those are takes one listing, asked only when something went down. Unable
        // to tell, every record takes part (nothing lower is written by mistake).
        let with_users: HashSet<String> = match self.list_users(billing_period, None, 0).await {
            Ok(users) => users.into_keys().collect(),
            Err(error) => {
                tracing::warn!(%month, "cannot tell which usages have per-user usages ({error}); every lower total is refused");
                HashSet::new()
            }
        };
        let name = &self.target.name;
        let backend = &self.backend.backend().info;
        let omit = self.target.config.omit_anomalous_usage_components;
        for slot in slots.iter_mut().filter(|s| s.outcome != Outcome::Failed && !s.send.is_empty()) {
            let checked = |c: &str| held(slot, c).is_none_or(|u| !with_users.contains(&u.uuid));
            let found = anomaly::decreases(&slot.send, |c| amount(slot, c), checked);
            let measured = slot.usage.map_or(0, |u| {
                u.totals
                    .iter()
                    .filter(|a| self.offered.contains(&a.component) && Cents::round(a.value).is_some())
                    .count()
            });
            let backend_id = slot.backend_id;
            match anomaly::judge(&mut slot.send, found, measured, omit) {
                anomaly::Verdict::Clean => {}
                anomaly::Verdict::Refused(found) => {
                    let hint = if omit {
                        "every component it measures went down"
                    } else {
                        "omit_anomalous_usage_components: true writes the components that did not go down"
                    };
                    self.tally.errors.push_resource(
                        backend_id,
                        format!(
                            "offering {name} {month}: resource {backend_id}: usage anomaly: {} is lower than Waldur holds; nothing of the month is written for it: {} {} does not declare that its usage may decrease ({hint})",
                            anomaly::describe(&found),
                            backend.name,
                            backend.version
                        ),
                    );
                    slot.worsen(Outcome::Failed);
                }
                anomaly::Verdict::Omitted(found) => {
                    for decrease in &found {
                        let key = format!(
                            "anomaly:{month}:{}:{}:{}:{}",
                            slot.resource.uuid, decrease.component, decrease.held, decrease.new
                        );
                        self.target.warn_once(key, Some(backend_id), || {
                            format!(
                                "offering {name} {month}: resource {backend_id}: usage anomaly: {} is lower than Waldur holds; left out (omit_anomalous_usage_components), the other components are written: {} {} does not declare that its usage may decrease",
                                anomaly::describe(std::slice::from_ref(decrease)),
                                backend.name,
                                backend.version
                            )
                        });
                    }
                    slot.omitted = found.into_iter().map(|d| d.component).collect();
                }
            }
        }
    }

    /// The writes of one month, their read-back, then per-user usage; false when a
    /// stop request cut it short.
    async fn write_month(
        &self,
        month: Month,
        slots: &mut [Slot<'_>],
        stored: &StoredTotals,
        billing_period: &str,
        date: &str,
    ) -> bool {
        let written = self.write_totals(month, slots, date).await;
        let relisted =
            if written { self.read_back_totals(month, slots, stored, billing_period, date).await } else { None };
        if !self.policy.user_usage {
            return !self.stop.is_stopped();
        }
        if self.stop.is_stopped() {
            // Totals without their per-user usage: the month is not done.
            return false;
        }
        // What was listed before, with what the read-back listed over it: a row one
        // listing skipped (reordered by another agent's writes) the other may hold.
        let usages = match relisted {
            Some(relisted) => {
                let mut usages = stored.clone();
                usages.extend(relisted);
                usages
            }
            None => stored.clone(),
        };
        self.user_usages(month, slots, stored, &usages, billing_period, date).await;
        !self.stop.is_stopped()
    }

    /// The month's component usages; `expected` is a lower bound on their number.
    async fn list_totals(&self, billing_period: &str, expected: usize) -> Result<StoredTotals, WaldurError> {
        let list =
            self.target.waldur.component_usages_expecting(&self.target.offering_uuid, billing_period, expected).await?;
        Ok(list.into_iter().map(|u| ((u.resource_uuid.clone(), u.component_type.clone()), u)).collect())
    }

    /// The month's per-user usages, of one component type or of all; `expected` is a
    /// lower bound on their number.
    async fn list_users(
        &self,
        billing_period: &str,
        component: Option<&str>,
        expected: usize,
    ) -> Result<StoredUsers, WaldurError> {
        let list = self
            .target
            .waldur
            .offering_user_usages(&self.target.offering_uuid, billing_period, component, expected)
            .await?;
        let mut stored = StoredUsers::new();
        let mut pace = Pace::new();
        for usage in list {
            stored.entry(usage.component_usage_uuid().to_owned()).or_default().insert(usage.username.clone(), usage);
            pace.tick().await;
        }
        Ok(stored)
    }

    /// Runs one write under the bound on writes in flight, unless the run was asked to
    /// stop or the month can no longer be written safely.
    async fn guarded<F, Fut>(&self, month: Month, kind: WriteKind, write: F) -> Result<(), WriteError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), WaldurError>>,
    {
        let _permit = self.permits.acquire(kind.priority(month)).await;
        if self.stop.is_stopped() {
            return Err(WriteError::Skipped);
        }
        if month < self.current && (self.target.held().is_some() || self.backfill_refused.load(Ordering::SeqCst)) {
            return Err(WriteError::Held);
        }
        if month == self.current && Month::containing(self.clock.now(), &self.policy.time_zone) != self.current {
            // Fetched in one month, would land in the next: left to the next cycle.
            tracing::info!("month changed during the run; write skipped");
            return Err(WriteError::Skipped);
        }
        write().await.map_err(WriteError::Waldur)
    }

    /// `set_usage` for every slot with totals to send (a dry run tells the observer
    /// instead); true when anything reached Waldur.
    async fn write_totals(&self, month: Month, slots: &mut [Slot<'_>], date: &str) -> bool {
        let writes = slots.iter().enumerate().filter(|(_, s)| s.outcome != Outcome::Failed && !s.send.is_empty()).map(
            |(index, slot)| async move {
                if self.policy.dry_run {
                    self.observer.planned(&Planned::Totals {
                        month,
                        backend_id: slot.backend_id.to_owned(),
                        amounts: slot.send.clone(),
                    });
                    return (index, Ok(()));
                }
                let waldur = &self.target.waldur;
                let result = self
                    .guarded(month, WriteKind::Totals, || waldur.set_usage(&slot.resource.uuid, &slot.send, date))
                    .await;
                (index, result)
            },
        );
        let results = futures::future::join_all(writes).await;
        for slot in slots.iter_mut() {
            if slot.outcome != Outcome::Failed && slot.send.is_empty() {
                slot.totals_in_place = true;
            }
        }
        let mut written = false;
        for (index, result) in results {
            let slot = &mut slots[index];
            match result {
                Ok(()) => {
                    // Counted in a dry run too: the summary says what would be written.
                    self.tally.totals.fetch_add(1, Ordering::Relaxed);
                    if !self.policy.dry_run {
                        written = true;
                        tracing::debug!(resource = slot.backend_id, usage = %describe_amounts(&slot.send), "usage submitted");
                    }
                    slot.worsen(Outcome::Submitted);
                    slot.totals_in_place = true;
                }
                Err(error) => {
                    let outcome = self.write_failed(slot.resource, month, "totals", error);
                    slot.worsen(outcome);
                }
            }
        }
        written
    }

    /// Lists the month again and checks that every value written is there. A value the
    /// listing does not show as written is asked for again with its resource's own
    /// listing (one page, all months), which no other write can reorder: under the
    /// month it was meant for, it is in place after all; found under another month (as
    /// written, see [`hold::is_evidence`]), it was misfiled: an error, and past-month
    /// writes are held; otherwise its resource fails for this run. Returns the new
    /// listing (it holds the component usages just created, which per-user usage goes
    /// under).
    async fn read_back_totals(
        &self,
        month: Month,
        slots: &mut [Slot<'_>],
        before: &StoredTotals,
        billing_period: &str,
        date: &str,
    ) -> Option<StoredTotals> {
        let name = &self.target.name;
        // What was there before, and what the writes created.
        let created = slots
            .iter()
            .filter(|s| s.outcome == Outcome::Submitted)
            .flat_map(|s| s.send.iter().map(move |(component, _)| (s, component)))
            .filter(|(s, component)| !before.contains_key(&(s.resource.uuid.clone(), (*component).clone())))
            .count();
        let mut relisted = match self.list_totals(billing_period, before.len() + created).await {
            Ok(relisted) => relisted,
            Err(error) => {
                let submitted = slots.iter().filter(|s| s.outcome == Outcome::Submitted).map(|s| s.backend_id);
                if !self.no_answer(month, &error, submitted) {
                    self.tally
                        .errors
                        .push(format!("offering {name} {month}: cannot read back what was written: {error}"));
                }
                for slot in slots.iter_mut().filter(|s| s.outcome == Outcome::Submitted) {
                    slot.worsen(Outcome::Failed);
                }
                return None;
            }
        };
        let listed_as_written = |relisted: &StoredTotals, slot: &Slot<'_>, component: &String, written: Cents| {
            relisted.get(&(slot.resource.uuid.clone(), component.clone())).map(|u| u.amount) == Some(written)
        };
        let doubtful: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].outcome == Outcome::Submitted)
            .filter(|&i| slots[i].send.iter().any(|(c, w)| !listed_as_written(&relisted, &slots[i], c, *w)))
            .collect();
        if doubtful.is_empty() {
            return Some(relisted);
        }
        let rechecked = self.resource_usages(doubtful.iter().map(|&i| slots[i].resource.uuid.as_str())).await;
        let (mut wrong, mut evidence, mut unreadable) = (Vec::new(), None, None);
        for &index in &doubtful {
            let slot = &mut slots[index];
            let rows = match rechecked.get(slot.resource.uuid.as_str()) {
                Some(Ok(rows)) => rows,
                Some(Err(error)) => {
                    if !self.no_answer(month, error, [slot.backend_id]) {
                        unreadable.get_or_insert_with(|| error.to_string());
                    }
                    slot.worsen(Outcome::Failed);
                    slot.totals_in_place = false;
                    continue;
                }
                None => continue,
            };
            for row in rows.iter().filter(|u| u.billing_period == billing_period) {
                relisted.insert((row.resource_uuid.clone(), row.component_type.clone()), row.clone());
            }
            let before = wrong.len();
            for (component, written) in &slot.send {
                if listed_as_written(&relisted, slot, component, *written) {
                    continue;
                }
                let elsewhere = rows.iter().find(|u| {
                    u.component_type == *component && hold::is_evidence(u, billing_period, *written, date, self.started)
                });
                if let Some(row) = elsewhere {
                    evidence.get_or_insert_with(|| hold::Misfiled {
                        resource_uuid: slot.resource.uuid.clone(),
                        backend_id: slot.backend_id.to_owned(),
                        component: component.clone(),
                        wrote: *written,
                        meant: billing_period.to_owned(),
                        found: row.billing_period.clone(),
                        date: date.to_owned(),
                        since: self.clock.now(),
                    });
                }
                let listed = relisted.get(&(slot.resource.uuid.clone(), component.clone())).map(|u| u.amount);
                let listed = listed.map_or_else(|| "nothing".to_owned(), |c| c.to_string());
                let under = elsewhere.map(|row| format!(" (it is under {})", row.billing_period)).unwrap_or_default();
                wrong.push(format!(
                    "resource {} {component}: wrote {written}, Waldur lists {listed}{under}",
                    slot.backend_id
                ));
            }
            if wrong.len() > before {
                slot.worsen(Outcome::Failed);
                slot.totals_in_place = false;
            }
        }
        if let Some(error) = unreadable {
            self.tally.errors.push(format!("offering {name} {month}: cannot read back what was written: {error}"));
        }
        if let Some(evidence) = evidence {
            self.tally.errors.push(format!(
                "offering {name} {month}: {} written value(s) are not under billing period {billing_period} (first: {}); {}: the writes went to another month. Either this Waldur ignores `date` (before 8.0 it files every write under its current month) or its time zone differs from `timezone` ({}) by more than 12 hours. Past months are not written for this offering until a later run finds otherwise.",
                wrong.len(),
                wrong[0],
                evidence.describe(),
                self.policy.time_zone.iana_name().unwrap_or("UTC"),
            ));
            self.target.hold_past_months(evidence);
        } else if let Some(first) = wrong.first() {
            self.tally.errors.push(format!(
                "offering {name} {month}: {} written value(s) are not what Waldur lists under billing period {billing_period}, asked resource by resource (first: {first}); someone else writing or deleting this offering's usages at the same time does this. Written again at the next run.",
                wrong.len(),
            ));
        }
        Some(relisted)
    }

    /// Every component usage (all months) of each resource in `uuids`, a few listings at
    /// a time.
    async fn resource_usages<'u>(
        &self,
        uuids: impl Iterator<Item = &'u str>,
    ) -> HashMap<&'u str, Result<Vec<ComponentUsage>, WaldurError>> {
        let unique: std::collections::BTreeSet<&str> = uuids.collect();
        // Collected first: a stream over a mapping closure is not provably `Send`.
        let listings: Vec<_> = unique
            .into_iter()
            .map(|uuid| async move { (uuid, self.target.waldur.resource_usages(uuid).await) })
            .collect();
        futures::stream::iter(listings).buffer_unordered(RECHECKS_AT_ONCE).collect().await
    }

    /// Before a zero is written where the month's listing showed nothing (a resource
    /// the upstream did not mention): asks for the resource's own usages of the month,
    /// since a listing that another agent's writes reorder can skip a row, and a zero
    /// must never replace a value that is there. What is found is planned against.
    async fn confirm_absence(
        &self,
        month: Month,
        slots: &mut [Slot<'_>],
        stored: &mut StoredTotals,
        billing_period: &str,
    ) {
        let unsure: Vec<usize> = (0..slots.len())
            .filter(|&i| {
                slots[i].creates && slots[i].outcome != Outcome::Failed && slots[i].usage.is_some_and(|u| !u.found)
            })
            .collect();
        if unsure.is_empty() || self.policy.dry_run {
            return;
        }
        let rechecked = self.resource_usages(unsure.iter().map(|&i| slots[i].resource.uuid.as_str())).await;
        let rules = self.policy.rules();
        for index in unsure {
            let slot = &mut slots[index];
            let Some(usage) = slot.usage else { continue };
            match rechecked.get(slot.resource.uuid.as_str()) {
                Some(Ok(rows)) => {
                    for row in rows.iter().filter(|u| u.billing_period == billing_period) {
                        stored.insert((row.resource_uuid.clone(), row.component_type.clone()), row.clone());
                    }
                    let held = |component: &str| {
                        stored.get(&(slot.resource.uuid.clone(), component.to_owned())).map(|u| u.amount)
                    };
                    let plan = plan::plan_totals(usage, &self.offered, held, rules, month == self.current);
                    (slot.send, slot.creates) = (plan.send, plan.creates);
                }
                Some(Err(error)) => {
                    self.tally.errors.push_resource(
                        slot.backend_id,
                        format!(
                            "offering {} {month}: resource {}: absent upstream, and Waldur's usages of the month cannot be read to make sure it holds none, so no zero is written: {error}",
                            self.target.name, slot.backend_id
                        ),
                    );
                    slot.worsen(Outcome::Failed);
                }
                None => {}
            }
        }
    }

    /// What a refused write means for its resource.
    fn write_failed(&self, resource: &Resource, month: Month, what: &str, error: WriteError) -> Outcome {
        let error = match error {
            WriteError::Skipped => return Outcome::Skipped,
            WriteError::Held => return Outcome::Failed,
            WriteError::Waldur(error) => error,
        };
        let backend_id = resource.backend_id.as_deref().unwrap_or_default();
        if self.no_answer(month, &error, [backend_id]) {
            return Outcome::Failed;
        }
        let name = &self.target.name;
        if error.is_backfill_refusal() {
            match self.policy.past_months {
                PastMonths::SkipUnlessDated => {
                    // The refusal is the token's, not the resource's: one error for the
                    // run, and no more past-month writes in it; the next run asks again.
                    if !self.backfill_refused.swap(true, Ordering::SeqCst) {
                        self.tally.errors.push(format!(
                            "offering {name}: Waldur refuses to back-fill past billing periods with this token (first: {month}, resource {backend_id}: {error}); no past month is written in this run, and the next run asks again. Use a staff token, or reporting_periods: 1"
                        ));
                    }
                    return Outcome::Failed;
                }
                PastMonths::RefuseUnlessDated => {
                    let message = format!(
                        "offering {name} {month}: resource {backend_id}: Waldur refuses to back-fill a past billing period with this token; use a staff token ({error})"
                    );
                    if self.target.first_time(format!("backfill:{}", resource.uuid)) {
                        self.tally.errors.push_resource(backend_id, message);
                    }
                    return Outcome::Failed;
                }
            }
        }
        if resource.state == "Erred" {
            self.target.warn_once(format!("erred:{}", resource.uuid), Some(backend_id), || {
                format!("resource {backend_id} is Erred and Waldur refuses its usage; skipped: {error}")
            });
            return Outcome::Skipped;
        }
        self.tally
            .errors
            .push_resource(backend_id, format!("offering {name} {month}: resource {backend_id}: {what}: {error}"));
        Outcome::Failed
    }

    /// The offering users, listed once per run.
    async fn links(&self) -> Result<&HashMap<String, String>, WaldurError> {
        self.links
            .get_or_try_init(|| async {
                Ok(link_map(self.target.waldur.offering_users(&self.target.offering_uuid).await?))
            })
            .await
    }

    /// Per-user usage of the slots whose totals are in place: the values that differ
    /// from what Waldur holds, in one bulk write per component usage (or one write per
    /// user, where Waldur has no bulk endpoint), then read back.
    async fn user_usages(
        &self,
        month: Month,
        slots: &mut [Slot<'_>],
        before: &StoredTotals,
        usages: &StoredTotals,
        billing_period: &str,
        date: &str,
    ) {
        let name = &self.target.name;
        let eligible: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].totals_in_place && slots[i].outcome != Outcome::Failed && slots[i].usage.is_some())
            .collect();
        let any_users = eligible.iter().any(|&i| slots[i].usage.is_some_and(|u| u.found && !u.users.is_empty()));
        if eligible.is_empty() || (!any_users && !self.policy.reconcile_stale) {
            return;
        }
        let fail = |slots: &mut [Slot<'_>], error: &WaldurError, message: String| {
            if !self.no_answer(month, error, eligible.iter().map(|&i| slots[i].backend_id)) {
                self.tally.errors.push(message);
            }
            for &i in &eligible {
                slots[i].worsen(Outcome::Failed);
            }
        };
        // Per-user records live under component usages: where none existed before this
        // month's writes, there is nothing to read.
        let eligible_uuids: HashSet<&str> = eligible.iter().map(|&i| slots[i].resource.uuid.as_str()).collect();
        let stored_users = if before.keys().any(|(resource, _)| eligible_uuids.contains(resource.as_str())) {
            match self.list_users(billing_period, None, 0).await {
                Ok(users) => users,
                Err(error) => {
                    let message = format!("offering {name} {month}: cannot list per-user usages: {error}");
                    return fail(slots, &error, message);
                }
            }
        } else {
            StoredUsers::new()
        };
        let links = match self.links().await {
            Ok(links) => links,
            Err(error) => {
                let message = format!("offering {name}: cannot list offering users: {error}");
                return fail(slots, &error, message);
            }
        };
        let rules = self.policy.rules();
        // Bulk writes set the link; the singular endpoint only when it creates a record.
        let can_relink = self.capabilities.bulk_user_usages.get().copied().unwrap_or(true);
        let mut jobs = Vec::new();
        let mut unfixable = 0;
        let mut pace = Pace::new();
        for &index in &eligible {
            pace.tick().await;
            let slot = &slots[index];
            let Some(usage) = slot.usage else { continue };
            let measured = plan::measured_users(usage, &self.offered);
            let components =
                self.target.components().filter(|c| self.offered.contains(*c) && !slot.omitted.contains(c));
            for component in components {
                let values = measured.get(component.as_str()).map(Vec::as_slice).unwrap_or_default();
                let component_usage = usages.get(&(slot.resource.uuid.clone(), component.clone()));
                let held = component_usage.and_then(|cu| stored_users.get(&cu.uuid));
                let plan = plan::plan_users(values, held, links, rules, can_relink);
                unfixable += plan.unfixable_links.len();
                if plan.send.is_empty() {
                    continue;
                }
                if self.policy.dry_run {
                    self.observer.planned(&Planned::Users {
                        month,
                        backend_id: slot.backend_id.to_owned(),
                        component: component.clone(),
                        users: plan.send.iter().map(|u| (u.username.clone(), u.usage)).collect(),
                    });
                    self.tally.user_values.fetch_add(plan.send.len() as u64, Ordering::Relaxed);
                    self.tally.user_writes.fetch_add(1, Ordering::Relaxed);
                    jobs.push(UserJob {
                        slot: index,
                        resource_uuid: slot.resource.uuid.clone(),
                        component: component.clone(),
                        component_usage: String::new(),
                        usages: Vec::new(),
                    });
                    continue;
                }
                match component_usage {
                    Some(cu) => jobs.push(UserJob {
                        slot: index,
                        resource_uuid: slot.resource.uuid.clone(),
                        component: component.clone(),
                        component_usage: cu.uuid.clone(),
                        usages: plan.send,
                    }),
                    None => self.target.warn_once(format!("no-total:{}:{component}:{month}", slot.resource.uuid), Some(slot.backend_id), || {
                        format!("offering {name} {month}: resource {}: per-user usage of {component} not written: Waldur holds no total for it", slot.backend_id)
                    }),
                }
            }
        }
        if unfixable > 0 {
            self.target.warn_once(format!("unfixable-links:{month}"), None, || {
                format!("offering {name} {month}: {unfixable} per-user usage(s) have a missing or wrong offering-user link that this Waldur cannot change (its set_user_usage updates only the value of a stored record)")
            });
        }
        if self.policy.dry_run {
            for job in &jobs {
                slots[job.slot].worsen(Outcome::Submitted);
            }
            return;
        }
        // Written component by component, and each component's values read back as soon
        // as they are in (while the next component's are written), so that only the last
        // component's read-back waits for the month's last write.
        let by_component: Vec<(&String, Vec<&UserJob>)> = self
            .target
            .components()
            .map(|component| (component, jobs.iter().filter(|job| &job.component == component).collect()))
            .filter(|(_, jobs): &(&String, Vec<&UserJob>)| !jobs.is_empty())
            .collect();
        let stored_users = &stored_users;
        let groups = by_component.iter().map(|(component, jobs)| async move {
            let writes = jobs.iter().map(|&job| async move { (job, self.write_users(month, job, date).await) });
            let results = futures::future::join_all(writes).await;
            let written: Vec<&UserJob> =
                results.iter().filter(|(_, result)| result.is_ok()).map(|(job, _)| *job).collect();
            let check = if written.is_empty() {
                None
            } else {
                let expected = expected_users(component, usages, stored_users, &written);
                let listed = self.list_users(billing_period, Some(component.as_str()), expected).await;
                // Compared here, so that each component's listing is let go of once read.
                match listed.map(|listed| users_not_listed(&written, &listed)) {
                    Ok(wrong) => Some(Ok(self.recheck_users(&written, wrong, billing_period).await)),
                    Err(error) => Some(Err(error)),
                }
            };
            (results, written, check)
        });
        for (results, written, check) in futures::future::join_all(groups).await {
            for (job, result) in results {
                let slot = &mut slots[job.slot];
                match result {
                    Ok(()) => slot.worsen(Outcome::Submitted),
                    Err(error) => {
                        let what = format!("per-user usage of {}", job.component);
                        let outcome = self.write_failed(slot.resource, month, &what, error);
                        slot.worsen(outcome);
                    }
                }
            }
            if let Some(check) = check {
                self.check_users(month, slots, &written, check, billing_period);
            }
        }
    }

    /// The per-user values of one job: one bulk request, or one request per user where
    /// this Waldur has no bulk endpoint (learnt from its 404 or 405, once per Waldur).
    async fn write_users(&self, month: Month, job: &UserJob, date: &str) -> Result<(), WriteError> {
        let waldur = &self.target.waldur;
        let bulk_write = || {
            self.guarded(month, WriteKind::Users, || waldur.set_user_usages(&job.component_usage, &job.usages, date))
        };
        // Until one bulk write has been answered, writes try it one at a time, so a
        // Waldur without the endpoint sees one 404, not one per write in flight.
        let this_one = AtomicBool::new(false);
        let bulk = self
            .capabilities
            .bulk_user_usages
            .get_or_try_init(|| async {
                match bulk_write().await {
                    Ok(()) => {
                        this_one.store(true, Ordering::Relaxed);
                        Ok(true)
                    }
                    Err(WriteError::Waldur(error)) if matches!(error.status(), Some(404 | 405)) => {
                        tracing::warn!(
                            "{}: this Waldur has no bulk set_user_usages ({error}); per-user usage goes one user at a time (set_user_usage) from now on",
                            waldur.api_url()
                        );
                        Ok(false)
                    }
                    Err(error) => Err(error),
                }
            })
            .await
            .copied()?;
        if bulk {
            if !this_one.load(Ordering::Relaxed) {
                bulk_write().await?;
            }
            self.tally.user_writes.fetch_add(1, Ordering::Relaxed);
            self.tally.user_values.fetch_add(job.usages.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        for usage in &job.usages {
            self.guarded(month, WriteKind::Users, || waldur.set_user_usage(&job.component_usage, usage, date)).await?;
            self.tally.user_writes.fetch_add(1, Ordering::Relaxed);
            self.tally.user_values.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Fails the resources whose per-user values are not what Waldur lists for the month
    /// after the writes, with one error line for the month.
    fn check_users(
        &self,
        month: Month,
        slots: &mut [Slot<'_>],
        written: &[&UserJob],
        check: Result<Vec<Mismatch>, WaldurError>,
        billing_period: &str,
    ) {
        let name = &self.target.name;
        let wrong = match check {
            Ok(wrong) => wrong,
            Err(error) => {
                if !self.no_answer(month, &error, written.iter().map(|job| slots[job.slot].backend_id)) {
                    self.tally
                        .errors
                        .push(format!("offering {name} {month}: cannot read back per-user usage: {error}"));
                }
                for job in written {
                    slots[job.slot].worsen(Outcome::Failed);
                }
                return;
            }
        };
        for mismatch in &wrong {
            slots[mismatch.slot].worsen(Outcome::Failed);
        }
        if let Some(first) = wrong.first() {
            let held = first.held.map_or_else(|| "nothing".to_owned(), |c| c.to_string());
            self.tally.errors.push(format!(
                "offering {name} {month}: {} per-user value(s) written are not what Waldur lists under billing period {billing_period}, asked resource by resource (first: resource {} user {}: wrote {}, Waldur lists {held}); written again at the next run",
                wrong.len(),
                slots[first.slot].backend_id,
                first.username,
                first.wrote
            ));
        }
    }
}

impl Run<'_> {
    /// The per-user values of `wrong` asked for again with their resource's own listing
    /// of the month, which no other write can reorder (see [`Run::read_back_totals`]);
    /// those still not as written. A resource whose listing fails keeps its mismatches.
    async fn recheck_users(&self, written: &[&UserJob], wrong: Vec<Mismatch>, billing_period: &str) -> Vec<Mismatch> {
        if wrong.is_empty() {
            return wrong;
        }
        let doubtful: std::collections::BTreeSet<usize> = wrong.iter().map(|m| m.slot).collect();
        let jobs: Vec<&UserJob> = written.iter().copied().filter(|job| doubtful.contains(&job.slot)).collect();
        let uuids: std::collections::BTreeSet<&str> = jobs.iter().map(|job| job.resource_uuid.as_str()).collect();
        let waldur = &self.target.waldur;
        // Collected first: a stream over a mapping closure is not provably `Send`.
        let listings: Vec<_> = uuids
            .into_iter()
            .map(|uuid| async move { (uuid, waldur.resource_user_usages(uuid, billing_period).await) })
            .collect();
        let listings: Vec<(&str, Result<Vec<ComponentUserUsage>, WaldurError>)> =
            futures::stream::iter(listings).buffer_unordered(RECHECKS_AT_ONCE).collect().await;
        let mut listed = StoredUsers::new();
        let mut unreadable = std::collections::BTreeSet::new();
        for (uuid, listing) in listings {
            match listing {
                Ok(rows) => {
                    for usage in rows {
                        let component_usage = usage.component_usage_uuid().to_owned();
                        listed.entry(component_usage).or_default().insert(usage.username.clone(), usage);
                    }
                }
                Err(error) => {
                    tracing::warn!(resource_uuid = uuid, "cannot ask again for per-user usages: {error}");
                    unreadable.insert(uuid);
                }
            }
        }
        let (readable, kept): (Vec<&UserJob>, Vec<&UserJob>) =
            jobs.into_iter().partition(|job| !unreadable.contains(job.resource_uuid.as_str()));
        let kept_slots: std::collections::BTreeSet<usize> = kept.iter().map(|job| job.slot).collect();
        let mut still = users_not_listed(&readable, &listed);
        still.extend(wrong.into_iter().filter(|m| kept_slots.contains(&m.slot)));
        still
    }
}

/// A per-user value written that Waldur does not list as written.
struct Mismatch {
    slot: usize,
    username: String,
    wrote: Cents,
    held: Option<Cents>,
}

/// The values of `written` that `listed` does not hold.
fn users_not_listed(written: &[&UserJob], listed: &StoredUsers) -> Vec<Mismatch> {
    let mut wrong = Vec::new();
    for job in written {
        let users = listed.get(&job.component_usage);
        for usage in &job.usages {
            let held = users.and_then(|users| users.get(&usage.username)).map(|u| u.usage);
            if held != Some(usage.usage) {
                wrong.push(Mismatch { slot: job.slot, username: usage.username.clone(), wrote: usage.usage, held });
            }
        }
    }
    wrong
}

/// A lower bound on the per-user usages of `component` listed after `written`: those
/// stored before, under the month's component usages of that type, and those created.
fn expected_users(component: &str, usages: &StoredTotals, before: &StoredUsers, written: &[&UserJob]) -> usize {
    let stored: usize = usages
        .iter()
        .filter(|((_, of_type), _)| of_type == component)
        .filter_map(|(_, usage)| before.get(&usage.uuid))
        .map(HashMap::len)
        .sum();
    let created = written
        .iter()
        .flat_map(|job| {
            let held = before.get(&job.component_usage);
            job.usages.iter().filter(move |u| !held.is_some_and(|held| held.contains_key(&u.username)))
        })
        .count();
    stored + created
}

/// Listings of single resources asked for at the same time by a read-back.
const RECHECKS_AT_ONCE: usize = 8;

/// How long a loop of the run may hold its thread before it lets the run's other
/// futures go on.
const PACE: std::time::Duration = std::time::Duration::from_millis(1);

/// Yields in long loops: a run is one task, so a loop over thousands of rows that never
/// yields holds every write waiting for a slot, and the slots stand idle meanwhile.
struct Pace(Instant);

impl Pace {
    fn new() -> Self {
        Self(Instant::now())
    }

    async fn tick(&mut self) {
        if self.0.elapsed() >= PACE {
            tokio::task::yield_now().await;
            self.0 = Instant::now();
        }
    }
}

/// What a write sets, which decides its turn for a write slot.
#[derive(Debug, Clone, Copy)]
enum WriteKind {
    Totals,
    Users,
}

impl WriteKind {
    /// Totals first, then older months first. A month's totals are followed by its
    /// read-back before its per-user writes can start; with other totals and per-user
    /// writes waiting, those fill the slots meanwhile, so only the head and the last
    /// read-back of a run leave them idle.
    fn priority(self, month: Month) -> priority_semaphore::Priority {
        let day = month.first_day();
        let age = -(i32::from(day.year()) * 12 + i32::from(day.month()));
        match self {
            WriteKind::Totals => age,
            // Below every month's totals: years up to 9999 give ages above -120,000.
            WriteKind::Users => age - 1_000_000,
        }
    }
}

/// Offering users by username, for per-user usage's `user` link.
fn link_map(users: Vec<OfferingUser>) -> HashMap<String, String> {
    users.into_iter().filter_map(|u| Some((u.username?, u.url))).collect()
}

/// A resource's `offering_backend_id` for the component, when it has one.
fn offering_backend_id(resource: &Resource) -> Option<String> {
    resource.offering_backend_id.as_deref().map(str::trim).filter(|id| !id.is_empty()).map(str::to_owned)
}

/// `nodeHours=12.5 cpuHours=300` for a log line.
fn describe_amounts(amounts: &[(String, Cents)]) -> String {
    amounts.iter().map(|(component, amount)| format!("{component}={amount}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_lines_read_well() -> Result<()> {
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
        Ok(())
    }
}
