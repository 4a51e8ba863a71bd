//! One report cycle: the usage of every resource of an offering, this month and the
//! last `reporting_periods - 1`, into Waldur. The work is the sync engine's
//! ([`crate::sync`]); this module holds what a cycle asks of it.
//!
//! A cycle writes measured zeros like any value, reports an absent resource as zero in
//! the current month where Waldur holds nothing (never lowering a stored value on
//! absence alone), and leaves past months out, with one warning, where Waldur cannot
//! take them.

use anyhow::Result;
use jiff::tz::TimeZone;

use crate::backends::Backends;
use crate::config::AgentConfig;
use crate::period::Month;
use crate::sync::{self, PastMonths, Policy, Zeros};
use crate::waldur::WaldurClient;

pub use crate::sync::{
    Clock, DEFAULT_CONCURRENCY, FixedClock, StopFlag, Summary as OfferingSummary, SystemClock, record_metrics,
};

/// An offering ready to report.
pub type ReportTarget = sync::Target;

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
}

impl CycleOptions {
    pub fn from_config(config: &AgentConfig) -> Result<Self> {
        Ok(Self {
            reporting_periods: config.reporting_periods,
            concurrency: config.waldur_max_concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1),
            user_usage: true,
            time_zone: crate::period::time_zone(config.timezone.as_deref())?,
        })
    }

    /// The engine's policy for a cycle whose current month is `current`.
    fn policy(&self, current: Month) -> Policy {
        Policy {
            months: current.back(self.reporting_periods),
            past_months: PastMonths::SkipUnlessDated,
            zeros: Zeros::Write,
            absent_is_zero_in_current_month: true,
            reconcile_stale: false,
            refuse_decreases: true,
            user_usage: self.user_usage,
            send_offering_backend_ids: true,
            resources: Vec::new(),
            concurrency: self.concurrency,
            dry_run: false,
            time_zone: self.time_zone.clone(),
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
        let waldur = WaldurClient::for_offering(config, index, None)?;
        targets.push(ReportTarget::new(index, offering, backend, waldur)?.follow(backends));
    }
    Ok(targets)
}

/// Runs one cycle over one offering. An offering that cannot start (Waldur does not
/// know it, say) is one failure with its error line.
pub async fn report_offering(
    target: &ReportTarget,
    options: &CycleOptions,
    clock: &dyn Clock,
    stop: &StopFlag,
) -> OfferingSummary {
    let current = Month::containing(clock.now(), &options.time_zone);
    let policy = options.policy(current);
    match sync::run(target, &policy, clock, stop, &sync::NoObserver).await {
        Ok(summary) => summary,
        Err(error) => {
            let span = tracing::info_span!("cycle", offering = %target.name, backend_type = %target.backend_type);
            let message = format!("offering {}: nothing written this cycle: {error:#}", target.name);
            span.in_scope(|| tracing::error!("{message}"));
            let held: Vec<String> = target
                .waldur
                .not_answering()
                .map(|reason| format!("Waldur {} is not answering ({reason})", target.waldur.api_url()))
                .into_iter()
                .collect();
            OfferingSummary { failed: 1, errors: vec![message], held, ..target.summary(&target.backend_now(), &policy) }
        }
    }
}
