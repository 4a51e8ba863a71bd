//! `usage-agent load-historical-usage`: back-fills past months of one offering, with
//! the flags of the Python `waldur_site_load_historical_usage`.
//!
//! Everything that can be checked is checked before the first request that reads
//! usage or writes: the dates, the range, the offering, the backend's support for
//! past periods, and (unless `--no-staff-check`) that the token belongs to staff. The
//! work itself is [`crate::historical::load`]; this module adds the progress display,
//! Ctrl-C and the summary.

use std::io::Write;
use std::sync::Mutex;

use anyhow::{Result, bail};
use jiff::civil::Date;

use super::progress::Progress;
use super::{ConfigArg, PluginsDirArg};
use crate::config::Secret;
use crate::historical::{self, HistoricalOptions, Observer, Planned};
use crate::period::{self, Month};
use crate::report::{DEFAULT_CONCURRENCY, StopFlag};

/// Where `--user-token` is read from when the flag is not given.
pub const USER_TOKEN_VARIABLE: &str = "USAGE_AGENT_USER_TOKEN";

#[derive(Debug, Clone, clap::Args)]
pub struct HistoricalArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// UUID of the Waldur offering to load (its `waldur_offering_uuid` in the config).
    #[arg(short = 'o', long, value_name = "UUID")]
    pub offering_uuid: String,
    /// Waldur API token for this run (staff, or service provider with --no-staff-check);
    /// default: the offering's `waldur_api_token`. The environment variable keeps it
    /// out of the process list.
    #[arg(short = 't', long, value_name = "TOKEN", value_parser = parse_token, env = USER_TOKEN_VARIABLE, hide_env_values = true)]
    pub user_token: Option<Secret>,
    /// First day of the range; its whole month is loaded.
    #[arg(short = 's', long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub start_date: Date,
    /// Last day of the range; its whole month is loaded.
    #[arg(short = 'e', long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub end_date: Date,
    /// Do not require a staff token (Waldur still enforces its permissions).
    #[arg(long)]
    pub no_staff_check: bool,
    /// Submit resource totals only, no per-user usage.
    #[arg(long)]
    pub skip_user_usage: bool,
    /// Print what would be submitted; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also write zeros over stale non-zero values: totals of resources absent upstream
    /// and per-user usage of users absent upstream.
    #[arg(long)]
    pub reconcile_stale: bool,
    /// Only this resource (its Waldur `backend_id`); repeatable.
    #[arg(long = "resource-backend-id", value_name = "ID", value_parser = parse_backend_id)]
    pub resource_backend_ids: Vec<String>,
    /// Waldur writes in flight (overrides `waldur_max_concurrency`, default 8).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::config::MAX_CONCURRENCY)), allow_negative_numbers = true)]
    pub concurrency: Option<u16>,
    #[command(flatten)]
    pub plugins: PluginsDirArg,
}

fn parse_date(text: &str) -> Result<Date, String> {
    period::parse_date(text).map_err(|e| format!("{e:#}"))
}

fn parse_token(text: &str) -> Result<Secret, String> {
    let token = text.trim();
    if token.is_empty() {
        return Err("the token is empty".to_owned());
    }
    Ok(Secret::new(token))
}

fn parse_backend_id(text: &str) -> Result<String, String> {
    let id = text.trim();
    if id.is_empty() {
        return Err("the backend id is empty".to_owned());
    }
    Ok(id.to_owned())
}

/// Shows progress and prints what a dry run would submit.
struct CliObserver<'o> {
    out: Mutex<&'o mut (dyn Write + Send)>,
    progress: &'o Progress,
    /// The first failure to write to `out`, reported at the end.
    write_error: Mutex<Option<std::io::Error>>,
}

impl Observer for CliObserver<'_> {
    fn started(&self, months: usize, resources: usize) {
        self.progress.start(months, resources);
    }

    fn resource_done(&self) {
        self.progress.resource_done();
    }

    fn month_done(&self, month: Month) {
        self.progress.month_done(month);
    }

    fn planned(&self, planned: &Planned) {
        let Ok(mut out) = self.out.lock() else { return };
        if let Err(error) = writeln!(out, "{planned}")
            && let Ok(mut first) = self.write_error.lock()
        {
            first.get_or_insert(error);
        }
    }
}

pub(crate) async fn run(args: HistoricalArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let config = super::load_config(&args.config.config)?;
    let time_zone = period::time_zone(config.timezone.as_deref())?;
    let current = Month::containing(jiff::Timestamp::now(), &time_zone);
    let months = historical::months_between(args.start_date, args.end_date, current)?;
    let plugins = super::serving_components(Some(&config), Some(&args.config.config), &args.plugins).await?;
    let target = historical::prepare(&config, &args.offering_uuid, args.user_token.clone(), plugins.backends()).await?;
    if args.no_staff_check {
        tracing::info!("staff check skipped (--no-staff-check)");
    } else {
        historical::check_staff(&target.waldur).await?;
    }
    let options = HistoricalOptions {
        months,
        user_usage: !args.skip_user_usage,
        dry_run: args.dry_run,
        reconcile_stale: args.reconcile_stale,
        resources: args.resource_backend_ids.clone(),
        concurrency: args.concurrency.map(usize::from).or(config.waldur_max_concurrency).unwrap_or(DEFAULT_CONCURRENCY),
        time_zone,
    };
    tracing::info!(
        offering = %target.name,
        first = %args.start_date,
        last = %args.end_date,
        months = options.months.len(),
        dry_run = options.dry_run,
        "historical load started"
    );
    let stop = StopFlag::default();
    let signals = super::report::spawn_signal_watch(stop.clone());
    let progress = Progress::new();
    let ticker = progress.spawn_ticker();
    let loaded = {
        let observer = CliObserver { out: Mutex::new(&mut *out), progress: &progress, write_error: Mutex::new(None) };
        let loaded = historical::load(&target, &options, &stop, &observer).await;
        match observer.write_error.into_inner() {
            Ok(Some(error)) => Err(anyhow::Error::from(error).context("writing the dry run")),
            _ => loaded,
        }
    };
    progress.finish(ticker);
    signals.abort();
    let summary = loaded?;
    tracing::info!(offering = %summary.offering, "{summary}");
    writeln!(out, "{summary}")?;
    if let Some(interrupted) = super::Interrupted::from_summaries(std::slice::from_ref(&summary)) {
        return Err(interrupted.into());
    }
    if summary.has_failures() {
        bail!(
            "{} resource-month(s) failed, {} error(s); see the errors above (months already loaded are not written again on a re-run)",
            summary.failed,
            summary.errors.len()
        );
    }
    Ok(())
}
