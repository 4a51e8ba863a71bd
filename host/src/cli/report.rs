//! `usage-agent report`: the main job. A cycle now, then one every
//! `WALDUR_SITE_AGENT_REPORT_PERIOD_MINUTES` (default 30) until a signal stops it.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

use super::{ConfigArg, PluginsDirArg};
use crate::report::{
    CycleOptions, OfferingSummary, ReportTarget, StopFlag, SystemClock, prepare_targets, report_offering,
};

/// The environment variable the Python agent reads for the cycle period.
pub const PERIOD_VARIABLE: &str = "WALDUR_SITE_AGENT_REPORT_PERIOD_MINUTES";

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Run one cycle and exit (non-zero if anything failed).
    #[arg(long)]
    pub once: bool,
    /// Waldur writes in flight per offering (overrides `waldur_max_concurrency`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::config::MAX_CONCURRENCY)), allow_negative_numbers = true)]
    pub concurrency: Option<u16>,
    /// New files in the plugins folder are picked up while the loop runs.
    #[command(flatten)]
    pub plugins: PluginsDirArg,
    /// Minutes between cycles (fractions allowed); the Python agent's variable sets it too.
    #[arg(long, value_name = "MINUTES", env = PERIOD_VARIABLE, default_value = "30")]
    pub period_minutes: String,
}

/// The cycle period from `--period-minutes` or the environment.
pub(crate) fn cycle_period(text: &str) -> Result<Duration> {
    let minutes: f64 = text
        .trim()
        .parse()
        .ok()
        .filter(|m: &f64| m.is_finite() && *m > 0.0 && *m <= 7.0 * 24.0 * 60.0)
        .ok_or_else(|| {
            anyhow!("--period-minutes ({PERIOD_VARIABLE}) {text:?}: expected a number of minutes between 0 and 10080")
        })?;
    Ok(Duration::from_secs_f64(minutes * 60.0))
}

/// Runs one cycle over all targets, offerings side by side.
pub(crate) async fn run_cycle(
    targets: &[ReportTarget],
    options: &CycleOptions,
    stop: &StopFlag,
) -> Vec<OfferingSummary> {
    let clock = SystemClock;
    futures::future::join_all(targets.iter().map(|target| report_offering(target, options, &clock, stop))).await
}

pub(crate) async fn run(args: ReportArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let stop = StopFlag::default();
    spawn_signal_watch(stop.clone());
    if args.once {
        run_until(args, out, stop).await
    } else {
        // A service's stdout and stderr both go to the journal: the summaries are log
        // lines already (JSON ones with --log-format json), so they are not printed twice.
        run_until(args, &mut std::io::sink(), stop).await
    }
}

/// The report loop of `usage-agent report`, until `stop` is raised (by a signal in the
/// command; by the caller in tests). The plugins folder is watched while it runs.
pub async fn run_until(args: ReportArgs, out: &mut (dyn Write + Send), stop: StopFlag) -> Result<()> {
    let config = super::load_config(&args.config.config)?;
    let period = cycle_period(&args.period_minutes)?;
    let mut options = CycleOptions::from_config(&config)?;
    if let Some(n) = args.concurrency {
        options.concurrency = usize::from(n);
    }
    let plugins = super::serving_components(Some(&config), Some(&args.config.config), &args.plugins).await?;
    let targets = prepare_targets(&config, plugins.backends()).await?;
    // One cycle needs no watching; a loop picks up new files between cycles.
    let _watch = (!args.once).then(|| plugins.watch());
    if let Some(addr) = config.metrics_listen {
        let bound = crate::metrics::serve(addr).await?;
        tracing::info!(%bound, "serving Prometheus metrics at /metrics");
    }
    let heartbeat = crate::heartbeat::path(config.heartbeat_file.as_deref(), &args.config.config);
    let held = crate::heartbeat::Held::default();
    let _beat = (!args.once).then(|| crate::heartbeat::spawn_beat(heartbeat.clone(), held.clone()));
    tracing::info!(offerings = targets.len(), ?period, plugins_dir = %plugins.options().dir.display(), "report loop started");
    loop {
        let summaries = run_cycle(&targets, &options, &stop).await;
        let mut failed = 0;
        for summary in &summaries {
            tracing::info!(offering = %summary.offering, backend_type = %summary.backend_type, "{summary}");
            writeln!(out, "{summary}")?;
            crate::report::record_metrics(summary);
            if summary.has_failures() {
                failed += summary.failed.max(summary.errors.len());
            }
        }
        let mut lines = Vec::new();
        for summary in &summaries {
            lines.extend(summary.held.iter().map(|line| format!("{}: {line}", summary.offering)));
        }
        if let Ok(mut held) = held.lock() {
            held.clone_from(&lines);
        }
        if !args.once
            && let Err(error) = crate::heartbeat::touch_with(&heartbeat, &lines)
        {
            tracing::warn!("{error:#}");
        }
        out.flush()?;
        if args.once {
            if let Some(interrupted) = super::Interrupted::from_summaries(&summaries) {
                return Err(interrupted.into());
            }
            if failed > 0 {
                bail!("the cycle finished with {failed} failure(s); see the log");
            }
            return Ok(());
        }
        if stop.is_stopped() {
            tracing::info!("stopped by signal");
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.stopped() => {
                tracing::info!("stopped by signal");
                return Ok(());
            }
        }
    }
}

/// On Ctrl-C or SIGTERM: raise the stop flag (the cycle finishes what is in flight).
pub(crate) fn spawn_signal_watch(stop: StopFlag) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let terminate = async {
            #[cfg(unix)]
            {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            }
            #[cfg(not(unix))]
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate => {}
        }
        tracing::info!("signal received: finishing the work in flight");
        stop.stop();
    })
}
