//! Which DWDI requests answer a usage call.
//!
//! Planning is pure: it validates the config, groups resources, and builds every URL
//! before anything is sent, so a bad setting fails without a request and the whole
//! request set can be sent at once. [`crate::assemble`] later maps the answers back.

use fnv::FnvHashMap;

use crate::metric::{Backend, MappedComponent, map_components};
use crate::model::{BackendError, BillingPeriod, Config, Date, Operation, Resource, invalid_request};
use crate::settings::{BackendSettings, Settings, StorageSettings};
use crate::url::{Chunk, chunk_list, endpoint, push_param};

/// A config that passed [`setup`]: settings parsed, every component mapped.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidConfig {
    pub backend: Backend,
    pub settings: Settings,
    pub components: Vec<MappedComponent>,
}

/// Validates a config for `backend` without making any request.
pub fn setup(backend: Backend, config: &Config) -> Result<ValidConfig, BackendError> {
    let settings = Settings::parse(backend, &config.settings_json)?;
    let components = map_components(backend, &config.components)?;
    Ok(ValidConfig { backend, settings, components })
}

/// One GET request to DWDI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    url: String,
    keys: Vec<String>,
}

impl Request {
    /// The full URL, query included.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL without its query, for messages.
    pub fn endpoint(&self) -> &str {
        endpoint(&self.url)
    }

    /// The accounts (compute), paths (storage) or resource ids (inference) this request
    /// asks for, each once.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }
}

/// Where a requested resource's usage will come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) backend_id: String,
    /// (request index, key index); `None` when nothing was asked for it.
    pub(crate) source: Option<(usize, usize)>,
}

/// The requests for one usage call and how to read their answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub(crate) backend: Backend,
    pub(crate) components: Vec<MappedComponent>,
    pub(crate) requests: Vec<Request>,
    /// One per requested resource, in request order.
    pub(crate) slots: Vec<Slot>,
}

impl Plan {
    /// The requests to send, in the order [`crate::assemble`] expects their answers.
    pub fn requests(&self) -> &[Request] {
        &self.requests
    }
}

/// The time a report covers.
#[derive(Clone, Copy, Debug)]
enum Window {
    Month(BillingPeriod),
    Days(Date, Date),
}

/// Plans the usage of `resources` in one billing month.
pub fn plan_usage_report(
    backend: Backend,
    config: &Config,
    resources: &[Resource],
    period: BillingPeriod,
) -> Result<Plan, BackendError> {
    check_month("period", period.year, period.month)?;
    plan(setup(backend, config)?, resources, Window::Month(period))
}

/// Plans the usage of `resources` over the days `first` to `last`, both included.
/// Compute hours are summed over the range; storage, a snapshot, is read on `last`.
/// Inference has no daily data: `Unsupported`, before anything else is looked at.
pub fn plan_daily_report(
    backend: Backend,
    config: &Config,
    resources: &[Resource],
    first: Date,
    last: Date,
) -> Result<Plan, BackendError> {
    implemented(backend, Operation::DailyReport)?;
    check_date("first", first)?;
    check_date("last", last)?;
    if first > last {
        return Err(invalid_request(format!("daily-report: first day {} is after last day {}", ymd(first), ymd(last))));
    }
    plan(setup(backend, config)?, resources, Window::Days(first, last))
}

/// The reachability request, as the upstream Python client sends it: the usage of
/// `today` (`/compute/usage-day?from=…&to=…`, `/storage/usage-day?exact-date=…`,
/// `/inference/resource/cost?exact-date=…`), for no account, path or resource in
/// particular. Only the settings are checked, so an operator can test connectivity
/// before the components are right.
pub fn plan_ping(backend: Backend, config: &Config, today: Date) -> Result<Request, BackendError> {
    check_date("today", today)?;
    let settings = Settings::parse(backend, &config.settings_json)?;
    let mut url = settings.api_url;
    match backend {
        Backend::Compute => {
            url.push_str("/compute/usage-day?from=");
            url.push_str(&ymd(today));
            push_param(&mut url, "to", &ymd(today));
        }
        Backend::Storage => {
            url.push_str("/storage/usage-day?exact-date=");
            url.push_str(&ymd(today));
        }
        Backend::Inference => {
            url.push_str("/inference/resource/cost?exact-date=");
            url.push_str(&ymd(today));
        }
    }
    Ok(Request { url, keys: Vec::new() })
}

/// The error every management call gets: these backends only read.
pub fn read_only(backend: Backend, operation: &str) -> BackendError {
    BackendError::Unsupported(format!("{} is read-only: {operation} is not supported", backend.name()))
}

/// `Unsupported` unless `backend` lists `operation` in [`Backend::operations`], so what
/// `describe` says and what a call does cannot disagree.
fn implemented(backend: Backend, operation: Operation) -> Result<(), BackendError> {
    if backend.operations().contains(&operation) { Ok(()) } else { Err(not_implemented(backend, operation)) }
}

fn not_implemented(backend: Backend, operation: Operation) -> BackendError {
    let names: Vec<&str> = backend.operations().iter().map(|o| o.name()).collect();
    BackendError::Unsupported(format!(
        "{} does not implement {}: DWDI has no such data for it; it implements {}",
        backend.name(),
        operation.name(),
        names.join(", ")
    ))
}

fn plan(config: ValidConfig, resources: &[Resource], window: Window) -> Result<Plan, BackendError> {
    let ValidConfig { backend, settings, components } = config;
    let (requests, slots) = match &settings.backend {
        BackendSettings::Compute { cluster } => {
            compute_requests(&settings.api_url, cluster.as_deref(), resources, window)?
        }
        BackendSettings::Storage(storage) => storage_requests(&settings.api_url, storage, resources, window)?,
        BackendSettings::Inference => inference_requests(backend, &settings.api_url, resources, window)?,
    };
    Ok(Plan { backend, components, requests, slots })
}

/// Groups resources by cluster, keeps each account once per group, and splits each
/// group's accounts over as few URLs as fit.
fn compute_requests(
    base: &str,
    default_cluster: Option<&str>,
    resources: &[Resource],
    window: Window,
) -> Result<(Vec<Request>, Vec<Slot>), BackendError> {
    let mut head = base.to_owned();
    match window {
        Window::Month(p) => {
            head.push_str("/compute/usage-month/account?from=");
            head.push_str(&ym(p.year, p.month));
            push_param(&mut head, "to", &ym(p.year, p.month));
        }
        Window::Days(first, last) => {
            head.push_str("/compute/usage-day/account?from=");
            head.push_str(&ymd(first));
            push_param(&mut head, "to", &ymd(last));
        }
    }

    let mut groups: Vec<Group<'_>> = Vec::new();
    // Per resource: (group, position in the group), if requested at all.
    let mut placed: Vec<Option<(usize, usize)>> = Vec::with_capacity(resources.len());
    for resource in resources {
        let cluster = match resource.cluster.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => Some(c.to_lowercase()),
            None => default_cluster.map(str::to_owned),
        };
        let g = match groups.iter().position(|g| g.cluster == cluster) {
            Some(g) => g,
            None => {
                groups.push(Group::new(cluster));
                groups.len() - 1
            }
        };
        placed.push(groups[g].add(&resource.backend_id).map(|position| (g, position)));
    }

    let mut requests = Vec::new();
    let mut located = Vec::with_capacity(groups.len());
    for group in &groups {
        let mut tail = String::new();
        if let Some(cluster) = &group.cluster {
            push_param(&mut tail, "cluster", cluster);
        }
        located.push(group.request(&head, "account", &tail, &mut requests)?);
    }
    let slots = resources
        .iter()
        .zip(placed)
        .map(|(r, place)| Slot {
            backend_id: r.backend_id.clone(),
            source: place.map(|(g, position)| located[g][position]),
        })
        .collect();
    Ok((requests, slots))
}

/// Maps resources to paths (several may share one), keeps each path once, and splits
/// the paths over as few URLs as fit.
fn storage_requests(
    base: &str,
    storage: &StorageSettings,
    resources: &[Resource],
    window: Window,
) -> Result<(Vec<Request>, Vec<Slot>), BackendError> {
    let mut head = base.to_owned();
    match window {
        Window::Month(p) => {
            head.push_str("/storage/usage-month?exact-month=");
            head.push_str(&ym(p.year, p.month));
        }
        Window::Days(_, last) => {
            head.push_str("/storage/usage-day?exact-date=");
            head.push_str(&ymd(last));
        }
    }
    let mut tail = String::new();
    push_param(&mut tail, "filesystem", &storage.filesystem);
    push_param(&mut tail, "data_type", &storage.data_type);
    if let Some(tenant) = &storage.tenant {
        push_param(&mut tail, "tenant", tenant);
    }
    one_group_requests(&head, "paths", &tail, resources, |r| storage.path_of(&r.backend_id))
}

/// Keeps each resource id once and splits the ids over as few URLs as fit. The answer
/// is keyed by the id sent, so no mapping is needed.
fn inference_requests(
    backend: Backend,
    base: &str,
    resources: &[Resource],
    window: Window,
) -> Result<(Vec<Request>, Vec<Slot>), BackendError> {
    let Window::Month(p) = window else {
        // `plan_daily_report` refuses first; this only keeps a day window from ever
        // turning into a month request.
        return Err(not_implemented(backend, Operation::DailyReport));
    };
    let mut head = base.to_owned();
    head.push_str("/inference/resource/cost?from=");
    head.push_str(&ym(p.year, p.month));
    push_param(&mut head, "to", &ym(p.year, p.month));
    one_group_requests(&head, "resource_uuid", "", resources, |r| &r.backend_id)
}

/// The requests and slots of a backend without groups: each resource's key (`key_of`)
/// once, in first-seen order, as `list_key` values between `head` and `tail`.
fn one_group_requests<'r>(
    head: &str,
    list_key: &str,
    tail: &str,
    resources: &'r [Resource],
    key_of: impl Fn(&'r Resource) -> &'r str,
) -> Result<(Vec<Request>, Vec<Slot>), BackendError> {
    let mut group = Group::new(None);
    let placed: Vec<Option<usize>> = resources.iter().map(|r| group.add(key_of(r))).collect();
    let mut requests = Vec::new();
    let located = group.request(head, list_key, tail, &mut requests)?;
    let slots = resources
        .iter()
        .zip(placed)
        .map(|(r, position)| Slot { backend_id: r.backend_id.clone(), source: position.map(|p| located[p]) })
        .collect();
    Ok((requests, slots))
}

/// Keys (accounts, paths or resource ids) that share one filter, each once, in
/// first-seen order.
struct Group<'r> {
    cluster: Option<String>,
    keys: Vec<&'r str>,
    positions: FnvHashMap<&'r str, usize>,
}

impl<'r> Group<'r> {
    fn new(cluster: Option<String>) -> Self {
        Group { cluster, keys: Vec::new(), positions: FnvHashMap::default() }
    }

    /// Adds `key` unless present; returns its position. An empty key names no DWDI
    /// account or path: it is not requested, and its resource is reported not found.
    fn add(&mut self, key: &'r str) -> Option<usize> {
        if key.is_empty() {
            return None;
        }
        let next = self.keys.len();
        let position = *self.positions.entry(key).or_insert(next);
        if position == next {
            self.keys.push(key);
        }
        Some(position)
    }

    /// Appends the requests for this group; returns (request, key) per position.
    fn request(
        &self,
        head: &str,
        list_key: &str,
        tail: &str,
        requests: &mut Vec<Request>,
    ) -> Result<Vec<(usize, usize)>, BackendError> {
        let mut located = Vec::with_capacity(self.keys.len());
        for Chunk { url, items } in chunk_list(head, list_key, &self.keys, tail)? {
            let r = requests.len();
            located.extend((0..items.len()).map(|k| (r, k)));
            let keys = self.keys[items].iter().map(|k| (*k).to_owned()).collect();
            requests.push(Request { url, keys });
        }
        Ok(located)
    }
}

fn ym(year: u16, month: u8) -> String {
    format!("{year:04}-{month:02}")
}

fn ymd(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)
}

fn check_month(what: &str, year: u16, month: u8) -> Result<(), BackendError> {
    if !(1..=9999).contains(&year) {
        return Err(invalid_request(format!("{what}: year {year} is not 1–9999")));
    }
    if !(1..=12).contains(&month) {
        return Err(invalid_request(format!("{what}: month {month} is not 1–12")));
    }
    Ok(())
}

fn check_date(what: &str, d: Date) -> Result<(), BackendError> {
    check_month(what, d.year, d.month)?;
    let leap = d.year.is_multiple_of(4) && (!d.year.is_multiple_of(100) || d.year.is_multiple_of(400));
    let days = match d.month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if d.day == 0 || d.day > days {
        return Err(invalid_request(format!("{what}: {} is not a calendar date", ymd(d))));
    }
    Ok(())
}
