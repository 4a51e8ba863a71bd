//! The `usage-agent` command line.
//!
//! Each subcommand lives in a module of its own; this one parses arguments and sets up
//! logging. Commands write their results to the writer they are given, so the tests
//! run them in-process and read what an operator would see.

mod check_config;
#[cfg(feature = "demo")]
mod demo;
mod healthz;
mod historical;
mod logging;
mod ping;
mod plugins;
mod progress;
mod report;
mod usage;
mod version;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use crate::backends::Backends;
use crate::config::AgentConfig;
use crate::plugins::{PluginOptions, Plugins};
use crate::runtime::Runtime;

pub use check_config::CheckConfigArgs;
#[cfg(feature = "demo")]
pub use demo::{DemoArgs, serve_until as serve_demo_until};
pub use healthz::HealthzArgs;
pub use historical::{HistoricalArgs, USER_TOKEN_VARIABLE};
pub use logging::{config_log_level, init_logging, subscriber as log_subscriber};
pub use ping::{PingArgs, Step as PingStep};
pub use plugins::PluginsArgs;
pub use report::{PERIOD_VARIABLE, ReportArgs, run_until as run_report_until};
pub use usage::UsageArgs;
pub use version::long_version;

/// The exit status of `report --once` and `load-historical-usage` when a signal (SIGTERM,
/// Ctrl-C) stopped them before all the work asked for was done: `EX_TEMPFAIL` of
/// sysexits.h, "try again later" — running the same command again finishes the work.
pub const EXIT_INTERRUPTED: u8 = 75;

/// A signal stopped the command before its work was done: it exits with
/// [`EXIT_INTERRUPTED`], whatever else failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "stopped by a signal before the work was done; not finished: {unfinished}{failures}. Run the same command again to finish it (what Waldur holds is not written again)"
)]
pub struct Interrupted {
    /// The offerings and months not finished: `compute (2024-02, 2024-03), storage (2024-03)`.
    pub unfinished: String,
    /// `; and 3 resource-month(s) failed` when something failed as well, else empty.
    pub failures: String,
}

impl Interrupted {
    /// The error for the summaries of a stopped run, if any of them was cut short.
    pub(crate) fn from_summaries(summaries: &[crate::sync::Summary]) -> Option<Self> {
        let cut: Vec<String> = summaries.iter().filter(|s| s.interrupted()).map(|s| s.unfinished_text()).collect();
        if cut.is_empty() {
            return None;
        }
        let failed: usize = summaries.iter().map(|s| s.failed).sum();
        let errors: usize = summaries.iter().map(|s| s.errors.len()).sum();
        let failures = if failed + errors > 0 {
            format!("; and {failed} resource-month(s) failed, {errors} error(s) (see above)")
        } else {
            String::new()
        };
        Some(Self { unfinished: cut.join(", "), failures })
    }
}

/// Moves accounting usage into Waldur through sandboxed WebAssembly backends.
#[derive(Debug, Parser)]
#[command(name = "usage-agent", version, about, propagate_version = true)]
pub struct Cli {
    /// Log line format: `text` for people, `json` (one object per line) for journald.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the usage a backend reports, without submitting anything (a dry run).
    Usage(UsageArgs),
    /// Report usage to Waldur: a cycle now, then every WALDUR_SITE_AGENT_REPORT_PERIOD_MINUTES.
    Report(ReportArgs),
    /// Check the way to the upstream step by step (proxy, connection, TLS, token, API) and say
    /// which step fails.
    Ping(PingArgs),
    /// Load past months of one offering into Waldur (bulk back-fill, resumable).
    LoadHistoricalUsage(HistoricalArgs),
    /// Start the bundled simulators on loopback and run the main job against them.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Validate a config as `report` would, without any request; non-zero on the first error.
    CheckConfig(CheckConfigArgs),
    /// Exit 0 if the agent is alive (and, unless --liveness-only, its services ready).
    Healthz(HealthzArgs),
    /// List the component serving each backend type: built in or from the plugins folder.
    Plugins(PluginsArgs),
}

/// The config file option every command that reads one shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// The waldur-site-agent YAML config.
    #[arg(short = 'c', long = "config", visible_alias = "config-file", value_name = "FILE")]
    pub config: PathBuf,
}

/// The plugins folder option of the commands that run components.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PluginsDirArg {
    /// The plugins folder: `<backend_type>.wasm` files replace the built-in components
    /// (overrides `plugins_dir`; default /var/lib/usage-agent/plugins).
    #[arg(long, value_name = "DIR")]
    pub plugins_dir: Option<PathBuf>,
}

/// Reads the config at `path` and logs its warnings (unknown and repeated keys): what
/// every command but `check-config`, which prints them, does first.
pub(crate) fn load_config(path: &std::path::Path) -> Result<AgentConfig> {
    let config = AgentConfig::load(path)?;
    config.log_warnings();
    Ok(config)
}

/// The components `report` would serve for `config`: the plugins folder's files that
/// pass validation, the built-in components for the other backend types, all held to
/// the config's `component_limits`. Without a config: every built-in backend type,
/// default limits and folders.
pub(crate) async fn serving_components(
    config: Option<&AgentConfig>,
    config_path: Option<&std::path::Path>,
    plugins_dir: &PluginsDirArg,
) -> Result<Plugins> {
    let limits = config.map(|c| c.component_limits.clone()).unwrap_or_default();
    let backends = Backends::new(Runtime::with_limits(limits)?);
    let options = PluginOptions::resolve(config, config_path, plugins_dir.plugins_dir.clone());
    let plugins = Plugins::new(backends, config, options);
    plugins.start().await?;
    Ok(plugins)
}

/// Runs a parsed command line; output goes to `out`.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> Result<()> {
    match cli.command {
        Command::Usage(args) => usage::run(args, out).await,
        Command::Report(args) => report::run(args, out).await,
        Command::LoadHistoricalUsage(args) => historical::run(args, out).await,
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(args, out).await,
        Command::CheckConfig(args) => check_config::run(args, out).await,
        Command::Healthz(args) => healthz::run(args, out).await,
        Command::Plugins(args) => plugins::run(args, out).await,
        Command::Ping(args) => ping::run(args, out).await,
    }
}

impl Cli {
    /// The config file the command reads, if any.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        match &self.command {
            Command::Usage(a) => Some(&a.config.config),
            Command::Report(a) => Some(&a.config.config),
            Command::CheckConfig(a) => Some(&a.config.config),
            Command::Healthz(a) => Some(&a.config.config),
            Command::Plugins(a) => a.config.as_deref(),
            Command::Ping(a) => Some(&a.config.config),
            Command::LoadHistoricalUsage(a) => Some(&a.config.config),
            #[cfg(feature = "demo")]
            Command::Demo(_) => None,
        }
    }
}
