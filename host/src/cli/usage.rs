//! `usage-agent usage`: the operator's dry run. It asks the backend for usage exactly
//! as a report cycle would and prints it, submitting nothing. The answer is checked as
//! a cycle checks it (`sync::CheckedReport`): a resource the answer contradicts itself
//! on (not found, yet with usage), reports twice or not at all, and any resource nobody
//! asked for, is an error, not a row.

use std::io::Write;

use anyhow::{Result, bail};
use indexmap::IndexMap;
use serde::Serialize;

use super::{ConfigArg, PluginsDirArg};
use crate::amount::Cents;
use crate::backends::{Backends, prepare_offering};
use crate::config::OfferingConfig;
use crate::period::{self, Month};
use crate::runtime::wit;
use crate::sync::CheckedReport;

#[derive(Debug, Clone, clap::Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this offering (its `name` or `waldur_offering_uuid`); default: all.
    #[arg(long, value_name = "NAME")]
    pub offering: Option<String>,
    /// Billing month; default: the current month in the config's time zone.
    #[arg(long, value_name = "YYYY-MM", conflicts_with_all = ["from", "to"])]
    pub month: Option<String>,
    /// First day of a daily report (with --to).
    #[arg(long, value_name = "YYYY-MM-DD", requires = "to")]
    pub from: Option<String>,
    /// Last day of a daily report (with --from).
    #[arg(long, value_name = "YYYY-MM-DD", requires = "from")]
    pub to: Option<String>,
    /// A resource backend id to report (repeatable); `ID@cluster` sets its cluster.
    #[arg(long = "resource", value_name = "ID")]
    pub resources: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub plugins: PluginsDirArg,
}

/// The usage of one offering, as printed.
#[derive(Debug, Serialize)]
pub(crate) struct OfferingUsage {
    pub offering: String,
    pub backend_type: String,
    pub period: String,
    pub upstream_requests: u32,
    pub resources: Vec<ResourceLine>,
    /// What could not be printed as a row, one line each (also logged, and the command
    /// fails).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One resource's usage, rounded as Waldur would store it.
#[derive(Debug, Serialize)]
pub(crate) struct ResourceLine {
    pub backend_id: String,
    pub found: bool,
    pub totals: IndexMap<String, String>,
    pub users: IndexMap<String, IndexMap<String, String>>,
}

/// The period a usage command asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Period {
    Month(Month),
    Days(jiff::civil::Date, jiff::civil::Date),
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Period::Month(month) => write!(f, "{month}"),
            Period::Days(first, last) => write!(f, "{first}..{last}"),
        }
    }
}

pub(crate) async fn run(args: UsageArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let config = super::load_config(&args.config.config)?;
    let tz = period::time_zone(config.timezone.as_deref())?;
    let period = match (&args.month, &args.from, &args.to) {
        (Some(month), _, _) => Period::Month(Month::parse(month).map_err(|e| anyhow::anyhow!("--month: {e}"))?),
        (None, Some(from), Some(to)) => {
            let first = period::parse_date(from).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
            let last = period::parse_date(to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
            if first > last {
                bail!("--from {first} is after --to {last}");
            }
            Period::Days(first, last)
        }
        _ => Period::Month(Month::containing(jiff::Timestamp::now(), &tz)),
    };
    let selected: Vec<(usize, &OfferingConfig)> = match &args.offering {
        Some(key) => vec![config.find_offering(key)?],
        None => config.offerings().collect(),
    };
    let resources = explicit_resources(&args.resources);
    let plugins = super::serving_components(Some(&config), Some(&args.config.config), &args.plugins).await?;
    let printed = collect(plugins.backends(), &selected, period, |_, _| resources.clone()).await?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &printed)?;
        writeln!(out)?;
    } else {
        write_table(out, &printed)?;
        for usage in printed.iter().filter(|u| u.resources.len() > 1 && u.resources.iter().all(|r| !r.found)) {
            writeln!(out, "\nnote: {}: {}", usage.offering, crate::sync::none_found_hint(usage.resources.len()))?;
        }
    }
    // The rows that could be printed are; what could not fails the command, said once
    // in its final error.
    let errors: Vec<&str> = printed.iter().flat_map(|u| &u.errors).map(String::as_str).collect();
    if !errors.is_empty() {
        bail!("the backend's answer is unusable for part of what was asked: {}", errors.join("; "));
    }
    Ok(())
}

/// Asks each selected offering's backend for the usage of the resources `pick` names.
pub(crate) async fn collect(
    backends: &Backends,
    selected: &[(usize, &OfferingConfig)],
    period: Period,
    pick: impl Fn(usize, &OfferingConfig) -> Vec<wit::WaldurResource>,
) -> Result<Vec<OfferingUsage>> {
    let mut printed = Vec::new();
    for &(index, offering) in selected {
        let name = offering.display_name(index);
        let backend = prepare_offering(backends, index, offering).await?;
        let resources = pick(index, offering);
        if resources.is_empty() {
            bail!("offerings[{index}] ({name}): no resources: pass --resource ID (repeatable)");
        }
        let requested: Vec<String> = resources.iter().map(|r| r.backend_id.clone()).collect();
        let report = fetch(&backend, resources, period)
            .await
            .map_err(|e| anyhow::anyhow!("offerings[{index}] ({name}): {e}"))?;
        printed.push(offering_usage(&name, offering, period, &requested, &report)?);
    }
    Ok(printed)
}

/// Asks the backend for a month or a range of days.
pub(crate) async fn fetch(
    backend: &crate::runtime::OfferingBackend,
    resources: Vec<wit::WaldurResource>,
    period: Period,
) -> Result<wit::Report, crate::runtime::CallError> {
    match period {
        Period::Month(month) => backend.usage_report(resources, month.billing_period()).await,
        Period::Days(first, last) => backend.daily_report(resources, wit_date(first), wit_date(last)).await,
    }
}

pub(super) fn wit_date(date: jiff::civil::Date) -> wit::Date {
    wit::Date { year: date.year() as u16, month: date.month() as u8, day: date.day() as u8 }
}

/// `ID` or `ID@cluster` arguments as WIT resources: the part after `@` is what Waldur
/// would send as the resource's `offering_backend_id`.
pub(crate) fn explicit_resources(args: &[String]) -> Vec<wit::WaldurResource> {
    args.iter()
        .map(|arg| match arg.rsplit_once('@') {
            Some((id, cluster)) if !cluster.is_empty() && !cluster.contains('/') => {
                wit::WaldurResource { backend_id: id.to_owned(), offering_backend_id: Some(cluster.to_owned()) }
            }
            _ => wit::WaldurResource { backend_id: arg.clone(), offering_backend_id: None },
        })
        .collect()
}

/// Checks a report as a cycle does and rounds it for printing: one row per requested
/// resource with a usable answer, in the order asked; an error line for each of the
/// others and for the resources nobody asked for.
pub(crate) fn offering_usage(
    name: &str,
    offering: &OfferingConfig,
    period: Period,
    requested: &[String],
    report: &wit::Report,
) -> Result<OfferingUsage> {
    // The checks passed, so every value is an amount; kept as an error, not a panic.
    let round = |amount: &wit::Amount| -> Result<(String, String)> {
        let cents = Cents::round(amount.value).ok_or_else(|| {
            anyhow::anyhow!("component {}: value {} is not an amount", amount.component, amount.value)
        })?;
        Ok((amount.component.clone(), cents.to_string()))
    };
    let checked = CheckedReport::new(requested.iter().map(String::as_str), report);
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for id in requested {
        // `--resource a --resource a` asks once.
        if !seen.insert(id.as_str()) {
            continue;
        }
        match checked.usage(id) {
            Ok(r) => resources.push(ResourceLine {
                backend_id: r.backend_id.clone(),
                found: r.found,
                totals: r.totals.iter().map(round).collect::<Result<_>>()?,
                users: r
                    .users
                    .iter()
                    .map(|u| Ok((u.username.clone(), u.amounts.iter().map(round).collect::<Result<_>>()?)))
                    .collect::<Result<_>>()?,
            }),
            Err(reason) => errors.push(format!("offering {name} {period}: resource {id}: {reason}")),
        }
    }
    if !checked.unrequested.is_empty() {
        let shown: Vec<&str> = checked.unrequested.iter().take(5).map(String::as_str).collect();
        errors.push(format!(
            "offering {name} {period}: the backend reported {} resource(s) nobody asked for ({}{}); not printed",
            checked.unrequested.len(),
            shown.join(", "),
            if checked.unrequested.len() > shown.len() { ", …" } else { "" }
        ));
    }
    Ok(OfferingUsage {
        offering: name.to_owned(),
        backend_type: offering.usage_backend().unwrap_or_default().to_owned(),
        period: period.to_string(),
        upstream_requests: report.upstream_requests,
        resources,
        errors,
    })
}

/// A plain aligned table: one line per resource and component.
pub(crate) fn write_table(out: &mut (dyn Write + Send), usages: &[OfferingUsage]) -> Result<()> {
    let mut rows = vec![["OFFERING", "PERIOD", "RESOURCE", "COMPONENT", "AMOUNT", "USERS"].map(String::from)];
    for usage in usages {
        for resource in &usage.resources {
            for (component, amount) in &resource.totals {
                let users = resource.users.values().filter(|amounts| amounts.contains_key(component)).count();
                let shown = if resource.found { amount.clone() } else { format!("{amount} (no data)") };
                rows.push([
                    usage.offering.clone(),
                    usage.period.clone(),
                    resource.backend_id.clone(),
                    component.clone(),
                    shown,
                    users.to_string(),
                ]);
            }
        }
    }
    super::demo::write_rows(out, &rows, 4)
}
