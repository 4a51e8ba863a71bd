//! Back-filling past months into Waldur: what `load-historical-usage` asks of the
//! sync engine ([`crate::sync`]).
//!
//! Sites load years of usage once per offering. Each month costs one component
//! call for all resources, one paginated listing of what Waldur already holds, and
//! then only the writes that change something. Because unchanged values are never
//! written, a second run over loaded months writes nothing: an interrupted run is
//! simply started again.
//!
//! What it deliberately does not do: it never lowers a stored value to zero unless
//! asked (`reconcile_stale`), it never writes into a month after the current one, and
//! where Waldur cannot file past months by their date it refuses before any write.

use anyhow::{Result, anyhow, bail};
use jiff::ToSpan as _;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::backends::{Backends, prepare_offering};
use crate::config::{AgentConfig, Secret};
use crate::period::Month;
use crate::runtime::wit;
use crate::sync::{self, PastMonths, Policy, StopFlag, SystemClock, Zeros};
use crate::waldur::WaldurClient;

pub use crate::sync::{NoObserver, Observer, Planned, Summary as HistoricalSummary};

/// An offering ready to back-fill, with the Waldur token of the run.
pub type HistoricalTarget = sync::Target;

/// The longest range one run may cover, in calendar years.
pub const MAX_RANGE_YEARS: i16 = 5;

/// What one run does.
#[derive(Debug, Clone)]
pub struct HistoricalOptions {
    /// The months to load, oldest first.
    pub months: Vec<Month>,
    /// Submit per-user usage as well as totals.
    pub user_usage: bool,
    /// Print what would be submitted, submit nothing.
    pub dry_run: bool,
    /// Also write zeros: totals of resources absent upstream (or measured zero) and
    /// per-user records of users absent upstream, where Waldur holds a non-zero value.
    pub reconcile_stale: bool,
    /// Only these resource backend ids (empty: every resource with a backend id).
    pub resources: Vec<String>,
    /// Waldur writes in flight.
    pub concurrency: usize,
    /// The configured time zone: billing months and dates.
    pub time_zone: TimeZone,
}

impl HistoricalOptions {
    fn policy(&self) -> Policy {
        Policy {
            months: self.months.clone(),
            past_months: PastMonths::RefuseUnlessDated,
            zeros: Zeros::OnlyToReconcile,
            absent_is_zero_in_current_month: false,
            reconcile_stale: self.reconcile_stale,
            // What the backend says for a past month is written, lower or not, as the
            // Python loader does: a back-fill is the operator's explicit request.
            refuse_decreases: false,
            user_usage: self.user_usage,
            // The seed's historical loader passes no Waldur clusters: the backend applies
            // `cscs_dwdi_cluster` when it is set, else no cluster filter.
            send_offering_backend_ids: false,
            resources: self.resources.clone(),
            concurrency: self.concurrency,
            dry_run: self.dry_run,
            time_zone: self.time_zone.clone(),
        }
    }
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
    if token.is_none()
        && let Err(error) = offering.waldur_login()
    {
        bail!("offerings[{index}].{error}; or pass --user-token");
    }
    let waldur = WaldurClient::for_offering(config, index, token)?;
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
    HistoricalTarget::new(index, offering, backend, waldur)
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

/// Loads `options.months` of the offering into Waldur, oldest first. Fails as a whole
/// only when nothing can start; see [`sync::run`].
pub async fn load(
    target: &HistoricalTarget,
    options: &HistoricalOptions,
    stop: &StopFlag,
    observer: &dyn Observer,
) -> Result<HistoricalSummary> {
    sync::run(target, &options.policy(), &SystemClock, stop, observer).await
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
            upstream: String::new(),
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
}
